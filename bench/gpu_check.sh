#!/usr/bin/env bash
# Everything a lent GPU should check and time, in one run, results under $OUT:
#   1. the kernel and frame-step tests on CUDA (tests/test_kernels.py, test_frame_step.py);
#   2. `python -m bench.kernels` (layer, context, frame step, streaming, training) -> JSON.
# Runs with the GPU machine's own python3 (torch + triton; nothing else needed).
#   bash bench/gpu_check.sh                      # the full benchmark
#   bash bench/gpu_check.sh --tokens 1024 16384 65536 --stream-frames 1000 100
# Extra arguments go to bench.kernels. Exit status: the tests' (the benchmark records
# failures of single variants in its JSON instead of stopping).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_frame_step.py \
  2>&1 | tee "$OUT/gpu-tests.txt"
status=${PIPESTATUS[0]}
card=$(python3 -c 'import torch; print(torch.cuda.get_device_name().split()[1].lower())')
python3 -m bench.kernels --json "$OUT/kernels-$card.json" "$@" 2>&1 | tee "$OUT/kernels-$card.log"
exit "$status"
