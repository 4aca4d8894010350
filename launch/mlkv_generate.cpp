// mlkv-generate: text generation from a checkpoint with the shared MLKV KV cache (core/decode.h).
//
//   mlkv-generate --ckpt PATH (--prompt TEXT | --tokens "1,2,3")... [--max-new-tokens N]
//                 [--temperature T] [--top-k K] [--top-p P] [--seed S] [--backend cpu|cuda|auto]
//
// Every --prompt / --tokens is one sequence; all run as one batch (prompts of different lengths).
// Text goes through the bundled GPT-NeoX tokenizer (data/tokenizer/gpt-neox-20b.json, or
// --tokenizer FILE). Prints each sequence's generated text (and ids with --print-ids).
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/decode.h"
#include "core/errors.h"
#include "core/logging.h"
#include "core/token_ids.h"
#include "data/bpe_tokenizer.h"

namespace {

constexpr const char* kUsage =
    "usage: mlkv-generate --ckpt PATH (--prompt TEXT | --tokens \"1,2,3\")... [options]\n"
    "\n"
    "  --ckpt PATH          a checkpoint step directory, or a run's checkpoint directory (newest)\n"
    "  --prompt TEXT        a prompt as text (GPT-NeoX tokenizer); repeat for a batch\n"
    "  --tokens IDS         a prompt as comma-separated token ids; repeat for a batch\n"
    "  --max-new-tokens N   tokens to generate per sequence (default 32)\n"
    "  --temperature T      0 = greedy (default); > 0 samples\n"
    "  --top-k K            sample among the K most likely tokens (0 = all)\n"
    "  --top-p P            sample among the smallest set with probability >= P (1 = all)\n"
    "  --seed S             sampling seed (default 0)\n"
    "  --eos ID             stop a sequence at this id (default: <|endoftext|>; -1 = never)\n"
    "  --backend B          cpu | cuda | auto (default: the checkpoint's train.backend)\n"
    "  --threads N          CPU threads (0 = all)\n"
    "  --tokenizer FILE     tokenizer.json (default: the bundled GPT-NeoX one)\n"
    "  --print-ids          also print the generated token ids\n"
    "exit codes: 0 ok | 1 runtime failure | 2 bad input\n";

[[noreturn]] void usage_error(const std::string& why) {
  std::cerr << "mlkv-generate: " << why << "\n\n" << kUsage;
  std::exit(mlkv::kExitBadInput);
}

// The bundled tokenizer: next to the executable's source tree (build/bin/ → ../../data/...), or
// in the source tree this binary was built from.
std::string bundled_tokenizer() {
  const std::string rel = "data/tokenizer/gpt-neox-20b.json";
  char exe[PATH_MAX] = {};
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    const std::filesystem::path dir = std::filesystem::path(std::string(exe, n)).parent_path();
    for (const auto& up : {dir / ".." / "..", dir / "..", dir})
      if (std::filesystem::exists(up / rel)) return (up / rel).string();
  }
#ifdef MLKV_SOURCE_TREE
  if (std::filesystem::exists(std::filesystem::path(MLKV_SOURCE_TREE) / rel))
    return (std::filesystem::path(MLKV_SOURCE_TREE) / rel).string();
#endif
  throw mlkv::ConfigError("cannot find the bundled tokenizer " + rel + "; pass --tokenizer FILE");
}

