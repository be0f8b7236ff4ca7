#!/usr/bin/env bash
# Benchmarks tern against Debian's coTURN and a raw UDP forwarder, in one run, with the same
# tern-bench build and settings; writes the table to stdout and into docs/BENCHMARKS.md
# (between the bench:begin / bench:end markers). Loopback only; every load is bounded in time.
#
#   scripts/bench.sh            # full table: 3 runs per cell (about 12 minutes)
#   scripts/bench.sh --quick    # 1 short run per cell (about 2 minutes), for a smoke test
#   scripts/bench.sh --runs=5   # more runs
#   scripts/bench.sh --no-write # do not touch docs/BENCHMARKS.md
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
DURATION=5
FIXED_DURATION=10
WARMUP=1
QUICK=0
WRITE=1
ONLY=""
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1; RUNS=1; DURATION=2; FIXED_DURATION=2; WARMUP=0.5 ;;
    --runs=*) RUNS="${arg#*=}" ;;
    --no-write) WRITE=0 ;;
    --only=*) ONLY="${arg#*=}" ;; # comma-separated scenario names, for debugging the script
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

bash scripts/install-test-deps.sh >/dev/null
command -v turnserver >/dev/null || { echo "turnserver (Debian package coturn) is missing" >&2; exit 1; }
cargo build --release --bins --quiet

# 5 000 held allocations need 5 000 relay sockets in the server and client sockets here.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TERN=${TERN_BIN:-./target/release/tern}
BENCH=./target/release/tern-bench
WORK=$(mktemp -d /tmp/tern-bench.XXXXXX)
RESULTS="$WORK/results.jsonl"
SECRET="bench-$RANDOM$RANDOM"
REALM=bench
PORT=30500 # below the ephemeral range and above the relay range
# Relay ports below the kernel's ephemeral range, so client sockets never take them.
MIN_PORT=10000
MAX_PORT=29999
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  mkdir -p target
  [ -f "$RESULTS" ] && cp "$RESULTS" target/bench-results.jsonl
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_bound() { # port: until something listens on it (10 s at most)
  for _ in $(seq 100); do
    ss -Huln "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on udp port $1" >&2
  return 1
}

# start_server KIND WORKERS: tern | coturn | raw, on a fresh port; sets SERVER_PID and PORT.
start_server() {
  local kind=$1 workers=$2
  PORT=$((PORT + 1))
  # Skip ports something else (a test running in parallel) already holds.
  while ss -Huan "sport = :$PORT" | grep -q .; do PORT=$((PORT + 1)); done
  case "$kind" in
    tern)
      cat >"$WORK/tern.toml" <<EOF
