/* The PostgreSQL connection pool. No Lua here.
 *
 * Semantics of the seed's engine (SQLAlchemy's QueuePool): connections are
 * opened lazily; at most size + max_overflow are open (connecting, idle,
 * checked out or being reset all count); a connection returned while more
 * than size are open and nobody waits is closed; waiters are served first
 * come, first served. The wait's time limit (cfg.pool_timeout) is the
 * pool's: a request still queued at its deadline fails with the
 * "pool_timeout" code. A caller that stops waiting for another reason
 * (cancellation) withdraws its request with vg_pgpool_cancel.
 *
 * Each pooled connection is in one pool state, changed in one place
 * (conn_set_state in pgpool.c):
 *
 *   CONNECTING -> IDLE -> (PINGING ->) OUT -> IDLE / RESETTING / closed
 *
 * RESETTING: a connection given back dirty (a query still running: a
 * cancel request is sent and its results drained; a transaction left
 * open: ROLLBACK) is cleaned before reuse, within a deadline, or closed.
 * It still counts towards the limit, so the server never sees more than
 * size + max_overflow connections from one pool.
 *
 * Pre-ping: a connection handed out is first checked without a round trip
 * (vg_pgconn_check: EOF or a FATAL message already on the socket); one idle
 * for more than a second also answers an empty query (";") first. A dead
 * one is closed and the waiter served by another connection. */
#ifndef VG_PGPOOL_H
#define VG_PGPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "vg/list.h"
#include "vg/pgconn.h"
#include "vg/pglisten.h"

typedef struct vg_pgpool vg_pgpool_t;

typedef struct {
    const char *url;              /* postgresql:// URL (copied) */
    int size;                     /* connections kept (pool_size) */
    int max_overflow;             /* more under load, closed when returned */
    bool pre_ping;
    bool prepare;                 /* server-side prepared statements (vg_pgconn_send) */
    bool generic_plans;           /* with prepare: plan_cache_mode=force_generic_plan */
    double connect_timeout;       /* seconds per connection attempt */
    double pool_timeout;          /* seconds a checkout waits for a busy pool */
    const char *application_name; /* NULL: the URL's, else "vg-host" */
    bool pooler;                  /* url is a transaction-mode pooler (PgBouncer):
                                     no "options" startup parameter */
    const char *listen_url;       /* NULL: LISTEN on url; else straight to the
                                     server (copied into the pool's parameters) */
} vg_pgpool_cfg_t;

typedef struct {
    int size, max_overflow;
    int open;            /* every connection counted against the limit */
    int connecting;
    int idle;
    int checked_out;
    int resetting;
    int overflow;        /* open beyond size */
    int waiters;
    long long opened_total, closed_total, failed_total;
    long long pings_total;   /* pre-ping round trips */
    long long prepared_total; /* server-side statements prepared (each is a round trip) */
    long long timeouts_total; /* checkouts failed with pool_timeout */
} vg_pgpool_stats_t;

/* A checkout request. cb runs once from the loop with the connection, or
 * with c NULL and an error code ("connect_failed", "pool_closed",
 * "pool_timeout") and a message. Owned by the caller; the pool links it
 * while it waits. */
typedef struct vg_pgpool_req vg_pgpool_req_t;
typedef void (*vg_pgpool_acquired_fn)(vg_pgpool_req_t *r, vg_pgconn_t *c, const char *code,
                                      const char *msg);
struct vg_pgpool_req {
    vg_pgpool_acquired_fn cb;
    void *arg;
    /* Private. */
    vg_link_t link;               /* in the pool's queue of waiters */
    vg_pgconn_t *pinging;         /* the connection being pre-pinged for it */
    uint64_t deadline_ms;
    bool queued;
};

/* Parses the URL (no I/O). Returns NULL and a malloc'd message in *err
 * when it cannot be used. */
vg_pgpool_t *vg_pgpool_new(uv_loop_t *loop, const vg_pgpool_cfg_t *cfg, char **err);

/* Check out a connection: 0 and *out when one is ready now (no callback);
 * 1 when r was queued (r->cb follows); -1 when the pool is closed. */
int vg_pgpool_acquire(vg_pgpool_t *p, vg_pgpool_req_t *r, vg_pgconn_t **out);
/* Stop waiting (timeout, cancellation); r->cb will not run. */
void vg_pgpool_cancel(vg_pgpool_t *p, vg_pgpool_req_t *r);
/* Give a connection back in whatever state it is: idle and clean ones are
 * reused, dirty ones reset, broken ones closed. */
void vg_pgpool_release(vg_pgpool_t *p, vg_pgconn_t *c);

/* Open one connection now, to learn whether the server is reachable (the
 * start-up wait). On success it joins the pool as an idle connection. */
typedef struct vg_pgpool_probe vg_pgpool_probe_t;
typedef void (*vg_pgpool_probe_fn)(void *arg, const char *error);
vg_pgpool_probe_t *vg_pgpool_probe(vg_pgpool_t *p, vg_pgpool_probe_fn cb, void *arg);
void vg_pgpool_probe_cancel(vg_pgpool_probe_t *pr);

void vg_pgpool_stats(const vg_pgpool_t *p, vg_pgpool_stats_t *s);
/* Host and database for log lines (never the password). */
const char *vg_pgpool_describe(const vg_pgpool_t *p);
const vg_pgpool_cfg_t *vg_pgpool_cfg(const vg_pgpool_t *p);

/* Close: waiters fail with pool_closed, idle connections close now,
 * checked-out ones when given back or, after timeout_s, by force (a query
 * in flight then ends as a lost connection). done(arg, forced) runs once
 * everything is closed (possibly from inside this call). A second call
 * while one is pending forces the close at once. */
typedef void (*vg_pgpool_closed_fn)(void *arg, int forced);
void vg_pgpool_close(vg_pgpool_t *p, double timeout_s, vg_pgpool_closed_fn done, void *arg);
bool vg_pgpool_closed(const vg_pgpool_t *p);
/* Close at once and free the pool once its handles have closed. */
void vg_pgpool_destroy(vg_pgpool_t *p);

/* The pool's LISTEN connection (vg/pglisten.h), made on first use and
 * closed with the pool. */
vg_pglistener_t *vg_pgpool_listener(vg_pgpool_t *p);

#endif
