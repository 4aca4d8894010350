#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, then CTest (GPU tests skip
# themselves without a GPU; the MPI tests run on the CPU backend under mpirun).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bash scripts/setup.sh
# The interop tests (transformers, lm-eval, TensorBoard) run in a PyPI venv; under CI=true they fail
# without it, so CI always makes (or reuses) it. Elsewhere a failed venv only makes them skip.
if MLKV_PYTHON=$(bash scripts/python_env.sh); then export MLKV_PYTHON
elif [ "${CI:-}" = true ]; then echo "test.sh: scripts/python_env.sh failed" >&2; exit 1
else echo "test.sh: no Python venv; the interop tests skip" >&2
fi
# The figures' tests run scripts/plot.py under Debian's python3 + matplotlib (setup.sh installs it),
# which a pyenv or venv python3 ahead on PATH may hide: name it. Under CI=true it must exist.
if MLKV_PLOT_PYTHON=$(bash scripts/plot_python.sh); then export MLKV_PLOT_PYTHON
elif [ "${CI:-}" = true ]; then echo "test.sh: no python3 with matplotlib" >&2; exit 1
fi
cd "$BUILD"
ctest --output-on-failure -j"${JOBS:-$(nproc)}" --timeout 900
