#!/bin/sh
# make image-test: build the real Dockerfile with a container engine and run
# the image against a throw-away PostgreSQL, as Railway would:
#   - the pre-deploy command (lua/migrate.lua);
#   - a worker started with railway.json's startCommand (tini in front)
#     completing a noop and a video task;
#   - `podman stop -t 45`, ending in worker_shutdown and exit 0;
#   - every other service config: railway.<service>.json at the root and
#     each railway.json snippet in the README, its start command run in the
#     image (a service until it is up, then stopped; a cron job until it
#     exits 0).
#
# Start and pre-deploy commands are split into words the way Railway splits
# them (tests/start_command.lua: shell-style quotes, no shell, no variable
# expansion) and replace the image's ENTRYPOINT, as on Railway. Every config
# is also checked without an engine: valid JSON, a command that splits, tini
# first, the migrate pre-deploy command, drainingSeconds a number above
# VG_SHUTDOWN_GRACE for a service.
#
#   sh tests/image.sh [--tap] [--if-engine]
#
# Tools: Debian's podman, runc and debootstrap (installed with apt-get when
# missing and run as root). No registry is needed: the FROM image is made
# from Debian's archive with `debootstrap --variant=minbase bookworm`,
# trimmed the way the official slim image is, and imported under the FROM
# name (about half a minute); it is kept in podman's storage, so later runs
# skip that step.
# Build: podman build --pull=never --network host --isolation chroot.
# Run:   podman run --runtime runc --network host with explicit ulimits (a
# sandbox may not be allowed to raise limits, and crun may refuse its cgroup
# set-up).
#
# When no engine really works here (`podman info` or the base image fails),
# it says so and instead runs the build stage's commands over exactly the
# files the build stage's COPY lines name, so a missing COPY is still
# caught. --if-engine: in that case do only that fallback and say the image
# was not built (make test uses it).
#
# Environment: VG_IMAGE_ENGINE=none (take the fallback, as if no engine
# worked), TEST_DATABASE_URL (a server to use; default: tests/pgtmp.sh
# starts one), VG_IMAGE (tag, default vg-host:image-test-PID),
# VG_IMAGE_KEEP=1 (keep the image afterwards, to run it by hand).
# Needs jq and lua5.4 (make deps installs both).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TAP=0
IF_ENGINE=0
for a in "$@"; do
    case $a in
        --tap) TAP=1 ;;
        --if-engine) IF_ENGINE=1 ;;
        *) echo "usage: sh tests/image.sh [--tap] [--if-engine]" >&2; exit 2 ;;
    esac
done

# Its own tag per run: two checkouts may run this at once on one machine.
IMAGE=${VG_IMAGE:-vg-host:image-test-$$}
NAME=vg-image-test-$$
n=0
nfail=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vg-image.XXXXXX")
PGDIR=""
STARTED=$(date +%s)

