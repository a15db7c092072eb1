/* One PostgreSQL connection driven by the libuv loop: an explicit state
 * machine in the manner of PgBouncer's server connections. No Lua in here.
 *
 *   RESOLVING --(host name looked up off the loop)--> CONNECTING
 *   CONNECTING --(PQconnectPoll OK)--> IDLE        (event CONNECTED)
 *   CONNECTING --(failure or timeout)--> BROKEN    (event CONNECT_FAILED)
 *   IDLE --vg_pgconn_send()--> BUSY --(every result read)--> IDLE or BROKEN
 *                                                        (query done callback)
 *   IDLE --(EOF, socket error, FATAL from the server)--> BROKEN (event BROKEN)
 *   any --vg_pgconn_close()--> CLOSED (handles closing; memory freed later)
 *
 * Only this file calls libpq for a connection. libpq runs in non-blocking
 * mode; exactly one uv_poll_t watches the socket, and it is stopped before
 * any libpq call that may close the socket (connect steps, PQfinish). A
 * connection in IDLE polls for readability only (EOF, notifications), so an
 * idle connection costs no CPU, and its poll does not keep the loop alive
 * unless the owner asks for it (vg_pgconn_keep_loop). BROKEN polls nothing.
 *
 * Callbacks are never called from inside the function that caused them,
 * except a query's done callback from vg_pgconn_close() (see there). */
#ifndef VG_PGCONN_H
#define VG_PGCONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef enum {
    VG_PGCONN_RESOLVING = 0,
    VG_PGCONN_CONNECTING,
    VG_PGCONN_IDLE,
    VG_PGCONN_BUSY,
    VG_PGCONN_BROKEN,
    VG_PGCONN_CLOSED
} vg_pgconn_state_t;

typedef enum {
    VG_PGCONN_EV_CONNECTED = 0,   /* now IDLE */
    VG_PGCONN_EV_CONNECT_FAILED,  /* now BROKEN; vg_pgconn_error() says why */
    VG_PGCONN_EV_BROKEN,          /* was IDLE, now BROKEN */
} vg_pgconn_event_t;

typedef struct vg_pgconn vg_pgconn_t;

/* Connection-level events, for the owner (the pool or the listener). */
typedef void (*vg_pgconn_event_fn)(vg_pgconn_t *c, vg_pgconn_event_t ev, void *arg);
/* A query finished: res is the result (the first error result, else the
 * last result), owned by the callee (PQclear it), or NULL when the
 * connection was closed under the query. The connection is IDLE again, or
 * BROKEN when it was lost (then res, if any, holds libpq's message). */
typedef void (*vg_pgconn_done_fn)(vg_pgconn_t *c, PGresult *res, void *arg);
/* A notification arrived; the callee owns n (PQfreemem it). */
typedef void (*vg_pgconn_notify_fn)(vg_pgconn_t *c, PGnotify *n, void *arg);

/* Connection parameters: NULL-terminated keyword/value arrays as for
 * PQconnectStartParams (expand_dbname is 0: the URL is already parsed). The
 * arrays are copied. */
typedef struct {
    const char *const *keys;
    const char *const *vals;
    double timeout_s;            /* whole attempt, including the DNS lookup */
} vg_pgconn_params_t;

/* What the owner (the pool or the listener) keeps on each of its
 * connections; the connection never touches it. */
typedef struct {
    void *owner;
    vg_pgconn_t *prev, *next;    /* the owner's list */
    int state;
    unsigned flags;
    void *ref;
    uint64_t since_ms;
} vg_pgconn_owner_t;

/* Back-off between connection attempts, in seconds: the first wait, doubled
 * after each failure up to the last. Shared by the LISTEN connection's
 * reconnects and pool:wait_ready (lua/vg/db.lua). */
#define VG_PG_BACKOFF_FIRST 0.2
#define VG_PG_BACKOFF_MAX 5.0

/* Start connecting; always returns a connection (failures are reported by
 * the CONNECT_FAILED event, never synchronously). */
vg_pgconn_t *vg_pgconn_connect(uv_loop_t *loop, const vg_pgconn_params_t *p,
                               vg_pgconn_event_fn on_event, void *arg);
