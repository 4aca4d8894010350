#!/usr/bin/env bash
# Installs what is missing (Debian packages only) and builds mlkv-train into $BUILD (default build/).
# Idempotent: packages already present are not touched; a configured build is reused.
#   BUILD=build  MLKV_CUDA=ON|OFF (default: ON when nvcc is found)  JOBS=N
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}

packages=(build-essential cmake ninja-build pkg-config libopenmpi-dev openmpi-bin libhdf5-dev
          libtomlplusplus-dev nlohmann-json3-dev libgtest-dev
          python3 python3-matplotlib)  # scripts/plot.py: the loss plots and every figure
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# nvcc lives outside PATH on many machines.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
cuda_flag=()
[ -n "${MLKV_CUDA:-}" ] && cuda_flag=(-DMLKV_CUDA="$MLKV_CUDA")
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}" >"$BUILD.cmake.log" 2>&1 ||
  { cat "$BUILD.cmake.log"; exit 1; }
ninja -C "$BUILD" -j"$JOBS"
echo "setup: built into $BUILD/ (executables in $BUILD/bin)"
