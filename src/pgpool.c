/* The connection pool (see vg/pgpool.h). Every
 * change of a pooled connection's state goes through conn_set_state(),
 * which keeps the lists and counters right, as PgBouncer's change_server_
 * state() does. */
#include "vg/pgpool.h"

#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/dburl.h"
#include "vg/log.h"

/* The pool's own fields of a connection. */
#define O(c) vg_pgconn_owner(c)

/* Pool states of a connection (owner_state). */
enum {
    CS_NONE = 0,
    CS_CONNECTING,
    CS_IDLE,
    CS_PINGING,
    CS_OUT,
    CS_RESETTING,
    CS_CLOSED_OUT,    /* closed by force while checked out: freed on release */
    CS_FREE_PENDING,  /* closed, freed when its cancel request is done */
    CS_MAX
};

/* owner_flags */
enum {
    F_CANCEL_INFLIGHT = 1,
    F_RESULT_PENDING = 2,
    F_ROLLED_BACK = 4,
};

#define PING_AFTER_MS 1000     /* idle longer than this: ping before use */
#define RESET_DEADLINE_MS 10000

struct vg_pgpool_probe {
    vg_pgpool_t *p;
    vg_pgpool_probe_fn cb;
    void *arg;
};

struct vg_pgpool {
    uv_loop_t *loop;
    vg_pgpool_cfg_t cfg;
    char *url, *app_name, *describe;
    char **keys, **vals;
    char **lkeys, **lvals;             /* the LISTEN connection's (listen_url) */
    char *ldescribe;
    vg_pgconn_t *idle, *busy;          /* the two lists */
    int n[CS_MAX];
    int n_conns;                       /* allocated and not yet freed */
    int cancels;                       /* cancel requests in flight */
    vg_list_t waiters;                 /* vg_pgpool_req_t, first come first served */
    int n_waiting;
    vg_pgpool_stats_t totals;          /* the *_total counters (prepared_total: by
                                          connections already freed) */
    bool dispatching, redispatch;
    uv_timer_t reaper;                 /* runs only while connections reset */
    uv_timer_t wait_timer;             /* the next waiter's deadline */
    uv_timer_t close_timer;
    int handles_open;
    bool closing, closed, destroyed, forced;
    vg_pgpool_closed_fn close_cb;
    void *close_arg;
    vg_pglistener_t *listener;
};

static void dispatch(vg_pgpool_t *p);
static void on_conn_event(vg_pgconn_t *c, vg_pgconn_event_t ev, void *arg);

/* ---- lists and the one state-change function ------------------------------- */

static void list_push(vg_pgconn_t **head, vg_pgconn_t *c)
{
    O(c)->prev = NULL;
    O(c)->next = *head;
    if (*head) O(*head)->prev = c;
    *head = c;
}

static void list_del(vg_pgconn_t **head, vg_pgconn_t *c)
{
    if (O(c)->prev) O(O(c)->prev)->next = O(c)->next;
    else *head = O(c)->next;
    if (O(c)->next) O(O(c)->next)->prev = O(c)->prev;
    O(c)->prev = O(c)->next = NULL;
}

/* The queue of checkouts waiting for a connection. */
static vg_pgpool_req_t *first_waiter(vg_pgpool_t *p)
{
    return VG_LIST_FIRST(&p->waiters, vg_pgpool_req_t, link);
}

static void waiter_push(vg_pgpool_t *p, vg_pgpool_req_t *r, bool front)
{
    r->queued = true;
    r->pinging = NULL;
    if (front) vg_list_push_head(&p->waiters, &r->link);
    else vg_list_push_tail(&p->waiters, &r->link);
    p->n_waiting++;
}

static void waiter_unlink(vg_pgpool_t *p, vg_pgpool_req_t *r)
{
    vg_list_remove(&p->waiters, &r->link);
    r->queued = false;
    p->n_waiting--;
}

static int n_open(const vg_pgpool_t *p)
{
    return p->n[CS_CONNECTING] + p->n[CS_IDLE] + p->n[CS_PINGING] + p->n[CS_OUT] +
           p->n[CS_RESETTING];
}

static int limit(const vg_pgpool_t *p) { return p->cfg.size + p->cfg.max_overflow; }

