#!/usr/bin/env bash
# Benchmarks tern against coTURN (Debian's 4.6.1, and 4.17.1 built from the source in
# shared/anchors with its fastest options) and a raw UDP forwarder, in one run, with the same
# tern-bench build and settings; writes the tables to stdout and into docs/BENCHMARKS.md (between
# the bench:begin / bench:end markers). Loopback, or test network namespaces it makes and
# removes (--netns); every load is bounded in time.
#
#   scripts/bench.sh            # full tables: 3 runs per cell (about 30 minutes)
#   scripts/bench.sh --quick    # 1 short run per cell (about 3–4 minutes), a smoke test
#   scripts/bench.sh --runs=5   # more runs
#   scripts/bench.sh --netns    # relay rows through network namespaces and veth pairs, and the
#                               # kernel fast path (tern-xdp) rows next to them
#   scripts/bench.sh --no-write # do not touch docs/BENCHMARKS.md
#   scripts/bench.sh --only=steady-100a-100b,binding  # some scenarios (debugging the script)
#   scripts/bench.sh --servers=tern,raw               # some servers (debugging the script)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
DURATION=5       # saturated, Binding, allocation cells
STEADY_DURATION=8
WARMUP=1
QUICK=0
WRITE=1
ONLY=""
SERVERS=""
TOPOLOGY=loopback
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1; RUNS=1; DURATION=2; STEADY_DURATION=2.5; WARMUP=0.5 ;;
    --runs=*) RUNS="${arg#*=}" ;;
    --netns) TOPOLOGY=netns ;;
    --no-write) WRITE=0 ;;
    --only=*) ONLY="${arg#*=}" ;;
    --servers=*) SERVERS="${arg#*=}" ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# coturn (Debian) comes with the test dependencies; only run their installer when it is missing
# (it also stops any turnserver it finds, which must not happen to other users' processes).
command -v turnserver >/dev/null || bash scripts/install-test-deps.sh >/dev/null
command -v turnserver >/dev/null || { echo "turnserver (Debian package coturn) is missing" >&2; exit 1; }
cargo build --release --bins --quiet

# coTURN 4.17.1 from its source tarball, built outside the repository's sources (target/ is
# ignored by git) with optimisation (its ./configure alone compiles with -g only).
COTURN17_VERSION=4.17.1
COTURN17_DIR=target/coturn-$COTURN17_VERSION
COTURN17=$COTURN17_DIR/bin/turnserver
find_tarball() {
  local name=coturn-$COTURN17_VERSION.tar.gz
  for dir in "${COTURN17_TARBALL_DIR:-}" ../shared/anchors ../../shared/anchors /work/shared/anchors; do
    [ -n "$dir" ] && [ -f "$dir/$name" ] && { echo "$dir/$name"; return 0; }
  done
  return 1
}
build_coturn17() {
  [ -x "$COTURN17" ] && return 0
  local tarball
  tarball=$(find_tarball) || { echo "coturn-$COTURN17_VERSION.tar.gz not found (shared/anchors): its rows are left out" >&2; return 1; }
  local missing=()
  command -v cc >/dev/null || missing+=(gcc)
  command -v make >/dev/null || missing+=(make)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ -e /usr/include/event2/event.h ] || missing+=(libevent-dev)
  [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  echo "building coTURN $COTURN17_VERSION (CFLAGS=-O2 -g) in $COTURN17_DIR" >&2
  rm -rf "$COTURN17_DIR" && mkdir -p "$COTURN17_DIR"
  tar xzf "$tarball" -C "$COTURN17_DIR" --strip-components=1
  (cd "$COTURN17_DIR" && CFLAGS="-O2 -g" ./configure >configure.log 2>&1 && make -j"$(nproc)" >make.log 2>&1) ||
    { echo "coTURN $COTURN17_VERSION did not build (see $COTURN17_DIR/*.log)" >&2; return 1; }
}
HAVE_COTURN17=1
build_coturn17 || HAVE_COTURN17=0

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
NETNS_MADE=0

# The network namespaces of --netns: the generator (clients), the server and the peer each in
# their own, joined by two veth pairs; documentation addresses only.
NS_GEN=tb-gen-$$
NS_SRV=tb-srv-$$
NS_PEER=tb-peer-$$
GEN_IP=192.0.2.1
SRV_IP=192.0.2.2
SRV_PEER_SIDE_IP=198.51.100.2
PEER_IP=198.51.100.1