say() { printf 'image-test: %s\n' "$*" >&2; }
ok() {
    n=$((n + 1))
    if [ $TAP = 1 ]; then echo "ok $n - $1"; else say "ok: $1"; fi
}
not_ok() {
    n=$((n + 1))
    nfail=$((nfail + 1))
    if [ $TAP = 1 ]; then
        echo "not ok $n - $1"
        shift
        for l in "$@"; do printf '%s\n' "$l" | sed 's/^/# /'; done
    else
        say "FAILED: $1"
        shift
        for l in "$@"; do printf '%s\n' "$l" >&2; done
    fi
}
finish() {
    [ $TAP = 1 ] && echo "1..$n"
    say "$((n - nfail)) of $n checks passed in $(( $(date +%s) - STARTED )) s"
    [ $nfail -eq 0 ]
    exit $?
}
cleanup() {
    if command -v podman >/dev/null 2>&1; then
        podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
        [ -f "$WORK/containers" ] && while read -r c; do
            podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
        done <"$WORK/containers"
        [ "${VG_IMAGE_KEEP:-0}" = 1 ] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    fi
    [ -n "$PGDIR" ] && sh tests/pgtmp.sh stop "$PGDIR" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ the Railway configs

# Every service config a user may deploy, one file each under $WORK/configs,
# listed in $WORK/configs.list as "FILE<tab>LABEL": railway.json, each
# railway.<service>.json at the root, and each railway.json snippet in the
# README (an indented block from a line "{" to its "}" that holds a
# startCommand).
collect_configs() {
    mkdir -p "$WORK/configs"
    : >"$WORK/configs.list"
    for f in railway.json railway.*.json; do
        [ -f "$f" ] || continue
        cp "$f" "$WORK/configs/$f"
        printf '%s\t%s\n' "$WORK/configs/$f" "$f" >>"$WORK/configs.list"
    done
    awk -v dir="$WORK/configs" -v list="$WORK/configs.list" '
        !inblk && /^    +[{]$/ { inblk = 1; pad = substr($0, 1, index($0, "{") - 1); buf = "" }
        inblk { buf = buf substr($0, length(pad) + 1) "\n" }
        inblk && $0 == pad "}" {
            inblk = 0
            if (buf ~ /"startCommand"/) {
                n++
                f = dir "/README-" n ".json"
                printf "%s", buf > f
                close(f)
                printf "%s\tREADME snippet %d\n", f, n >> list
            }
        }' README.md
}

# split_command COMMAND OUT: COMMAND's words as Railway runs them, one a
# line, into OUT; the reason on stderr when it cannot be run as it is.
split_command() {
    lua5.4 tests/start_command.lua "$1" >"$2"
}

# The checks that need no engine, for the config FILE named LABEL.
check_config() {
    f=$1
    label=$2
    if ! jq -e '.deploy | type == "object"' "$f" >/dev/null 2>"$WORK/jq.err"; then
        not_ok "$label: a railway.json with a deploy section" "$(cat "$WORK/jq.err")"
        return
    fi
    problems=""
    start=$(jq -r '.deploy.startCommand // ""' "$f")
    argv=""
    if split_command "$start" "$WORK/words" 2>"$WORK/split.err"; then
        [ "$(sed -n 1,2p "$WORK/words" | tr '\n' ' ')" = "/usr/bin/tini -- " ] ||
            problems="$problems
startCommand does not begin with /usr/bin/tini -- (Railway's start command replaces the ENTRYPOINT)"
        argv=$(sed 's/.*/[&]/' "$WORK/words" | tr '\n' ' ')
        # A word that opens like JSON (a payload) must be JSON once split.
        while IFS= read -r w; do
            case $w in
                '{'*|'['*) printf '%s' "$w" | jq -e . >/dev/null 2>&1 ||
                    problems="$problems
the word $w is not JSON once split (quote a JSON argument with single quotes)" ;;
            esac
        done <"$WORK/words"
    else
        problems="$problems
$(cat "$WORK/split.err")"
    fi
    pre=$(jq -r '.deploy.preDeployCommand // [] | if type == "array" then .[] else . end' "$f")
    [ "$pre" = "vg-host lua/migrate.lua" ] ||
        problems="$problems
preDeployCommand is not [\"vg-host lua/migrate.lua\"] (a first deploy against an unmigrated database fails without it): ${pre:-none}"
    if [ -z "$(jq -r '.deploy.cronSchedule // ""' "$f")" ]; then
        ds=$(jq -r '.deploy.drainingSeconds | if type == "number" then tostring else "not a number (\(.))" end' "$f")
        case $ds in
            ''|*[!0-9]*) problems="$problems
drainingSeconds is $ds: it must be a whole number above VG_SHUTDOWN_GRACE (30)" ;;
            *) [ "$ds" -gt 30 ] || problems="$problems
drainingSeconds is $ds: it must be above VG_SHUTDOWN_GRACE (30)" ;;
        esac
    fi
    if [ -z "$problems" ]; then
        ok "$label: runs as $argv(tini first, pre-deploy migrate)"
    else
        not_ok "$label: a start command Railway runs as it is, tini first, pre-deploy migrate" \
            "start command: $start$problems"
    fi
}

check_configs() {
    for tool in jq lua5.4; do
        command -v $tool >/dev/null 2>&1 ||
            { not_ok "the Railway configs can be checked" "$tool is missing (make deps installs it)"; return; }
    done
    collect_configs
    while IFS="$(printf '\t')" read -r f label; do
        check_config "$f" "$label"
    done <"$WORK/configs.list"
}

# ------------------------------------------------------------ the fallback

# The build stage: the lines from its FROM to the next FROM.
build_stage() {
    awk '/^FROM /{ if (seen) exit; seen = 1; next } seen' Dockerfile
}

# Run the build stage's commands over exactly the files its COPY lines name
# (no --from), in a scratch folder standing in for its WORKDIR. apt-get
# lines are skipped: make deps installs the same packages here. make install
# goes under DESTDIR, never into this machine's /opt.
dry_build() {
    ctx=$WORK/ctx
    mkdir -p "$ctx"
    # Join continuation lines, then one instruction per line.
    build_stage | sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | grep -v '^[[:space:]]*#' >"$WORK/stage"
    status=0
    while IFS= read -r line; do
        set -f
        # shellcheck disable=SC2086
        set -- $line
        set +f
        [ $# -gt 0 ] || continue
        instr=$1
        shift
        case $instr in
            COPY)
                case $1 in --from=*) continue ;; esac
                dest=
                for last; do dest=$last; done
                while [ $# -gt 1 ]; do
                    src=$1
                    shift
                    if [ ! -e "$src" ]; then
                        echo "COPY $src: no such file in the build context" >&2
                        status=1
                        continue
                    fi
                    case $dest in
                        */) mkdir -p "$ctx/$dest" && cp -R "$src" "$ctx/$dest" ;;
                        *) mkdir -p "$(dirname "$ctx/$dest")" && cp -R "$src" "$ctx/$dest" ;;
                    esac
                done
                ;;
            RUN)
                cmd=$*
                case $cmd in apt-get*) continue ;; esac
                if ! (cd "$ctx" && DESTDIR="$WORK/dest" sh -c "$cmd") >"$WORK/run.log" 2>&1; then
                    echo "RUN $cmd failed:" >&2
                    tail -n 20 "$WORK/run.log" >&2
                    status=1
                fi
                ;;
        esac
    done <"$WORK/stage"
    return $status
}

