#!/bin/sh
# make demo: the whole platform on one machine, offline.
#
#   1. a throw-away PostgreSQL (tests/pgtmp.sh) unless DATABASE_URL is set
#   2. migrations (lua/migrate.lua)
#   3. two channels with Fernet-encrypted demo credentials (a FERNET_KEY is
#      generated for the run unless one is set)
#   4. five videos enqueued (lua/enqueue.lua) with different titles, scene
#      counts and priorities
#   5. three workers (lua/worker.lua, two tasks each at once) making the
#      videos with the offline step commands in scripts/steps/
#   6. progress: one line whenever a task moves on; review gates are
#      approved automatically (lua/review.lua approve --actor demo), which
#      a person would do in production
#   7. at the end: the workers get SIGTERM and must exit 0, then the paths,
#      lengths and costs of the videos, per video and per channel
#
# Everything it writes is under ./demo-output/ (workspace/ with the videos,
# logs/ with every process's log). It gives up after VG_DEMO_TIMEOUT seconds
# (default 600). Ctrl-C stops the workers and the database cleanly.
#
# The throw-away PostgreSQL is removed when the demo ends, so its URL is not
# printed. With VG_DEMO_KEEP_DB=1 a demo that got to the end leaves it
# running and prints its URL and the command that stops it (an interrupted
# or timed-out demo still removes it).
#
# With DATABASE_URL set, that database is used (and kept): the demo adds its
# channels (demo-nature, demo-city) and tasks; workers started here may also
# pick up other queued tasks of that database.
#
# Other settings, for quick runs and tests:
#   VG_DEMO_PIPELINE  video (default) or noop: the five tasks go through the
#                     noop pipeline (no steps, no videos, no media tools
#                     needed), so the whole demo takes a few seconds
#   VG_DEMO_OUTPUT    folder for workspace/ and logs/ instead of
#                     ./demo-output (only those and tmp/ inside it are
#                     replaced)
#   VG_HOST_BIN       the vg-host binary (default build/vg-host)
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${VG_HOST_BIN:-$ROOT/build/vg-host}
OUT=${VG_DEMO_OUTPUT:-$ROOT/demo-output}
PIPELINE=${VG_DEMO_PIPELINE:-video}
LOGS=$OUT/logs
WORKSPACE=$OUT/workspace
TIMEOUT=${VG_DEMO_TIMEOUT:-600}
WORKERS=3

say() { printf 'demo: %s\n' "$*"; }
# One word for a shell command line: quoted when it holds anything else
# than letters, digits and _./:@%+=,-
quote() {
    case $1 in
        '' | *[!A-Za-z0-9_./:@%+=,-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s' "$1" ;;
    esac
}
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

case $PIPELINE in
    video) TOOLS="ffmpeg ffprobe espeak-ng sox jq psql" ;;
    noop) TOOLS="jq psql" ;;
    *) die "VG_DEMO_PIPELINE must be video or noop, not '$PIPELINE'" ;;
esac
[ -x "$BIN" ] || die "$BIN is missing; run make demo (it builds it first)"
for tool in $TOOLS; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed; run make deps"
done

PGDIR=""
WORKER_PIDS=""
finished=0

# SIGTERM; workers still busy after 3 s get a second one, which ends their
# shutdown grace (their tasks are released back to the queue).
stop_workers() {
    [ -n "$WORKER_PIDS" ] || return 0
    for pid in $WORKER_PIDS; do kill -TERM "$pid" 2>/dev/null || true; done
    n=0
    while [ "$n" -lt 30 ]; do
        alive=""
        for pid in $WORKER_PIDS; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
        [ -n "$alive" ] || break
        sleep 0.1
        n=$((n + 1))
    done
    if [ -n "$alive" ]; then
        say "workers still busy; a second SIGTERM ends their grace (unfinished tasks go back to the queue)"
        for pid in $alive; do kill -TERM "$pid" 2>/dev/null || true; done
    fi
    for pid in $WORKER_PIDS; do wait "$pid" 2>/dev/null || true; done
    WORKER_PIDS=""
}

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    if [ -n "$WORKER_PIDS" ]; then
        say "stopping the workers"
        stop_workers
    fi
    if [ -n "$PGDIR" ] && [ "$finished" -eq 1 ] && [ "${VG_DEMO_KEEP_DB:-0}" = 1 ]; then
        say "PostgreSQL keeps running (VG_DEMO_KEEP_DB=1): DATABASE_URL=$DATABASE_URL"
        say "stop it with: sh $(quote "$ROOT/tests/pgtmp.sh") stop $(quote "$PGDIR")"
    elif [ -n "$PGDIR" ]; then
        say "stopping and removing the throw-away PostgreSQL"
        sh tests/pgtmp.sh stop "$PGDIR" >>"$LOGS/postgres.log" 2>&1 || true
    fi
    if [ "$finished" -ne 1 ]; then
        say "stopped before the end (exit $rc); logs are in $LOGS"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

