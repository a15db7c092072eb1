# Multi-stage build: compile with the -dev packages, run on a small image
# with only the runtime libraries, the lua/ tree and the migrations.

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      gcc make pkg-config libc6-dev liblua5.4-dev libuv1-dev libpq-dev libssl-dev libhttp-parser-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile VERSION ./
COPY include ./include
COPY src ./src
COPY lua ./lua
COPY sql ./sql
COPY scripts ./scripts
RUN make BUILD=build all && make install PREFIX=/opt/vg-host

FROM debian:bookworm-slim AS runtime
# tini runs as PID 1: it forwards SIGTERM to vg-host and reaps orphaned
# grandchildren of pipeline step commands.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      liblua5.4-0 libuv1 libpq5 libssl3 libhttp-parser2.9 lua-cjson lua-filesystem tini ca-certificates \
      ffmpeg espeak-ng sox jq fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /app --shell /usr/sbin/nologin vg
COPY --from=build /opt/vg-host /opt/vg-host
RUN ln -s /opt/vg-host/bin/vg-host /usr/local/bin/vg-host \
 && ln -s /opt/vg-host/share/vg-host/lua /app/lua \
 && ln -s /opt/vg-host/share/vg-host/sql /app/sql \
 && ln -s /opt/vg-host/share/vg-host/scripts /app/scripts \
 && mkdir -p /app/workspace && chown vg:vg /app/workspace
WORKDIR /app
USER vg
ENV VG_WORKSPACE=/app/workspace
# Exec form: tini is PID 1 and vg-host its direct child, so SIGTERM from the
# platform reaches the host, not a shell.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["vg-host", "lua/worker.lua"]
