#!/bin/sh
# bench/run.sh: the benchmarks (make bench, make bench-scale, make
# claim-matrix, make bench-smoke; issues 6 and 13).
#
#   sh bench/run.sh [--tap]
#
# Starts a throw-away PostgreSQL (tests/pgtmp.sh, fsync on), or, when
# TEST_DATABASE_URL is set, uses that server; creates a separate database
# for the benchmark there (vg_bench_PID), migrates it with lua/migrate.lua,
# and runs bench/driver.lua under build/vg-host, which starts the workers
# and pgbench, prints one table and writes the figures as JSON to
# $BENCH_OUT (default build/bench.json; build/bench-smoke.json when smoke).
# Everything it started is stopped and the database dropped at the end,
# also on failure or Ctrl-C.
#
# Environment:
#   BENCH_PARTS          what to run: main (the main table), scale (the scale
#                        matrix), claims (the claim matrix, against the claim
#                        before sql/005); default "main scale"
#   BENCH_SMOKE=1        tiny sizes (200 tasks, 10 pickups, 3 s idle, 2 matrix
#                        cells of 300 tasks): checks that every measurement
#                        still runs; figures meaningless
#   BENCH_OUT            where the JSON goes
#   BENCH_VG_HOST        the vg-host binary (default build/vg-host)
#   BENCH_PGBENCH        the pgbench binary (default: the server's version)
#   BENCH_PGBENCH_MODE   pgbench -M for the raw limit: prepared (default, with
#                        generic plans, as the worker sends statements), extended
#                        (unnamed statements; the workers then run with
#                        VG_DB_PREPARE=off) or simple
#   BENCH_TASKS, BENCH_CHANNELS, BENCH_RUN_SECONDS, BENCH_PICKUPS,
#   BENCH_IDLE_SECONDS, BENCH_REPEAT, BENCH_BATCH_CONCURRENCY,
#   BENCH_SCALE_MATRIX, BENCH_SCALE_BACKLOGS, BENCH_SCALE_ROUNDS,
#   BENCH_SCALE_SECONDS, BENCH_ENQUEUE_ROUNDS, BENCH_ENQUEUE_SLICES,
#   BENCH_ENQUEUE_SECONDS
#                        override the sizes (see bench/README.md)
#   BENCH_CLAIMS_REF     the claim matrix's "before" commit (default: the one
#                        before sql/005_fair_keys.sql was added)
#   BENCH_KEEP=1         keep the temp folder (worker logs, pgbench scripts)
#   BENCH_LUA_DIR        run the workers from another copy of lua/ (and make
#                        the pgbench scripts from its vg/queue.lua): compare
#                        a change before and after without touching the tree
#   TEST_DATABASE_URL    an existing server to use (PGTMP_DIR: its pgtmp
#                        folder, for the PostgreSQL bin directory)
#
# --tap prints TAP lines ("ok 1 - ...", "not ok ..." only when a measurement
# could not be taken at all) with the table as "# " comments; tests/run.sh
# runs it that way in make test. There are no timing assertions.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

TAP=0
for a in "$@"; do
    case $a in
        --tap) TAP=1 ;;
        -h|--help) sed -n '2,46p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: sh bench/run.sh [--tap]" >&2; exit 2 ;;
    esac
done

SMOKE=${BENCH_SMOKE:-0}
case $SMOKE in 1|yes|on|true) SMOKE=1 ;; *) SMOKE=0 ;; esac
PARTS=${BENCH_PARTS:-main scale}
if [ -z "${BENCH_OUT:-}" ]; then
    if [ $SMOKE = 1 ]; then BENCH_OUT=$ROOT/build/bench-smoke.json
    elif [ "$PARTS" = scale ]; then BENCH_OUT=$ROOT/build/bench-scale.json
    elif [ "$PARTS" = claims ]; then BENCH_OUT=$ROOT/build/claim-matrix.json
    else BENCH_OUT=$ROOT/build/bench.json; fi