static void conn_set_state(vg_pgpool_t *p, vg_pgconn_t *c, int st)
{
    if (O(c)->state == CS_IDLE) list_del(&p->idle, c);
    else if (O(c)->state != CS_NONE) list_del(&p->busy, c);
    p->n[O(c)->state]--;
    O(c)->state = st;
    p->n[st]++;
    O(c)->since_ms = uv_now(p->loop);
    if (st == CS_IDLE) list_push(&p->idle, c);
    else if (st != CS_NONE) list_push(&p->busy, c);
}

static void free_params(char **keys, char **vals)
{
    for (size_t i = 0; keys[i]; i++) {
        free(keys[i]);
        free(vals[i]);
    }
    free(keys);
    free(vals);
}

static void pool_maybe_free(vg_pgpool_t *p)
{
    if (!p->destroyed || p->n_conns > 0 || p->cancels > 0 || p->handles_open > 0) return;
    free_params(p->keys, p->vals);
    if (p->lkeys != p->keys) free_params(p->lkeys, p->lvals);
    if (p->ldescribe != p->describe) free(p->ldescribe);
    free(p->url);
    free(p->app_name);
    free(p->describe);
    free(p);
}

static void conn_free(vg_pgpool_t *p, vg_pgconn_t *c)
{
    p->totals.prepared_total += (long long)vg_pgconn_prepared_total(c);
    conn_set_state(p, c, CS_NONE);
    vg_pgconn_free(c);
    p->n_conns--;
    pool_maybe_free(p);
}

/* Close a connection and drop it from the pool. */
static void discard(vg_pgpool_t *p, vg_pgconn_t *c)
{
    if (O(c)->state != CS_CONNECTING) p->totals.closed_total++;
    vg_pgconn_set_done(c, NULL, NULL); /* the pool's own callbacks must not run */
    if (O(c)->ref && O(c)->state == CS_CONNECTING) { /* a probe */
        vg_pgpool_probe_t *pr = O(c)->ref;
        O(c)->ref = NULL;
        if (pr->cb) pr->cb(pr->arg, "the pool was closed");
        free(pr);
    }
    if (O(c)->flags & F_CANCEL_INFLIGHT) {
        vg_pgconn_close(c);
        conn_set_state(p, c, CS_FREE_PENDING);
        return;
    }
    conn_free(p, c);
}

/* ---- closing ---------------------------------------------------------------- */

static void maybe_finish_close(vg_pgpool_t *p)
{
    if (!p->closing || p->closed || n_open(p) > 0) return;
    p->closed = true;
    uv_timer_stop(&p->close_timer);
    vg_pgpool_closed_fn cb = p->close_cb;
    p->close_cb = NULL;
    if (cb) cb(p->close_arg, p->forced);
}

static void force_close_out(vg_pgpool_t *p)
{
    vg_pgconn_t *c = p->busy, *next;
    for (; c; c = next) {
        next = O(c)->next;
        if (O(c)->state != CS_OUT) continue;
        p->forced = true;
        p->totals.closed_total++;
        conn_set_state(p, c, CS_CLOSED_OUT);
        vg_pgconn_close(c); /* a query in flight ends now, as a lost connection */
    }
    maybe_finish_close(p);
}

static void on_close_timeout(uv_timer_t *h) { force_close_out(h->data); }

static void fail_waiter(vg_pgpool_req_t *r, const char *code, const char *msg)
{
    r->queued = false;
    r->pinging = NULL;
    r->cb(r, NULL, code, msg);
}

