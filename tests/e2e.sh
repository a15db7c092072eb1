#!/bin/sh
# make test-e2e: the end-to-end specs that start heavy real components, kept
# out of make test for their time: a real Prometheus scraping a worker and
# lua/web.lua (tests/e2e/prometheus_spec.lua), and headless Chromium over
# WebDriver approving and rejecting review gates (tests/e2e/browser_spec.lua,
# which also writes docs/status-page.png and docs/review-page.png).
# A throw-away PostgreSQL is started unless TEST_DATABASE_URL is set. The
# last line is "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
PGTMP_DIR=""
cleanup() {
    if [ -n "$PGTMP_DIR" ]; then sh tests/pgtmp.sh stop "$PGTMP_DIR" >/dev/null 2>&1 || true; rm -rf "$PGTMP_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -z "${TEST_DATABASE_URL:-}" ]; then
    PGTMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vg-e2e-pg.XXXXXX")
    if ! TEST_DATABASE_URL=$(sh tests/pgtmp.sh start "$PGTMP_DIR"); then
        echo "e2e: could not start the throw-away PostgreSQL (see above)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
fi
export TEST_DATABASE_URL
VG_HOST_BIN="$(pwd)/build/vg-host"
export VG_HOST_BIN
out=$(mktemp "${TMPDIR:-/tmp}/vg-e2e-out.XXXXXX")
"$VG_HOST_BIN" /usr/bin/busted -o TAP tests/e2e >"$out" 2>&1
rc=$?
grep -E '^(ok|not ok|#)' "$out" | grep -v '^# {' 
p=$(grep -c '^ok ' "$out" | tr -d ' ')
f=$(grep -c '^not ok ' "$out" | tr -d ' ')
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    tail -n 30 "$out"
fi
rm -f "$out"
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
