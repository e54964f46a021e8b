#!/usr/bin/env bash
# Issues #9/#10 on the GPU machine, in one call: the peer (PEFT LoRA on PyTorch) and our
# `bench step` on the same workloads, so that every ratio comes from one lease. Run from the
# repository root. Each run is time-boxed; results (JSON) and logs are packed into OUT/step.tgz.
#
# Usage: [GIT_COMMIT=...] [STEPS=50] [WARMUP=20] [UNSYNCED=10] \
#        scripts/gpu/bench-step.sh XTASK PEER_DIR OUT RUN...
# A RUN is `peft:<workload>`, `dense:<workload>` or `sparse:<workload>:<config.toml>`, optionally
# prefixed with `env=VAR=value,` (e.g. `env=SPARSELORA_STREAM_ORDER=0,dense:csr`); the model is
# $MODEL (default llama3-8b). With SVD_CACHE=FILE the sparse runs share one file of SVD factors
# (`--svd-cache`: the random model's factors are built by the first sparse run only), and each
# measures the estimator's end-to-end cost (`--estimator-overhead`: STEPS more pairs of steps). With
# HOST_PROFILE=1 each of our runs also writes a host profile (`--host-profile`, docs/perf.md) into
# the archive; the binary must keep its symbol table (not `strip`ped) for readable names. OURS_ARGS
# adds arguments to each of our runs (e.g. `--lora-targets q,k,v,o,gate,up,down`), PEER_ARGS to
# the peer's (e.g. `--targets all`).
# Each run's SM clock, power and the driver's clock-event reasons are sampled every 200 ms by
# `nvidia-smi` (read only: the card's settings are left alone) into `<run>.clocks.csv`, and
# summarised after the run (docs/perf.md: the gap between a step's wall time and its kernels).
set -uo pipefail
XTASK=$1 PEER=$2 OUT=$3
shift 3
MODEL=${MODEL:-llama3-8b} STEPS=${STEPS:-50} WARMUP=${WARMUP:-20} UNSYNCED=${UNSYNCED:-10}
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}
source "$(dirname "$0")/cublaslt-path.sh"
work=$(mktemp -d)
CLOCK_QUERY=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$CLOCK_QUERY --format=csv,noheader >/dev/null 2>&1 ||
  CLOCK_QUERY=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu

# Median SM clock (MHz) and power (W) over the busy samples of one run (drawing over 300 W: the
# steps, not the model's build), max temperature and the event-reason masks seen.
clock_summary() {
  [ -s "$1" ] || return 0
  local median='{ v[NR] = $1 } END { printf "%d", v[int((NR + 1) / 2)] }'
  local sm pw
  sm=$(awk -F', *' '$4 + 0 > 300 { print $2 + 0 }' "$1" | sort -n)
  pw=$(awk -F', *' '$4 + 0 > 300 { print $4 + 0 }' "$1" | sort -n)
  printf 'clocks: %d busy samples, SM median %s MHz (min %s, max %s), power median %s W, max temp %s C, reasons:%s\n' \
    "$(grep -c . <<<"$sm")" "$(awk "$median" <<<"$sm")" "$(head -n1 <<<"$sm")" "$(tail -n1 <<<"$sm")" \
    "$(awk "$median" <<<"$pw")" "$(awk -F', *' '$5 + 0 > t { t = $5 + 0 } END { print t }' "$1")" \
    "$(awk -F', *' '$4 + 0 > 300 { r[$6]++ } END { for (k in r) printf " %s x%d", k, r[k] }' "$1")"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$work/gpu.txt"

status=0
for run in "$@"; do
  envs=()
  if [[ $run == env=* ]]; then
    spec=${run#env=}
    envs=("${spec%%,*}")
    run=${spec#*,}
  fi
  IFS=: read -r kind workload config <<<"$run"
  log="$work/${kind}-${workload}-$(basename "${config:-x}" .toml)${envs:+-${envs[0]%%=*}}.log"
  echo "=== $run ${envs[*]:-} ==="
  case $kind in
    peft)
      cmd=(python3 "$PEER/peft_lora_bench.py" --model "$MODEL" --workload "$workload"
           --steps "$STEPS" --warmup "$WARMUP" --json "$work/peft.jsonl")
      # shellcheck disable=SC2206 # PEER_ARGS is split into words on purpose
      cmd+=(${PEER_ARGS:-}) ;;
    dense)
      cmd=("$XTASK" bench step --model "$MODEL" --workload "$workload" --steps "$STEPS"
           --warmup "$WARMUP" --unsynced-steps "$UNSYNCED" --breakdown --output-dir "$work") ;;
    sparse)
      cmd=("$XTASK" bench step --model "$MODEL" --workload "$workload" --sparsity "$config"
           --steps "$STEPS" --warmup "$WARMUP" --unsynced-steps "$UNSYNCED" --breakdown
           --estimator-overhead --output-dir "$work" ${SVD_CACHE:+--svd-cache "$SVD_CACHE"}) ;;
    *) echo "unknown run $run"; status=1; continue ;;
  esac
  if [ "$kind" != peft ] && [ -f "$work/peft.jsonl" ]; then cmd+=(--peft "$work/peft.jsonl"); fi
  # shellcheck disable=SC2206 # OURS_ARGS is split into words on purpose
  if [ "$kind" != peft ] && [ -n "${OURS_ARGS:-}" ]; then cmd+=($OURS_ARGS); fi
  if [ "$kind" != peft ] && [ -n "${HOST_PROFILE:-}" ]; then
    cmd+=(--host-profile "${log%.log}.host-profile.txt")
  fi
  nvidia-smi --query-gpu=$CLOCK_QUERY --format=csv,noheader -lms 200 >"${log%.log}.clocks.csv" 2>/dev/null &
  sampler=$!
  env "${envs[@]}" PYTHONUNBUFFERED=1 timeout "${RUN_TIMEOUT:-240}" "${cmd[@]}" 2>&1 | tee "$log" | tail -n 25
  rc=${PIPESTATUS[0]}
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  clock_summary "${log%.log}.clocks.csv" | tee -a "$log"
  echo "=== $run: exit $rc ==="
  [ "$rc" -eq 0 ] || status=1
done

echo "=== summary ==="
grep -h -E '^(llama|smollm|tiny).*median' "$work"/*.log || true
grep -h -E 'ms/step|\[bench\]' "$work"/peft-*.log 2>/dev/null | tail -n 8 || true
tar czf "$OUT/step.tgz" -C "$work" .
exit $status
