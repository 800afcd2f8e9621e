#!/usr/bin/env bash
# Run the speed benchmarks on a CUDA GPU, writing benchmarks/results/<name>_cuda.json (the CPU runs write
# <name>.json). Extra arguments go to every script, e.g. `benchmarks/gpu.sh --pool 10000`.
# Needs the CUDA build of torch (see README); fails fast when CUDA is not available.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "CUDA is not available to torch")'
for name in scoring; do
  "$python" "benchmarks/$name.py" --device cuda --out "benchmarks/results/${name}_cuda.json" "$@"
done