fallback() {
    say "$1"
    say "running the Dockerfile's build stage over exactly the files its COPY lines name instead"
    if dry_build 2>"$WORK/dry.err"; then
        ok "the Dockerfile's build stage builds and installs from the files its COPY lines name"
    else
        not_ok "the Dockerfile's build stage builds and installs from the files its COPY lines name" \
            "$(cat "$WORK/dry.err")"
    fi
    # The runtime stage's own COPY lines from the context.
    miss=""
    for src in $(awk '/^COPY /{ if ($2 ~ /^--from=/) next; for (i = 2; i < NF; i++) print $i }' Dockerfile); do
        [ -e "$src" ] || miss="$miss $src"
    done
    if [ -z "$miss" ]; then ok "every COPY source of the Dockerfile exists"
    else not_ok "every COPY source of the Dockerfile exists" "missing:$miss"; fi
    check_configs
    finish
}

# ------------------------------------------------------------ the engine

install_tools() {
    missing=""
    command -v podman >/dev/null 2>&1 || missing="$missing podman"
    command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing="$missing runc"
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing="$missing debootstrap"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        say "missing:$missing; as root run: apt-get install -y$missing"
        return 1
    fi
    say "installing:$missing (apt-get)"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >"$WORK/apt.log" 2>&1 ||
        { apt-get update >>"$WORK/apt.log" 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >>"$WORK/apt.log" 2>&1; } ||
        { tail -n 20 "$WORK/apt.log" >&2; return 1; }
}

