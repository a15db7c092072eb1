#!/bin/sh
# A throw-away PgBouncer in transaction mode in front of a PostgreSQL server
# (for the specs and make pgbouncer-fleet; Debian's pgbouncer package).
#
#   sh tests/pgbouncer.sh start DIR SERVER_URL   prints the URL to connect to
#   sh tests/pgbouncer.sh stop DIR
#
# SERVER_URL is postgresql://USER@HOST:PORT/DB as tests/pgtmp.sh prints it
# (no password: the throw-away cluster trusts local connections). The
# bouncer listens on 127.0.0.1 at a free port, pool_mode = transaction,
# and serves every database of that server. Environment:
#   PGB_POOL_SIZE      server connections per database and user (default 20)
#   PGB_MAX_CLIENTS    max_client_conn (default 1000)
# When run as root, pgbouncer runs as the postgres user (it refuses root).
set -eu

die() { echo "pgbouncer.sh: $*" >&2; exit 1; }

cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || die "usage: sh tests/pgbouncer.sh {start DIR SERVER_URL|stop DIR}"

BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

case "$cmd" in
start)
    url=${3:-}
    [ -n "$url" ] || die "start needs the server URL"
    [ -x "$BIN" ] || die "pgbouncer is not installed (Debian package pgbouncer; make deps installs it)"
    rest=${url#*://}
    user=${rest%%@*}
    hostport=${rest#*@}
    hostport=${hostport%%/*}
    db=${rest#*/}
    db=${db%%\?*}
    host=${hostport%:*}
    port=${hostport##*:}
    mkdir -p "$DIR"
    printf '"%s" ""\n' "$user" >"$DIR/userlist.txt"
    run=""
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$DIR"
        run="-u postgres"
    fi
    tries=0
    while :; do
        tries=$((tries + 1))
        [ $tries -le 20 ] || die "could not start pgbouncer (see $DIR/pgbouncer.log)"
        lport=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 10000 ))
        cat >"$DIR/pgbouncer.ini" <<EOF
[databases]
* = host=$host port=$port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $lport
unix_socket_dir =
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
max_client_conn = ${PGB_MAX_CLIENTS:-1000}
default_pool_size = ${PGB_POOL_SIZE:-20}
server_lifetime = 3600
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
admin_users = $user
EOF
        rm -f "$DIR/pgbouncer.pid"
        # shellcheck disable=SC2086
        if "$BIN" -d $run "$DIR/pgbouncer.ini" 2>>"$DIR/start.err"; then
            # Ready when it answers a query through to the server.
            n=0
            while [ $n -lt 100 ]; do
                if psql -X -q -t -A "postgresql://$user@127.0.0.1:$lport/$db" -c "SELECT 1" >/dev/null 2>&1; then
                    echo "$lport" >"$DIR/pgbouncer.port"
                    echo "postgresql://$user@127.0.0.1:$lport/$db"
                    exit 0
                fi
                [ -f "$DIR/pgbouncer.pid" ] && kill -0 "$(cat "$DIR/pgbouncer.pid")" 2>/dev/null || break
                n=$((n + 1))
                sleep 0.05
            done
            [ -f "$DIR/pgbouncer.pid" ] && kill "$(cat "$DIR/pgbouncer.pid")" 2>/dev/null || true
        fi
    done
    ;;
stop)
    if [ -f "$DIR/pgbouncer.pid" ]; then
        pid=$(cat "$DIR/pgbouncer.pid")
        kill "$pid" 2>/dev/null || true
        n=0
        while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do n=$((n + 1)); sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    ;;
*) die "unknown command $cmd" ;;
esac
