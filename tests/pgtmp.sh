#!/bin/sh
# pgtmp.sh: a throw-away PostgreSQL cluster for `make test`, the demo and the
# benchmarks.
#
#   sh tests/pgtmp.sh start DIR     create a cluster in DIR, start it, create
#                                   database vg; prints the DATABASE_URL
#   sh tests/pgtmp.sh url DIR       print the DATABASE_URL again
#   sh tests/pgtmp.sh restart DIR   restart the server on the same port (or
#                                   start it again after halt)
#   sh tests/pgtmp.sh halt DIR      stop the server at once (immediate mode,
#                                   as a crash: recovery on the next start),
#                                   keeping the cluster for restart
#   sh tests/pgtmp.sh status DIR    exit 0 when the server is running
#   sh tests/pgtmp.sh stop DIR      stop it (fast mode) and remove DIR
#
# The URL is postgresql://postgres@127.0.0.1:PORT/vg (TCP, trust auth, so
# tests can also restart the server and terminate backends). stdout carries
# that one line and nothing else; everything else goes to stderr.
#
# The server listens on 127.0.0.1 at a free port and on a unix socket in DIR
# (or in a short directory under /tmp when DIR is too long for a socket
# path). It never touches the cluster the Debian package may have started on
# port 5432. When run as root, every PostgreSQL program runs as the
# `postgres` user and DIR is handed to that user; if that user cannot reach
# DIR (say DIR=$(mktemp -d)/pg: the parent is private to root), the cluster
# goes to /tmp/pgtmp.XXXXXX instead, with DIR/data and DIR/postgres.log
# linking to it.
#
# Environment:
#   PGTMP_FSYNC=off   fsync, synchronous_commit and full_page_writes off
#                     (faster, not crash-safe; default on, as in production)
#   PGTMP_BINDIR      PostgreSQL bin directory (default: the highest version
#                     under /usr/lib/postgresql/*/bin)
#   PGTMP_USER        user to run as when root (default postgres)
#   PGTMP_PORT        use this port instead of picking a free one
#   PGTMP_MAX_CONNECTIONS  max_connections (default 200)
#   PGTMP_RESTART_MODE  shutdown mode of `restart`: fast (default) or
#                     immediate (a crash: recovery on the next start)
#
# Files in DIR: data/ (PGDATA), postgres.log, initdb.log, and pgtmp.* files
# holding the port, bin directory, cluster and socket directories.

set -eu