listening-ip = "127.0.0.1"
listening-port = $PORT
min-port = $MIN_PORT
max-port = $MAX_PORT
static-auth-secret = "$SECRET"
realm = "$REALM"
relay-threads = $workers
allow-loopback-peers = true
log-level = "warn"
# A load generator is one user on one address making allocations as fast as it can: lift the
# limits meant for the open internet, as coTURN has none of them.
user-quota = 0
max-allocations-per-ip = 0
unauthenticated-rate-limit = 0
EOF
      "$TERN" --config "$WORK/tern.toml" 2>>"$WORK/tern.log" &
      ;;
    coturn)
      turnserver -n --no-tls --no-dtls --no-tcp --no-tcp-relay --no-cli \
        --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 -p "$PORT" \
        --use-auth-secret --static-auth-secret "$SECRET" --realm "$REALM" \
        --allow-loopback-peers --min-port "$MIN_PORT" --max-port "$MAX_PORT" \
        --relay-threads "$workers" --no-stdout-log --log-file /dev/null \
        --pidfile "$WORK/coturn.pid" >>"$WORK/coturn.log" 2>&1 &
      ;;
    raw)
      "$BENCH" forwarder --listen "127.0.0.1:$PORT" --max-time 600 2>>"$WORK/raw.log" &
      ;;
  esac
  SERVER_PID=$!
  wait_bound "$PORT"
  sleep 0.3
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "$kind did not start (see $WORK/$kind.log)" >&2; return 1; }
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# measure SCENARIO KIND WORKERS RUN MODE ARGS...: one server, one tern-bench run, one JSON line.
measure() {
  local scenario=$1 kind=$2 workers=$3 run=$4 mode=$5
  shift 5
  wanted "$scenario" || return 0
  local extra=()
  [ "$kind" = raw ] && extra+=(--raw)
  start_server "$kind" "$workers"
  if ! "$BENCH" "$mode" --server "127.0.0.1:$PORT" --secret "$SECRET" --pid "$SERVER_PID" \
    --duration "$DURATION" --warmup "$WARMUP" \
    --tag "scenario=$scenario" --tag "server=$kind" --tag "workers=$workers" --tag "run=$run" \
    "${extra[@]}" "$@" >>"$RESULTS"; then
    echo "  $scenario/$kind run $run failed" >&2
  fi
  stop_server
  printf '  %-18s %-7s run %s\n' "$scenario" "$kind" "$run" >&2
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date +%s)
echo "tern vs coTURN vs raw forwarder: $RUNS run(s), ${DURATION}s measured per cell (load: $LOAD_BEFORE)" >&2
for run in $(seq "$RUNS"); do
  # Servers alternate inside every scenario, so drifting background load hits all of them.
  for kind in tern coturn raw; do measure relay-sat-100 "$kind" 1 "$run" relay --allocations 100 --size 100; done
  for kind in tern coturn raw; do measure relay-sat-1000 "$kind" 1 "$run" relay --allocations 100 --size 1000; done
  # Fixed-rate cells use little CPU: measure twice as long so clock-tick rounding stays small.
  for kind in tern coturn raw; do
    measure relay-20k-100 "$kind" 1 "$run" relay --allocations 100 --size 100 --rate 20000 --duration "$FIXED_DURATION"
  done
  for kind in tern coturn raw; do
    measure relay-20k-1000 "$kind" 1 "$run" relay --allocations 1000 --size 100 --rate 20000 --duration "$FIXED_DURATION"
  done
  for kind in tern coturn raw; do
    measure relay-20k-1000b "$kind" 1 "$run" relay --allocations 100 --size 1000 --rate 20000 --duration "$FIXED_DURATION"
  done
  for kind in tern coturn; do measure relay-sat-100-2w "$kind" 2 "$run" relay --allocations 100 --size 100 --threads 2; done
  for kind in tern coturn; do measure binding "$kind" 1 "$run" binding --clients 16; done
  for kind in tern coturn; do measure alloc "$kind" 1 "$run" alloc --concurrency 32; done
  for kind in tern coturn; do measure hold-1k "$kind" 1 "$run" hold --allocations 1000; done
  for kind in tern coturn; do measure hold-5k "$kind" 1 "$run" hold --allocations 5000; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - STARTED))

TABLE="$WORK/table.md"
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ): \`scripts/bench.sh$([ "$QUICK" = 1 ] && echo ' --quick')\`," \
    "$RUNS run(s) per cell, ${DURATION} s measured (${FIXED_DURATION} s at fixed rates) after ${WARMUP} s of warm-up, ${ELAPSED} s in all."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r);" \
    "coTURN $(dpkg-query -W -f='${Version}' coturn 2>/dev/null || echo '?'); load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo "Cells: median (min–max) over runs. CPU is the server process's utime+stime from /proc."
  echo
  "$BENCH" table "$RESULTS"
} >"$TABLE"
cat "$TABLE"

if [ "$WRITE" = 1 ] && [ -f docs/BENCHMARKS.md ] && grep -q '<!-- bench:begin -->' docs/BENCHMARKS.md; then
  awk -v table="$TABLE" '
    /<!-- bench:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
    /<!-- bench:end -->/ { skip = 0 }
    !skip { print }
  ' docs/BENCHMARKS.md >"$WORK/BENCHMARKS.md"
  cp "$WORK/BENCHMARKS.md" docs/BENCHMARKS.md
  echo "docs/BENCHMARKS.md updated; raw reports in target/bench-results.jsonl" >&2
fi
