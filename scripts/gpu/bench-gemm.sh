#!/usr/bin/env bash
# Issue #5 on the GPU machine, in one call: the cuBLASLt correctness check, torch.matmul on the
# LLaMA3-8B GEMM shapes, then our bench (cuBLASLt vs burn, with ratios to torch). Run from the
# repository root. Everything lands in OUT (6 files); copy the two gemm-*.json into bench/results/.
# Usage: [GIT_COMMIT=...] scripts/gpu/bench-gemm.sh XTASK OUT
set -uo pipefail
XTASK=$1 OUT=$2
mkdir -p "$OUT"
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}

source "$(dirname "$0")/cublaslt-path.sh"

"$XTASK" bench gemm --check 2>&1 | tee "$OUT/check.log"
check=${PIPESTATUS[0]}

"$XTASK" bench gemm --list-shapes "$OUT/shapes.json" || exit 1
PYTHONUNBUFFERED=1 python3 scripts/bench_gemm_torch.py --shapes "$OUT/shapes.json" \
  --output-dir "$OUT" 2>&1 | tee "$OUT/torch.log"
torch_json=$(ls -t "$OUT"/gemm-torch-*.json 2>/dev/null | head -n 1)

"$XTASK" bench gemm ${torch_json:+--torch "$torch_json"} --output-dir "$OUT" 2>&1 \
  | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

echo "check exit $check, bench exit $bench"
[ "$check" -eq 0 ] && [ "$bench" -eq 0 ]
