#!/usr/bin/env bash
# Prints the interpreter that scripts/plot.py runs under: the first of $MLKV_PLOT_PYTHON, python3 on
# PATH, and Debian's /usr/bin/python3 that imports matplotlib (scripts/setup.sh installs Debian's
# python3-matplotlib; a pyenv or venv python3 ahead on PATH often lacks it). Exit 1, with the reason
# on stderr, when none does.   Usage:  PLOT_PYTHON=$(bash scripts/plot_python.sh)
set -uo pipefail
for py in ${MLKV_PLOT_PYTHON:-} python3 /usr/bin/python3; do
  if command -v "$py" > /dev/null && "$py" -c 'import matplotlib' 2> /dev/null; then
    command -v "$py"
    exit 0
  fi
  [ -n "${MLKV_PLOT_PYTHON:-}" ] && [ "$py" = "$MLKV_PLOT_PYTHON" ] &&
    { echo "plot_python: MLKV_PLOT_PYTHON=$py cannot import matplotlib" >&2; exit 1; }
done
echo "plot_python: no python3 that imports matplotlib (Debian: apt-get install python3-matplotlib," \
     "or set MLKV_PLOT_PYTHON)" >&2
exit 1
