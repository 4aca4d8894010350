// mlkv-train: the trainer's command line (core/trainer.h does the work).
//
//   mlkv-train CONFIG [--set section.key=value ...] [--resume auto|PATH]
//   mlkv-train --print-config CONFIG [--set ...]     resolved TOML + derived facts (KV plan, sizes)
//   mlkv-train --config-doc                          Markdown reference of every config key
//
// Exit codes (core/errors.h): 0 done, 1 runtime failure, 2 bad input (config, command line, data,
// checkpoint), 3 stopped by SIGTERM/SIGUSR1/SIGINT after writing a checkpoint (requeue and run
// again with --resume auto), 4 stopped after train.max_bad_steps non-finite steps in a row,
// 5 a collective unfinished after parallel.comm_timeout_s (another rank died or hangs).
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/config_print.h"
#include "core/errors.h"
#include "core/logging.h"
#include "core/signals.h"
#include "core/trainer.h"
#include "parallel/context.h"

namespace {

constexpr const char* kUsage =
    "usage: mlkv-train CONFIG [--set section.key=value ...] [--resume auto|PATH]\n"
    "       mlkv-train --print-config CONFIG [--set section.key=value ...]\n"
    "       mlkv-train --config-doc\n"
    "\n"
    "  --set k=v       override any config key (repeatable; e.g. --set optim.lr=3e-4)\n"
    "  --resume auto   continue from the newest complete checkpoint in checkpoint.dir (fresh if none)\n"
    "  --resume PATH   continue from a checkpoint step directory, or a run's checkpoint directory\n"
    "  --print-config  print the resolved config and what it implies, then exit\n"
    "  --config-doc    print the documentation of every config key (Markdown), then exit\n"
    "\n"
    "exit codes: 0 done | 1 runtime failure | 2 bad input | 3 preempted (checkpoint written) |\n"
    "            4 too many non-finite steps (checkpoint written) | 5 another rank died or hangs\n";

[[noreturn]] void usage_error(const std::string& why) {
  std::cerr << "mlkv-train: " << why << "\n\n" << kUsage;
  std::exit(mlkv::kExitBadInput);
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything else: a SIGTERM/SIGUSR1 while the config, data or a checkpoint is still being
  // read is then a stop request that the first step honours (checkpoint, exit 3), not a silent kill.
  mlkv::signals::install();
  std::string config_file, resume;
  std::vector<std::string> overrides;
  bool print_config = false, config_doc = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) usage_error(std::string(flag) + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--set") {
      overrides.push_back(value("--set"));
    } else if (a.rfind("--set=", 0) == 0) {
      overrides.push_back(a.substr(6));
    } else if (a == "--resume" || a.rfind("--resume=", 0) == 0) {
      const std::string r = a == "--resume" ? value("--resume") : a.substr(9);
      // The last one wins, as with --set; two different ones are most likely a mistake.
      if (!resume.empty() && r != resume)
        mlkv::log::warn("--resume given twice (" + resume + ", then " + r + "): using " + r);
      resume = r;
    } else if (a == "--print-config") {
      print_config = true;
    } else if (a == "--config-doc") {
      config_doc = true;
    } else if (a.rfind("-", 0) == 0) {
      usage_error("unknown option " + a);
    } else if (config_file.empty()) {
      config_file = a;
    } else {
      usage_error("more than one config file (" + config_file + ", " + a + ")");
    }
  }
  try {
    if (config_doc) {
      std::cout << mlkv::config_doc_markdown();
      return 0;
    }
    if (config_file.empty()) usage_error("no config file given");
    mlkv::Config cfg = mlkv::load_config(config_file, overrides);
    if (print_config) {
      std::cout << mlkv::config_to_toml(cfg) << "\n" << mlkv::describe_config(cfg);
      return 0;
    }
    mlkv::TrainerOptions opt;
    opt.config = cfg;
    opt.resume = resume;
    const mlkv::TrainResult r = mlkv::train(opt);
    return r.exit_code;
  } catch (const mlkv::Error& e) {
    // In a multi-rank job the other ranks may wait in a collective: end them all with this code.
    mlkv::log::error(e.what());
    mlkv::parallel::abort_job(e.exit_code());
  } catch (const std::exception& e) {
    mlkv::log::error(std::string("unexpected failure: ") + e.what());
    mlkv::parallel::abort_job(mlkv::kExitFailure);
  }
}
