#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): ADM-64 train-step img/s in bf16 / fp16, eager and compiled, guided
# DDIM-25 sampling img/s at batch 64, peak memory, bf16-vs-fp32 agreement; one table, a few minutes on one GPU.
#   bash benchmarks/gpu_check.sh              # on the first CUDA device (CPU with tiny sizes if there is none)
#   bash benchmarks/gpu_check.sh --no-compile # skip the compiled variants
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
