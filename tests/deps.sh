#!/bin/sh
# make deps: check for the Debian packages vg-host needs to build, test and
# run the demo; install the missing ones when run as root, otherwise print
# the exact apt-get line.
set -eu

PACKAGES="gcc make pkg-config liblua5.4-dev lua5.4 libuv1-dev libpq-dev libssl-dev libhttp-parser-dev \
lua-cjson lua-filesystem lua-busted postgresql postgresql-contrib procps prometheus \
ffmpeg espeak-ng sox jq fonts-dejavu-core socat curl chromium chromium-driver pgbouncer"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "deps: all Debian packages present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages:$missing" >&2
    echo "deps: run as root:  apt-get install -y$missing" >&2
    exit 1
fi

echo "deps: installing missing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when an install from the current lists fails.
# shellcheck disable=SC2086
if ! apt-get install -y --no-install-recommends $missing; then
    apt-get update
    apt-get install -y --no-install-recommends $missing
fi