void vg_pgpool_close(vg_pgpool_t *p, double timeout_s, vg_pgpool_closed_fn done, void *arg)
{
    if (p->closed) {
        if (done) done(arg, 0);
        return;
    }
    if (p->closing) { /* a second close does not wait any longer */
        if (done && !p->close_cb) {
            p->close_cb = done;
            p->close_arg = arg;
        }
        force_close_out(p);
        return;
    }
    p->closing = true;
    p->close_cb = done;
    p->close_arg = arg;
    for (vg_pgpool_req_t *w; (w = first_waiter(p));) {
        waiter_unlink(p, w);
        fail_waiter(w, "pool_closed", "the database pool is closed");
    }
    uv_timer_stop(&p->wait_timer);
    while (p->idle) discard(p, p->idle);
    vg_pgconn_t *c = p->busy, *next;
    for (; c; c = next) {
        next = O(c)->next;
        if (O(c)->state == CS_PINGING && O(c)->ref) {
            vg_pgpool_req_t *r = O(c)->ref;
            O(c)->ref = NULL;
            fail_waiter(r, "pool_closed", "the database pool is closed");
        }
        if (O(c)->state == CS_CONNECTING || O(c)->state == CS_PINGING ||
            O(c)->state == CS_RESETTING)
            discard(p, c);
    }
    if (p->listener) vg_pglistener_close(p->listener);
    if (p->n[CS_OUT] > 0) {
        if (timeout_s <= 0) force_close_out(p);
        else uv_timer_start(&p->close_timer, on_close_timeout, (uint64_t)(timeout_s * 1000), 0);
    }
    maybe_finish_close(p);
}

bool vg_pgpool_closed(const vg_pgpool_t *p) { return p->closing; }

static void on_pool_handle_closed(uv_handle_t *h)
{
    vg_pgpool_t *p = h->data;
    p->handles_open--;
    pool_maybe_free(p);
}

void vg_pgpool_destroy(vg_pgpool_t *p)
{
    if (!p || p->destroyed) return;
    vg_pgpool_close(p, 0, NULL, NULL);
    force_close_out(p);
    p->destroyed = true;
    uv_close((uv_handle_t *)&p->reaper, on_pool_handle_closed);
    uv_close((uv_handle_t *)&p->close_timer, on_pool_handle_closed);
    uv_close((uv_handle_t *)&p->wait_timer, on_pool_handle_closed);
    if (p->listener) vg_pglistener_free(p->listener);
    p->listener = NULL;
    pool_maybe_free(p);
}

/* ---- giving connections out -------------------------------------------------- */


static void hand_out(vg_pgpool_t *p, vg_pgconn_t *c, vg_pgpool_req_t *r)
{
    conn_set_state(p, c, CS_OUT);
    r->queued = false;
    r->pinging = NULL;
    r->cb(r, c, NULL, NULL);
}

/* A connection came back from idle, clean: give it to the first waiter, or
 * keep it (or close it when more than size are open). */
static void to_idle(vg_pgpool_t *p, vg_pgconn_t *c)
{
    if (p->closing) {
        discard(p, c);
        maybe_finish_close(p);
        return;
    }
    if (vg_list_empty(&p->waiters) && n_open(p) > p->cfg.size) {
        discard(p, c); /* overflow connections are closed when returned */
        return;
    }
    conn_set_state(p, c, CS_IDLE);
    vg_pgconn_keep_loop(c, false);
    if (!vg_list_empty(&p->waiters)) dispatch(p);
}

static void ping_done(vg_pgconn_t *c, PGresult *res, void *arg)
{
    vg_pgpool_t *p = arg;
    vg_pgpool_req_t *r = O(c)->ref;
    O(c)->ref = NULL;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bool ok = vg_pgconn_state(c) == VG_PGCONN_IDLE && (st == PGRES_EMPTY_QUERY || st == PGRES_COMMAND_OK);
    PQclear(res);
    if (!ok) {
        vg_log(VG_LOG_DEBUG, "db_connection_stale", VG_F_STR("error", vg_pgconn_error(c)),
               VG_F_STR("check", "ping"), VG_F_END);
        discard(p, c);
        if (r) waiter_push(p, r, true);
        dispatch(p);
        return;
    }
    if (r) hand_out(p, c, r);
    else to_idle(p, c);
}

/* Is c fit to hand out now? 1 yes, 0 it is being pinged for r, -1 it was
 * dead and is closed. */