netns_up() {
  ip netns add "$NS_GEN" && ip netns add "$NS_SRV" && ip netns add "$NS_PEER"
  NETNS_MADE=1
  ip link add "tbg$$" netns "$NS_GEN" type veth peer name "tbsg$$" netns "$NS_SRV"
  ip link add "tbp$$" netns "$NS_PEER" type veth peer name "tbsp$$" netns "$NS_SRV"
  ip -n "$NS_GEN" addr add "$GEN_IP/24" dev "tbg$$"
  ip -n "$NS_SRV" addr add "$SRV_IP/24" dev "tbsg$$"
  ip -n "$NS_SRV" addr add "$SRV_PEER_SIDE_IP/24" dev "tbsp$$"
  ip -n "$NS_PEER" addr add "$PEER_IP/24" dev "tbp$$"
  for ns in "$NS_GEN" "$NS_SRV" "$NS_PEER"; do
    ip -n "$ns" link set lo up
    for dev in $(ip -n "$ns" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip -n "$ns" link set "$dev" up
    done
  done
  # Relay sockets bind the address the client reached (192.0.2.2): the peer answers there.
  ip -n "$NS_PEER" route add 192.0.2.0/24 via "$SRV_PEER_SIDE_IP"
  # The generator's and the peer's veths compute whole UDP checksums, as packets from a wire
  # carry them: with checksum offload a veth hands over partial ones, which the fast path leaves
  # to user space (it cannot finish them). The same for every server of the run.
  ip netns exec "$NS_GEN" ethtool -K "tbg$$" tx off >/dev/null
  ip netns exec "$NS_PEER" ethtool -K "tbp$$" tx off >/dev/null
}

netns_down() {
  [ "$NETNS_MADE" = 1 ] || return 0
  for ns in "$NS_GEN" "$NS_SRV" "$NS_PEER"; do ip netns del "$ns" 2>/dev/null || true; done
  NETNS_MADE=0
}

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  netns_down
  mkdir -p target
  [ -f "$RESULTS" ] && cp "$RESULTS" target/bench-results.jsonl
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$TOPOLOGY" = netns ]; then netns_up; fi

# use_topology loopback|netns: where the next cell runs. SRV prefixes the server's commands
# (`ip netns exec` execs in place, so $! is still the server's pid). tern-bench itself stays
# here (it reads the server's /proc and the tracepoints, which `ip netns exec` would hide
# behind a fresh /sys) and makes its client and peer sockets inside their namespaces.
use_topology() {
  CURRENT_TOPOLOGY=$1
  if [ "$CURRENT_TOPOLOGY" = netns ]; then
    SRV=(ip netns exec "$NS_SRV")
  else
    SRV=()
  fi
}
use_topology loopback

server_ip() { if [ "$CURRENT_TOPOLOGY" = netns ]; then echo "$SRV_IP"; else echo 127.0.0.1; fi; }

wait_bound() { # port: until something listens on it (10 s at most)
  for _ in $(seq 100); do
    "${SRV[@]}" ss -Huln "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on udp port $1" >&2
  return 1
}

port_taken() { "${SRV[@]}" ss -Huan "sport = :$1" | grep -q . || ss -Huan "sport = :$1" | grep -q .; }

# start_server KIND: on a fresh port; sets SERVER_PID and PORT. Kinds: tern (default
# relay-threads), tern-1w, tern-xdp (default relay-threads, fast-path = "required" on the
# server namespace's two veths: --netns only), coturn (Debian 4.6.1, default relay threads), coturn-1t (1 relay
# thread), coturn17 (4.17.1 --udp-gso), coturn17-mux (also --multiplex-peer), raw.
start_server() {
  local kind=$1 ip
  ip=$(server_ip)
  PORT=$((PORT + 3))
  # Skip ports something else (a test running in parallel) already holds; multiplex-peer
  # takes the two after the listening port.
  while port_taken "$PORT" || port_taken $((PORT + 1)) || port_taken $((PORT + 2)); do PORT=$((PORT + 3)); done
  local coturn_common=(-n --no-tls --no-dtls --no-tcp --no-tcp-relay --no-cli
    --listening-ip "$ip" --relay-ip "$ip" -p "$PORT"
    --use-auth-secret --static-auth-secret "$SECRET" --realm "$REALM"
    --allow-loopback-peers --min-port "$MIN_PORT" --max-port "$MAX_PORT"
    --no-stdout-log --log-file /dev/null --pidfile "$WORK/coturn.pid")
  case "$kind" in
    tern | tern-1w | tern-xdp)
      {
        echo "listening-ip = \"$ip\""
        echo "listening-port = $PORT"
        echo "min-port = $MIN_PORT"
        echo "max-port = $MAX_PORT"
        echo "static-auth-secret = \"$SECRET\""
        echo "realm = \"$REALM\""
        [ "$kind" = tern-1w ] && echo "relay-threads = 1"
        if [ "$kind" = tern-xdp ]; then
          echo "fast-path = \"required\""
          echo "fast-path-interfaces = [\"tbsg$$\", \"tbsp$$\"]"
        fi
        echo "allow-loopback-peers = true"
        echo "allowed-peer-ip = [\"198.51.100.0/24\"]"
        echo "no-http = true"
        echo "log-level = \"warn\""
        # A load generator is one user on one address making allocations as fast as it can:
        # lift the limits meant for the open internet (coTURN has none of them).
        echo "user-quota = 0"
        echo "max-allocations-per-ip = 0"
        echo "unauthenticated-rate-limit = 0"
      } >"$WORK/tern.toml"
      "${SRV[@]}" "$TERN" --config "$WORK/tern.toml" 2>>"$WORK/tern.log" &
      ;;
    coturn) "${SRV[@]}" turnserver "${coturn_common[@]}" >>"$WORK/coturn.log" 2>&1 & ;;
    coturn-1t) "${SRV[@]}" turnserver "${coturn_common[@]}" --relay-threads 1 >>"$WORK/coturn.log" 2>&1 & ;;
    coturn17) "${SRV[@]}" "$COTURN17" "${coturn_common[@]}" --udp-gso >>"$WORK/coturn17.log" 2>&1 & ;;
    coturn17-1t) "${SRV[@]}" "$COTURN17" "${coturn_common[@]}" --udp-gso --relay-threads 1 >>"$WORK/coturn17.log" 2>&1 & ;;
    coturn17-mux)
      "${SRV[@]}" "$COTURN17" "${coturn_common[@]}" --udp-gso --multiplex-peer \
        --multiplex-peer-port $((PORT + 1)) >>"$WORK/coturn17.log" 2>&1 &
      ;;
    raw) "${SRV[@]}" "$BENCH" forwarder --listen "$ip:$PORT" --max-time 600 2>>"$WORK/raw.log" & ;;
    raw-c*) # prototype: the forwarder with wake-up coalescing of N µs (BENCH_PROTOTYPES=1)
      "${SRV[@]}" "$BENCH" forwarder --listen "$ip:$PORT" --max-time 600 --coalesce-us "${kind#raw-c}" 2>>"$WORK/raw.log" &
      ;;
  esac
  SERVER_PID=$!
  wait_bound "$PORT"
  sleep 0.3
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "$kind did not start (see $WORK/*.log)" >&2; return 1; }
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

