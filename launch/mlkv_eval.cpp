// mlkv-eval: loss and perplexity of a checkpoint on a dataset, and logits dumps for parity checks.
//
//   mlkv-eval --ckpt PATH --data DIR [--batches N] [--val-fraction F] [--backend B] [--threads N]
//   mlkv-eval --ckpt PATH --dump-logits FILE --tokens "1,2,3"
//   mlkv-eval --ckpt PATH --choice TASK.jsonl --tokenizer tokenizer.json [--json]
//
// The loss is computed by the trainer's own evaluate() on the same rows its validation reads
// (DIR in file order, unshuffled; batches of micro_batch·grad_accum·dp sequences of the run that
// wrote the checkpoint; N defaults to its train.eval_batches), so it equals the trainer's last
// validation loss on that data. --val-fraction F reads the held-out tail of DIR instead, as
// data.val_fraction = F does. Logits go to FILE as .npy (fp32 [T, V]) or, for any other
// extension, safetensors ("logits" F32 [1, T, V] and "tokens" I32 [1, T]). --choice scores a
// zero-shot multiple-choice task as lm-eval does (core/choice_task.h): acc and length-normalised acc.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/choice_task.h"
#include "core/errors.h"
#include "core/logging.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/token_ids.h"
#include "core/trainer.h"
#include "parallel/context.h"
#include "parallel/topology.h"

namespace {

constexpr const char* kUsage =
    "usage: mlkv-eval --ckpt PATH --data DIR [--batches N] [--val-fraction F] [--backend cpu|cuda|auto]\n"
    "                 [--threads N] [--json]\n"
    "       mlkv-eval --ckpt PATH --dump-logits FILE(.npy|.safetensors) --tokens \"1,2,3\"\n"
    "       mlkv-eval --ckpt PATH --choice TASK.jsonl --tokenizer tokenizer.json [--json]\n"
    "\n"
    "  --ckpt PATH        a checkpoint step directory, or a run's checkpoint directory (newest)\n"
    "  --data DIR         token shards (directory, file or glob), read in order\n"
    "  --batches N        global batches to evaluate (default: the run's train.eval_batches)\n"
    "  --val-fraction F   evaluate the held-out tail of DIR, as data.val_fraction = F does\n"
    "  --json             print the result as one JSON object\n"
    "  --dump-logits FILE write the logits of --tokens to FILE\n"
    "  --choice FILE      score a multiple-choice task, one JSON object a line:\n"
    "                     {\"context\": str, \"choices\": [str, ...], \"gold\": index}\n"
    "  --tokenizer FILE   the HF tokenizer.json that --choice texts are encoded with\n"
    "exit codes: 0 ok | 1 runtime failure | 2 bad input\n";

[[noreturn]] void usage_error(const std::string& why) {
  std::cerr << "mlkv-eval: " << why << "\n\n" << kUsage;
  std::exit(mlkv::kExitBadInput);
}

// NPY format 1.0: magic, version, little-endian header length, a Python dict literal padded so the
// data starts at a multiple of 64 bytes, then the raw array.
void write_npy(const std::string& path, const std::vector<float>& data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xFF), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) throw mlkv::IoError(path + ": write failed");
}

}  // namespace

