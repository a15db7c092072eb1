#!/bin/sh
# The test suites, run by `make test` after both builds:
#   C unit tests (build/tests, build-asan/tests),
#   busted specs under build/vg-host and under build-asan/vg-host
#   (scheduler, logging, config, db, proc, queue, pipeline, and the
#   process-level tests that start real workers and send real signals).
# A throw-away PostgreSQL is started unless TEST_DATABASE_URL is set.
# The last line is "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

passed=0
failed=0
skipped=0
failures=""
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/vg-test-logs.XXXXXX")
# The whole output of each failing suite is kept here (emptied per run).
KEEPDIR="$ROOT/build/test-logs"
rm -rf "$KEEPDIR"
PGTMP_DIR=""

cleanup() {
    if [ -n "$PGTMP_DIR" ]; then sh tests/pgtmp.sh stop "$PGTMP_DIR" >/dev/null 2>&1 || true; fi
    rm -rf "$LOGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${TEST_DATABASE_URL:-}" ]; then
    PGTMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vg-test-pg.XXXXXX")
    if ! TEST_DATABASE_URL=$(sh tests/pgtmp.sh start "$PGTMP_DIR"); then
        echo "tests: could not start the throw-away PostgreSQL (see above)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    export PGTMP_DIR
fi
export TEST_DATABASE_URL

# count FILE NAME: add the TAP results of one suite's output.
count() {
    out=$1
    name=$2
    p=$(grep -c '^ok ' "$out" | tr -d ' ')
    s=$(grep -c '^ok .*# *SKIP' "$out" | tr -d ' ')
    f=$(grep -c '^not ok ' "$out" | tr -d ' ')
    p=$((p - s))
    passed=$((passed + p))
    skipped=$((skipped + s))
    failed=$((failed + f))
    echo "== $name: $p passed, $f failed, $s skipped"
    if [ "$f" -gt 0 ]; then
        failures="$failures $name"
        # Show each failure with its diagnostics.
        awk '/^not ok /{show=1; print; next} /^(ok|not ok) /{show=0} show && /^#/{print}' "$out"
    fi
}

# suite NAME CMD...: run a suite; a crash or non-TAP exit also counts.
suite() {
    name=$1
    shift
    out="$LOGDIR/$(echo "$name" | tr ' /' '__').out"
    "$@" >"$out" 2>&1
    rc=$?
    count "$out" "$name"
    if [ $rc -ne 0 ] && ! grep -q '^not ok ' "$out"; then
        failed=$((failed + 1))
        failures="$failures $name(exit-$rc)"
        echo "== $name exited $rc without a failing test; its output ends with:"
        tail -n 30 "$out"
    fi
    if [ $rc -ne 0 ] || grep -q '^not ok ' "$out"; then
        mkdir -p "$KEEPDIR" && cp "$out" "$KEEPDIR/" &&
            echo "== $name: whole output in build/test-logs/$(basename "$out")"
    fi
}

for flavour in build build-asan; do
    for t in "$flavour"/tests/test_*; do
        [ -x "$t" ] || continue
        suite "$flavour C $(basename "$t")" "$t"
    done
done

SPECS=${SPECS:-spec}
for flavour in build build-asan; do
    VG_HOST_BIN="$ROOT/$flavour/vg-host"
    export VG_HOST_BIN
    # shellcheck disable=SC2086
    suite "$flavour specs" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
        "$VG_HOST_BIN" /usr/bin/busted -o TAP $SPECS
done

# The container image: built and run only where an engine really works
# (about a minute and a half; the first run also makes the base image).
suite "image" sh tests/image.sh --tap --if-engine

if [ -f bench/run.sh ]; then
    suite "bench-smoke" env BENCH_SMOKE=1 sh bench/run.sh --tap
fi

[ -n "$failures" ] && echo "failing suites:$failures"
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
