#!/usr/bin/env bash
# The soak: a release tern with a config of its own (free loopback ports, 200 relay ports, a REST
# secret, every limit at its default, short allocation lifetimes) under everything at once for
# --minutes (default 10): allocation churn (tern-bench alloc), relayed UDP (tern-bench relay at a
# moderate rate), relayed traffic over TCP (coTURN's turnutils_uclient -t, peers over UDP), and
# broken and hostile clients (tern-bench abuse: malformed datagrams, unauthenticated floods from
# eight addresses, permission and channel floods, idle TCP connections, bad PROXY headers,
# half frames, a client that never reads).
#
# RSS, open fds, free relay ports, allocations and stream connections are sampled every 10 s into
# soak.csv. After a warm-up, once the warm-up's allocations are gone, the baseline is taken; after
# the load stops and the lifetimes run out, the end must match it: open fds and free relay ports
# exactly (all of them free), no allocation and no stream connection left, RSS within
# RSS_TOLERANCE_KIB of the baseline; and the log must hold no ERROR or WARN line other than the expected ones listed
# below. Exit status 1 if any check fails. Loopback only; every load is bounded in time.
#
#   scripts/soak.sh                 # 10 minutes
#   scripts/soak.sh --minutes 1     # a smoke run
#   scripts/soak.sh --out DIR       # keep config, log, CSV and summary in DIR
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "soak: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || out=$(mktemp -d /tmp/tern-soak.XXXXXX)
mkdir -p "$out"

# RSS may end this much above the baseline (allocator arenas and caches that stay with the
# process); anything that grows with the traffic shows far beyond it over ten minutes.
RSS_TOLERANCE_KIB=${RSS_TOLERANCE_KIB:-8192}
LIFETIME=60          # default-allocate-lifetime: allocations nobody deletes end this soon
WARMUP_SECS=30
SAMPLE_SECS=10
SECRET="soak-secret-$$"
# Log lines that are WARN or ERROR by design under this load; anything else fails the soak.
EXPECTED_LOG='stream-idle-timeout|partial-frame|write stall|stalled|PROXY header|not STUN|first bytes|rate limit|suppressed'

for tool in turnutils_uclient turnutils_peer python3 curl; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is missing (scripts/install-test-deps.sh installs it)" >&2; exit 2; }
done

echo "soak: building release tern and tern-bench"
cargo build --release --quiet -p tern -p tern-bench
TERN=target/release/tern
BENCH=target/release/tern-bench

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# 200 free consecutive UDP and TCP ports for the relay range.
relay_range() {
    python3 - <<'EOF'
import socket
for base in range(20000, 60000, 211):
    ok = True
    for port in range(base, base + 200):
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if not ok:
            break
    if ok:
        print(base, base + 199)
        break
EOF
}

PORT=$(free_port)
HTTP=$(free_port)
read -r MIN_PORT MAX_PORT < <(relay_range)
cat >"$out/turnserver.toml" <<EOF
# The soak's configuration: every limit at its default.
listening-ip = ["127.0.0.1"]
listening-port = $PORT
min-port = $MIN_PORT
max-port = $MAX_PORT
static-auth-secret = "$SECRET"
allow-loopback-peers = true
# uclient picks channel numbers from RFC 5766's range.
allow-rfc5766-channel-numbers = true
default-allocate-lifetime = $LIFETIME
max-allocate-lifetime = $((LIFETIME * 2))
http-listen = "127.0.0.1:$HTTP"
relay-threads = 2
log-level = "info"
log-file = "$out/tern.log"
no-stdout-log = true
EOF

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "${TERN_PID:-}" ] && kill "$TERN_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$TERN" --config "$out/turnserver.toml" >"$out/tern.stdout" 2>&1 &
TERN_PID=$!
metrics() { curl -sf "http://127.0.0.1:$HTTP/metrics"; }
for _ in $(seq 100); do metrics >/dev/null && break; sleep 0.1; done
metrics >/dev/null || { echo "soak: tern did not start"; cat "$out/tern.stdout"; exit 1; }
echo "soak: tern $TERN_PID on 127.0.0.1:$PORT, relay ports $MIN_PORT-$MAX_PORT, http $HTTP; files in $out"

