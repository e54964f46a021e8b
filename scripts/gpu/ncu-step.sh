#!/usr/bin/env bash
# Per-kernel device times of one `bench step` training step under Nsight Compute (issue #9 item 4,
# issue #10's per-op table). Unlike profile-step.sh (cubecl's logger, which synchronises around
# each cubecl kernel and cannot see the cuBLASLt GEMMs), ncu times every kernel on the GPU, the
# GEMMs included, with only `gpu__time_duration` collected (one pass, no replay). ncu serialises
# the launches, so host overhead and overlap are not in these figures, and the cuBLASLt
# autotuning of the warm-up runs under ncu too (its choices may differ from an unprofiled run).
#
# Only the one step `bench step --cuda-profiler-step` runs last, inside a profiler range, is
# profiled (the warm-up's thousands of kernels and autotuning pass through unprofiled).
#
# Usage: [MODEL=llama3-8b] scripts/gpu/ncu-step.sh XTASK OUT RUN...
# A RUN is `dense:<workload>` or `sparse:<workload>:<config.toml>`. Writes OUT/ncu-<run>.txt (the
# summary of scripts/gpu/ncu-summary.py) and OUT/ncu-<run>.csv.gz (every kernel).
set -uo pipefail
XTASK=$(realpath "$1") OUT=$(realpath "$2")
shift 2
MODEL=${MODEL:-llama3-8b}
here=$(dirname "$(realpath "$0")")
source "$here/cublaslt-path.sh"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
work=$(mktemp -d)
status=0
for run in "$@"; do
  IFS=: read -r kind workload config <<<"$run"
  name="${kind}-${workload}-$(basename "${config:-x}" .toml)"
  args=(bench step --model "$MODEL" --workload "$workload" --steps 3 --warmup 5
        --unsynced-steps 0 --output-dir "$work/json")
  if [ "$kind" = sparse ]; then
    args+=(--sparsity "$config" --svd-cache "$work/svd.bin")
    # The random model's SVD factors, built once outside the profiler.
    [ -f "$work/svd.bin" ] || timeout 200 "$XTASK" "${args[@]}" >"$OUT/ncu-$name.svd.out" 2>&1
  fi
  echo "=== ncu $run ==="
  timeout "${RUN_TIMEOUT:-400}" "$NCU" --clock-control none --cache-control none \
      --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base \
      --log-file "$work/ncu-$name.csv" "$XTASK" "${args[@]}" --cuda-profiler-step \
      >"$OUT/ncu-$name.out" 2>&1
  rc=$?
  echo "=== ncu $run: exit $rc ==="
  [ "$rc" -eq 0 ] || status=1
  python3 "$here/ncu-summary.py" "$work/ncu-$name.csv" >"$OUT/ncu-$name.txt" 2>&1
  head -n 45 "$OUT/ncu-$name.txt"
  gzip -c "$work/ncu-$name.csv" >"$OUT/ncu-$name.csv.gz"
done
exit $status