static int prepare(vg_pgpool_t *p, vg_pgconn_t *c, vg_pgpool_req_t *r)
{
    /* A connection whose last query ended within the loop's current
     * millisecond is handed out without the socket check: the loop has
     * just read from it, and on a busy worker the check would cost a
     * syscall per query. (The server can still end a connection at any
     * moment; a query sent on a lost connection fails as connection_lost.) */
    uv_update_time(p->loop); /* the loop's cached time may be old after long Lua work */
    bool fresh = vg_pgconn_state(c) == VG_PGCONN_IDLE && vg_pgconn_last_used_ms(c) == uv_now(p->loop);
    if (!fresh && !vg_pgconn_check(c)) {
        vg_log(VG_LOG_DEBUG, "db_connection_stale", VG_F_STR("error", vg_pgconn_error(c)),
               VG_F_STR("check", "socket"), VG_F_END);
        discard(p, c);
        return -1;
    }
    if (!p->cfg.pre_ping || uv_now(p->loop) - vg_pgconn_last_used_ms(c) <= PING_AFTER_MS) return 1;
    if (vg_pgconn_send(c, ";", -1, NULL, NULL, NULL, NULL, ping_done, p) != 0) {
        discard(p, c);
        return -1;
    }
    p->totals.pings_total++;
    conn_set_state(p, c, CS_PINGING);
    O(c)->ref = r;
    r->pinging = c;
    r->queued = false;
    return 0;
}

static void open_conn(vg_pgpool_t *p, vg_pgpool_probe_t *probe)
{
    vg_pgconn_params_t params = {(const char *const *)p->keys, (const char *const *)p->vals,
                                 p->cfg.connect_timeout};
    vg_pgconn_t *c = vg_pgconn_connect(p->loop, &params, on_conn_event, p);
    O(c)->owner = p;
    vg_pgconn_set_prepare(c, p->cfg.prepare);
    O(c)->ref = probe;
    p->n_conns++;
    conn_set_state(p, c, CS_CONNECTING);
}

static void on_wait_timer(uv_timer_t *h);

/* Fail the waiters whose time is up (only from the timer, so that no
 * callback runs inside vg_pgpool_acquire), except the first n_connecting
 * ones: connections are being opened for them. Arm the timer for the next
 * deadline. */
static void check_deadlines(vg_pgpool_t *p, bool fail)
{
    uint64_t now = uv_now(p->loop), next = UINT64_MAX;
    int covered = p->n[CS_CONNECTING], i = 0;
    for (vg_link_t *e = p->waiters.head, *after; e; e = after) {
        after = e->next;
        vg_pgpool_req_t *r = VG_CONTAINER(e, vg_pgpool_req_t, link);
        if (i < covered) {
            i++;
            continue;
        }
        if (fail && r->deadline_ms <= now) {
            waiter_unlink(p, r);
            vg_buf_t b = VG_BUF_INIT;
            vg_buf_printf(&b, "no database connection became free within %g s (pool_size=%d, "
                              "max_overflow=%d: %d of %d in use, %d more waiting)",
                          p->cfg.pool_timeout, p->cfg.size, p->cfg.max_overflow,
                          p->n[CS_OUT] + p->n[CS_PINGING] + p->n[CS_RESETTING], limit(p),
                          p->n_waiting);
            p->totals.timeouts_total++;
            fail_waiter(r, "pool_timeout", b.data);
            vg_buf_free(&b);
            continue;
        }
        if (r->deadline_ms < next) next = r->deadline_ms;
        i++;
    }
    if (next == UINT64_MAX) uv_timer_stop(&p->wait_timer);
    else uv_timer_start(&p->wait_timer, on_wait_timer, next > now ? next - now : 0, 0);
}

static void on_wait_timer(uv_timer_t *h) { check_deadlines(h->data, true); }

static void dispatch(vg_pgpool_t *p)
{
    if (p->dispatching) {
        p->redispatch = true;
        return;
    }
    p->dispatching = true;
    do {
        p->redispatch = false;
        while (!vg_list_empty(&p->waiters) && p->idle && !p->closing) {
            vg_pgconn_t *c = p->idle;
            vg_pgpool_req_t *r = first_waiter(p);
            waiter_unlink(p, r);
            int ok = prepare(p, c, r);
            if (ok > 0) hand_out(p, c, r);
            else if (ok < 0) waiter_push(p, r, true);
        }
        /* Open what the remaining waiters need, within the limit. */
        int want = p->n_waiting - p->n[CS_CONNECTING];
        while (want-- > 0 && n_open(p) < limit(p) && !p->closing) open_conn(p, NULL);
        if (!p->closing) check_deadlines(p, false);
    } while (p->redispatch);
    p->dispatching = false;
}

