#!/usr/bin/env bash
# A/B of two tern builds or configurations at steady load, in one run: the variants alternate
# (A, B, A, B, …) so background load drifts over both alike, each cell a fresh server and one
# `tern-bench steady` run (loopback, bounded in time). Prints one JSON line per cell and, at the
# end, the medians and ranges per variant (`tern-bench`'s own fields).
#
#   scripts/bench-ab.sh A_BINARY 'A_EXTRA_TOML' B_BINARY 'B_EXTRA_TOML' [RUNS] [-- STEADY_ARGS...]
#
#   # the same build, coalescing off vs on (6 runs each, 100 allocations, 100 B):
#   scripts/bench-ab.sh target/release/tern 'udp-coalesce-us = 0' target/release/tern '' 6
#   # two builds, 1000 allocations of 1000 B, syscall counts:
#   scripts/bench-ab.sh /tmp/tern-old '' target/release/tern '' 3 -- --allocations 1000 --size 1000 --count-syscalls
#
# Defaults for steady: --allocations 100 --size 100 --rate 20000 --duration 8 --warmup 1.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 4 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
BIN_A=$1 EXTRA_A=$2 BIN_B=$3 EXTRA_B=$4
shift 4
RUNS=3
if [ $# -gt 0 ] && [ "$1" != -- ]; then RUNS=$1; shift; fi
[ "${1:-}" = -- ] && shift
STEADY_ARGS=(--allocations 100 --size 100 --rate 20000 --duration 8 --warmup 1 "$@")

BENCH=${BENCH:-./target/release/tern-bench}
[ -x "$BENCH" ] || cargo build --release --quiet -p tern-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/tern-ab.XXXXXX)
RESULTS=${RESULTS:-$WORK/results.jsonl}
SECRET="ab-$RANDOM$RANDOM"
PORT=31500
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_taken() { ss -Huan "sport = :$1" | grep -q .; }

run_cell() { # VARIANT BINARY EXTRA RUN
  local variant=$1 binary=$2 extra=$3 run=$4
  PORT=$((PORT + 1))
  while port_taken "$PORT"; do PORT=$((PORT + 1)); done
  cat >"$WORK/tern.toml" <<EOF
listening-ip = "127.0.0.1"
listening-port = $PORT
min-port = 10000
max-port = 29999
static-auth-secret = "$SECRET"
realm = "bench"
allow-loopback-peers = true
no-http = true
log-level = "warn"
user-quota = 0
max-allocations-per-ip = 0
unauthenticated-rate-limit = 0
$extra
EOF
  "$binary" --config "$WORK/tern.toml" 2>>"$WORK/tern.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do ss -Huln "sport = :$PORT" | grep -q . && break; sleep 0.1; done
  sleep 0.3
  "$BENCH" steady --server "127.0.0.1:$PORT" --secret "$SECRET" --pid "$SERVER_PID" \
    --tag "variant=$variant" --tag "run=$run" "${STEADY_ARGS[@]}" | tee -a "$RESULTS" || echo "  $variant run $run failed" >&2
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

echo "A: $BIN_A [$EXTRA_A]  B: $BIN_B [$EXTRA_B]  runs: $RUNS  steady ${STEADY_ARGS[*]}  load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for run in $(seq "$RUNS"); do
  run_cell A "$BIN_A" "$EXTRA_A" "$run"
  run_cell B "$BIN_B" "$EXTRA_B" "$run"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
fields = ["cpu_s_per_million", "server_and_generator_cpu_s_per_million", "machine_cpu_s_per_million",
          "server_wakeups_per_pkt", "syscalls_per_pkt", "sched_switch_per_pkt", "rtt_p50_us", "rtt_p99_us", "loss", "pps"]
for variant in ("A", "B"):
    mine = [r for r in rows if r.get("variant") == variant]
    cells = []
    for f in fields:
        values = [r[f] for r in mine if isinstance(r.get(f), (int, float))]
        if values:
            cells.append(f"{f} {statistics.median(values):.4g} ({min(values):.4g}–{max(values):.4g})")
    print(f"{variant} ({len(mine)} runs): " + "; ".join(cells))
# B/A of the runs made one after the other (run i of each): drift in the background load hits
# a pair alike, so the ratios spread less than the cells.
for f in fields[:6]:
    pairs = {}
    for r in rows:
        if isinstance(r.get(f), (int, float)):
            pairs.setdefault(r.get("run"), {})[r.get("variant")] = r[f]
    ratios = [p["B"] / p["A"] for p in pairs.values() if p.get("A") and "B" in p]
    if ratios:
        print(f"B/A {f}: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f}, {len(ratios)} pairs)")
EOF
