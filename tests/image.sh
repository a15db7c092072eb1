#!/bin/sh
# make image-test: build the real Dockerfile with a container engine and run
# the image against a throw-away PostgreSQL, as Railway would:
#   - the pre-deploy command (lua/migrate.lua);
#   - a worker started with railway.json's startCommand (tini in front)
#     completing a noop and a video task;
#   - `podman stop -t 45`, ending in worker_shutdown and exit 0.
#
#   sh tests/image.sh [--tap] [--if-engine]
#
# Tools: Debian's podman, runc and debootstrap (installed with apt-get when
# missing and run as root). No registry is needed: the FROM image is made
# from Debian's archive with `debootstrap --variant=minbase bookworm`,
# trimmed the way the official slim image is, and imported under the FROM
# name; it is kept in podman's storage, so later runs skip that minute.
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
# VG_IMAGE_KEEP=1 (keep the image afterwards).
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
        [ "${VG_IMAGE_KEEP:-0}" = 1 ] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    fi
    [ -n "$PGDIR" ] && sh tests/pgtmp.sh stop "$PGDIR" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
    say "making $BASE_FULL with debootstrap --variant=minbase bookworm (about a minute, once)"
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
predeploy=$(sed -n 's/.*"preDeployCommand": *\[ *"\([^"]*\)".*/\1/p' railway.json)
# shellcheck disable=SC2086
if $RUN --rm -e DATABASE_URL="$URL" "$IMAGE" $predeploy >"$WORK/migrate.log" 2>&1 &&
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
# replaces the image's ENTRYPOINT and CMD.
start=$(sed -n 's/.*"startCommand": *"\([^"]*\)".*/\1/p' railway.json)
# shellcheck disable=SC2086
if ! $RUN -d --name "$NAME" --entrypoint '[]' -e DATABASE_URL="$URL" -e FERNET_KEY="$KEY" \
        -e WORKER_ID=image-test -e VG_REVIEW_GATES=off "$IMAGE" $start >"$WORK/run.log" 2>&1; then
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

psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
finish
