#!/usr/bin/env bash
# Issues #9 item 6 and #10 item 4 on the GPU machine, in one call: SmolLM2-135M-Instruct's real
# weights (SPARSELORA_CACHE must hold the GGUF, see docs/gpu.md), 200 steps of dense LoRA and of
# SparseLoRA (configs/sparsity/smollm2-135m-csr.toml), each on the fast path (cuBLASLt on cubecl's
# stream, fused kernels) and on the reference path (burn ops: SPARSELORA_FUSED=0
# SPARSELORA_CUBLASLT=0), same data order, same adapter initialisation, bf16. Then `check-step`
# on the same weights. Writes OUT/<run>-metrics.jsonl and OUT/*.log.
# Usage: [STEPS=200] scripts/gpu/smollm2-fastpath.sh XTASK OUT
set -uo pipefail
XTASK=$1 OUT=$2 STEPS=${STEPS:-200}
source "$(dirname "$0")/cublaslt-path.sh"
COMMON=(--model smollm2-135m --backend cuda --data datasets/train/commonsense.jsonl
        --config configs/train/smollm2-135m-fastpath.toml --max-steps "$STEPS" --eval-tasks none)
status=0
run() { local name=$1; shift
  local t0=$SECONDS
  timeout "${RUN_TIMEOUT:-150}" env "$@" "${COMMON[@]}" --output "/tmp/fastpath-$name" \
    > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc, $((SECONDS - t0)) s"; grep -v '^\s*$' "$OUT/$name.log" | tail -n 2
  cp "/tmp/fastpath-$name/metrics.jsonl" "$OUT/$name-metrics.jsonl" 2>/dev/null
  [ "$rc" -eq 0 ] || status=1
}
REF=(SPARSELORA_FUSED=0 SPARSELORA_CUBLASLT=0)
SPARSE=(--sparsity configs/sparsity/smollm2-135m-csr.toml)
run dense-fast "$XTASK" finetune
run dense-reference "${REF[@]}" "$XTASK" finetune
run sparse-fast "$XTASK" finetune "${SPARSE[@]}"
run sparse-reference "${REF[@]}" "$XTASK" finetune "${SPARSE[@]}"
timeout 120 "$XTASK" check-step --backend cuda > "$OUT/check-step.log" 2>&1 || status=1
tail -n 8 "$OUT/check-step.log"
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def rows(name):
    try:
        return {r["step"]: r for r in map(json.loads, open(f"{out}/{name}-metrics.jsonl"))}
    except OSError:
        return {}
runs = {n: rows(n) for n in ["dense-fast", "dense-reference", "sparse-fast", "sparse-reference"]}
for kind in ["dense", "sparse"]:
    fast, ref = runs[f"{kind}-fast"], runs[f"{kind}-reference"]
    steps = sorted(set(fast) & set(ref))
    if not steps:
        continue
    diff = [abs(fast[s]["loss"] - ref[s]["loss"]) for s in steps]
    last = steps[-50:]
    mean = lambda r: statistics.mean(r[s]["loss"] for s in last)
    t = lambda r: statistics.median(r[s]["step_time_s"] for s in list(r)[10:])
    print(f"{kind}: {len(steps)} steps, max |loss diff| {max(diff):.4f}, mean {statistics.mean(diff):.4f}; "
          f"last-50 mean loss fast {mean(fast):.4f} reference {mean(ref):.4f}; "
          f"median step fast {t(fast)*1e3:.1f} ms reference {t(ref)*1e3:.1f} ms")
PY
exit $status