wanted() {
  { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; } &&
    { [ -z "$SERVERS" ] || [[ ",$SERVERS," == *",$2,"* ]]; } &&
    { [ "$HAVE_COTURN17" = 1 ] || [[ "$2" != coturn17* ]]; }
}

# measure SCENARIO TOPOLOGY KIND RUN MODE ARGS...: one server, one tern-bench run, one JSON
# line. KIND is the server tag of the report; coturn-1t/coturn17-1t report as coturn/coturn17.
measure() {
  local scenario=$1 topology=$2 kind=$3 run=$4 mode=$5
  shift 5
  local tag=${kind%-1t}
  wanted "$scenario" "$tag" || return 0
  if [ "$topology" = relay ] && [ "$TOPOLOGY" = netns ]; then use_topology netns; else use_topology loopback; fi
  local extra=()
  [[ "$kind" == raw* ]] && extra+=(--raw)
  [ "$CURRENT_TOPOLOGY" = netns ] && extra+=(--client-netns "$NS_GEN" --peer-ip "$PEER_IP" --peer-netns "$NS_PEER")
  local duration=$DURATION
  [ "$mode" = steady ] && duration=$STEADY_DURATION
  if ! start_server "$kind"; then
    stop_server
    return 0
  fi
  if ! "$BENCH" "$mode" --server "$(server_ip):$PORT" --secret "$SECRET" --pid "$SERVER_PID" \
    --duration "$duration" --warmup "$WARMUP" \
    --tag "scenario=$scenario" --tag "server=$tag" --tag "run=$run" --tag "topology=$CURRENT_TOPOLOGY" \
    "${extra[@]}" "$@" >>"$RESULTS"; then
    echo "  $scenario/$kind run $run failed" >&2
  fi
  stop_server
  printf '  %-22s %-13s run %s\n' "$scenario" "$kind" "$run" >&2
}

