#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment of the interop tests and tools (transformers,
# lm-eval, TensorBoard) and prints its interpreter's path as the last line of stdout; everything
# else goes to stderr.  Usage:  MLKV_PYTHON=$(bash scripts/python_env.sh)
#   MLKV_VENV=DIR            where the venv lives (default ~/.cache/mlkv-train/venv, kept between runs)
#   MLKV_VENV_RECHECK_H=24   hours before PyPI is asked again for newer releases (0: every run)
#   MLKV_VENV_OFFLINE=1      never touch the network: use the venv as it is, or fail
# Packages come from PyPI at their current releases, unpinned, so breakage in a new transformers
# shows up here instead of hiding behind an old pin.
#
# torch is PyPI's default Linux wheel with its CUDA wheels (~3 GB installed). A CPU-only torch is not
# on PyPI, and the default wheel with `--no-deps` does not import: libtorch links libcufile,
# libcusparseLt, libnvshmem and the CUDA runtime directly, and a system CUDA toolkit does not stand
# in for them (torch 2.15 against CUDA 13.0's NCCL: undefined symbol ncclCommResume).
set -euo pipefail
venv=${MLKV_VENV:-$HOME/.cache/mlkv-train/venv}
recheck_h=${MLKV_VENV_RECHECK_H:-24}
packages=(torch transformers safetensors "lm-eval[hf]" tensorboard numpy)
imports="import torch, transformers, safetensors, lm_eval, accelerate, tensorboard, numpy"
stamp=$venv/.mlkv-python-env   # touched after a successful install or upgrade
log() { echo "python_env: $*" >&2; }

works() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$imports" 2>/dev/null; }
fresh() { [ -f "$stamp" ] && [ -n "$(find "$stamp" -mmin "-$((recheck_h * 60))" 2>/dev/null)" ]; }

if works && { fresh || [ "${MLKV_VENV_OFFLINE:-0}" = 1 ]; }; then
  log "reusing $venv"
elif [ "${MLKV_VENV_OFFLINE:-0}" = 1 ]; then
  log "MLKV_VENV_OFFLINE=1 but $venv is missing or broken"; exit 1
else
  if [ ! -x "$venv/bin/python" ]; then
    base=$(command -v python3) || { log "python3 not found (Debian: apt-get install python3-venv)"; exit 1; }
    log "creating $venv from $base"
    mkdir -p "$(dirname "$venv")"
    "$base" -m venv "$venv" >&2 || { log "python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
  fi
  start=$SECONDS
  log "installing/upgrading ${packages[*]} from PyPI (the first time takes minutes)"
  # --upgrade with the default only-if-needed strategy: the named packages move to their newest
  # release, their dependencies only when required; an up-to-date venv downloads nothing.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "${packages[@]}" >&2
  works || { log "the venv does not import ($imports)"; "$venv/bin/python" -c "$imports" >&2; exit 1; }
  touch "$stamp"
  log "ready after $((SECONDS - start)) s: $("$venv/bin/python" -c 'import torch, transformers, lm_eval, tensorboard
print(f"torch {torch.__version__}, transformers {transformers.__version__}, lm-eval {lm_eval.__version__}, tensorboard {tensorboard.__version__}")')"
fi
echo "$venv/bin/python"
