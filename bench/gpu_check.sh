#!/usr/bin/env bash
# Everything a lent GPU should check and time, in one run, results under $OUT:
#   1. the kernel and frame-step tests on CUDA (tests/kernels/, tests/model/test_frame_step.py);
#   2. `python -m pomstream.bench.kernels` (layer, context, frame step, streaming, training) -> JSON.
# Runs with the GPU machine's own python3 (torch + triton); pomstream need not be installed
# (bench/gpu_env.sh points python at this checkout).
#   bash bench/gpu_check.sh --sections layer context            # one device call
#   bash bench/gpu_check.sh --sections frame_step streaming train  # another
# Extra arguments go to bench.kernels after a sweep sized for a short device budget (the
# compile column only at 1K and 64K tokens, batch 1: each torch.compile of a row takes
# tens of seconds, so bench.kernels' own full sweep needs far longer).
# GPU_TESTS_TIMEOUT / GPU_BENCH_TIMEOUT (seconds, 0 = none) bound the two parts.
# The JSON is rewritten after every section, so a run cut short keeps what it measured.
# Exit status: the tests' (single failed variants are recorded in the JSON instead).
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch",
torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/gpu.txt"
timeout -k 10 "${GPU_TESTS_TIMEOUT:-0}" python3 -m pytest -q -p no:cacheprovider \
  tests/kernels/test_kernels.py tests/model/test_frame_step.py 2>&1 | tee "$OUT/gpu-tests.txt"
status=${PIPESTATUS[0]}
card=$(python3 -c 'import torch; print(torch.cuda.get_device_name().split()[1].lower())')
# the sweep for a short device budget; arguments given here come after it and win
args=(--tokens 1024 4096 16384 65536 131072 --compile-batches 1 --compile-tokens 1024 65536
      --stream-frames 1000 100 --reps 10 "$@")
timeout -k 10 "${GPU_BENCH_TIMEOUT:-0}" python3 -m pomstream.bench.kernels \
  --json "$OUT/kernels-$card.json" "${args[@]}" 2>&1 | tee "$OUT/kernels-$card.log"
exit "$status"
