#!/usr/bin/env bash
# Issue #10's scaling note on the GPU machine, in one call: `bench step` dense and SparseLoRA over
# sequence lengths (512, 1024, 2048 at batch 8) and batch sizes (4, 16 at 512), csr workload. The
# SVD factors of the random model are built once and reused (`--svd-cache`). Prints a table and
# packs the JSON results into OUT/scaling.tgz.
#
# Usage: [MODEL=llama3-8b] [CONFIG=configs/sparsity/llama3-8b-csr170k.toml] [STEPS=20] [WARMUP=5] \
#        [BACKEND=cuda] scripts/gpu/scaling.sh XTASK OUT
# (MODEL=tiny CONFIG=configs/sparsity/tiny-demo.toml BACKEND=cpu tries it without a GPU.)
set -uo pipefail
XTASK=$1 OUT=$2
MODEL=${MODEL:-llama3-8b} CONFIG=${CONFIG:-configs/sparsity/llama3-8b-csr170k.toml}
STEPS=${STEPS:-20} WARMUP=${WARMUP:-5} BACKEND=${BACKEND:-cuda}
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}
source "$(dirname "$0")/cublaslt-path.sh"
work=$(mktemp -d)
status=0
for shape in 512x8 1024x8 2048x8 512x4 512x16; do
  seq=${shape%x*} batch=${shape#*x}
  for mode in dense sparse; do
    args=(bench step --model "$MODEL" --backend "$BACKEND" --workload csr --seq "$seq" --batch "$batch"
          --steps "$STEPS" --warmup "$WARMUP" --unsynced-steps 0 --output-dir "$work")
    [ "$mode" = sparse ] && args+=(--sparsity "$CONFIG" --svd-cache "$work/svd-factors.safetensors")
    echo "=== $mode seq $seq batch $batch ==="
    timeout "${RUN_TIMEOUT:-180}" "$XTASK" "${args[@]}" 2>&1 | grep -E "median|rror|panic" | tail -n 3
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
done
python3 - "$work" <<'PY'
import glob, json, sys
rows = {}
for path in glob.glob(f"{sys.argv[1]}/step-*.json"):
    d = json.load(open(path))
    rows.setdefault((d["seq"], d["batch"]), {})[d["mode"]] = d
print("| seq | batch | dense ms | sparse ms | sparse / dense | dense GiB | sparse GiB |")
print("|---|---|---|---|---|---|---|")
for (seq, batch), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    d, s = r.get("dense", {}), r.get("sparse", {})
    ratio = (s["median_ms"] / d["median_ms"]) if d and s else float("nan")
    f = lambda x, k: f"{x[k]:.1f}" if x.get(k) is not None else "-"
    print(f"| {seq} | {batch} | {f(d, 'median_ms')} | {f(s, 'median_ms')} | {ratio:.2f} | {f(d, 'peak_memory_gib')} | {f(s, 'peak_memory_gib')} |")
PY
tar czf "$OUT/scaling.tgz" -C "$work" --exclude='*.safetensors' .
exit $status