# The FROM image under its full name, as podman resolves the short name.
BASE=$(awk '/^FROM /{print $2; exit}' Dockerfile)
case $BASE in
    */*) BASE_FULL=$BASE ;;
    *) BASE_FULL=docker.io/library/$BASE ;;
esac

# debootstrap's mirror: the first Debian archive this machine's apt uses.
mirror() {
    m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n 1)
    [ -n "$m" ] || m=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    echo "${m:-http://deb.debian.org/debian}"
}

make_base() {
    if podman image exists "$BASE_FULL"; then
        say "base image $BASE_FULL already made (podman rmi it to make it again)"
        return 0
    fi
    rootfs=$WORK/rootfs
    say "making $BASE_FULL with debootstrap --variant=minbase bookworm (about half a minute, once)"
    t0=$(date +%s)
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$(mirror)" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK/debootstrap.log" >&2
        return 1
    fi
    # Trimmed as the official slim image is: no apt lists or caches, no
    # docs, man pages or locales, and dpkg told to skip them later too.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
    # The same archive as this machine (debootstrap wrote only the main suite).
    if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
        cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
        [ -s "$rootfs/etc/apt/sources.list.d/debian.sources" ] && rm -f "$rootfs/etc/apt/sources.list"
    fi
    if ! tar -C "$rootfs" -c . | podman import - "$BASE_FULL" >"$WORK/import.log" 2>&1; then
        cat "$WORK/import.log" >&2
        return 1
    fi
    say "made $BASE_FULL in $(( $(date +%s) - t0 )) s ($(podman image inspect -f '{{.Size}}' "$BASE_FULL") bytes)"
}

# ------------------------------------------------------------ main

if [ "${VG_IMAGE_ENGINE:-}" = none ]; then
    fallback "VG_IMAGE_ENGINE=none: the image is not built"
fi
if ! install_tools; then
    fallback "no container engine here (podman, runc or debootstrap missing): the image is not built"
fi
if ! podman info >"$WORK/info.log" 2>&1; then
    fallback "podman is installed but its engine does not work here ($(tail -n 1 "$WORK/info.log")): the image is not built"
fi
if ! make_base; then
    fallback "the base image $BASE cannot be made here: the image is not built"
fi
# A trial run: an engine that builds but cannot start a container is no engine.
if ! podman run --rm --runtime runc --network host --ulimit nofile=1024:1024 \
        --ulimit nproc=4096:4096 "$BASE_FULL" true >"$WORK/trial.log" 2>&1; then
    fallback "podman cannot run a container here ($(tail -n 1 "$WORK/trial.log")): the image is not built"
fi
[ $IF_ENGINE = 1 ] && say "a container engine works here: building and running the image"

RUN="podman run --runtime runc --network host --ulimit nofile=4096:4096 --ulimit nproc=8192:8192"

# run_words WORDS_FILE PODMAN_RUN_OPTION...: podman run with those options,
# the image, and the command in WORDS_FILE (one word a line), in place of
# the image's ENTRYPOINT and CMD, as Railway runs a start command.
run_words() {
    wf=$1
    shift
    set -- "$@" --entrypoint '[]' "$IMAGE"
    while IFS= read -r w; do set -- "$@" "$w"; done <"$wf"
    # shellcheck disable=SC2086
    $RUN "$@"
}

# A replica id as Railway gives one (a UUID); the worker_id then is the
# service name, "-" and its first six characters.
replica_id() {
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' |
        sed 's/^\(........\)\(....\)\(....\)\(....\)/\1-\2-\3-\4-/'
}

check_configs

say "podman build --pull=never --network host --isolation chroot -t $IMAGE ."
t0=$(date +%s)
if podman build --pull=never --network host --isolation chroot -t "$IMAGE" -f Dockerfile . \
        >"$WORK/build.log" 2>&1; then
    build_s=$(( $(date +%s) - t0 ))
    size=$(podman image inspect -f '{{.Size}}' "$IMAGE")
    ok "the image builds from the Dockerfile ($build_s s, $((size / 1000000)) MB)"
    say "image $IMAGE: $((size / 1000000)) MB ($size bytes), built in $build_s s"
else
    not_ok "the image builds from the Dockerfile" "$(tail -n 30 "$WORK/build.log")"
    finish
fi

# A database the image reaches over the host's network.
if [ -z "${TEST_DATABASE_URL:-}" ]; then
    PGDIR=$(mktemp -d "${TMPDIR:-/tmp}/vg-image-pg.XXXXXX")
    if ! TEST_DATABASE_URL=$(sh tests/pgtmp.sh start "$PGDIR"); then
        not_ok "a throw-away PostgreSQL starts" "see the lines above"
        finish
    fi
fi
# Its own database, so the specs' schema is left alone.
DB=vg_image_test
BASEURL=${TEST_DATABASE_URL%/*}
PGOPTIONS='-c client_min_messages=warning' psql -q "$TEST_DATABASE_URL" \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null ||
    { not_ok "a fresh database for the image"; finish; }
URL=$BASEURL/$DB
KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')

# The pre-deploy command, as railway.json gives it.
predeploy=$(jq -r '.deploy.preDeployCommand[0] // ""' railway.json)
if split_command "$predeploy" "$WORK/predeploy.words" 2>"$WORK/migrate.log" &&
        run_words "$WORK/predeploy.words" --rm -e DATABASE_URL="$URL" >"$WORK/migrate.log" 2>&1 &&
        grep -q '"event":"migrations_done"' "$WORK/migrate.log"; then
    ok "the pre-deploy command ($predeploy) migrates the database"
else
    not_ok "the pre-deploy command ($predeploy) migrates the database" "$(cat "$WORK/migrate.log")"
    finish
fi

enqueue() {
    # shellcheck disable=SC2086
    $RUN --rm -e DATABASE_URL="$URL" -e LOG_LEVEL=warning "$IMAGE" \
        vg-host lua/enqueue.lua --create-channel --channel image-test "$@" 2>>"$WORK/enqueue.log" | tail -n 1
}
noop_id=$(enqueue --pipeline noop '{}')
video_id=$(enqueue --pipeline video '{"title":"Image test","topic":"a quiet lake","scenes":2,"seconds_per_scene":1}')
case "$noop_id$video_id" in
    *[!0-9]*|"") not_ok "enqueue.lua in the image adds two tasks" "$(cat "$WORK/enqueue.log")"; finish ;;
    *) ok "enqueue.lua in the image adds a noop and a video task" ;;
esac

# The worker, started the way Railway starts it: railway.json's startCommand
# replaces the image's ENTRYPOINT and CMD. No WORKER_ID, as on a replicated
# service: the worker_id comes from RAILWAY_SERVICE_NAME and RAILWAY_REPLICA_ID.
start=$(jq -r '.deploy.startCommand // ""' railway.json)
rep=$(replica_id)
if ! split_command "$start" "$WORK/start.words" 2>"$WORK/run.log" ||
        ! run_words "$WORK/start.words" -d --name "$NAME" -e DATABASE_URL="$URL" -e FERNET_KEY="$KEY" \
        -e RAILWAY_SERVICE_NAME=worker -e RAILWAY_REPLICA_ID="$rep" -e VG_REVIEW_GATES=off \
        >>"$WORK/run.log" 2>&1; then
    not_ok "the worker container starts ($start)" "$(cat "$WORK/run.log")"
    finish
fi
pid1=$(podman exec "$NAME" cat /proc/1/cmdline 2>/dev/null | tr '\0' ' ')
case $pid1 in
    *tini*) ok "railway.json's startCommand keeps tini as PID 1 ($pid1)" ;;
    *) not_ok "railway.json's startCommand keeps tini as PID 1" "PID 1 is: $pid1" ;;
esac

# Wait for both tasks to finish (or the worker to die), at most 5 minutes.
state() {
    psql -Atq "$URL" -c "SELECT string_agg(status, ',' ORDER BY id) FROM tasks WHERE id IN ($noop_id, $video_id)"
}
deadline=$(( $(date +%s) + 300 ))
while :; do
    st=$(state)
    case $st in
        completed,completed|*failed*) break ;;
    esac
    [ "$(podman inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ] || break
    [ "$(date +%s)" -lt $deadline ] || break
    # Waits on the database's state, not on time: the loop ends on the
    # first check that sees the tasks finished.
    sleep 1
done
if [ "$st" = completed,completed ]; then
    ok "the worker in the image completes a noop and a video task"
else
    not_ok "the worker in the image completes a noop and a video task" "tasks: $st" \
        "$(podman logs "$NAME" 2>&1 | tail -n 30)"
fi
mp4=$(psql -Atq "$URL" -c "SELECT count(*) FROM videos WHERE task_id = $video_id")
[ "$mp4" = 1 ] && ok "the video task recorded its video" ||
    not_ok "the video task recorded its video" "videos rows: $mp4"

# Stop as Railway does: SIGTERM, then SIGKILL after the timeout.
t0=$(date +%s)
podman stop -t 45 "$NAME" >/dev/null 2>&1
code=$(podman wait "$NAME" 2>/dev/null)
podman logs "$NAME" >"$WORK/worker.log" 2>&1
last=$(grep '^{' "$WORK/worker.log" | tail -n 1)
case "$code:$last" in
    0:*'"event":"worker_shutdown"'*) ok "podman stop -t 45 ends in worker_shutdown and exit 0 ($(( $(date +%s) - t0 )) s)" ;;
    *) not_ok "podman stop -t 45 ends in worker_shutdown and exit 0" "exit code: $code" "last line: $last" ;;
esac
grep -q '"event":"shutdown_signal_received"' "$WORK/worker.log" &&
    ok "the worker saw SIGTERM through tini" ||
    not_ok "the worker saw SIGTERM through tini" "$(tail -n 10 "$WORK/worker.log")"
want_id=worker-$(printf '%s' "$rep" | cut -c1-6)
grep -q "\"event\":\"worker_started\".*\"worker_id\":\"$want_id\"" "$WORK/worker.log" &&
    ok "without WORKER_ID the replica's worker_id is $want_id (RAILWAY_SERVICE_NAME, RAILWAY_REPLICA_ID)" ||
    not_ok "without WORKER_ID the replica's worker_id is $want_id" "$(grep worker_started "$WORK/worker.log")"

# The other configs, started the same way: services first (they start, pass
# their healthcheck, stop cleanly), then the cron jobs (they run to the end
# and exit 0), so no worker picks up what a cron job enqueues.
run_service() {
    f=$1
    label=$2
    svc=$3
    split_command "$(jq -r '.deploy.startCommand' "$f")" "$WORK/svc.words" 2>/dev/null || return 0
    c=$NAME-$svc
    echo "$c" >>"$WORK/containers"
    port=$((20000 + ($$ + ${#svc}) % 20000))
    rep=$(replica_id)
    if ! run_words "$WORK/svc.words" -d --name "$c" -e DATABASE_URL="$URL" -e FERNET_KEY="$KEY" \
            -e PORT="$port" -e RAILWAY_SERVICE_NAME="$svc" -e RAILWAY_REPLICA_ID="$rep" \
            >"$WORK/svc.log" 2>&1; then
        not_ok "$label: the service starts in the image" "$(cat "$WORK/svc.log")"
        return 0
    fi
    deadline=$(( $(date +%s) + 60 ))
    until podman logs "$c" 2>&1 | grep -Eq '"event":"(worker|web)_started"'; do
        [ "$(podman inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ] || break
        [ "$(date +%s)" -lt $deadline ] || break
        sleep 1
    done
    started=$(podman logs "$c" 2>&1 | grep -E '"event":"(worker|web)_started"' | head -n 1)
    pid1=$(podman exec "$c" cat /proc/1/cmdline 2>/dev/null | tr '\0' ' ')
    health=""
    hc=$(jq -r '.deploy.healthcheckPath // ""' "$f")
    if [ -n "$hc" ] && [ -n "$started" ]; then
        health=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$hc")
    fi
    podman stop -t 45 "$c" >/dev/null 2>&1
    code=$(podman wait "$c" 2>/dev/null)
    podman logs "$c" >"$WORK/svc.log" 2>&1
    last=$(grep '^{' "$WORK/svc.log" | tail -n 1)
    wid=$(printf '%s\n' "$started" | sed -n 's/.*"worker_id":"\([^"]*\)".*/\1/p')
    tini=no
    case $pid1 in */usr/bin/tini*) tini=yes ;; esac
    case $last in *'"event":"worker_shutdown"'*) shut=yes ;; *) shut=no ;; esac
    if [ -n "$started" ] && [ $tini = yes ] && [ "$code" = 0 ] && [ $shut = yes ] &&
            { [ -z "$hc" ] || [ "$health" = 200 ]; }; then
        ok "$label: starts in the image under tini (worker_id $wid)${hc:+, $hc answers $health}, stops with worker_shutdown and exit 0"
        return 0
    fi
    not_ok "$label: starts in the image under tini${hc:+, passes its healthcheck}, stops with worker_shutdown and exit 0" \
        "PID 1: $pid1" "${hc:+$hc: HTTP $health}" "exit code: $code" "$(tail -n 15 "$WORK/svc.log")"
}
run_cron() {
    f=$1
    label=$2
    svc=$3
    split_command "$(jq -r '.deploy.startCommand' "$f")" "$WORK/svc.words" 2>/dev/null || return 0
    c=$NAME-$svc
    echo "$c" >>"$WORK/containers"
    if ! run_words "$WORK/svc.words" -d --name "$c" -e DATABASE_URL="$URL" -e FERNET_KEY="$KEY" \
            -e RAILWAY_SERVICE_NAME="$svc" >"$WORK/cron.err" 2>&1; then
        not_ok "$label: the cron job starts in the image" "$(cat "$WORK/cron.err")"
        return 0
    fi
    # A cron job must end by itself (Railway skips a run while the last one
    # still runs): at most 2 minutes here.
    deadline=$(( $(date +%s) + 120 ))
    while [ "$(podman inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ] &&
            [ "$(date +%s)" -lt $deadline ]; do
        sleep 1
    done
    podman stop -t 5 "$c" >/dev/null 2>&1
    code=$(podman wait "$c" 2>/dev/null)
    podman logs "$c" >"$WORK/cron.out" 2>"$WORK/cron.err"
    podman rm -f -t 0 "$c" >/dev/null 2>&1
    if [ "$code" = 0 ]; then
        ok "$label: the cron job runs in the image and exits 0 (stdout: $(head -n 1 "$WORK/cron.out" | cut -c 1-50))"
    else
        not_ok "$label: the cron job runs in the image and exits 0" "exit code: $code" \
            "$(tail -n 10 "$WORK/cron.out")" "$(tail -n 10 "$WORK/cron.err")"
    fi
}
for pass in service cron; do
    while IFS="$(printf '\t')" read -r f label; do
        [ "$label" = railway.json ] && continue
        svc=$(printf '%s' "$label" | sed -e 's/^railway\.\(.*\)\.json$/\1/' -e 's/^README snippet \([0-9]*\).*/readme-\1/')
        if [ -n "$(jq -r '.deploy.cronSchedule // ""' "$f" 2>/dev/null)" ]; then
            [ $pass = cron ] && run_cron "$f" "$label" "$svc" </dev/null
        else
            [ $pass = service ] && run_service "$f" "$label" "$svc" </dev/null
        fi
    done <"$WORK/configs.list"
done

psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
finish
