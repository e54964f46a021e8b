#!/usr/bin/env bash
# The allocator's size cache (SPARSELORA_ALLOCATION_CACHE=1, docs/gpu.md) against cubecl's default
# pool on the GPU machine, in one call: `check-step` with the cache on (values unchanged), then
# LLaMA3-8B `bench step` math10k and dense csr, each run with and without the cache back to back,
# twice for math10k, with host profiles (cubecl's device thread's CPU time per step) and the
# pool's figures in each JSON (`memory.pool_reserved_gib`: what the cache costs in memory).
# Run from the repository root; results land in OUT/<pair>/ (bench-step.sh's archives) and
# OUT/check-step-cache.log.
# CHECK=0 skips the check-step; PAIRS picks the pairs (default `math-1 dense math-2`, about 7-8
# minutes with the check: split them over two calls when a call also runs other checks, a call
# being limited to 10 minutes).
# Usage: [GIT_COMMIT=...] [CHECK=0] [PAIRS=...] scripts/gpu/allocation-ab.sh XTASK PEER_DIR OUT
set -uo pipefail
XTASK=$1 PEER=$2 OUT=$3
mkdir -p "$OUT"
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}
source "$(dirname "$0")/cublaslt-path.sh"

if [ "${CHECK:-1}" = 1 ]; then
  SPARSELORA_ALLOCATION_CACHE=1 "$XTASK" check-step --backend cuda --model smollm2-135m \
    --random-weights --batch 2 --seq 512 --out-len 64 >"$OUT/check-step-cache.log" 2>&1
  echo "check-step with the cache: exit $?" | tee -a "$OUT/check-step-cache.log"
fi

math=sparse:math:configs/sparsity/llama3-8b-math10k.toml
cache=env=SPARSELORA_ALLOCATION_CACHE=1
pair() {
  local dir=$OUT/$1 run=$2
  mkdir -p "$dir"
  STEPS=${STEPS:-30} WARMUP=${WARMUP:-15} UNSYNCED=${UNSYNCED:-0} HOST_PROFILE=1 \
    SVD_CACHE=${SVD_CACHE:-/tmp/svd-llama3-8b.bin} RUN_TIMEOUT=${RUN_TIMEOUT:-150} \
    "$(dirname "$0")/bench-step.sh" "$XTASK" "$PEER" "$dir" "$run" "$cache,$run" 2>&1 |
    grep -E "^llama.*median|memory|estimator end|exit [^0]|clocks:"
}
for p in ${PAIRS:-math-1 dense math-2}; do
  case $p in
    math-*) pair "$p" "$math" ;;
    dense) pair dense "dense:csr" ;;
    *) echo "unknown pair $p" >&2 ;;
  esac
done
