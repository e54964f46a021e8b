#!/usr/bin/env bash
# Per-kernel profile of `bench step` on the GPU machine (issue #9 item 4, issue #10's per-op
# table): cubecl's profiling logger synchronises around every cubecl kernel and sums the device
# time per kernel name; each synchronisation of the step prints the table of what ran since the
# previous one. cuBLASLt GEMMs run in closures on cubecl's stream and are not in the table (their
# time is `bench gemm`'s). Also logs cubecl's memory pages (`[memory.logger] basic`).
#
# Usage: [MODEL=llama3-8b] scripts/gpu/profile-step.sh XTASK OUT RUN...
# A RUN is `dense:<workload>` or `sparse:<workload>:<config.toml>`. Writes OUT/profile-*.txt (the
# per-step summary of scripts/gpu/profile-summary.py; NORMS_PER_STEP=65 suits 32-layer models) and
# the gzipped logs.
set -uo pipefail
XTASK=$(realpath "$1") OUT=$(realpath "$2")
shift 2
MODEL=${MODEL:-llama3-8b}
root=$(pwd)
source "$(dirname "$0")/cublaslt-path.sh"
work=$(mktemp -d)
cat >"$work/cubecl.toml" <<'TOML'
[profiling.logger]
level = "basic"
file = "cubecl-profile.log"
append = true

[memory.logger]
level = "basic"
file = "cubecl-memory.log"
append = true
TOML
status=0
for run in "$@"; do
  IFS=: read -r kind workload config <<<"$run"
  name="${kind}-${workload}-$(basename "${config:-x}" .toml)"
  args=(bench step --model "$MODEL" --workload "$workload" --steps 2 --warmup 2
        --unsynced-steps 0 --output-dir "$work/json")
  [ "$kind" = sparse ] && args+=(--sparsity "$root/$config")
  echo "=== profile $run ==="
  (cd "$work" && rm -f cubecl-profile.log cubecl-memory.log &&
   timeout "${RUN_TIMEOUT:-300}" "$XTASK" "${args[@]}" >"$OUT/profile-$name.out" 2>&1)
  rc=$?
  tail -n 5 "$OUT/profile-$name.out"
  python3 "$root/scripts/gpu/profile-summary.py" "$work/cubecl-profile.log" "${NORMS_PER_STEP:-65}" \
    >"$OUT/profile-$name.txt" 2>&1
  gzip -c "$work/cubecl-profile.log" >"$OUT/profile-$name.log.gz" 2>/dev/null
  gzip -c "$work/cubecl-memory.log" >"$OUT/memory-$name.log.gz" 2>/dev/null
  echo "=== $run: exit $rc ==="
  [ "$rc" -eq 0 ] || status=1
done
exit $status
