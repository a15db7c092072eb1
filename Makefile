# vg-host: a Lua 5.4 host on libuv + libpq for video-generation workers.
PREFIX   ?= /usr/local
CC       ?= cc
PKGS      = lua5.4 libuv libpq libcrypto
VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.0.0)

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN     = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=gnu11 $(WARN) $(CFLAGS) -Iinclude $(PKG_CFLAGS) -DVG_VERSION='"$(VERSION)"'
LDLIBS   = $(PKG_LIBS) -lhttp_parser -lm

SRC      := $(wildcard src/*.c)
LIB_SRC  := $(filter-out src/main.c,$(SRC))
CTESTS   := $(patsubst tests/c/%.c,%,$(wildcard tests/c/test_*.c))

# BUILD selects the flavour: build/ (release) or build-asan/ (sanitizers).
BUILD    ?= build
ifeq ($(BUILD),build-asan)
  ALL_CFLAGS += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  # Lua stack-balance assertions (vg/lstack.h)
  ALL_CFLAGS += -DVG_DEBUG_STACK
  LDFLAGS  += -fsanitize=address,undefined
endif

OBJ      := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRC))
LIB_OBJ  := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRC))

.PHONY: all deps test test-c test-asan asan demo bench bench-scale bench-smoke chaos install clean check-deps image-test test-e2e pgbouncer-fleet claim-matrix

all: $(BUILD)/vg-host

$(BUILD)/vg-host: $(OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: src/%.c $(wildcard include/vg/*.h) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/c/%.c tests/c/check.h $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/c $(LDFLAGS) -o $@ $< $(LIB_OBJ) $(LDLIBS)

ctests: $(addprefix $(BUILD)/tests/,$(CTESTS))

asan:
	$(MAKE) BUILD=build-asan all ctests

deps:
	@sh tests/deps.sh

# The one test command: deps, both builds, then every suite; the last line
# is "N passed, N failed".
test: deps
	$(MAKE) all ctests
	$(MAKE) asan
	@sh tests/run.sh

# Real Prometheus and headless Chromium against real workers and lua/web.lua
# (tests/e2e.sh); about half a minute; not part of make test.
test-e2e: deps all
	@sh tests/e2e.sh

demo: deps all
	@sh scripts/demo.sh

# Build the Dockerfile with podman and run the image against a throw-away
# PostgreSQL, with every Railway config's start command split as Railway
# splits it (tests/image.sh); without a working engine, it says so, runs the
# build stage's commands over the files its COPY lines name and still checks
# the configs. VG_IMAGE=TAG VG_IMAGE_KEEP=1 keeps the image.
image-test: deps
	@sh tests/image.sh

# Everything (bench/README.md): the main table (about 6 minutes), then the
# scale matrix (8-15): 14-21 minutes on a 2-CPU machine, by its speed.
bench: deps all
	@sh bench/run.sh

# Only the scale matrix: channels x channels with work x backlog, workers
# against a plain FIFO SKIP LOCKED claim, and enqueue with and without the
# fair-key trigger; 8-15 minutes (the ten cells' three rounds, and building
# the five 1,000,000-task queues: 2-7 minutes, by the machine's speed).
bench-scale: deps all
	@BENCH_PARTS=scale sh bench/run.sh

# Everything at tiny sizes, about a minute; part of make test.
bench-smoke: all
	@BENCH_SMOKE=1 sh bench/run.sh

# The claim statement alone at 10 to 10,000 channels against the claim
# before sql/005 and a plain FIFO SKIP LOCKED claim, and enqueue with and
# without the fair-key trigger (bench/run.sh with BENCH_PARTS=claims;
# about 4 minutes).
claim-matrix: deps all
	@BENCH_PARTS=claims sh bench/run.sh

# 50 workers behind one PgBouncer against max_connections = 100 complete
# 5,000 tasks (tests/pgbouncer_fleet.sh); about 20 s; not in make test.
pgbouncer-fleet: deps all
	@sh tests/pgbouncer_fleet.sh

# Fault run (docs/fencing.md): SIGKILLs, killed sessions, a partition and
# PostgreSQL restarts under load; a few minutes; not part of make test.
chaos: deps all
	@sh tests/chaos.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/vg-host
	install -m 755 $(BUILD)/vg-host $(DESTDIR)$(PREFIX)/bin/vg-host
	cp -R lua $(DESTDIR)$(PREFIX)/share/vg-host/
	cp -R sql scripts $(DESTDIR)$(PREFIX)/share/vg-host/

clean:
	rm -rf build build-asan