int vg_pgpool_acquire(vg_pgpool_t *p, vg_pgpool_req_t *r, vg_pgconn_t **out)
{
    *out = NULL;
    r->queued = false;
    r->pinging = NULL;
    if (p->closing) return -1;
    double t = p->cfg.pool_timeout > 0 ? p->cfg.pool_timeout * 1000.0 : 0;
    r->deadline_ms = uv_now(p->loop) + (uint64_t)t;
    /* First come, first served: nobody overtakes a queued waiter. */
    while (vg_list_empty(&p->waiters) && p->idle) {
        vg_pgconn_t *c = p->idle;
        int ok = prepare(p, c, r);
        if (ok > 0) {
            conn_set_state(p, c, CS_OUT);
            *out = c;
            return 0;
        }
        if (ok == 0) return 1;
    }
    waiter_push(p, r, false);
    dispatch(p);
    return 1;
}

void vg_pgpool_cancel(vg_pgpool_t *p, vg_pgpool_req_t *r)
{
    if (r->queued) waiter_unlink(p, r);
    if (r->pinging) { /* the ping goes on; its connection then goes idle */
        O(r->pinging)->ref = NULL;
        r->pinging = NULL;
    }
}

/* ---- taking connections back ------------------------------------------------- */

static void reset_next(vg_pgpool_t *p, vg_pgconn_t *c);

static void reset_done(vg_pgconn_t *c, PGresult *res, void *arg)
{
    PQclear(res);
    O(c)->flags &= ~(unsigned)F_RESULT_PENDING;
    reset_next(arg, c);
}

static void cancel_done(void *arg)
{
    vg_pgconn_t *c = arg;
    vg_pgpool_t *p = O(c)->owner;
    O(c)->flags &= ~(unsigned)F_CANCEL_INFLIGHT;
    p->cancels--;
    if (O(c)->state == CS_FREE_PENDING) conn_free(p, c);
    else if (O(c)->state == CS_RESETTING) reset_next(p, c);
    else pool_maybe_free(p);
}

/* Next step of cleaning a dirty connection: wait for the cancelled query's
 * results and the cancel request, then roll back an open transaction. */
static void reset_next(vg_pgpool_t *p, vg_pgconn_t *c)
{
    if (O(c)->flags & (F_RESULT_PENDING | F_CANCEL_INFLIGHT)) return;
    if (vg_pgconn_state(c) != VG_PGCONN_IDLE) {
        discard(p, c);
        dispatch(p);
        return;
    }
    PGTransactionStatusType tx = vg_pgconn_tx_status(c);
    if (tx == PQTRANS_IDLE) {
        to_idle(p, c);
        return;
    }
    if ((O(c)->flags & F_ROLLED_BACK) ||
        vg_pgconn_send(c, "ROLLBACK", -1, NULL, NULL, NULL, NULL, reset_done, p) != 0) {
        discard(p, c);
        dispatch(p);
        return;
    }
    O(c)->flags |= F_ROLLED_BACK | F_RESULT_PENDING;
}

static void on_reaper(uv_timer_t *h)
{
    vg_pgpool_t *p = h->data;
    uint64_t now = uv_now(p->loop);
    vg_pgconn_t *c = p->busy, *next;
    for (; c; c = next) {
        next = O(c)->next;
        if (O(c)->state == CS_RESETTING && now - O(c)->since_ms > RESET_DEADLINE_MS) {
            vg_log(VG_LOG_WARNING, "db_connection_reset_timeout",
                   VG_F_INT("pid", vg_pgconn_pid(c)), VG_F_END);
            discard(p, c);
        }
    }
    if (p->n[CS_RESETTING] == 0) uv_timer_stop(&p->reaper);
    dispatch(p);
}

static void reset_begin(vg_pgpool_t *p, vg_pgconn_t *c)
{
    conn_set_state(p, c, CS_RESETTING);
    O(c)->flags &= ~(unsigned)(F_ROLLED_BACK | F_RESULT_PENDING);
    if (vg_pgconn_state(c) == VG_PGCONN_BUSY) {
        vg_pgconn_set_done(c, reset_done, p);
        O(c)->flags |= F_RESULT_PENDING;
        if (vg_pgconn_cancel(c, cancel_done, c) == 0) {
            O(c)->flags |= F_CANCEL_INFLIGHT;
            p->cancels++;
        }
    }
    if (!uv_is_active((uv_handle_t *)&p->reaper))
        uv_timer_start(&p->reaper, on_reaper, 1000, 1000);
    reset_next(p, c);
}

