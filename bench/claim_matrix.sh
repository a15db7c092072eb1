#!/bin/sh
# The claim at scale (issue 13; docs/fair_claim.md): pgbench runs
# claim-and-complete at 10 clients, one task per claim, for three claims on
# the same tasks table:
#   fair    this tree's CLAIM_SQL (fair keys, sql/005_fair_keys.sql)
#   probe   the claim before it (three probes per channel; REF, default the
#           commit before 005), on a database migrated to that commit's schema
#   fifo    the claim a user writes by hand: ORDER BY id FOR UPDATE SKIP LOCKED,
#           with its own partial index (id) WHERE status = 'pending'
# for channels x channels with work: 10 x 10, 1,000 x 10, 1,000 x all,
# 10,000 x 10, 10,000 x all, with BACKLOG queued tasks (default 20,000).
# Prints tasks/s and the claim statement's mean execution time
# (pg_stat_statements), and the enqueue rate of 10 pgbench producers with
# and without the fair-key trigger, and of 10 producers on one channel.
#
#   sh bench/claim_matrix.sh            (about 4 minutes)
#   CM_SECONDS=8 CM_BACKLOG=20000 CM_REF=<commit> CM_MATRIX="10:10 10000:all"
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${VG_HOST_BIN:-$ROOT/build/vg-host}
SECS=${CM_SECONDS:-8}
BACKLOG=${CM_BACKLOG:-60000}
REF=${CM_REF:-$(git log --diff-filter=A --format=%H -n 1 -- sql/005_fair_keys.sql)~1}
MATRIX=${CM_MATRIX:-"10:10 1000:10 1000:all 10000:10 10000:all"}
TMP=$(mktemp -d /tmp/vg-claim-matrix.XXXXXX)
chmod 755 "$TMP"
cleanup() { sh tests/pgtmp.sh stop "$TMP/pg" >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM

sh tests/pgtmp.sh start "$TMP/pg" >"$TMP/pgtmp.log" 2>&1 || { cat "$TMP/pgtmp.log"; exit 1; }
URL=$(sh tests/pgtmp.sh url "$TMP/pg")
BASE=${URL%/*}
PGBENCH=$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -n 1)
export PGOPTIONS="-c plan_cache_mode=force_generic_plan"

# The new schema in vg, the old one in vgold.
LOG_LEVEL=warning DATABASE_URL=$URL "$BIN" lua/migrate.lua >/dev/null
psql -X -q "$BASE/postgres" -c "CREATE DATABASE vgold"
mkdir -p "$TMP/old/sql" "$TMP/old/lua/vg"
for f in $(git ls-tree --name-only "$REF" sql/ | grep '\.sql$'); do
    git show "$REF:$f" >"$TMP/old/$f"
done
git show "$REF:lua/vg/queue.lua" >"$TMP/old/lua/vg/queue.lua"
cat "$TMP"/old/sql/0*.sql | psql -X -q -v ON_ERROR_STOP=1 "$BASE/vgold" >/dev/null
for db in vg vgold; do psql -X -q "$BASE/$db" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null || true; done

# The claim statements as pgbench scripts ($1..$4 -> worker, instance, 60 s, 1).
sql_of() { # module-dir var
    cat >"$TMP/print.lua" <<EOF
package.path = "$1/?.lua;" .. package.path
print(require("vg.queue").$2)
EOF
    "$BIN" "$TMP/print.lua" | sed -e "s/\\\$1/'bench'/g" -e "s/\\\$2/'bench:1'/g" \
        -e 's/\$3/60/g' -e 's/\$4/1/g'
}
{ sql_of "$ROOT/lua" CLAIM_SQL; echo '\gset'; echo "UPDATE tasks SET status = 'completed', updated_at = now(), completed_at = now() WHERE id = :id;"; } >"$TMP/fair.sql"
{ sql_of "$TMP/old/lua" CLAIM_SQL; echo '\gset'; echo "UPDATE tasks SET status = 'completed', updated_at = now(), completed_at = now() WHERE id = :id;"; } >"$TMP/probe.sql"
cat >"$TMP/fifo.sql" <<'EOF'
UPDATE tasks SET status = 'claimed', claimed_by = 'bench', claimed_at = now(), updated_at = now(),
       lease_expires_at = now() + interval '60 seconds', attempts = attempts + 1,
       lease_token = lease_token + 1
 WHERE id = (SELECT id FROM tasks WHERE status = 'pending' AND run_at <= now()
              ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
\gset
UPDATE tasks SET status = 'completed', updated_at = now(), completed_at = now() WHERE id = :id;
EOF

fill() { # db channels busy
    psql -X -q "$BASE/$1" >/dev/null 2>&1 <<EOF
TRUNCATE tasks, channels RESTART IDENTITY CASCADE;
INSERT INTO channels (id) SELECT 'c' || g FROM generate_series(1, $2) g;
INSERT INTO tasks (channel_id, pipeline) SELECT 'c' || (1 + g % $3), 'noop' FROM generate_series(1, $BACKLOG) g;
VACUUM ANALYZE tasks;
VACUUM ANALYZE channels;
SELECT pg_stat_statements_reset();
EOF
}

run() { # db script -> "tps mean_ms"
    tps=$("$PGBENCH" -n -c 10 -j 2 -T "$SECS" -M prepared -f "$TMP/$2.sql" "$BASE/$1" 2>"$TMP/pgbench.err" | tee "$TMP/pgbench.out" |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    if grep -qi "error\|abort" "$TMP/pgbench.err"; then
        echo "pgbench ($1, $2): $(grep -i -m 2 'error\|abort' "$TMP/pgbench.err" | tr '\n' ' ')" >&2
        tps=failed
    fi
    mean=$(psql -X -t -A "$BASE/$1" -c "SELECT round(sum(total_exec_time)::numeric / nullif(sum(calls), 0), 3)
                                         FROM pg_stat_statements WHERE query LIKE '%SKIP LOCKED%' AND query NOT LIKE '%pg_stat%'")
    echo "${tps:-failed} ${mean:-?}"
}

printf '%-26s %22s %22s %22s\n' "channels x with work" "fair: tasks/s, ms" "probe: tasks/s, ms" "fifo: tasks/s, ms"
for m in $MATRIX; do
    ch=${m%%:*}
    busy=${m#*:}
    [ "$busy" = all ] && busy=$ch
    fill vg "$ch" "$busy"; f=$(run vg fair)
    fill vgold "$ch" "$busy"; p=$(run vgold probe)
    fill vg "$ch" "$busy"
    psql -X -q "$BASE/vg" -c "CREATE INDEX tasks_fifo_idx ON tasks (id) WHERE status = 'pending'"
    q=$(run vg fifo)
    psql -X -q "$BASE/vg" -c "DROP INDEX tasks_fifo_idx"
    printf '%-26s %22s %22s %22s\n' "$ch x ${m#*:}, $BACKLOG queued" "$f" "$p" "$q"
done

# Enqueue: 10 producers, 10 channels, with the trigger, and into a copy of
# the table without it (same indexes); then 10 producers on one channel.
psql -X -q "$BASE/vg" >/dev/null <<'EOF'
TRUNCATE tasks, channels RESTART IDENTITY CASCADE;
INSERT INTO channels (id) SELECT 'c' || g FROM generate_series(1, 10) g;
CREATE TABLE tasks_plain (LIKE tasks INCLUDING ALL);

EOF
cat >"$TMP/enq.sql" <<'EOF'
\set c random(1, 10)
INSERT INTO tasks (channel_id, pipeline, payload) VALUES ('c' || :c, 'noop', '{}');
EOF
cat >"$TMP/enq_one.sql" <<'EOF'
INSERT INTO tasks (channel_id, pipeline, payload) VALUES ('c1', 'noop', '{}');
EOF
sed 's/INTO tasks /INTO tasks_plain /' "$TMP/enq.sql" >"$TMP/enq_plain.sql"
tps_of() { sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
enq() { "$PGBENCH" -n -c 10 -j 2 -T "$SECS" -M prepared -f "$TMP/$1.sql" "$BASE/vg" | tps_of; }
trig() { psql -X -q "$BASE/vg" -c "ALTER TABLE tasks $1 TRIGGER tasks_fair_key_insert"; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Interleaved rounds (the machine's speed drifts); the median of each.
with10="" without10="" with1="" without1=""
for r in $(seq "${CM_ENQ_ROUNDS:-3}"); do
    trig ENABLE;  with10="$with10 $(enq enq)"
    trig DISABLE; without10="$without10 $(enq enq)"
    trig ENABLE;  with1="$with1 $(enq enq_one)"
    trig DISABLE; without1="$without1 $(enq enq_one)"
done
trig ENABLE
plain=$(enq enq_plain)
echo "enqueue, 10 producers over 10 channels, tasks/s: with the fair-key trigger$with10 (median $(echo $with10 | median)); without it$without10 (median $(echo $without10 | median))"
echo "enqueue, 10 producers on one channel, tasks/s: with the fair-key trigger$with1 (median $(echo $with1 | median)); without it$without1 (median $(echo $without1 | median))"
echo "enqueue into a copy of tasks with no triggers and no foreign key (no NOTIFY at all): $plain/s"
