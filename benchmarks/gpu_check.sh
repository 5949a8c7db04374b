#!/usr/bin/env bash
# The GPU checks of the speed path, as one prepared run (≤ 8 minutes on one GPU): images/s of the
# ImageNet-64 ADM configuration in fp32/fp16/bf16, channels_last and compiled at batch 64/256, the
# skip-tuning overhead on the GPU, the demo's proxy FID in fp16 vs fp32, and a Stable Diffusion 1.5
# sized UNet's guided images/s (CFG pair as one batch, fp16) with its VAE decode. Prints one table.
#   bash benchmarks/gpu_check.sh            # on a GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --quick    # a small network: a smoke run anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec timeout 480 "$PYTHON" -u benchmarks/gpu_speed.py "$@"