void vg_pgpool_release(vg_pgpool_t *p, vg_pgconn_t *c)
{
    if (O(c)->state == CS_CLOSED_OUT) {
        conn_free(p, c);
        return;
    }
    if (O(c)->state != CS_OUT) return;
    if (p->closing) {
        vg_pgconn_set_done(c, NULL, NULL);
        discard(p, c);
        maybe_finish_close(p);
        return;
    }
    if (vg_pgconn_state(c) == VG_PGCONN_BUSY || (vg_pgconn_state(c) == VG_PGCONN_IDLE &&
                                       vg_pgconn_tx_status(c) != PQTRANS_IDLE)) {
        reset_begin(p, c);
    } else if (vg_pgconn_state(c) == VG_PGCONN_IDLE) {
        to_idle(p, c);
    } else {
        discard(p, c);
        dispatch(p);
    }
}

/* ---- connection events --------------------------------------------------------- */

static void log_connect_failed(vg_pgpool_t *p, const char *msg)
{
    char human[512];
    const char *kind;
    vg_pgconn_explain(msg, human, sizeof human, &kind);
    char *red = vg_dburl_redact(msg);
    vg_log(VG_LOG_WARNING, "database_connect_failed", VG_F_STR("host", p->describe),
           VG_F_STR("reason", kind), VG_F_STR("error", human), VG_F_STR("detail", red), VG_F_END);
    free(red);
}

static void on_conn_event(vg_pgconn_t *c, vg_pgconn_event_t ev, void *arg)
{
    vg_pgpool_t *p = arg;
    vg_pgpool_probe_t *probe = O(c)->state == CS_CONNECTING ? O(c)->ref : NULL;
    switch (ev) {
    case VG_PGCONN_EV_CONNECTED:
        O(c)->ref = NULL;
        p->totals.opened_total++;
        vg_log(VG_LOG_DEBUG, "db_connection_opened", VG_F_INT("pid", vg_pgconn_pid(c)),
               VG_F_INT("open", n_open(p)), VG_F_END);
        if (probe) {
            if (probe->cb) probe->cb(probe->arg, NULL);
            free(probe);
        }
        to_idle(p, c);
        break;
    case VG_PGCONN_EV_CONNECT_FAILED: {
        O(c)->ref = NULL;
        p->totals.failed_total++;
        char *msg = vg_xstrdup(vg_pgconn_error(c));
        discard(p, c);
        if (probe) {
            if (probe->cb) probe->cb(probe->arg, msg);
            free(probe);
        } else {
            log_connect_failed(p, msg);
            /* One failed attempt fails the oldest waiter it was opened for. */
            vg_pgpool_req_t *r = first_waiter(p);
            if (r && p->n_waiting > p->n[CS_CONNECTING]) {
                waiter_unlink(p, r);
                char human[512];
                vg_pgconn_explain(msg, human, sizeof human, NULL);
                fail_waiter(r, "connect_failed", human);
            }
        }
        free(msg);
        dispatch(p);
        maybe_finish_close(p);
        break;
    }
    case VG_PGCONN_EV_BROKEN:
        /* Only idle sockets report this; a checked-out connection finds out
         * at its next query. */
        if (O(c)->state == CS_IDLE) {
            vg_log(VG_LOG_DEBUG, "db_connection_lost", VG_F_STR("error", vg_pgconn_error(c)),
                   VG_F_END);
            discard(p, c);
            dispatch(p);
        }
        break;
    }
}

vg_pgpool_probe_t *vg_pgpool_probe(vg_pgpool_t *p, vg_pgpool_probe_fn cb, void *arg)
{
    if (p->closing) return NULL;
    vg_pgpool_probe_t *pr = vg_xcalloc(1, sizeof *pr);
    pr->p = p;
    pr->cb = cb;
    pr->arg = arg;
    open_conn(p, pr);
    return pr;
}

void vg_pgpool_probe_cancel(vg_pgpool_probe_t *pr)
{
    if (pr) pr->cb = NULL;
}

/* ---- creation and stats ------------------------------------------------------------- */

