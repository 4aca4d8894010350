// Zero-shot multiple-choice scoring (mlkv-eval --choice), the way lm-evaluation-harness scores its
// `multiple_choice` tasks, so our figures and lm_eval's on the HF export can be compared item by item.
//
// An item is one JSONL line {"context": str, "choices": [str, ...], "gold": int}. Each choice is
// scored by the sum of the log-probabilities of its continuation tokens after the context:
//   continuation = delimiter + choice (lm-eval's target_delimiter, " "); trailing whitespace of the
//   context moves to the continuation; whole = encode(context + continuation), and the continuation
//   tokens are whole[len(encode(context)):]  (lm-eval's HFLM._encode_pair).
// acc counts items whose argmax of the sums is gold; acc_norm divides each sum by the choice's
// length in characters (Unicode code points, as Python's len) first. Ties go to the first choice
// (numpy argmax).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/bpe_tokenizer.h"

namespace mlkv {

class Model;

struct ChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int gold = -1;
};

// Reads a JSONL task file. Throws DataError naming file and line for malformed JSON, a missing or
// mistyped field, fewer than two choices or gold out of range.
std::vector<ChoiceItem> read_choice_jsonl(const std::string& path);

struct EncodedChoice {
  std::vector<int32_t> context;       // encode(context without trailing whitespace)
  std::vector<int32_t> continuation;  // the tokens that are scored
};

std::vector<EncodedChoice> encode_choices(const ChoiceItem& item, const data::BpeTokenizer& tokenizer,
                                          const std::string& delimiter = " ");

// Σ_{i >= first} log p(tokens[i] | tokens[0..i)) for one sequence; first >= 1.
using SequenceLogProb = std::function<double(const std::vector<int32_t>& tokens, size_t first)>;

struct ChoiceScore {
  int64_t items = 0;
  double acc = 0, acc_norm = 0;            // fractions of items
  std::vector<std::vector<double>> logprob;  // [item][choice]
  std::vector<int> pred, pred_norm;          // argmax per item
};

// Scores every item; sequences longer than `window` + 1 tokens lose context from the left
// (lm-eval's truncation). Throws DataError naming the item when a continuation alone exceeds it.
ChoiceScore score_choice_task(const std::vector<ChoiceItem>& items,
                              const std::vector<std::vector<EncodedChoice>>& encoded,
                              const SequenceLogProb& logprob, int64_t window);

// Longest context + continuation over all items and choices, in tokens.
int64_t longest_sequence(const std::vector<std::vector<EncodedChoice>>& encoded);

// A SequenceLogProb over a model built for micro-batches of 1 sequence of model.seq_len() tokens:
// the sequence is right-padded (the model is causal, so padding changes nothing before it) and
// the continuation's tokens are the only targets of the trainer's own loss.
SequenceLogProb model_logprob(Model& model);

}  // namespace mlkv
