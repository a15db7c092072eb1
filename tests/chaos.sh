#!/bin/sh
# make chaos: tests/chaos.lua against a throw-away PostgreSQL of its own.
# Not part of make test (it takes a few minutes); prints its table and exits
# 1 when a task was lost, ran twice at once or completed twice, or an
# infrastructure error used up an attempt.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PGTMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vg-chaos-pg.XXXXXX")
cleanup() { sh tests/pgtmp.sh stop "$PGTMP_DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
DATABASE_URL=$(sh tests/pgtmp.sh start "$PGTMP_DIR")
export DATABASE_URL PGTMP_DIR
export LUA_PATH="$ROOT/?.lua;;"
export VG_HOST_BIN="$ROOT/${BUILD:-build}/vg-host"
"$VG_HOST_BIN" tests/chaos.lua