/* Growing NULL-terminated keyword/value arrays for PQconnectStartParams. */
typedef struct {
    char **keys, **vals;
    size_t n, cap;
} params_t;

static void add_param(params_t *pp, const char *key, const char *val)
{
    if (pp->n + 2 > pp->cap) {
        pp->cap = pp->cap ? pp->cap * 2 : 16;
        pp->keys = vg_xrealloc(pp->keys, pp->cap * sizeof *pp->keys);
        pp->vals = vg_xrealloc(pp->vals, pp->cap * sizeof *pp->vals);
    }
    pp->keys[pp->n] = vg_xstrdup(key);
    pp->vals[pp->n] = vg_xstrdup(val);
    pp->n++;
    pp->keys[pp->n] = NULL;
    pp->vals[pp->n] = NULL;
}

/* The keyword/value arrays for url: the URL's settings, plus ours: results
 * in ISO dates and UTC, UTF-8, and a name in pg_stat_activity. Generic
 * plans when asked for (the worker does: its statements are the queue's
 * fixed ones, whose plans do not depend on the values, and the server would
 * otherwise keep planning some of them afresh on every execute; make bench:
 * about 10% more tasks/s in batch mode). Not by default: an ad-hoc query on
 * a skewed column is better planned for its values. The URL's own options
 * come after ours, so they can override them.
 *
 * Behind a transaction-mode pooler (cfg->pooler) no "options" are sent:
 * PgBouncer before 1.20 refuses that startup parameter. DateStyle and
 * TimeZone then go as startup parameters of their own, which PgBouncer
 * tracks per client and sets on whichever server connection serves a
 * transaction of this client (see vg_pgpool_new); plan_cache_mode has no
 * such form and is not needed there (no prepared statements). Returns
 * false with *err (malloc'd) when url does not parse. */
static bool build_params(const char *url, const vg_pgpool_cfg_t *cfg, const char *app_name,
                         bool pooler, params_t *pp, char **err)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (!opts) {
        vg_buf_t b = VG_BUF_INIT;
        char *red = vg_dburl_redact(perr ? perr : "out of memory");
        size_t n = strlen(red);
        while (n && red[n - 1] == '\n') red[--n] = '\0';
        vg_buf_printf(&b, "%s is not valid: %s",
                      url == cfg->url ? "DATABASE_URL" : "DATABASE_DIRECT_URL", red);
        free(red);
        if (perr) PQfreemem(perr);
        *err = vg_buf_steal(&b);
        return false;
    }
    const char *ours = cfg->prepare && cfg->generic_plans
        ? "-c DateStyle=ISO,YMD -c TimeZone=UTC -c plan_cache_mode=force_generic_plan"
        : "-c DateStyle=ISO,YMD -c TimeZone=UTC";
    bool has_app = false, has_enc = false, has_opts = false, has_keepalive = false;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val) continue;
        if (strncmp(o->keyword, "keepalives", 10) == 0 || strcmp(o->keyword, "tcp_user_timeout") == 0)
            has_keepalive = true;
        if (strcmp(o->keyword, "application_name") == 0) {
            has_app = true;
            if (app_name) continue;
        }
        if (strcmp(o->keyword, "client_encoding") == 0) has_enc = true;
        if (strcmp(o->keyword, "options") == 0 && !pooler) {
            vg_buf_t ob = VG_BUF_INIT;
            vg_buf_printf(&ob, "%s %s", ours, o->val);
            add_param(pp, "options", ob.data);
            vg_buf_free(&ob);
            has_opts = true;
            continue;
        }
        add_param(pp, o->keyword, o->val);
    }
    PQconninfoFree(opts);
    if (app_name) add_param(pp, "application_name", app_name);
    else if (!has_app) add_param(pp, "fallback_application_name", "vg-host");
    if (!has_enc) add_param(pp, "client_encoding", "UTF8");
    if (!has_opts && !pooler) add_param(pp, "options", ours);
    if (!has_keepalive) {
        /* A connection whose peer vanished without a word (a network cut,
         * a host that died) errors out within about half a minute instead
         * of hanging: this is how the LISTEN connection notices it died
         * silently, and it costs no statement. */
        add_param(pp, "keepalives", "1");
        add_param(pp, "keepalives_idle", "10");
        add_param(pp, "keepalives_interval", "5");
        add_param(pp, "keepalives_count", "3");
        add_param(pp, "tcp_user_timeout", "30000");
    }
    return true;
}

