// Multiple-choice scoring for mlkv-eval --choice (see choice_task.h for the lm-eval rules it follows).
#include "core/choice_task.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/logging.h"
#include "core/model.h"

namespace mlkv {
namespace {

// Characters as Python counts them: UTF-8 bytes that do not continue a sequence.
double code_points(const std::string& s) {
  return static_cast<double>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

int argmax(const std::vector<double>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());  // first of equal maxima
}

}  // namespace

std::vector<ChoiceItem> read_choice_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw DataError(path + ": cannot open the choice task file");
  std::vector<ChoiceItem> items;
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = log::cat(path, ":", lineno, ": ");
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw DataError(where + "not a JSON object");
    if (!j.contains("context") || !j["context"].is_string()) throw DataError(where + "\"context\" must be a string");
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2)
      throw DataError(where + "\"choices\" must be an array of at least two strings");
    if (!j.contains("gold") || !j["gold"].is_number_integer()) throw DataError(where + "\"gold\" must be an integer");
    ChoiceItem item;
    item.context = j["context"].get<std::string>();
    for (const auto& c : j["choices"]) {
      if (!c.is_string()) throw DataError(where + "\"choices\" must be an array of at least two strings");
      item.choices.push_back(c.get<std::string>());
    }
    const int64_t gold = j["gold"].get<int64_t>();
    if (gold < 0 || gold >= static_cast<int64_t>(item.choices.size()))
      throw DataError(log::cat(where, "\"gold\" = ", gold, " is not an index into its ", item.choices.size(), " choices"));
    item.gold = static_cast<int>(gold);
    items.push_back(std::move(item));
  }
  if (items.empty()) throw DataError(path + ": no items");
  return items;
}

std::vector<EncodedChoice> encode_choices(const ChoiceItem& item, const data::BpeTokenizer& tokenizer,
                                          const std::string& delimiter) {
  // lm-eval's _encode_pair: trailing whitespace belongs to the continuation, and the continuation's
  // tokens are what encoding the whole text adds after the context's tokens.
  const size_t keep = item.context.find_last_not_of(" \t\n\r");
  const std::string context = keep == std::string::npos ? "" : item.context.substr(0, keep + 1);
  const std::string moved = item.context.substr(context.size());
  const std::vector<int32_t> context_ids = tokenizer.encode(context);
  std::vector<EncodedChoice> out;
  for (const std::string& choice : item.choices) {
    const std::vector<int32_t> whole = tokenizer.encode(context + moved + delimiter + choice);
    EncodedChoice e;
    e.context = context_ids;
    e.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(std::min(context_ids.size(), whole.size())), whole.end());
    out.push_back(std::move(e));
  }
  return out;
}

int64_t longest_sequence(const std::vector<std::vector<EncodedChoice>>& encoded) {
  size_t longest = 0;
  for (const auto& item : encoded)
    for (const EncodedChoice& e : item) longest = std::max(longest, e.context.size() + e.continuation.size());
  return static_cast<int64_t>(longest);
}

ChoiceScore score_choice_task(const std::vector<ChoiceItem>& items,
                              const std::vector<std::vector<EncodedChoice>>& encoded,
                              const SequenceLogProb& logprob, int64_t window) {
  if (items.size() != encoded.size()) throw Error("score_choice_task: items and encodings differ in number");
  ChoiceScore s;
  s.items = static_cast<int64_t>(items.size());
  int64_t right = 0, right_norm = 0;
  std::vector<int32_t> seq;
  for (size_t i = 0; i < items.size(); ++i) {
    std::vector<double> lp, lp_norm;
    for (size_t c = 0; c < encoded[i].size(); ++c) {
      const EncodedChoice& e = encoded[i][c];
      if (e.continuation.empty() || static_cast<int64_t>(e.continuation.size()) > window)
        throw DataError(log::cat("choice item ", i + 1, ", choice ", c, ": the continuation has ", e.continuation.size(),
                                 " tokens; it must have 1 to ", window, " (the model's window)"));
      seq = e.context;
      if (seq.empty()) seq.push_back(0);  // lm-eval scores a context-free choice after the EOD token
      seq.insert(seq.end(), e.continuation.begin(), e.continuation.end());
      // Keep the last window + 1 tokens: window inputs predict the last window of them.
      const size_t drop = seq.size() > static_cast<size_t>(window) + 1 ? seq.size() - static_cast<size_t>(window) - 1 : 0;
      seq.erase(seq.begin(), seq.begin() + static_cast<std::ptrdiff_t>(drop));
      const double v = logprob(seq, seq.size() - e.continuation.size());
      lp.push_back(v);
      lp_norm.push_back(v / std::max(1.0, code_points(items[i].choices[c])));
    }
    s.pred.push_back(argmax(lp));
    s.pred_norm.push_back(argmax(lp_norm));
    right += s.pred.back() == items[i].gold;
    right_norm += s.pred_norm.back() == items[i].gold;
    s.logprob.push_back(std::move(lp));
  }
  s.acc = static_cast<double>(right) / static_cast<double>(s.items);
  s.acc_norm = static_cast<double>(right_norm) / static_cast<double>(s.items);
  return s;
}

SequenceLogProb model_logprob(Model& model) {
  if (model.batch() != 1) throw Error("model_logprob: the model must be built for micro-batches of 1 sequence");
  return [&model](const std::vector<int32_t>& seq, size_t first) {
    const size_t T = static_cast<size_t>(model.seq_len());
    if (seq.size() < 2 || seq.size() > T + 1 || first < 1 || first >= seq.size())
      throw Error(log::cat("model_logprob: sequence of ", seq.size(), " tokens (scored from ", first,
                           ") does not fit a window of ", T));
    std::vector<int32_t> tokens(T, 0), targets(T, -1);
    std::copy(seq.begin(), seq.end() - 1, tokens.begin());
    for (size_t i = first; i < seq.size(); ++i) targets[i - 1] = seq[i];  // input i-1 predicts token i
    return -model.forward_loss(tokens.data(), targets.data()).sum;
  };
}

}  // namespace mlkv
