#!/usr/bin/env bash
# Runs tern's fuzz targets with cargo-fuzz (libFuzzer) on the stable toolchain, each for a bounded
# time, starting from the committed seeds in fuzz/corpus/<target>/ (read only: what the fuzzer
# finds goes to a scratch corpus, or to --keep DIR). A crash, a timeout or an out-of-memory fails
# the run; the input is kept under fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                          # every target, 60 s each
#   fuzz/run.sh --seconds 600 turn_server
#   fuzz/run.sh --keep /tmp/tern-corpus  # keep the grown corpora between runs
#
# cargo-fuzz is installed (pinned) if missing. No sanitizer: tern-proto forbids unsafe code and
# the targets reach no unsafe code of tern's, and AddressSanitizer needs a nightly compiler (-Z),
# which this project does not use; libFuzzer's coverage instrumentation (-Cpasses=sancov-module,
# -Cllvm-args=...) and debug assertions (overflow checks) work on stable.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(stun_parse turn_server stream_connection proxy_header config_toml config_coturn)
seconds=60
keep=""
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --keep) keep="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
    if ! cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked; then
        echo "fuzz: cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed (output above): nothing was fuzzed"
        # CI reaches crates.io, so there this is a failure; elsewhere (offline) it is a skip.
        [ "${CI:-}" = "true" ] && exit 1
        exit 0
    fi
fi

# One build of every target (coverage-instrumented, optimised, debug assertions on).
cargo fuzz build --sanitizer none

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
failed=()
for target in "${targets[@]}"; do
    work="${keep:-$scratch}/$target"
    mkdir -p "$work"
    log="$scratch/$target.log"
    echo "fuzz: $target for ${seconds}s (seeds: fuzz/corpus/$target)"
    status=0
    cargo fuzz run --sanitizer none "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    summary+=("$(printf '%-18s %6ss %12s execs %8s/s  cov %6s  corpus %5s' "$target" "$seconds" \
        "${execs:-?}" "${rate:-?}" "${cov:-?}" "$(find "$work" -type f | wc -l)")")
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        echo "fuzz: $target FAILED (exit $status):"
        grep -m4 -A4 -E 'panicked at|ERROR: libFuzzer|^SUMMARY' "$log" || tail -30 "$log"
        grep -A2 'Reproduce with' "$log" || true
    fi
done

echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/<target>/)"
    exit 1
fi