me=pgtmp
say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { printf '%s: error: %s\n' "$me" "$*" >&2; exit 1; }
usage() {
    echo "usage: sh tests/pgtmp.sh {start|stop|restart|halt|url|status} DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
DIR=$2
[ -n "$DIR" ] || usage

# Connection settings from the caller's environment must not leak into the
# tools we run (we always pass host, port, user and database explicitly).
unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS \
      PGSERVICE PGSERVICEFILE PGSSLMODE PGPASSWORD PGTZ 2>/dev/null || true
LC_ALL=C
export LC_ALL

# ---------------------------------------------------------------- helpers

# Running as root: PostgreSQL refuses to run as root, so run as PGTMP_USER.
created=
RUN_USER=
if [ "$(id -u)" = 0 ]; then
    RUN_USER=${PGTMP_USER:-postgres}
fi

# Quote one argument for sh -c (only needed for the su fallback).
shquote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# as_pg CMD ARGS...: run a command as the cluster owner.
as_pg() {
    if [ -z "$RUN_USER" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$RUN_USER" -- "$@"
    elif command -v setpriv >/dev/null 2>&1; then
        setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups -- "$@"
    else
        _line=
        for _a in "$@"; do _line="$_line $(shquote "$_a")"; done
        su -s /bin/sh "$RUN_USER" -c "$_line"
    fi
}

# Give a file or directory to the cluster owner (no-op when not root).
give() {
    if [ -n "$RUN_USER" ]; then chown "$RUN_USER" "$@"; fi
}

# Highest PostgreSQL version installed the Debian way, else pg_config/initdb
# found on PATH.
find_bindir() {
    if [ -n "${PGTMP_BINDIR:-}" ]; then
        [ -x "$PGTMP_BINDIR/initdb" ] ||
            die "PGTMP_BINDIR=$PGTMP_BINDIR has no initdb"
        echo "$PGTMP_BINDIR"
        return
    fi
    _best=
    for _d in /usr/lib/postgresql/*/bin; do
        if [ ! -x "$_d/initdb" ] || [ ! -x "$_d/pg_ctl" ] || [ ! -x "$_d/psql" ]; then
            continue
        fi
        _v=${_d#/usr/lib/postgresql/}
        _v=${_v%/bin}
        printf '%s\n' "$_v"
    done | sort -t. -k1,1n -k2,2n | tail -n 1 | {
        read -r _best || true
        if [ -n "$_best" ]; then
            echo "/usr/lib/postgresql/$_best/bin"
        elif command -v pg_config >/dev/null 2>&1 &&
             [ -x "$(pg_config --bindir)/initdb" ]; then
            pg_config --bindir
        elif command -v initdb >/dev/null 2>&1; then
            dirname "$(command -v initdb)"
        fi
    }
}

# A random number in [0, 2^32).
random32() {
    _r=$(od -An -N4 -tu4 /dev/urandom 2>/dev/null | tr -d ' \n') || _r=
    [ -n "$_r" ] || _r=$(( $$ * 7919 + $(date +%s) ))
    echo "$_r"
}

# Is something already listening on TCP port $1 (any address)? Best effort:
# the real test is the server's bind(), and start retries when it fails.
port_listening() {
    _hex=$(printf '%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p="$_hex" '
        { n = split($2, a, ":"); if (toupper(a[n]) == p && $4 == "0A") found = 1 }
        END { exit !found }'
}

# A candidate port: random, below the kernel's ephemeral range (so an
# outgoing connection cannot be sitting on it when we restart), not 5432,
# and not already listening.
pick_port() {
    _lo=15000
    _hi=32000
    if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
        read -r _elo _ehi </proc/sys/net/ipv4/ip_local_port_range || true
        if [ -n "${_elo:-}" ] && [ "$_elo" -gt $((_lo + 1000)) ] && [ "$_elo" -le "$_hi" ]; then
            _hi=$((_elo - 1))
        fi
    fi
    _i=0
    while [ $_i -lt 50 ]; do
        _p=$(( _lo + $(random32) % (_hi - _lo + 1) ))
        if [ "$_p" != 5432 ] && ! port_listening "$_p"; then
            echo "$_p"
            return
        fi
        _i=$((_i + 1))
    done
    die "could not find a free TCP port between $_lo and $_hi"
}

# Load the state of an existing cluster in DIR.
load() {
    [ -d "$DIR" ] || die "$DIR does not exist"
    DIR=$(cd "$DIR" && pwd -P)
    [ -f "$DIR/pgtmp.marker" ] || die "$DIR is not a cluster made by pgtmp.sh"
    BINDIR=$(cat "$DIR/pgtmp.bindir")
    PORT=$(cat "$DIR/pgtmp.port")
    SOCKDIR=$(cat "$DIR/pgtmp.sockdir")
    HOME_DIR=$DIR
    if [ -f "$DIR/pgtmp.home" ]; then
        HOME_DIR=$(cat "$DIR/pgtmp.home")
    fi
    PGDATA_DIR=$HOME_DIR/data
    LOG=$HOME_DIR/postgres.log
}

url() {
    echo "postgresql://postgres@127.0.0.1:$PORT/vg"
}

# Print the end of the server log to stderr (after a failure).
show_log() {
    if [ -f "$LOG" ]; then
        say "last lines of $LOG:"
        tail -n 25 "$LOG" | sed 's/^/    /' >&2
    fi
}

# Is the postmaster of this cluster alive? A killed postmaster that nobody
# has reaped yet (a zombie: containers without an init) still answers
# kill -0, and pg_ctl would wait for it in vain.
server_alive() {
    [ -f "$PGDATA_DIR/postmaster.pid" ] || return 1
    _pid=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
    [ -n "$_pid" ] || return 1
    if [ -r "/proc/$_pid/stat" ]; then
        _st=$(sed 's/^.*) //' "/proc/$_pid/stat" | cut -d' ' -f1)
        [ "$_st" != Z ]
        return
    fi
    if [ -d /proc/self ]; then
        return 1
    fi
    kill -0 "$_pid" 2>/dev/null
}

pg_ctl_start() {
    # Close inherited descriptors 3-9 so the daemon does not keep a caller's
    # pipe (or make's jobserver) open; pg_ctl -l redirects stdin/out/err.
    as_pg "$BINDIR/pg_ctl" start -D "$PGDATA_DIR" -l "$LOG" -w -t 60 \
        >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
}

# ---------------------------------------------------------------- commands

do_start() {
    case $DIR in
        *[[:space:]\'\",\\]*) die "DIR must not contain spaces, quotes, commas or backslashes: $DIR" ;;
    esac
    fsync=on
    case ${PGTMP_FSYNC:-on} in
        off|0|no|false) fsync=off ;;
        on|1|yes|true) ;;
        *) die "PGTMP_FSYNC must be on or off, not '$PGTMP_FSYNC'" ;;
    esac
    BINDIR=$(find_bindir)
    [ -n "$BINDIR" ] || die "no PostgreSQL server found (looked for /usr/lib/postgresql/*/bin/initdb); install it with: apt-get install -y postgresql"
    for _t in initdb pg_ctl psql postgres; do
        [ -x "$BINDIR/$_t" ] || die "$BINDIR/$_t is missing; install the PostgreSQL server: apt-get install -y postgresql"
    done
    if [ -n "$RUN_USER" ]; then
        id "$RUN_USER" >/dev/null 2>&1 ||
            die "running as root, but user '$RUN_USER' does not exist; install the PostgreSQL package (apt-get install -y postgresql creates it) or set PGTMP_USER"
    fi

    if [ -e "$DIR" ]; then
        [ -d "$DIR" ] || die "$DIR exists and is not a directory"
        [ ! -f "$DIR/pgtmp.marker" ] ||
            die "$DIR already holds a pgtmp cluster (use url/restart, or stop it first)"
        [ -z "$(ls -A "$DIR")" ] || die "$DIR exists and is not empty"
    else
        mkdir -p "$DIR"
        # Until the cluster exists, a failure removes the folder we made.
        created=$DIR
        trap 'if [ -n "$created" ]; then rmdir "$created" 2>/dev/null || true; fi' EXIT
    fi
    DIR=$(cd "$DIR" && pwd -P)
    cd /

    chmod 755 "$DIR"

    # HOME_DIR holds the cluster (data/, postgres.log, the socket): DIR
    # itself, handed to the cluster owner. When root made DIR inside a
    # folder private to root (mktemp -d gives mode 700), the postgres user
    # cannot reach it; then the cluster lives in its own folder under /tmp,
    # and DIR links to it. stop removes both.
    HOME_DIR=$DIR
    if [ -n "$RUN_USER" ]; then
        give "$DIR"
        if ! as_pg test -w "$DIR" -a -x "$DIR" 2>/dev/null; then
            HOME_DIR=$(mktemp -d /tmp/pgtmp.XXXXXX)
            give "$HOME_DIR"
            chmod 755 "$HOME_DIR"
            say "user $RUN_USER cannot reach $DIR (a parent folder is private); cluster in $HOME_DIR, linked from $DIR"
        fi
    fi

    PGDATA_DIR=$HOME_DIR/data
    LOG=$HOME_DIR/postgres.log
    : >"$LOG"
    give "$LOG"

    # A unix socket path is limited to 107 bytes ("DIR/.s.PGSQL.NNNNN").
    SOCKDIR=$HOME_DIR
    if [ ${#HOME_DIR} -gt 88 ]; then
        SOCKDIR=$(mktemp -d /tmp/pgtmp-sock.XXXXXX)
        give "$SOCKDIR"
        chmod 755 "$SOCKDIR"
        say "$DIR is too long for a unix socket path; socket in $SOCKDIR"
    fi

    # State first, so that `stop DIR` can clean up after a failed start.
    echo pgtmp >"$DIR/pgtmp.marker"
    echo "$BINDIR" >"$DIR/pgtmp.bindir"
    echo "$HOME_DIR" >"$DIR/pgtmp.home"
    echo "$SOCKDIR" >"$DIR/pgtmp.sockdir"
    echo 0 >"$DIR/pgtmp.port"
    created=
    if [ "$HOME_DIR" != "$DIR" ]; then
        ln -s "$HOME_DIR/data" "$DIR/data"
        ln -s "$HOME_DIR/postgres.log" "$DIR/postgres.log"
    fi

    _nosync=
    [ $fsync = on ] || _nosync=--no-sync

    # The superuser is called postgres whoever runs this (-U); trust for
    # local and loopback connections (-A); C locale and UTF8 so messages and
    # sorting do not depend on the machine.
    _ver=$("$BINDIR/postgres" --version 2>/dev/null | sed -n "s/^[^)]*) \([^ ]*\).*/\1/p") || _ver=
    say "creating PostgreSQL $_ver cluster in $DIR (fsync=$fsync)"
    if ! as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -U postgres -A trust \
            --no-locale -E UTF8 $_nosync >"$DIR/initdb.log" 2>&1; then
        sed 's/^/    /' "$DIR/initdb.log" >&2
        die "initdb failed (output above, also in $DIR/initdb.log)"
    fi

    # pg_stat_statements ships with Debian's postgresql-NN package.
    # Where it lives: ask pg_config, else assume the Debian layout.
    _preload=
    _libdir=
    _sharedir=
    if [ -x "$BINDIR/pg_config" ]; then
        _libdir=$("$BINDIR/pg_config" --pkglibdir 2>/dev/null) || _libdir=
        _sharedir=$("$BINDIR/pg_config" --sharedir 2>/dev/null) || _sharedir=
    fi
    case $BINDIR in
        /usr/lib/postgresql/*/bin)
            _v=${BINDIR#/usr/lib/postgresql/}
            _v=${_v%/bin}
            [ -n "$_libdir" ] || _libdir=/usr/lib/postgresql/$_v/lib
            [ -n "$_sharedir" ] || _sharedir=/usr/share/postgresql/$_v
            ;;
    esac
    if [ -n "$_libdir" ] && [ -f "$_libdir/pg_stat_statements.so" ] &&
       [ -f "$_sharedir/extension/pg_stat_statements.control" ]; then
        _preload=pg_stat_statements
    fi
    [ -n "$_preload" ] || say "pg_stat_statements not available; not preloading it"

    # Later settings override the defaults initdb wrote above them.
    _sync_lines="fsync = $fsync
synchronous_commit = $fsync
full_page_writes = $fsync"
    cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# ---- added by tests/pgtmp.sh ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKDIR'
max_connections = ${PGTMP_MAX_CONNECTIONS:-200}
$_sync_lines
shared_preload_libraries = '$_preload'
timezone = 'UTC'
log_timezone = 'UTC'
lc_messages = 'C'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
include_if_exists = 'pgtmp_port.conf'
EOF

    if [ -n "${PGTMP_PORT:-}" ]; then
        _tries=1
    else
        _tries=20
    fi
    _n=0
    while :; do
        _n=$((_n + 1))
        PORT=${PGTMP_PORT:-$(pick_port)}
        echo "port = $PORT" >"$PGDATA_DIR/pgtmp_port.conf"
        give "$PGDATA_DIR/pgtmp_port.conf"
        echo "$PORT" >"$DIR/pgtmp.port"
        _before=$(wc -l <"$LOG")
        if pg_ctl_start; then
            break
        fi
        # Another process took the port between our check and the bind:
        # try another one. Any other failure is final.
        if tail -n +$((_before + 1)) "$LOG" |
                grep -q -e 'could not bind' -e 'Address already in use' \
                        -e 'could not create any TCP/IP sockets' &&
           [ $_n -lt $_tries ]; then
            say "port $PORT is taken, trying another"
            continue
        fi
        show_log
        die "could not start PostgreSQL (log: $LOG)"
    done

    _psql() {
        as_pg "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" \
            -p "$PORT" -U postgres "$@" >&2
    }
    _psql -d postgres -c 'CREATE DATABASE vg' ||
        die "could not create database vg (log: $LOG)"
    if [ -n "$_preload" ]; then
        # In the maintenance database, so vg holds only what migrations
        # create; its view shows the statements of every database.
        _psql -d postgres -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' ||
            say "could not create extension pg_stat_statements (continuing)"
    fi

    say "PostgreSQL $_ver running in $DIR on 127.0.0.1:$PORT and $SOCKDIR (log: $LOG)"
    url
}

do_stop() {
    if [ ! -e "$DIR" ]; then
        say "$DIR does not exist; nothing to stop"
        return 0
    fi
    load
    cd /
    if server_alive; then
        if ! as_pg "$BINDIR/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t 60 >&2; then
            say "fast stop failed; stopping in immediate mode"
            as_pg "$BINDIR/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w -t 30 >&2 || true
        fi
    fi
    # Folders this script made under /tmp (see do_start), and DIR.
    case $SOCKDIR in
        /tmp/pgtmp-sock.*) rm -rf "$SOCKDIR" ;;
    esac
    case $HOME_DIR in
        /tmp/pgtmp.*) [ "$HOME_DIR" = "$DIR" ] || rm -rf "$HOME_DIR" ;;
    esac
    rm -rf "$DIR"
    say "stopped and removed $DIR"
}

do_restart() {
    load
    cd /
    # pg_ctl restart stops the server if it runs (fast mode, rolling back
    # open transactions and closing every connection) and starts it again;
    # the port comes from pgtmp_port.conf, so it stays the same.
    if [ -f "$PGDATA_DIR/postmaster.pid" ] && ! server_alive; then
        say "the server is not running (killed?); starting it"
        # Lock files naming a dead (possibly unreaped) postmaster would
        # make the new one refuse to start.
        rm -f "$PGDATA_DIR/postmaster.pid" "$SOCKDIR/.s.PGSQL.$PORT.lock" \
              "$SOCKDIR/.s.PGSQL.$PORT"
    fi
    if ! as_pg "$BINDIR/pg_ctl" restart -D "$PGDATA_DIR" -m "${PGTMP_RESTART_MODE:-fast}" -l "$LOG" \
            -w -t 60 >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; then
        show_log
        die "could not restart PostgreSQL on port $PORT (log: $LOG)"
    fi
    say "restarted PostgreSQL on 127.0.0.1:$PORT"
}

do_halt() {
    load
    cd /
    if server_alive; then
        as_pg "$BINDIR/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w -t 30 >&2 ||
            die "could not stop PostgreSQL on port $PORT (log: $LOG)"
    fi
    say "halted PostgreSQL on 127.0.0.1:$PORT (restart starts it again)"
}

do_status() {
    load
    cd /
    as_pg "$BINDIR/pg_ctl" status -D "$PGDATA_DIR" >&2
}

case $cmd in
    start) do_start ;;
    stop) do_stop ;;
    restart) do_restart ;;
    halt) do_halt ;;
    url) load; url ;;
    status) do_status ;;
    *) usage ;;
esac
