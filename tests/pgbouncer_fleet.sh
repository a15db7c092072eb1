#!/bin/sh
# make pgbouncer-fleet: 50 workers behind one PgBouncer (transaction mode)
# against a throw-away PostgreSQL with max_connections = 100 complete
# 5,000 tasks: each exactly once, with no connection errors in any log.
# Not part of make test (about a minute on 2 cores).
#
# Connections (README, "Many workers: PgBouncer"): per worker one LISTEN
# session straight to the server (DATABASE_DIRECT_URL); the pool and the
# liveness renewals (VG_LIVENESS_DIRECT=off) through the bouncer, which
# keeps at most FLEET_BOUNCER_POOL server connections. 50 + 30 = 80 of 100.
#
# Environment: FLEET_WORKERS (50), FLEET_TASKS (5000), FLEET_BOUNCER_POOL
# (30), FLEET_MAX_CONNECTIONS (100), VG_HOST_BIN (build/vg-host).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${VG_HOST_BIN:-$ROOT/build/vg-host}
WORKERS=${FLEET_WORKERS:-50}
TASKS=${FLEET_TASKS:-5000}
BPOOL=${FLEET_BOUNCER_POOL:-30}
MAXC=${FLEET_MAX_CONNECTIONS:-100}

TMP=$(mktemp -d /tmp/vg-fleet.XXXXXX)
chmod 755 "$TMP"
PIDS=""
cleanup() {
    for p in $PIDS; do kill -KILL "$p" 2>/dev/null || true; done
    sh tests/pgbouncer.sh stop "$TMP/pgb" >/dev/null 2>&1 || true
    sh tests/pgtmp.sh stop "$TMP/pg" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

say() { echo "pgbouncer-fleet: $*"; }
fail() { say "FAILED: $*"; exit 1; }

PGTMP_MAX_CONNECTIONS=$MAXC PGTMP_FSYNC=off sh tests/pgtmp.sh start "$TMP/pg" >"$TMP/pgtmp.log" || fail "PostgreSQL did not start: $(cat "$TMP/pgtmp.log")"
DIRECT=$(sh tests/pgtmp.sh url "$TMP/pg")
say "PostgreSQL with max_connections = $(psql -X -t -A "$DIRECT" -c 'SHOW max_connections')"
BOUNCER=$(PGB_POOL_SIZE=$BPOOL PGB_MAX_CLIENTS=2000 sh tests/pgbouncer.sh start "$TMP/pgb" "$DIRECT")
say "PgBouncer $(pgbouncer --version | head -n 1 | awk '{print $2}') in transaction mode, $BPOOL server connections"

LOG_LEVEL=warning DATABASE_URL=$DIRECT "$BIN" lua/migrate.lua >"$TMP/migrate.log" 2>&1 ||
    fail "migrate: $(cat "$TMP/migrate.log")"
psql -X -q "$DIRECT" <<EOF
CREATE TABLE test_executions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id bigint NOT NULL, worker_id text NOT NULL, step text NOT NULL,
    attempt int NOT NULL DEFAULT 0, at timestamptz NOT NULL DEFAULT now());
INSERT INTO channels (id) SELECT 'fleet' || g FROM generate_series(1, 20) g;
INSERT INTO tasks (channel_id, pipeline)
SELECT 'fleet' || (1 + g % 20), 'record' FROM generate_series(1, $TASKS) g;
EOF

KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')
i=1
start=$(date +%s)
while [ "$i" -le "$WORKERS" ]; do
    DATABASE_URL=$BOUNCER DATABASE_DIRECT_URL=$DIRECT VG_LIVENESS_DIRECT=off \
    FERNET_KEY=$KEY WORKER_ID=fleet-$i VG_CONCURRENCY=4 VG_DB_POOL_SIZE=2 VG_DB_MAX_OVERFLOW=2 \
    VG_PIPELINES=spec.support.test_pipelines LUA_PATH="$ROOT/?.lua;;" \
    VG_POLL_INTERVAL=1 VG_HEARTBEAT_INTERVAL=5 \
        "$BIN" lua/worker.lua >"$TMP/w$i.log" 2>&1 &
    PIDS="$PIDS $!"
    i=$((i + 1))
done
say "$WORKERS workers started"

done_n=0
peak=0
while :; do
    done_n=$(psql -X -t -A "$DIRECT" -c "SELECT count(*) FROM tasks WHERE status = 'completed'")
    conns=$(psql -X -t -A "$DIRECT" -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    [ "$conns" -gt "$peak" ] && peak=$conns
    [ "$done_n" -ge "$TASKS" ] && break
    [ $(( $(date +%s) - start )) -lt 600 ] || fail "only $done_n of $TASKS tasks completed in 600 s"
    sleep 0.5
done
secs=$(( $(date +%s) - start ))
say "$done_n tasks completed in about $secs s; at most $peak server connections seen"

for p in $PIDS; do kill -TERM "$p" 2>/dev/null || true; done
for p in $PIDS; do wait "$p" || fail "a worker exited with $?"; done
PIDS=""

execs=$(psql -X -t -A "$DIRECT" -c "SELECT count(*) || ' ' || count(DISTINCT task_id) FROM test_executions")
[ "$execs" = "$TASKS $TASKS" ] || fail "executions (all, distinct tasks): $execs, expected $TASKS $TASKS"
left=$(psql -X -t -A "$DIRECT" -c "SELECT count(*) FROM tasks WHERE status <> 'completed'")
[ "$left" = 0 ] || fail "$left tasks not completed"
bad=$(cat "$TMP"/w*.log | grep -c -E '"level":"(error|critical)"|database_connect_failed|too many clients|pool_timeout' || true)
[ "$bad" = 0 ] || fail "$bad error lines in the workers' logs, the first: $(cat "$TMP"/w*.log | grep -m 1 -E '"level":"(error|critical)"|database_connect_failed|too many clients|pool_timeout')"
shut=$(grep -l '"event":"worker_shutdown"' "$TMP"/w*.log | wc -l)
[ "$shut" = "$WORKERS" ] || fail "only $shut of $WORKERS workers logged worker_shutdown"
say "ok: $TASKS tasks, each executed once, $WORKERS workers, no connection errors, peak $peak of $MAXC server connections"