STEADY_SERVERS=(tern tern-1w coturn coturn17 coturn17-mux raw)
# The kernel fast path needs a network to serve (XDP never serves loopback): namespaces only.
FAST_PATH=()
[ "$TOPOLOGY" = netns ] && FAST_PATH=(tern-xdp)
STEADY_SERVERS+=("${FAST_PATH[@]}")
# Prototypes of proposed changes, measured next to the baselines when asked for.
[ "${BENCH_PROTOTYPES:-0}" = 1 ] && STEADY_SERVERS+=(raw-c100 raw-c250)
steady() { # SCENARIO RUN ALLOCATIONS SIZE [ARGS...]
  local scenario=$1 run=$2 allocations=$3 size=$4
  shift 4
  for kind in "${STEADY_SERVERS[@]}"; do
    measure "$scenario" relay "$kind" "$run" steady --allocations "$allocations" --size "$size" --rate 20000 "$@"
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date +%s)
echo "tern vs coTURN vs raw forwarder: $RUNS run(s), ${STEADY_DURATION}s steady / ${DURATION}s other cells, topology $TOPOLOGY (load: $LOAD_BEFORE)" >&2
for run in $(seq "$RUNS"); do
  # Servers alternate inside every scenario, so drifting background load hits all of them.
  steady steady-100a-100b "$run" 100 100
  steady steady-1000a-100b "$run" 1000 100
  steady steady-100a-1000b "$run" 100 1000
  steady steady-1000a-1000b "$run" 1000 1000
  # System calls per packet, counted in runs of their own (counting slows every syscall).
  if [ "$run" = 1 ]; then
    steady steady-100a-100b-sys "$run" 100 100 --count-syscalls
    if [ "$QUICK" = 0 ]; then
      steady steady-1000a-100b-sys "$run" 1000 100 --count-syscalls
      steady steady-100a-1000b-sys "$run" 100 1000 --count-syscalls
      steady steady-1000a-1000b-sys "$run" 1000 1000 --count-syscalls
    fi
  fi
  # With the fast path, also coTURN 4.17.1 at its best (multiplex-peer), its target's baseline.
  SAT=(tern-1w coturn-1t coturn17-1t raw)
  [ ${#FAST_PATH[@]} -gt 0 ] && SAT+=(coturn17-mux "${FAST_PATH[@]}")
  for kind in "${SAT[@]}"; do measure sat-100 relay "$kind" "$run" relay --allocations 100 --size 100; done
  for kind in "${SAT[@]}"; do measure sat-1000 relay "$kind" "$run" relay --allocations 100 --size 1000; done
  for kind in tern coturn; do measure sat-100-2w relay "$kind" "$run" relay --allocations 100 --size 100 --threads 2; done
  # The old fixed-rate load: 20 k pkt/s sent as a burst every millisecond (batching helps).
  for kind in tern coturn raw; do measure tick-20k-100 relay "$kind" "$run" relay --allocations 100 --size 100 --rate 20000; done
  for kind in tern-1w coturn-1t coturn17-1t; do measure binding loopback "$kind" "$run" binding --clients 16; done
  for kind in tern-1w coturn-1t coturn17-1t; do measure alloc loopback "$kind" "$run" alloc --concurrency 32; done
  for kind in tern-1w coturn-1t; do measure hold-1k loopback "$kind" "$run" hold --allocations 1000; done
  if [ "$QUICK" = 0 ]; then
    for kind in tern-1w coturn-1t; do measure hold-5k loopback "$kind" "$run" hold --allocations 5000; done
  fi
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - STARTED))

TABLE="$WORK/table.md"
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ): \`scripts/bench.sh$([ "$QUICK" = 1 ] && echo ' --quick')$([ "$TOPOLOGY" = netns ] && echo ' --netns')\`," \
    "$RUNS run(s) per cell, ${STEADY_DURATION} s measured at steady load, ${DURATION} s otherwise, after ${WARMUP} s of warm-up; ${ELAPSED} s in all."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r);" \
    "coTURN $(dpkg-query -W -f='${Version}' coturn 2>/dev/null || echo '?') (Debian) and" \
    "$([ "$HAVE_COTURN17" = 1 ] && echo "$COTURN17_VERSION (built with -O2)" || echo "$COTURN17_VERSION not built");" \
    "load average before $LOAD_BEFORE, after $LOAD_AFTER."
  if [ "$TOPOLOGY" = netns ]; then
    echo "Topology: relay rows (steady, saturated, bursts) through network namespaces (generator, server, peer; two veth pairs); Binding, allocation and memory rows on loopback."
  else
    echo "Topology: loopback for every row."
  fi
  echo "Cells: median (min–max) over runs."
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
