#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, then CTest (GPU tests skip
# themselves without a GPU; the MPI tests run on the CPU backend under mpirun).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bash scripts/setup.sh
cd "$BUILD"
ctest --output-on-failure -j"${JOBS:-$(nproc)}" --timeout 900