# A metric's value (summed over its labels).
metric() { metrics | awk -v name="$1" '$1 == name || index($1, name "{") == 1 { sum += $2 } END { print sum + 0 }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$TERN_PID/status"; }
fds() { find "/proc/$TERN_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
start_time=$(date +%s)
echo "seconds,phase,rss_kib,fds,relay_ports_free,allocations,stream_connections,relayed_packets,unauthenticated_dropped,limit_refusals" >"$out/soak.csv"
sample() {
    local m
    m=$(metrics)
    local get='{ if ($1 == name || index($1, name "{") == 1) sum += $2 } END { print sum + 0 }'
    echo "$(( $(date +%s) - start_time )),$1,$(rss_kib),$(fds),$(awk -v name=tern_relay_ports_free "$get" <<<"$m"),$(awk -v name=tern_allocations "$get" <<<"$m"),$(awk -v name=tern_stream_admitted "$get" <<<"$m"),$(awk -v name=tern_relayed_packets_total "$get" <<<"$m"),$(awk -v name=tern_unauthenticated_dropped_total "$get" <<<"$m"),$(awk -v name=tern_limit_refusals_total "$get" <<<"$m")" >>"$out/soak.csv"
}

# Every load runs in a loop of bounded runs until `until` (epoch seconds).
load() {
    local name=$1 until=$2
    shift 2
    (
        while [ "$(date +%s)" -lt "$until" ]; do
            left=$(( until - $(date +%s) ))
            [ "$left" -ge 5 ] || break
            if ! "$@" "$left" >>"$out/$name.out" 2>&1; then
                echo "soak: $name run failed" >>"$out/$name.out"
                sleep 1
            fi
        done
    ) &
    pids+=($!)
}
bench() { # bench MODE ARGS... SECONDS (the last from `load`)
    local mode=$1
    shift
    local secs=${*: -1}
    local args=("${@:1:$#-1}")
    [ "$secs" -gt 280 ] && secs=280
    "$BENCH" "$mode" --server "127.0.0.1:$PORT" --secret "$SECRET" --pid "$TERN_PID" \
        --warmup 0 --duration "$secs" "${args[@]}"
}
relay_udp() { bench relay --allocations 20 --rate 2000 --size 200 "$(( $1 < 40 ? $1 : 40 ))"; }
alloc_churn() { bench alloc --concurrency 2 "$1"; }
abuse() { bench abuse --rate 1600 --idle-connections 16 "$1"; }
relay_tcp() { # coTURN's client over TCP, client to client through the relay (about 8 s a run)
    local status=0 secs=$(( $1 < 120 ? $1 : 120 ))
    timeout "$secs" turnutils_uclient -W "$SECRET" -u soak -p "$PORT" \
        -t -y -n 400 -l 170 -m 4 -z 5 127.0.0.1 >"$out/uclient.last" 2>&1 || status=$?
    grep -h 'Total lost packets' "$out/uclient.last" || true
    # 124: cut by the end of the soak.
    [ "$status" = 0 ] || [ "$status" = 124 ]
}
run_loads() {
    local until=$1
    load relay_udp "$until" relay_udp
    load alloc "$until" alloc_churn
    load abuse "$until" abuse
    load relay_tcp "$until" relay_tcp
}
wait_loads() {
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
# Waits (at most LIFETIME + 60 s) until nothing is held: no allocation, no stream connection,
# every relay port free (EVEN-PORT reservations expire 30 s after they were made).
quiesce() {
    local phase=$1 total=$(( MAX_PORT - MIN_PORT + 1 ))
    for _ in $(seq $(( (LIFETIME + 60) / 2 ))); do
        if [ "$(metric tern_allocations)" = 0 ] && [ "$(metric tern_stream_admitted)" = 0 ] &&
            [ "$(metric tern_relay_ports_free)" = "$total" ]; then
            return 0
        fi
        sleep 2
    done
    echo "soak: $phase: allocations, connections or reserved ports did not end"
    return 1
}

echo "soak: warm-up ${WARMUP_SECS}s"
sample warmup
run_loads $(( $(date +%s) + WARMUP_SECS ))
wait_loads
quiesce "after the warm-up" || true
sleep 2
sample baseline
read -r base_rss base_fds base_free < <(tail -1 "$out/soak.csv" | awk -F, '{ print $3, $4, $5 }')
echo "soak: baseline RSS ${base_rss} KiB, ${base_fds} fds, ${base_free} relay ports free"

end=$(( $(date +%s) + minutes * 60 ))
echo "soak: load for ${minutes} min"
run_loads "$end"
while [ "$(date +%s)" -lt "$end" ]; do
    sleep "$SAMPLE_SECS"
    kill -0 "$TERN_PID" 2>/dev/null || { echo "soak: tern died"; tail -20 "$out/tern.log"; exit 1; }
    sample load
done
wait_loads
echo "soak: load stopped; waiting for lifetimes and timeouts to run out"
quiesced=yes
quiesce "at the end" || quiesced=no
sleep 2
sample end
read -r end_rss end_fds end_free end_allocs end_streams < <(tail -1 "$out/soak.csv" | awk -F, '{ print $3, $4, $5, $6, $7 }')

failures=()
[ "$quiesced" = yes ] || failures+=("allocations, stream connections or reserved ports outlived the load")
[ "$end_fds" = "$base_fds" ] || failures+=("open fds: $end_fds at the end, $base_fds at the start")
[ "$end_free" = "$base_free" ] || failures+=("free relay ports: $end_free at the end, $base_free at the start")
[ "$end_allocs" = 0 ] || failures+=("$end_allocs allocations left")
[ "$end_streams" = 0 ] || failures+=("$end_streams stream connections left")
[ "$end_rss" -le $(( base_rss + RSS_TOLERANCE_KIB )) ] ||
    failures+=("RSS $end_rss KiB at the end, baseline $base_rss KiB (tolerance $RSS_TOLERANCE_KIB KiB)")
grep -E ' (ERROR|WARN) ' "$out/tern.log" | grep -vE "$EXPECTED_LOG" >"$out/unexpected.log" || true
[ -s "$out/unexpected.log" ] && failures+=("$(wc -l <"$out/unexpected.log") unexpected ERROR/WARN log lines (unexpected.log)")
grep -q 'panicked' "$out/tern.log" "$out/tern.stdout" && failures+=("tern panicked")
for name in relay_udp alloc abuse relay_tcp; do
    grep -q 'run failed' "$out/$name.out" 2>/dev/null && failures+=("$name: load runs failed ($out/$name.out)")
done

peak_rss=$(awk -F, 'NR > 1 { if ($3 > m) m = $3 } END { print m }' "$out/soak.csv")
peak_fds=$(awk -F, 'NR > 1 { if ($4 > m) m = $4 } END { print m }' "$out/soak.csv")
min_free=$(awk -F, 'NR > 1 { if (m == "" || $5 < m) m = $5 } END { print m }' "$out/soak.csv")
peak_allocs=$(awk -F, 'NR > 1 { if ($6 > m) m = $6 } END { print m }' "$out/soak.csv")
{
    echo "soak: ${minutes} min, tern $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ)"
    echo "  RSS KiB:          baseline $base_rss, peak $peak_rss, end $end_rss (tolerance +$RSS_TOLERANCE_KIB)"
    echo "  open fds:         baseline $base_fds, peak $peak_fds, end $end_fds"
    echo "  relay ports free: baseline $base_free, lowest $min_free, end $end_free (of $((MAX_PORT - MIN_PORT + 1)))"
    echo "  allocations:      peak $peak_allocs, end $end_allocs; stream connections at the end $end_streams"
    echo "  relayed packets:  $(metric tern_relayed_packets_total); allocations created $(metric tern_allocations_created_total)"
    echo "  unauthenticated answers dropped $(metric tern_unauthenticated_dropped_total); limit refusals $(metric tern_limit_refusals_total); stream protocol errors $(metric tern_stream_protocol_errors_total); stream timeouts $(metric tern_stream_timeouts_total); write stalls $(metric tern_stream_write_stalls_total)"
    echo "  log: $(grep -c ' WARN ' "$out/tern.log" || true) WARN, $(grep -c ' ERROR ' "$out/tern.log" || true) ERROR, $(wc -l <"$out/unexpected.log") unexpected"
    for name in relay_udp alloc abuse; do
        echo "  $name: $(grep -c '^{' "$out/$name.out" 2>/dev/null || true) runs, $(grep -c 'run failed' "$out/$name.out" 2>/dev/null || true) failed"
    done
    echo "  relay_tcp: $(grep -c 'Total lost' "$out/relay_tcp.out" 2>/dev/null || true) uclient runs completed, $(grep -c 'run failed' "$out/relay_tcp.out" 2>/dev/null || true) failed; lost: $(grep -o 'Total lost packets [0-9]*' "$out/relay_tcp.out" | awk '{ s += $4 } END { print s + 0 }') packets"
    if [ ${#failures[@]} -eq 0 ]; then
        echo "soak: PASS"
    else
        printf '  FAIL: %s\n' "${failures[@]}"
        echo "soak: FAIL"
    fi
} | tee "$out/summary.txt"
[ ${#failures[@]} -eq 0 ]