void vg_pgconn_set_notify(vg_pgconn_t *c, vg_pgconn_notify_fn fn, void *arg);
/* Should the idle socket poll keep the loop alive (a task waits on it)? */
void vg_pgconn_keep_loop(vg_pgconn_t *c, bool keep);

/* Send a query on an IDLE connection. nparams < 0 sends sql with the simple
 * query protocol (several statements allowed, no parameters); otherwise the
 * extended protocol with the given parameters (types, lengths and formats
 * may be NULL), through a named prepared statement: the first call with a
 * given SQL text and parameter types prepares it (one extra round trip),
 * later calls on this connection only execute it. The parameter arrays are
 * copied when needed; the caller may free them when this returns. Returns 0, or -1 with vg_pgconn_error() set (and the
 * connection BROKEN when it was lost). done is called once. */
int vg_pgconn_send(vg_pgconn_t *c, const char *sql, int nparams, const Oid *types,
                   const char *const *values, const int *lengths, const int *formats,
                   vg_pgconn_done_fn done, void *arg);
/* Change who is told when the query in flight finishes (an abandoned query
 * is handed to the pool). */
void vg_pgconn_set_done(vg_pgconn_t *c, vg_pgconn_done_fn done, void *arg);

/* Cheap health check of an IDLE connection without a round trip: reads what
 * the socket already holds (a FATAL message, EOF) and reports whether the
 * connection is still usable. A dead one becomes BROKEN (no event). */
bool vg_pgconn_check(vg_pgconn_t *c);

/* Ask the server to cancel the query in flight. The cancel request (a
 * second, short connection) is sent from libuv's thread pool, so it never
 * blocks the loop; done(arg) runs on the loop when it has been sent (or
 * failed). Returns -1 when no request could be started (done not called). */
int vg_pgconn_cancel(vg_pgconn_t *c, void (*done)(void *arg), void *arg);

/* Close: stop polling, PQfinish, close the handles. A query in flight gets
 * its done callback with res NULL from inside this call. Idempotent. The
 * memory stays until vg_pgconn_free(). */
void vg_pgconn_close(vg_pgconn_t *c);
/* Close (if needed) and free once the handles have closed. */
void vg_pgconn_free(vg_pgconn_t *c);

/* The owner's fields of c. */
vg_pgconn_owner_t *vg_pgconn_owner(vg_pgconn_t *c);
vg_pgconn_state_t vg_pgconn_state(const vg_pgconn_t *c);
/* uv_now() when the last query finished (or the connection opened). */
uint64_t vg_pgconn_last_used_ms(const vg_pgconn_t *c);
/* Prepare parameterised statements (the default), or send them unnamed, as
 * through a transaction-mode PgBouncer. Set before the first query. */
void vg_pgconn_set_prepare(vg_pgconn_t *c, bool prepare);
/* Was the last query a COPY, which this API cannot drive? The connection
 * was then closed (BROKEN), but nothing was lost: report it as such. */
bool vg_pgconn_refused_copy(const vg_pgconn_t *c);
/* Message of the last failure (never NULL), e.g. libpq's error text. */
const char *vg_pgconn_error(const vg_pgconn_t *c);
/* Server process id of a connected connection, else 0. */
int vg_pgconn_pid(const vg_pgconn_t *c);
/* Statements this connection has prepared so far. */
uint64_t vg_pgconn_prepared_total(const vg_pgconn_t *c);
/* PQTRANS_IDLE / INTRANS / INERROR / ACTIVE / UNKNOWN. */
PGTransactionStatusType vg_pgconn_tx_status(const vg_pgconn_t *c);

/* Turn a libpq connection failure message into a sentence a person can act
 * on ("wrong password for user ...", "database ... does not exist", ...).
 * Writes into buf (always NUL-terminated) and returns it. *kind is set to a
 * short category: "auth", "no_database", "no_role", "refused",
 * "unknown_host", "timeout", "bad_url", "starting_up", "too_many",
 * "other". */
const char *vg_pgconn_explain(const char *msg, char *buf, size_t size, const char **kind);

/* Is this SQLSTATE worth retrying (serialization failure, deadlock, admin
 * shutdown, connection exceptions)? */
bool vg_pg_sqlstate_retriable(const char *sqlstate);

#endif