fi
# Not VG_HOST_BIN: tests/run.sh leaves that pointing at the sanitizer build.
VG_HOST=${BENCH_VG_HOST:-$ROOT/build/vg-host}
LUA_DIR=${BENCH_LUA_DIR:-$ROOT/lua}
LUA_DIR=$(cd "$LUA_DIR" && pwd) || { echo "bench: BENCH_LUA_DIR $LUA_DIR not found" >&2; exit 2; }

say() { printf 'bench: %s\n' "$*" >&2; }

# Before the driver runs, failures are reported here (TAP or plain).
fail() {
    if [ $TAP = 1 ]; then
        echo "not ok 1 - benchmark database ready"
        printf '# %s\n' "$@"
        echo "1..1"
    fi
    say "error: $*"
    exit 1
}

BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vg-bench.XXXXXX") || fail "cannot make a temp folder"
chmod 755 "$BENCH_TMP"
OWN_PG=
DB=
ADMIN_URL=
PSQL=psql

cleanup() {
    # Workers the driver started and did not stop (it was killed): each is
    # the leader of its own process group.
    if [ -f "$BENCH_TMP/pids" ]; then
        while read -r pid; do
            if [ -n "$pid" ] && grep -q vg-host "/proc/$pid/cmdline" 2>/dev/null; then
                kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            fi
        done <"$BENCH_TMP/pids"
        sleep 0.2
        while read -r pid; do
            if [ -n "$pid" ] && grep -q vg-host "/proc/$pid/cmdline" 2>/dev/null; then
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$BENCH_TMP/pids"
    fi
    if [ -n "$DB" ] && [ -z "$OWN_PG" ]; then
        # With the driver's own (bench/scale.lua: ${DB}_...), when it could
        # not drop them itself.
        for d in $DB $("$PSQL" -X -q -t -A -d "$ADMIN_URL" -c "SELECT datname FROM pg_database
                        WHERE datname LIKE '${DB}\\_%'" 2>/dev/null); do
            "$PSQL" -X -q -d "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 ||
                say "could not drop database $d"
        done
    fi
    if [ -n "$OWN_PG" ]; then
        sh tests/pgtmp.sh stop "$OWN_PG" >/dev/null 2>&1 || say "could not stop the cluster in $OWN_PG"
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "kept $BENCH_TMP"
    else
        rm -rf "$BENCH_TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ -x "$VG_HOST" ] || fail "$VG_HOST is missing: run make first"

# ---------------------------------------------------------------- the server

# A postgres:// or postgresql+driver:// URL in the form psql and pgbench take.
libpq_url() {
    printf '%s\n' "$1" | sed -e 's|^postgresql+[A-Za-z0-9_]*://|postgresql://|' \
                             -e 's|^postgres://|postgresql://|'
}

# URL of database $2 on the server of URL $1 (same host, user, options).
url_with_db() {
    _base=${1%%\?*}
    _query=${1#"$_base"}
    _rest=${_base#*://}
    case $_rest in
        */*) _base=${_base%/*} ;;
    esac
    printf '%s/%s%s\n' "$_base" "$2" "$_query"
}

BINDIR=
if [ -n "${TEST_DATABASE_URL:-}" ]; then
    ADMIN_URL=$(libpq_url "$TEST_DATABASE_URL")
    if [ -n "${PGTMP_DIR:-}" ] && [ -f "$PGTMP_DIR/pgtmp.bindir" ]; then
        BINDIR=$(cat "$PGTMP_DIR/pgtmp.bindir")
    fi
    DB=vg_bench_$$
    say "using the server of TEST_DATABASE_URL, database $DB"
else
    OWN_PG=$BENCH_TMP/pg
    ADMIN_URL=$(sh tests/pgtmp.sh start "$OWN_PG") || fail "could not start the throw-away PostgreSQL (see above)"
    BINDIR=$(cat "$OWN_PG/pgtmp.bindir")
    DB=vg_bench
fi
if [ -z "$BINDIR" ]; then
    BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n | tail -n 1)
fi
if [ -n "$BINDIR" ] && [ -x "$BINDIR/psql" ]; then PSQL=$BINDIR/psql; fi
command -v "$PSQL" >/dev/null 2>&1 || fail "psql not found (apt-get install postgresql-client)"
PGBENCH=${BENCH_PGBENCH:-}
if [ -z "$PGBENCH" ]; then
    if [ -n "$BINDIR" ] && [ -x "$BINDIR/pgbench" ]; then
        PGBENCH=$BINDIR/pgbench
    else
        PGBENCH=$(command -v pgbench 2>/dev/null || true)
    fi
fi
[ -n "$PGBENCH" ] || say "pgbench not found: the raw limit cannot be measured (apt-get install postgresql)"

BENCH_URL=$(url_with_db "$ADMIN_URL" "$DB")
"$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_URL" \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >"$BENCH_TMP/createdb.log" 2>&1 ||
    fail "could not create database $DB:" "$(cat "$BENCH_TMP/createdb.log")"
if ! LOG_LEVEL=warning DATABASE_URL=$BENCH_URL "$VG_HOST" "$LUA_DIR/migrate.lua" >"$BENCH_TMP/migrate.log" 2>&1; then
    fail "lua/migrate.lua failed:" "$(tail -n 20 "$BENCH_TMP/migrate.log")"
fi

# The claim matrix's "before": a database with the schema of BENCH_CLAIMS_REF
# (its sql/ files in order) and that commit's vg/queue.lua.
OLD_DB= OLD_LUA= OLD_REF=
case " $PARTS " in
    *" claims "*)
        OLD_REF=${BENCH_CLAIMS_REF:-$(git log --diff-filter=A --format=%H -n 1 -- sql/005_fair_keys.sql)~1}
        OLD_REF=$(git rev-parse --short "$OLD_REF" 2>/dev/null) || fail "BENCH_CLAIMS_REF: no such commit"
        OLD_DB=${DB}_old
        OLD_LUA=$BENCH_TMP/old/lua
        mkdir -p "$OLD_LUA/vg"
        git show "$OLD_REF:lua/vg/queue.lua" >"$OLD_LUA/vg/queue.lua" || fail "git show $OLD_REF failed"
        "$PSQL" -X -q -d "$ADMIN_URL" -c "CREATE DATABASE $OLD_DB" >/dev/null 2>&1 ||
            fail "could not create database $OLD_DB"
        for f in $(git ls-tree --name-only "$OLD_REF" sql/ | grep '\.sql$'); do
            git show "$OLD_REF:$f"
        done | "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$(url_with_db "$ADMIN_URL" "$OLD_DB")" >"$BENCH_TMP/old.log" 2>&1 ||
            fail "the schema of $OLD_REF failed:" "$(tail -n 20 "$BENCH_TMP/old.log")"
        ;;
esac

[ $TAP = 1 ] && echo "ok 1 - benchmark database ready ($DB, migrated)"

# ---------------------------------------------------------------- the driver

mkdir -p "$(dirname "$BENCH_OUT")"
LOG_LEVEL=error VG_SHUTDOWN_GRACE=5 BENCH_ROOT=$ROOT BENCH_URL=$BENCH_URL BENCH_TMP=$BENCH_TMP BENCH_VG_HOST=$VG_HOST \
BENCH_PGBENCH=$PGBENCH BENCH_SMOKE=$SMOKE BENCH_TAP=$TAP BENCH_TAP_START=2 BENCH_OUT=$BENCH_OUT \
BENCH_PARTS=$PARTS BENCH_OLD_DB=$OLD_DB BENCH_OLD_LUA=$OLD_LUA BENCH_OLD_REF=$OLD_REF \
BENCH_LUA_DIR=$LUA_DIR LUA_PATH_5_4="$LUA_DIR/?.lua;$ROOT/bench/?.lua;;" \
    "$VG_HOST" bench/driver.lua
rc=$?
if [ $rc -ne 0 ]; then
    say "the driver failed (exit $rc)"
fi
exit $rc