vg_pgpool_t *vg_pgpool_new(uv_loop_t *loop, const vg_pgpool_cfg_t *cfg, char **err)
{
    *err = NULL;
    if (!cfg->url || !*cfg->url) {
        *err = vg_xstrdup("DATABASE_URL is not set");
        return NULL;
    }
    params_t pp = {NULL, NULL, 0, 0}, lp = {NULL, NULL, 0, 0};
    if (!build_params(cfg->url, cfg, cfg->application_name, cfg->pooler, &pp, err))
        return NULL;
    if (cfg->listen_url && !build_params(cfg->listen_url, cfg, cfg->application_name, false,
                                         &lp, err)) {
        free_params(pp.keys, pp.vals);
        return NULL;
    }
    if (cfg->pooler) {
        /* libpq sends PGDATESTYLE and PGTZ as the startup parameters
         * datestyle and timezone (read when each connection starts): the
         * pool's settings without "options". The process is single-threaded
         * and this runs before any connection of this pool starts. */
        setenv("PGDATESTYLE", "ISO, YMD", 1);
        setenv("PGTZ", "UTC", 1);
    }
    vg_pgpool_t *p = vg_xcalloc(1, sizeof *p);
    p->loop = loop;
    p->cfg = *cfg;
    p->url = vg_xstrdup(cfg->url);
    p->cfg.url = p->url;
    p->cfg.listen_url = NULL;
    if (cfg->application_name) {
        p->app_name = vg_xstrdup(cfg->application_name);
        p->cfg.application_name = p->app_name;
    }
    if (p->cfg.size < 1) p->cfg.size = 1;
    if (p->cfg.max_overflow < 0) p->cfg.max_overflow = 0;
    p->describe = vg_dburl_describe(cfg->url);
    p->keys = pp.keys;
    p->vals = pp.vals;
    if (cfg->listen_url) {
        p->lkeys = lp.keys;
        p->lvals = lp.vals;
        p->ldescribe = vg_dburl_describe(cfg->listen_url);
    } else {
        p->lkeys = p->keys;
        p->lvals = p->vals;
        p->ldescribe = p->describe;
    }

    uv_timer_init(loop, &p->reaper);
    uv_timer_init(loop, &p->close_timer);
    uv_timer_init(loop, &p->wait_timer);
    p->reaper.data = p->close_timer.data = p->wait_timer.data = p;
    uv_unref((uv_handle_t *)&p->reaper);
    p->handles_open = 3;
    return p;
}

void vg_pgpool_stats(const vg_pgpool_t *p, vg_pgpool_stats_t *s)
{
    *s = p->totals; /* then the figures of the moment */
    s->size = p->cfg.size;
    s->max_overflow = p->cfg.max_overflow;
    s->open = n_open(p);
    s->connecting = p->n[CS_CONNECTING];
    s->idle = p->n[CS_IDLE];
    s->checked_out = p->n[CS_OUT] + p->n[CS_PINGING];
    s->resetting = p->n[CS_RESETTING];
    s->overflow = s->open > p->cfg.size ? s->open - p->cfg.size : 0;
    s->waiters = p->n_waiting;
    for (vg_pgconn_t *c = p->idle; c; c = O(c)->next)
        s->prepared_total += (long long)vg_pgconn_prepared_total(c);
    for (vg_pgconn_t *c = p->busy; c; c = O(c)->next)
        s->prepared_total += (long long)vg_pgconn_prepared_total(c);
}

const char *vg_pgpool_describe(const vg_pgpool_t *p) { return p->describe; }

const vg_pgpool_cfg_t *vg_pgpool_cfg(const vg_pgpool_t *p) { return &p->cfg; }

vg_pglistener_t *vg_pgpool_listener(vg_pgpool_t *p)
{
    if (p->listener) return p->listener;
    vg_pgconn_params_t params = {(const char *const *)p->lkeys, (const char *const *)p->lvals,
                                 p->cfg.connect_timeout};
    p->listener = vg_pglistener_new(p->loop, &params, p->ldescribe);
    if (p->closing) vg_pglistener_close(p->listener);
    return p->listener;
}