int main(int argc, char** argv) {
  std::string ckpt, data_dir, dump_path, tokens_arg, backend_name, choice_path, tokenizer_path;
  int64_t batches = -1;
  double val_fraction = 0;
  int threads = -1;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    auto number = [&](const std::string& v) {
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0') usage_error(a + ": \"" + v + "\" is not a number");
      return x;
    };
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--ckpt") ckpt = value();
    else if (a == "--data") data_dir = value();
    else if (a == "--batches") batches = static_cast<int64_t>(number(value()));
    else if (a == "--val-fraction") val_fraction = number(value());
    else if (a == "--dump-logits") dump_path = value();
    else if (a == "--tokens") tokens_arg = value();
    else if (a == "--backend") backend_name = value();
    else if (a == "--threads") threads = static_cast<int>(number(value()));
    else if (a == "--choice") choice_path = value();
    else if (a == "--tokenizer") tokenizer_path = value();
    else if (a == "--json") as_json = true;
    else usage_error("unknown argument " + a);
  }
  if (ckpt.empty()) usage_error("--ckpt is required");
  if (data_dir.empty() && dump_path.empty() && choice_path.empty())
    usage_error("give --data DIR, --choice FILE and/or --dump-logits FILE --tokens ...");
  if (!choice_path.empty() && tokenizer_path.empty()) usage_error("--choice needs --tokenizer FILE");
  if (!dump_path.empty() && tokens_arg.empty()) usage_error("--dump-logits needs --tokens");
  if (batches == 0 || batches < -1) usage_error("--batches must be >= 1");
  if (val_fraction < 0 || val_fraction >= 1) usage_error("--val-fraction must be in [0, 1)");

  try {
    const mlkv::CheckpointData ck = mlkv::load_checkpoint_weights(ckpt);
    mlkv::Config cfg = ck.config;
    if (!backend_name.empty()) cfg.train.backend = backend_name;
    if (threads >= 0) cfg.train.threads = threads;
    cfg.parallel.tp = 1;  // evaluation splits batches over ranks (data parallel) only
    const mlkv::ModelSpec spec = cfg.spec();
    auto backend = mlkv::make_backend(cfg.train, mlkv::parallel::local_rank());
    auto ctx = mlkv::parallel::make_context(cfg, *backend);
    mlkv::log::set_rank(ctx->topo().world_rank);

    if (!data_dir.empty()) {
      mlkv::Model model(spec, *backend, cfg.train.micro_batch, cfg.train.seq_len);
      model.set_master(ck.master);
      mlkv::data::LoaderOptions o;
      o.path = data_dir;
      o.seq_len = cfg.train.seq_len;
      // The writer's global batch, so batch b holds the same rows as its validation's batch b.
      o.global_batch = int64_t{cfg.train.micro_batch} * cfg.train.grad_accum * ck.state.dp;
      o.dp_rank = ctx->topo().dp_rank;
      o.dp_size = ctx->topo().dp;
      o.shuffle = false;
      o.prefetch = 2;
      o.vocab_limit = spec.vocab;
      if (val_fraction > 0) {
        o.split = "val";
        o.val_fraction = val_fraction;
      }
      if (o.global_batch % o.dp_size != 0)
        throw mlkv::ConfigError("the checkpoint's global batch does not split over " + std::to_string(o.dp_size) + " ranks");
      auto source = mlkv::make_loader_source(o);
      const int64_t n = batches > 0 ? batches : cfg.train.eval_batches;
      const mlkv::EvalResult r = mlkv::evaluate(model, *source, n, *ctx);
      if (ctx->is_root()) {
        char line[512];
        if (as_json)
          std::snprintf(line, sizeof line, "{\"loss\": %.17g, \"ppl\": %.17g, \"tokens\": %lld, \"batches\": %lld, \"step\": %lld}\n",
                        r.loss, r.ppl, static_cast<long long>(r.tokens), static_cast<long long>(n),
                        static_cast<long long>(ck.state.step));
        else
          std::snprintf(line, sizeof line, "loss %.6f | ppl %.4f | %lld tokens in %lld batches | step %lld\n", r.loss, r.ppl,
                        static_cast<long long>(r.tokens), static_cast<long long>(n), static_cast<long long>(ck.state.step));
        std::cout << line << std::flush;
      }
    }

    if (!choice_path.empty()) {
      const std::vector<mlkv::ChoiceItem> items = mlkv::read_choice_jsonl(choice_path);
      const auto tokenizer = mlkv::data::BpeTokenizer::load(tokenizer_path);
      std::vector<std::vector<mlkv::EncodedChoice>> encoded;
      for (const mlkv::ChoiceItem& item : items) encoded.push_back(mlkv::encode_choices(item, tokenizer));
      // One model for every sequence: the longest input, rounded up to 64 tokens (the attention
      // kernels' tile), at most the rotary tables' length.
      const int64_t inputs = mlkv::longest_sequence(encoded) - 1;
      const int window = static_cast<int>(std::min<int64_t>(spec.max_seq_len, std::max<int64_t>(64, (inputs + 63) / 64 * 64)));
      mlkv::Model model(spec, *backend, 1, window);
      model.set_master(ck.master);
      const mlkv::ChoiceScore s = mlkv::score_choice_task(items, encoded, mlkv::model_logprob(model), window);
      if (ctx->is_root()) {
        char line[512];
        if (as_json)
          std::snprintf(line, sizeof line, "{\"acc\": %.17g, \"acc_norm\": %.17g, \"items\": %lld, \"step\": %lld}\n", s.acc,
                        s.acc_norm, static_cast<long long>(s.items), static_cast<long long>(ck.state.step));
        else
          std::snprintf(line, sizeof line, "acc %.4f | acc_norm %.4f | %lld items | step %lld\n", s.acc, s.acc_norm,
                        static_cast<long long>(s.items), static_cast<long long>(ck.state.step));
        std::cout << line << std::flush;
      }
    }

    if (!dump_path.empty()) {
      const std::vector<int32_t> tokens = mlkv::parse_token_ids(tokens_arg, spec.vocab, "--tokens");
      const int T = static_cast<int>(tokens.size());
      if (T > spec.max_seq_len)
        throw mlkv::ConfigError("--tokens: " + std::to_string(T) + " tokens, model.max_seq_len is " +
                                std::to_string(spec.max_seq_len));
      mlkv::Model model(spec, *backend, 1, T);
      model.set_master(ck.master);
      const std::vector<float> logits = model.forward_logits(tokens.data());
      if (ctx->is_root()) {
        if (dump_path.size() >= 4 && dump_path.compare(dump_path.size() - 4, 4, ".npy") == 0) {
          write_npy(dump_path, logits, T, spec.vocab);
        } else {
          mlkv::safetensors::Writer w;
          w.add_f32("logits", logits.data(), {1, T, spec.vocab});
          w.add_i32("tokens", tokens.data(), {1, T});
          w.set_metadata("checkpoint", ckpt);
          w.write(dump_path);
        }
        mlkv::log::info("wrote logits [" + std::to_string(T) + ", " + std::to_string(spec.vocab) + "] to " + dump_path);
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