double number(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0') usage_error(flag + ": \"" + v + "\" is not a number");
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  std::string ckpt, backend_name, tokenizer_path;
  struct Prompt {
    bool text;
    std::string value;
  };
  std::vector<Prompt> prompts;
  mlkv::SamplingOptions o;
  int threads = -1;
  long long eos = -2;  // -2: the tokenizer's <|endoftext|>
  bool print_ids = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--ckpt") ckpt = value();
    else if (a == "--prompt") prompts.push_back({true, value()});
    else if (a == "--tokens") prompts.push_back({false, value()});
    else if (a == "--max-new-tokens") o.max_new_tokens = static_cast<int>(number(a, value()));
    else if (a == "--temperature") o.temperature = static_cast<float>(number(a, value()));
    else if (a == "--top-k") o.top_k = static_cast<int>(number(a, value()));
    else if (a == "--top-p") o.top_p = static_cast<float>(number(a, value()));
    else if (a == "--seed") o.seed = static_cast<uint64_t>(number(a, value()));
    else if (a == "--eos") eos = static_cast<long long>(number(a, value()));
    else if (a == "--backend") backend_name = value();
    else if (a == "--threads") threads = static_cast<int>(number(a, value()));
    else if (a == "--tokenizer") tokenizer_path = value();
    else if (a == "--print-ids") print_ids = true;
    else usage_error("unknown argument " + a);
  }
  if (ckpt.empty()) usage_error("--ckpt is required");
  if (prompts.empty()) usage_error("give at least one --prompt TEXT or --tokens IDS");

  try {
    o.validate();
    const mlkv::data::BpeTokenizer tok =
        mlkv::data::BpeTokenizer::load(tokenizer_path.empty() ? bundled_tokenizer() : tokenizer_path);
    const mlkv::CheckpointData ck = mlkv::load_checkpoint_weights(ckpt);
    mlkv::Config cfg = ck.config;
    if (!backend_name.empty()) cfg.train.backend = backend_name;
    if (threads >= 0) cfg.train.threads = threads;
    const mlkv::ModelSpec spec = cfg.spec();
    o.eos_id = static_cast<int32_t>(eos == -2 ? tok.token_id("<|endoftext|>") : eos);
    if (o.eos_id < -1 || o.eos_id >= spec.vocab)
      throw mlkv::ConfigError("--eos " + std::to_string(eos) + " is not a token id of the model");

    std::vector<std::vector<int32_t>> ids;
    size_t longest = 0;
    for (const Prompt& p : prompts) {
      ids.push_back(p.text ? tok.encode(p.value) : mlkv::parse_token_ids(p.value, spec.vocab, "--tokens"));
      if (ids.back().empty()) throw mlkv::ConfigError("prompt " + std::to_string(ids.size() - 1) + " has no tokens");
      longest = std::max(longest, ids.back().size());
    }
    if (longest + o.max_new_tokens - 1 > static_cast<size_t>(spec.max_seq_len))
      throw mlkv::ConfigError("the longest prompt (" + std::to_string(longest) + " tokens) + --max-new-tokens " +
                              std::to_string(o.max_new_tokens) + " exceed model.max_seq_len = " +
                              std::to_string(spec.max_seq_len));
    auto backend = mlkv::make_backend(cfg.train);
    mlkv::DecoderSize size;
    size.max_batch = static_cast<int>(ids.size());
    size.max_ctx = static_cast<int>(longest) + o.max_new_tokens - 1;
    mlkv::Decoder dec(spec, *backend, ck.master, size);
    mlkv::log::info("model " + cfg.model.name + ", " + spec.kv.name(spec.heads) + ", backend " + backend->name() +
                    ", KV cache " + std::to_string(dec.memory().cache >> 10) + " KiB for " +
                    std::to_string(ids.size()) + " sequence(s) of up to " + std::to_string(size.max_ctx) + " tokens");
    const auto out = dec.generate(ids, o);
    for (size_t b = 0; b < out.size(); ++b) {
      std::vector<int32_t> known;  // ids of the padded vocabulary beyond the tokenizer's have no text
      for (int32_t id : out[b])
        if (id < tok.vocab_size() && id != o.eos_id) known.push_back(id);
      if (out.size() > 1) std::cout << "[" << b << "] ";
      std::cout << (prompts[b].text ? prompts[b].value : std::string()) << tok.decode(known) << "\n";
      if (print_ids) {
        std::cout << "ids:";
        for (size_t i = 0; i < out[b].size(); ++i) std::cout << (i ? "," : " ") << out[b][i];
        std::cout << "\n";
      }
    }
    return 0;
  } catch (const mlkv::Error& e) {
    mlkv::log::error(e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    mlkv::log::error(std::string("unexpected failure: ") + e.what());
    return mlkv::kExitFailure;
  }
}
