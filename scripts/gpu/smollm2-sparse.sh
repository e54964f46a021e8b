#!/usr/bin/env bash
# Issue #4 items 6-7 on the GPU machine in one call (see docs/gpu.md for how the binary, the GGUF
# and the data get there): the dense adapter's evaluation, its sensitivity table and proposed
# config, SparseLoRA training with that config for the same data and steps as the dense run, its
# evaluation, and a short dense run in the same call for the wall-clock ratio. Every stage has a
# time limit so the results are packed whatever happens.
# Usage: scripts/gpu/smollm2-sparse.sh XTASK DATA_ROOT DENSE_ADAPTER OUT [STEPS]
set -uo pipefail
XTASK=$1 DATA=$2 DENSE=$3 OUT=$4 STEPS=${5:-600}
R=/tmp/results && mkdir -p $R
TASKS=boolq,piqa,social_i_qa,winogrande,ARC-Easy,ARC-Challenge,openbookqa
COMMON=(--model smollm2-135m --backend cuda --data "$DATA/commonsense_train.jsonl"
        --config configs/train/smollm2-135m-csr.toml --pad-to-multiple-of 64 --eval-tasks none)
EVAL=(--model smollm2-135m --backend cuda --task "$TASKS" --limit 150 --data-dir "$DATA"
      --batch-size 150)
# The comparison runs burn's matmul (the reference path); cuBLASLt gets a timing run of its own.
export SPARSELORA_CUBLASLT=0
nvidia-smi --query-gpu=memory.used --format=csv,noheader -l 1 > $R/gpu-mem.csv &

stage() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$R/$name.log" 2>&1; local rc=$?
  echo "== $name: exit $rc, $((SECONDS - t0)) s"; grep -v '^\s*$' "$R/$name.log" | tail -n 4; }

stage eval-dense 60 "$XTASK" eval "${EVAL[@]}" --adapter "$DENSE" --json $R/eval-dense.json
# heldout.jsonl: 256 records drawn at random (seed 7) from the training file, so all five
# sources are represented; 128 of them, two ratios per block, keep the sweep to ~120 passes.
stage sensitivity 170 "$XTASK" sensitivity --model smollm2-135m --backend cuda --adapter "$DENSE" \
  --data "$DATA/heldout.jsonl" --held-out 128 --batch-size 32 --pad-to-multiple-of 64 \
  --mlp-ratios 0.9,0.97 --attn-ratios 0.5,0.75 --budget 0.75 --output $R/sensitivity
CONFIG=$R/sensitivity/proposed.toml
[ -f "$CONFIG" ] || { CONFIG=configs/sparsity/smollm2-135m-csr.toml; echo "no proposal: using $CONFIG"; }
stage train-sparse 270 "$XTASK" finetune "${COMMON[@]}" --max-steps "$STEPS" --sparsity "$CONFIG" \
  --output /tmp/sparse
cp /tmp/sparse/metrics.jsonl $R/metrics-sparse.jsonl 2>/dev/null
cp "$CONFIG" $R/sparsity-used.toml
# A run stopped by its time limit is evaluated at its last checkpoint.
ADAPTER=/tmp/sparse/adapter
[ -d $ADAPTER ] || ADAPTER=/tmp/sparse/$(cat /tmp/sparse/latest 2>/dev/null)
echo "evaluating $ADAPTER"
stage eval-sparse 45 "$XTASK" eval "${EVAL[@]}" --adapter "$ADAPTER" --json $R/eval-sparse.json
stage train-dense-timing 45 "$XTASK" finetune "${COMMON[@]}" --max-steps 60 --output /tmp/dense
cp /tmp/dense/metrics.jsonl $R/metrics-dense-60.jsonl 2>/dev/null
kill %1 2>/dev/null
python3 - <<'PY'
import json, statistics
def steps(path):
    try: return [json.loads(l) for l in open(path)]
    except OSError: return []
sp = [r["step_time_s"] for r in steps("/tmp/results/metrics-sparse.jsonl") if r.get("sparse")][10:]
de = [r["step_time_s"] for r in steps("/tmp/results/metrics-dense-60.jsonl")][10:]
fl = [r["flops_ratio"] for r in steps("/tmp/results/metrics-sparse.jsonl") if r.get("sparse")]
es = [r["estimator_s"] / r["step_time_s"] for r in steps("/tmp/results/metrics-sparse.jsonl") if r.get("estimator_s")]
if es:
    print(f"estimator share of timed sparse steps: median {100 * statistics.median(es):.1f}%")
if sp and de:
    print(f"median step: sparse {statistics.median(sp):.3f} s, dense {statistics.median(de):.3f} s, "
          f"wall-clock ratio {statistics.median(sp)/statistics.median(de):.2f}, "
          f"FLOPs ratio {statistics.median(fl):.3f}")
PY
tar czf "$OUT/results.tgz" -C /tmp results
