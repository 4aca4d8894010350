// mlkv-convert: HF Pythia checkpoints into MLKV checkpoints (import), and back out to HF (export).
//
//   mlkv-convert import --hf DIR --config TARGET.toml --out CKPT [--merge mean|paper|owner]
//                       [--widen-mlp] [--compat paper] [--set section.key=value ...]
//   mlkv-convert export --ckpt CKPT --out DIR [--dtype fp32|bf16] [--tokenizer-from FILE|DIR|gpt-neox-20b]
//                       [--no-tokenizer]
//
// The work lives in core/convert.h; this file only parses the command line and prints.
// Exit codes (core/errors.h): 0 done, 1 runtime failure, 2 bad input (command line, config, weights).
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/convert.h"
#include "core/errors.h"

namespace {

constexpr const char* kUsage =
    "usage: mlkv-convert import --hf DIR --config TARGET.toml --out CKPT [options]\n"
    "       mlkv-convert export --ckpt CKPT --out DIR [--dtype fp32|bf16] [--tokenizer-from T | --no-tokenizer]\n"
    "\n"
    "import: an HF GPT-NeoX (Pythia) directory -> an MLKV checkpoint the trainer starts from (step 0)\n"
    "  --hf DIR          config.json + model.safetensors (or model.safetensors.index.json shards); fp32/fp16/bf16\n"
    "  --config FILE     the target model (its model section must match the HF model; its kv section is the plan)\n"
    "  --out CKPT        checkpoint directory to write (set train.init_from = CKPT to train from it)\n"
    "  --merge MODE      how a group's K/V combine into its owner: mean (default) | paper | owner\n"
    "  --widen-mlp       widen every MLP to restore the parameter count (function-preserving copies)\n"
    "  --compat paper    DIR is one of the seed MLKV paper's models (separate query/key/value, keys not\n"
    "                    rotated in non-owner layers): load it as is, with kv.rope_shared_keys = false\n"
    "  --set k=v         override any target config key (repeatable)\n"
    "\n"
    "export: a checkpoint -> an HF directory (transformers, lm-evaluation-harness)\n"
    "  --ckpt CKPT       a checkpoint step directory, or a run's checkpoint directory (its newest)\n"
    "  --out DIR         model.safetensors, config.json, tokenizer files (+ modeling files for MLKV plans;\n"
    "                    + the source's generation_config.json for a model imported from HF)\n"
    "  --dtype T         fp32 (default) or bf16\n"
    "  --tokenizer-from T  the tokenizer to ship: gpt-neox-20b (default: the bundled Pythia tokenizer),\n"
    "                    a tokenizer.json file, or a directory holding one (its tokenizer_config.json and\n"
    "                    special_tokens_map.json are copied when present)\n"
    "  --no-tokenizer    write no tokenizer files\n"
    "\n"
    "exit codes: 0 done | 1 runtime failure | 2 bad input\n";

[[noreturn]] void usage_error(const std::string& why) {
  std::cerr << "mlkv-convert: " << why << "\n\n" << kUsage;
  std::exit(mlkv::kExitBadInput);
}

struct Args {
  std::string command, hf, config, out, ckpt, merge, compat, dtype = "fp32",
                                     tokenizer_from = mlkv::convert::kBundledTokenizer;
  bool widen_mlp = false;
  std::vector<std::string> overrides;
};

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) usage_error("missing command (import or export)");
  a.command = argv[1];
  if (a.command == "--help" || a.command == "-h") {
    std::cout << kUsage;
    std::exit(0);
  }
  if (a.command != "import" && a.command != "export") usage_error("unknown command '" + a.command + "'");
  for (int i = 2; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(f + " needs a value");
      return argv[++i];
    };
    const bool imp = a.command == "import";
    if (f == "--help" || f == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else if (f == "--out") {
      a.out = value();
    } else if (imp && f == "--hf") {
      a.hf = value();
    } else if (imp && f == "--config") {
      a.config = value();
    } else if (imp && f == "--merge") {
      a.merge = value();
    } else if (imp && f == "--widen-mlp") {
      a.widen_mlp = true;
    } else if (imp && f == "--compat") {
      a.compat = value();
      if (a.compat != "paper") usage_error("--compat takes 'paper', got '" + a.compat + "'");
    } else if (imp && f == "--set") {
      a.overrides.push_back(value());
    } else if (!imp && f == "--ckpt") {
      a.ckpt = value();
    } else if (!imp && f == "--dtype") {
      a.dtype = value();
      if (a.dtype != "fp32" && a.dtype != "bf16") usage_error("--dtype takes fp32 or bf16, got '" + a.dtype + "'");
    } else if (!imp && f == "--tokenizer-from") {
      a.tokenizer_from = value();
      if (a.tokenizer_from.empty()) usage_error("--tokenizer-from needs a file, a directory or gpt-neox-20b");
    } else if (!imp && f == "--no-tokenizer") {
      a.tokenizer_from.clear();
    } else {
      usage_error("unknown option '" + f + "' for " + a.command);
    }
  }
  if (a.out.empty()) usage_error("--out is required");
  if (a.command == "import" && (a.hf.empty() || a.config.empty())) usage_error("import needs --hf and --config");
  if (a.command == "export" && a.ckpt.empty()) usage_error("export needs --ckpt");
  return a;
}

int run_import(const Args& a) {
  using namespace mlkv;
  std::vector<std::string> overrides = a.overrides;
  // Command-line conversion options become config keys, so the checkpoint records what was done.
  if (!a.merge.empty()) overrides.push_back("kv.merge=" + a.merge);
  if (a.widen_mlp) overrides.push_back("kv.widen_mlp=true");
  if (!a.compat.empty()) overrides.push_back("kv.rope_shared_keys=false");
  Config target = load_config(a.config, overrides);

  convert::ImportOptions opt;
  opt.compat_paper = a.compat == "paper";
  const convert::HfSource src(a.hf);  // checks every tensor against config.json before anything else
  convert::reconcile_target(src.config(), target, opt);
  const ModelSpec spec = target.spec();
  const convert::Converter conv(src, spec, convert::parse_merge(target.kv.merge));
  std::cout << convert::describe_import(src.config(), src.weights(), target) << std::flush;
  const std::string path = convert::write_init_checkpoint(a.out, target, conv);
  convert::record_hf_source(a.out, a.hf);  // token ids + generation config, for a later export
  std::cout << "wrote:      " << path << "  (step 0; train from it with --set train.init_from=" << a.out << ")\n";
  return 0;
}

int run_export(const Args& a) {
  using namespace mlkv;
  const convert::OpenedCheckpoint ck = convert::open_checkpoint(a.ckpt);
  convert::ExportOptions opt;
  opt.dtype = a.dtype == "bf16" ? safetensors::DType::BF16 : safetensors::DType::F32;
  opt.tokenizer_from = a.tokenizer_from;
  opt.source = convert::find_hf_source(ck.dir, ck.config);
  std::cout << "checkpoint: " << ck.dir << "\n" << convert::export_hf(*ck.weights, a.out, opt);
  if (!convert::exports_as_plain_gpt_neox(ck.config.spec()))
    std::cout << "load with:  AutoModelForCausalLM.from_pretrained(\"" << a.out << "\", trust_remote_code=True)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    return a.command == "import" ? run_import(a) : run_export(a);
  } catch (const mlkv::Error& e) {
    std::cerr << "mlkv-convert: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "mlkv-convert: internal error: " << e.what() << "\n";
    return mlkv::kExitFailure;
  }
}