rm -rf "$LOGS" "$WORKSPACE" "$OUT/tmp"
mkdir -p "$LOGS" "$WORKSPACE" "$OUT/tmp"

# ---------------------------------------------------------------- database

if [ -z "${DATABASE_URL:-}" ]; then
    say "starting a throw-away PostgreSQL (DATABASE_URL is not set)"
    # Under /tmp, not demo-output: when run as root the server runs as the
    # postgres user, who may not be able to enter the checkout (/root/...).
    PGDIR=$(mktemp -d "${TMPDIR:-/tmp}/vg-demo-pg.XXXXXX")
    if ! DATABASE_URL=$(sh tests/pgtmp.sh start "$PGDIR" 2>"$LOGS/postgres.log"); then
        cat "$LOGS/postgres.log" >&2
        die "could not start PostgreSQL"
    fi
    if [ "${VG_DEMO_KEEP_DB:-0}" = 1 ]; then
        say "PostgreSQL is up; it keeps running after a finished demo (VG_DEMO_KEEP_DB=1)"
    else
        say "PostgreSQL is up (removed when the demo ends; VG_DEMO_KEEP_DB=1 keeps it)"
    fi
else
    say "using the database in DATABASE_URL"
fi
export DATABASE_URL
# psql wants plain postgresql:// (DATABASE_URL may say postgresql+asyncpg://).
PSQL_URL=$(printf '%s' "$DATABASE_URL" | sed 's#^[A-Za-z]*+[A-Za-z0-9_]*://#postgresql://#')
sql() { psql "$PSQL_URL" -X -q -At -F '|' -v ON_ERROR_STOP=1 -c "$1"; }

if [ -z "${FERNET_KEY:-}" ]; then
    printf 'print(require("vg.fernet").generate_key())\n' >"$OUT/tmp/genkey.lua"
    FERNET_KEY=$(LOG_LEVEL=warning "$BIN" "$OUT/tmp/genkey.lua")
    say "generated a FERNET_KEY for this run (not printed)"
fi
export FERNET_KEY

say "applying migrations"
"$BIN" lua/migrate.lua >"$LOGS/migrate.log" 2>&1 || { cat "$LOGS/migrate.log" >&2; die "migrations failed"; }

# ---------------------------------------------------------------- channels

# The credentials are encrypted with FERNET_KEY by vg.fernet; the database
# only ever sees the tokens, and the steps get the plain text in
# VG_CHANNEL_CREDENTIALS (the demo steps only report that they got some).
cat >"$OUT/tmp/channels.lua" <<'EOF'
require("vg.config").load { "DATABASE_URL", "FERNET_KEY" }
local db = require "vg.db"
local fernet = require("vg.fernet").new()
local channels = {
  { "demo-nature", "Nature Moments", '{"image_api_key":"demo-not-a-real-key-1","voice":"en"}' },
  { "demo-city", "City Nights", '{"image_api_key":"demo-not-a-real-key-2","voice":"en"}' },
}
for _, c in ipairs(channels) do
  db.query([[INSERT INTO channels (id, name, credentials_encrypted, review_gates)
             VALUES ($1, $2, $3, true)
             ON CONFLICT (id) DO UPDATE
                SET name = EXCLUDED.name, credentials_encrypted = EXCLUDED.credentials_encrypted,
                    review_gates = true, is_active = true]],
           c[1], c[2], fernet:encrypt(c[3]))
  print(c[1] .. " (" .. c[2] .. ")")
end
db.close()
EOF
LOG_LEVEL=warning "$BIN" "$OUT/tmp/channels.lua" >"$OUT/tmp/channels.out" 2>"$LOGS/channels.log" \
    || { cat "$LOGS/channels.log" >&2; die "could not create the channels"; }
say "channels with encrypted credentials: $(tr '\n' ' ' <"$OUT/tmp/channels.out")"

# ---------------------------------------------------------------- tasks

TASKS=""
enqueue() {
    channel=$1 priority=$2 payload=$3
    if ! LOG_LEVEL=warning "$BIN" lua/enqueue.lua --channel "$channel" --pipeline "$PIPELINE" \
            --priority "$priority" "$payload" >"$OUT/tmp/enqueue.out" 2>>"$LOGS/enqueue.log"; then
        cat "$OUT/tmp/enqueue.out" "$LOGS/enqueue.log" >&2
        die "enqueue failed"
    fi
    id=$(grep -E '^[0-9]+$' "$OUT/tmp/enqueue.out" | tail -n 1)
    [ -n "$id" ] || { cat "$OUT/tmp/enqueue.out" >&2; die "enqueue printed no task id"; }
    TASKS="$TASKS $id"
    title=$(printf '%s' "$payload" | jq -r .title)
    scenes=$(printf '%s' "$payload" | jq -r '.scenes // 3')
    sps=$(printf '%s' "$payload" | jq -r '.seconds_per_scene // 2')
    printf '  task %-4s %-12s %-7s %s scenes x %s s  "%s"\n' "$id" "$channel" "$priority" "$scenes" "$sps" "$title"
}
if [ "$PIPELINE" = video ]; then
    say "enqueueing five videos"
