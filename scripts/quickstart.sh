#!/usr/bin/env bash
# The README's first command: install what is missing, build, and run the main job — uptrain a
# tiny Pythia-shaped model into an MLKV plan on the bundled real text (GPU when there is one,
# otherwise the CPU), ending with a loss plot and a one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD=${BUILD:-build} bash scripts/demo.sh
