// lm-evaluation-harness on an export, offline (issue 16 item 4): a tiny MLKV model trained here is
// exported, `lm_eval --model hf` runs the local tasks of tests/convert/lm_eval_task (one multiple
// choice, one loglikelihood) with HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1, and every logged
// sample's loglikelihood must equal the one computed from `mlkv-eval --dump-logits` on the
// checkpoint (1e-4 absolute, fp32; tests/convert/check_lm_eval.py). Skipped without the venv
// (tests/hf/python_env.h), failed under CI=true.
#include <gtest/gtest.h>

#include "../hf/python_env.h"
#include "convert_test_util.h"

namespace mlkv {
namespace {

using test::python;

TEST(LmEval, LocalTasksOnATrainedExportMatchOurLoglikelihoods) {
  MLKV_REQUIRE_PYTHON("torch, transformers, lm_eval, accelerate, datasets, numpy");
  const std::string dir = test::scratch_dir("lm_eval");
  const std::string bin = std::string(MLKV_BINARY_DIR) + "/bin/", src = MLKV_SOURCE_DIR;
  const std::string tasks = src + "/tests/convert/lm_eval_task";
  auto sh = [&](const std::string& cmd) { return test::shell_step(dir, cmd); };
  // 20 CPU steps of the demo's MLKV-2 plan (owners 0, 2; one KV head) on the bundled text.
  if (!sh(bin + "mlkv-train " + src + "/configs/tiny/tiny_mlkv.toml --set train.steps=20 --set train.seq_len=64"
          " --set train.micro_batch=4 --set train.eval_interval=0 --set train.backend=cpu --set optim.warmup_steps=2"
          " --set data.path=" + src + "/data/demo/train --set data.val_path=" + src + "/data/demo/val"
          " --set checkpoint.dir=" + dir + "/ckpt --set log.dir=" + dir + "/log --set log.tensorboard=false"))
    return;
  if (!sh(bin + "mlkv-convert export --ckpt " + dir + "/ckpt --out " + dir + "/hf")) return;
  // The task YAMLs name their data files relative to the directory lm_eval runs in. HF_HOME keeps
  // the datasets cache out of ~/.cache, so nothing from an earlier run (or the hub) can stand in.
  const std::string offline = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=" + dir + "/hf_home ";
  if (!sh("cd " + tasks + " && " + offline + python() + " -m lm_eval --model hf --model_args pretrained=" + dir +
          "/hf,trust_remote_code=True,dtype=float32 --device cpu --batch_size 1 --tasks mlkv_choice,mlkv_loglik"
          " --include_path . --log_samples --output_path " + dir + "/lm_eval"))
    return;
  const std::string table = test::read_text(dir + "/step.log");
  EXPECT_NE(table.find("|mlkv_choice|"), std::string::npos) << table;
  EXPECT_NE(table.find("|mlkv_loglik|"), std::string::npos) << table;
  if (!sh(python() + " " + src + "/tests/convert/check_lm_eval.py --samples " + dir + "/lm_eval --export " + dir +
          "/hf --mlkv-eval " + bin + "mlkv-eval --ckpt " + dir + "/ckpt --task-dir " + tasks))
    return;
  const std::string check = test::read_text(dir + "/step.log");
  EXPECT_NE(check.find("ok: 18 loglikelihoods"), std::string::npos) << check;
  const size_t summary = table.rfind("hf (");  // lm_eval's results table
  std::cout << (summary == std::string::npos ? table : table.substr(summary)) << check;
}

}  // namespace
}  // namespace mlkv