else
    say "enqueueing five $PIPELINE tasks (VG_DEMO_PIPELINE=$PIPELINE: no steps, no videos)"
fi
enqueue demo-nature high   '{"title":"Autumn Forest","topic":"a walk through an autumn forest","scenes":3,"seconds_per_scene":2}'
enqueue demo-city   normal '{"title":"City at Night","topic":"neon lights and rain in the city","scenes":3,"seconds_per_scene":3}'
enqueue demo-nature normal '{"title":"Ocean Waves","topic":"waves rolling onto a quiet beach at dawn","scenes":4,"seconds_per_scene":2}'
enqueue demo-city   low    '{"title":"Desert Road","topic":"a long empty road through the desert","scenes":2,"seconds_per_scene":3}'
enqueue demo-nature normal '{"title":"Forest Rain","narration":"Rain falls softly on the forest. Every leaf drinks. Then the sun returns.","scenes":5,"seconds_per_scene":2}'
IDS=$(echo $TASKS | tr ' ' ',')

# ---------------------------------------------------------------- workers

say "starting $WORKERS workers (2 tasks each at once); logs in $LOGS"
i=1
while [ "$i" -le "$WORKERS" ]; do
    WORKER_ID=demo-worker-$i VG_CONCURRENCY=2 VG_WORKSPACE="$WORKSPACE" \
        VG_POLL_INTERVAL=2 VG_HEARTBEAT_INTERVAL=10 \
        "$BIN" lua/worker.lua >"$LOGS/demo-worker-$i.log" 2>&1 &
    WORKER_PIDS="$WORKER_PIDS $!"
    i=$((i + 1))
done

# ---------------------------------------------------------------- progress

# A compact word per task: queued, the running step (k/6), the gate it
# waits at, or its final state.
STATE_SQL="SELECT t.id, t.status, coalesce(t.current_step, ''),
                  (SELECT count(*) FROM task_steps s WHERE s.task_id = t.id AND s.status = 'completed')
             FROM tasks t WHERE t.id IN ($IDS) ORDER BY t.id"

step_name() {
    case $1 in
        1) echo asset_generation ;; 2) echo composite_creation ;; 3) echo video_generation ;;
        4) echo narration_generation ;; 5) echo sound_effects_generation ;; 6) echo video_assembly ;;
        *) echo "step $1" ;;
    esac
}

say "progress (one line whenever a task moves on):"
start=$(date +%s)
last=""
approved=""
while :; do
    now=$(date +%s)
    elapsed=$((now - start))
    rows=$(sql "$STATE_SQL") || die "the database stopped answering"
    line=""
    open=0
    gates=""
    for row in $rows; do
        id=${row%%|*}; rest=${row#*|}
        status=${rest%%|*}; rest=${rest#*|}
        step=${rest%%|*}; done_steps=${rest#*|}
        case $status in
            pending|retry) word="queued"; [ "$status" = retry ] && word="retry"; open=1 ;;
            approved) word="approved"; open=1 ;;
            claimed) word="claimed"; open=1 ;;
            processing)
                word=running
                [ "$PIPELINE" = video ] && word="$((done_steps + 1))/6:$(step_name $((done_steps + 1)))"
                open=1 ;;
            awaiting_review) word="review:$step"; open=1; gates="$gates $id:$step" ;;
            *) word=$status ;;
        esac
        line="$line  #$id $word"
    done
    if [ "$line" != "$last" ]; then
        printf '[%4ss]%s\n' "$elapsed" "$line"
        last=$line
    fi
    for g in $gates; do
        id=${g%%:*}; step=${g#*:}
        case " $approved " in *" $g "*) continue ;; esac
        say "auto-approving review gate for task $id after $step (a person would review here)"
        LOG_LEVEL=warning "$BIN" lua/review.lua approve "$id" --actor demo \
            --reason "auto-approved by make demo" >>"$LOGS/review.log" 2>&1 \
            || say "approving task $id failed; see $LOGS/review.log"
        approved="$approved $g"
    done
    [ "$open" -eq 1 ] || break
    if [ "$elapsed" -ge "$TIMEOUT" ]; then
        say "giving up: the videos are not done after $TIMEOUT s"
        say "state:"; sql "SELECT id, status, current_step, last_error FROM tasks WHERE id IN ($IDS) ORDER BY id" | sed 's/^/  /'
        say "worker logs: $LOGS"
        exit 1
    fi
    for pid in $WORKER_PIDS; do
        kill -0 "$pid" 2>/dev/null || die "a worker (pid $pid) died; see $LOGS"
    done
    sleep 1
