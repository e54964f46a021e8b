#!/usr/bin/env bash
# The dense LoRA run of docs/results.md on the GPU machine (see docs/gpu.md for how the binary,
# the GGUF and the data get there). A short probe measures the step time, so the real run's step
# count fits the time this call has; then train, keep the adapter, evaluate it.
# Usage: scripts/gpu/smollm2-dense.sh XTASK DATA_ROOT OUT TRAIN_SECONDS
set -euo pipefail
XTASK=$1 DATA=$2 OUT=$3 TRAIN_S=$4
TASKS=boolq,piqa,social_i_qa,winogrande,ARC-Easy,ARC-Challenge,openbookqa
COMMON=(--model smollm2-135m --backend cuda --data "$DATA/commonsense_train.jsonl"
        --config configs/train/smollm2-135m-csr.toml --pad-to-multiple-of 64)

nvidia-smi --query-gpu=memory.used --format=csv,noheader -l 1 > "$OUT/gpu-mem.csv" &
"$XTASK" finetune "${COMMON[@]}" --max-steps 12 --eval-tasks none --output /tmp/probe \
  > "$OUT/probe.log" 2>&1
STEPS=$(python3 - "$TRAIN_S" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open("/tmp/probe/metrics.jsonl")]
t = statistics.median(r["step_time_s"] for r in rows[4:])
print(max(50, min(3000, int(float(sys.argv[1]) / t) // 50 * 50)))
PY
)
echo "probe: $(wc -l < /tmp/probe/metrics.jsonl) steps; training $STEPS steps"
time "$XTASK" finetune "${COMMON[@]}" --max-steps "$STEPS" --eval-tasks none --output /tmp/run \
  2>&1 | tee "$OUT/train.log" | grep -v '^\s*$' | tail -n 5
cp /tmp/run/metrics.jsonl /tmp/run/loss.png "$OUT/"
tar cf "$OUT/adapter.tar" -C /tmp/run adapter
time "$XTASK" eval --model smollm2-135m --backend cuda --adapter /tmp/run/adapter --task "$TASKS" \
  --limit 150 --data-dir "$DATA" --batch-size 150 --json "$OUT/eval-after-150.json" \
  2>&1 | tee "$OUT/eval.log" | tail -n 15