done

# ---------------------------------------------------------------- stop

say "all tasks are finished; sending SIGTERM to the workers"
bad=0
for pid in $WORKER_PIDS; do kill -TERM "$pid" 2>/dev/null || true; done
n=1
for pid in $WORKER_PIDS; do
    if wait "$pid"; then rc=0; else rc=$?; fi
    [ "$rc" -eq 0 ] || { say "demo-worker-$n exited $rc (expected 0); see $LOGS/demo-worker-$n.log"; bad=1; }
    n=$((n + 1))
done
WORKER_PIDS=""
[ "$bad" -eq 0 ] && say "the workers exited cleanly (exit 0)"

# ---------------------------------------------------------------- report

if [ "$PIPELINE" = noop ]; then
    echo
    say "tasks:"
    completed=0
    sql "SELECT id, channel_id, status, coalesce(claimed_by, ''), coalesce(last_error, '')
           FROM tasks WHERE id IN ($IDS) ORDER BY id" >"$OUT/tmp/report"
    while IFS='|' read -r id channel status by err; do
        printf '  task %-4s %-12s %-10s %s %s\n' "$id" "$channel" "$status" "$by" "$err"
        if [ "$status" = completed ]; then completed=$((completed + 1)); fi
    done <"$OUT/tmp/report"
else
    echo
    say "videos:"
    completed=0
    sql "SELECT t.id, t.channel_id, t.status, coalesce(t.payload->>'title', ''), coalesce(v.path, ''),
                coalesce(v.size_bytes, 0),
                (SELECT coalesce(sum(c.cost_usd), 0) FROM video_costs c WHERE c.task_id = t.id)::numeric(12,4),
                coalesce(t.last_error, '')
           FROM tasks t LEFT JOIN LATERAL (SELECT * FROM videos v WHERE v.task_id = t.id
                                            ORDER BY v.id DESC LIMIT 1) v ON true
          WHERE t.id IN ($IDS) ORDER BY t.id" >"$OUT/tmp/report"
    while IFS='|' read -r id channel status title path size cost err; do
        if [ "$status" = completed ] && [ -n "$path" ]; then
            dur=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$path" 2>/dev/null || true)
            case $dur in ''|*[!0-9.]*) dur=0 ;; esac
            printf '  task %-4s %-12s %-15s %6.2f s  %8s bytes  $%s\n      %s\n' \
                "$id" "$channel" "\"$title\"" "$dur" "$size" "$cost" "$path"
            completed=$((completed + 1))
        else
            printf '  task %-4s %-12s %-15s %s  $%s  %s\n' "$id" "$channel" "\"$title\"" "$status" "$cost" "$err"
        fi
    done <"$OUT/tmp/report"

    echo
    say "cost per channel:"
    sql "SELECT channel_id, count(DISTINCT task_id), sum(cost_usd)::numeric(12,4)
           FROM video_costs WHERE task_id IN ($IDS) GROUP BY channel_id ORDER BY channel_id" |
    while IFS='|' read -r channel n cost; do
        printf '  %-12s %d videos  $%s\n' "$channel" "$n" "$cost"
    done
    say "cost per component: $(sql "SELECT string_agg(component || ' \$' || total, ', ' ORDER BY component)
           FROM (SELECT component, sum(cost_usd)::numeric(12,4) AS total FROM video_costs
                  WHERE task_id IN ($IDS) GROUP BY component) x")"
    say "total: \$$(sql "SELECT coalesce(sum(cost_usd), 0)::numeric(12,4) FROM video_costs WHERE task_id IN ($IDS)") (simulated prices; the demo steps call no paid API)"
    say "review decisions: $(sql "SELECT count(*) FROM audit_logs WHERE task_id IN ($IDS) AND action = 'task_approved'") approvals recorded in audit_logs"
fi
echo
total=$(echo $TASKS | wc -w)
if [ "$completed" -eq "$total" ] && [ "$bad" -eq 0 ]; then
    if [ "$PIPELINE" = video ]; then
        say "done: $completed videos in $WORKSPACE (play one with: ffplay <path>)"
    else
        say "done: $completed $PIPELINE tasks completed"
    fi
    finished=1
else
    say "finished with problems: $completed of $total tasks completed; logs in $LOGS"
    finished=1
    exit 1
fi
