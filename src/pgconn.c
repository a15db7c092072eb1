/* One PostgreSQL connection as a state machine on the libuv loop (see
 * vg/pgconn.h). The shape follows libpq's documentation for asynchronous
 * use: PQconnectStartParams/PQconnectPoll, then PQsendQuery*, PQflush until
 * it returns 0, PQconsumeInput on readability, PQisBusy before every
 * PQgetResult, PQnotifies after every read. */
#include "vg/pgconn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/util.h"
#include "vg/log.h"
#include "vg/pgstmt.h"

#define MAX_ADDRS 8

struct vg_pgconn {
    vg_pgconn_owner_t own;       /* the owner's fields: never touched here */
    uint64_t last_used_ms;       /* uv_now() when the last query finished */
    bool no_prepare;             /* send parameterised queries unnamed, as
                                    through a transaction-mode PgBouncer */
    vg_pgconn_state_t state;     /* changed by set_state() only */
    PGconn *pg;
    uv_loop_t *loop;
    uv_poll_t *poll;             /* malloc'd: a socket change needs a new one */
    int poll_fd;
    int poll_events;
    int connect_events;          /* what PQconnectPoll waits for, while CONNECTING */
    uv_timer_t timer;            /* connect timeout */
    uv_getaddrinfo_t gai;
    bool gai_pending;
    bool keep_loop;
    bool fatal_seen;             /* the server sent FATAL while we were idle */
    bool fail_pending;           /* a failure found at start, reported by the timer */
    bool flushing;               /* query data still to be sent */
    bool freeing;                /* vg_pgconn_free() was called */
    bool drops_stmts;            /* a result of the query dropped prepared statements */
    bool refused_copy;           /* the last query was a COPY, given up on */
    int handles_open;            /* timer + poll + gai still to be closed */
    char **keys, **vals;         /* connection parameters (copies) */
    char *error;                 /* why the connection failed or broke */
    vg_pgconn_event_fn on_event;
    void *event_arg;
    vg_pgconn_done_fn on_done;
    void *done_arg;
    vg_pgconn_notify_fn on_notify;
    void *notify_arg;
    PGresult *result;            /* accumulating while BUSY */
    bool result_is_error;
    /* Server-side prepared statements of this session (see vg_pgconn_send). */
    vg_pgstmts_t stmts;
    vg_pgexec_t *pending;        /* execute to send once the prepare succeeds */
    int exec_slot;               /* cache slot of the statement running, or -1 */
    uint64_t prepared_total;     /* statements this connection has prepared */
};

static void on_poll(uv_poll_t *h, int status, int events);
static void on_timer(uv_timer_t *h);

/* ---- small helpers ------------------------------------------------------- */

static void set_error(vg_pgconn_t *c, const char *msg)
{
    free(c->error);
    /* libpq messages end with a newline; keep the text only. */
    size_t n = msg ? strlen(msg) : 0;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) n--;
    c->error = vg_xmalloc(n + 1);
    if (n) memcpy(c->error, msg, n);
    c->error[n] = '\0';
}

static const char *param(const vg_pgconn_t *c, const char *key)
{
    for (size_t i = 0; c->keys[i]; i++)
        if (strcmp(c->keys[i], key) == 0) return c->vals[i];
    return NULL;
}

static void maybe_free(vg_pgconn_t *c)
{
    if (!c->freeing || c->handles_open > 0) return;
    vg_pgstmts_free(&c->stmts);
    vg_strv_free(c->keys);
    vg_strv_free(c->vals);
    free(c->error);
    free(c);
}

/* Did this statement drop prepared statements? Told by what the server
 * says it ran (the command tag: "DISCARD ALL", "DEALLOCATE",
 * "DEALLOCATE ALL"), not by words in the query text, which may sit in a
 * string literal or a comment. A DEALLOCATE of one name drops the whole
 * cache: the tag does not say which statement went. */
static bool drops_statements(const PGresult *r)
{
    const char *tag = PQcmdStatus((PGresult *)r);
    return tag && (strcmp(tag, "DISCARD ALL") == 0 || strncmp(tag, "DEALLOCATE", 10) == 0);
}

/* ---- the poll handle ----------------------------------------------------- */

static void on_poll_closed(uv_handle_t *h)
{
    vg_pgconn_t *c = h->data;
    free(h);
    c->handles_open--;
    maybe_free(c);
}

static void poll_close(vg_pgconn_t *c)
{
    if (!c->poll) return;
    /* uv_close stops the watcher and removes the fd from epoll right now,
     * while the socket is still ours. */
    uv_close((uv_handle_t *)c->poll, on_poll_closed);
    c->poll = NULL;
    c->poll_fd = -1;
    c->poll_events = 0;
}

static void poll_stop(vg_pgconn_t *c)
{
    if (c->poll && c->poll_events) uv_poll_stop(c->poll);
    c->poll_events = 0;
}

static void poll_update_ref(vg_pgconn_t *c)
{
    if (!c->poll) return;
    if (c->state == VG_PGCONN_IDLE && !c->keep_loop) uv_unref((uv_handle_t *)c->poll);
    else uv_ref((uv_handle_t *)c->poll);
}

/* Watch fd for events (0: stop). A different fd needs a new handle: libuv
 * binds a poll handle to one fd, and libpq may switch sockets while it
 * connects (several addresses, SSL retries). The old handle is closed
 * before the new one starts, so one socket never has two poll handles. */
static int poll_set(vg_pgconn_t *c, int fd, int events)
{
    if (c->poll && c->poll_fd != fd) poll_close(c);
    if (events == 0 || fd < 0) {
        poll_stop(c);
        return 0;
    }
    if (!c->poll) {
        uv_poll_t *p = vg_xmalloc(sizeof *p);
        int rc = uv_poll_init_socket(c->loop, p, fd);
        if (rc != 0) {
            free(p);
            return rc;
        }
        p->data = c;
        c->poll = p;
        c->poll_fd = fd;
        c->handles_open++;
    }
    if (c->poll_events != events) {
        int rc = uv_poll_start(c->poll, events, on_poll);
        if (rc != 0) return rc;
        c->poll_events = events;
    }
    poll_update_ref(c);
    return 0;
}

/* The one place the state changes. It owns the poll interest that goes
 * with each state: CONNECTING waits for what PQconnectPoll asked
 * (connect_events), IDLE for readability (EOF, notifications), BUSY for
 * readability and, while query data is still to be sent, writability;
 * RESOLVING and BROKEN poll nothing, CLOSED has no poll handle. Returns
 * what poll_set returned (non-zero: the socket cannot be watched). */
static int set_state(vg_pgconn_t *c, vg_pgconn_state_t st)
{
    c->state = st;
    switch (st) {
    case VG_PGCONN_CONNECTING:
        return c->pg ? poll_set(c, PQsocket(c->pg), c->connect_events) : 0;
    case VG_PGCONN_IDLE:
        return poll_set(c, PQsocket(c->pg), UV_READABLE);
    case VG_PGCONN_BUSY:
        return poll_set(c, PQsocket(c->pg), UV_READABLE | (c->flushing ? UV_WRITABLE : 0));
    case VG_PGCONN_CLOSED:
        poll_close(c);
        return 0;
    default: /* RESOLVING, BROKEN */
        poll_stop(c);
        return 0;
    }
}

/* Stop watching the socket, then close it: libuv must let go of the fd
 * before PQfinish closes it. */
static void finish_pg(vg_pgconn_t *c)
{
    poll_close(c);
    if (c->pg) PQfinish(c->pg);
    c->pg = NULL;
}

void vg_pgconn_keep_loop(vg_pgconn_t *c, bool keep)
{
    c->keep_loop = keep;
    poll_update_ref(c);
}

/* ---- notices and notifications ------------------------------------------ */

/* Notices, and errors the server sends while no query runs (typically the
 * FATAL "terminating connection due to administrator command" right before
 * it closes the socket). libpq would print them on stderr. */
static void on_notice(void *arg, const PGresult *res)
{
    vg_pgconn_t *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (!sev) sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)) {
        c->fatal_seen = true;
        set_error(c, msg ? msg : "the server closed the connection");
    }
    vg_log(VG_LOG_DEBUG, "db_notice", VG_F_STR("severity", sev ? sev : "?"),
           VG_F_STR("sqlstate", state ? state : ""), VG_F_STR("message", msg ? msg : ""),
           VG_F_END);
}

static void drain_notifies(vg_pgconn_t *c)
{
    PGnotify *n;
    while (c->pg && (n = PQnotifies(c->pg)) != NULL) {
        if (c->on_notify) c->on_notify(c, n, c->notify_arg);
        else PQfreemem(n);
    }
}

void vg_pgconn_set_notify(vg_pgconn_t *c, vg_pgconn_notify_fn fn, void *arg)
{
    c->on_notify = fn;
    c->notify_arg = arg;
}

/* ---- connecting ---------------------------------------------------------- */

static void emit(vg_pgconn_t *c, vg_pgconn_event_t ev)
{
    if (c->on_event) c->on_event(c, ev, c->event_arg);
}

static void connect_failed(vg_pgconn_t *c, const char *msg)
{
    set_error(c, msg);
    set_state(c, VG_PGCONN_BROKEN);
    uv_timer_stop(&c->timer);
    emit(c, VG_PGCONN_EV_CONNECT_FAILED);
}

/* Report a failure found while starting: from a zero timer, so the owner is
 * never called back from inside vg_pgconn_connect(). */
static void connect_failed_later(vg_pgconn_t *c, const char *msg)
{
    set_error(c, msg);
    c->connect_events = 0;
    set_state(c, VG_PGCONN_CONNECTING);
    c->fail_pending = true;
    uv_timer_start(&c->timer, on_timer, 0, 0);
}

static void connected(vg_pgconn_t *c)
{
    uv_timer_stop(&c->timer);
    if (PQsetnonblocking(c->pg, 1) != 0) {
        connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    c->last_used_ms = uv_now(c->loop);
    if (set_state(c, VG_PGCONN_IDLE) != 0) {
        connect_failed(c, "could not watch the connection's socket");
        return;
    }
    emit(c, VG_PGCONN_EV_CONNECTED);
}

/* One step of PQconnectPoll. Polling is stopped around the call because
 * libpq may close the socket and open another one inside it. */
static void connect_step(vg_pgconn_t *c)
{
    poll_stop(c);
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    switch (st) {
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        c->connect_events = st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE;
        if (set_state(c, VG_PGCONN_CONNECTING) != 0)
            connect_failed(c, "could not watch the connection's socket");
        break;
    case PGRES_POLLING_OK:
        connected(c);
        break;
    default:
        connect_failed(c, PQerrorMessage(c->pg));
        break;
    }
}

static void start_libpq(vg_pgconn_t *c, const char *host_list, const char *addr_list)
{
    size_t n = 0;
    while (c->keys[n]) n++;
    const char **keys = vg_xcalloc(n + 3, sizeof *keys);
    const char **vals = vg_xcalloc(n + 3, sizeof *vals);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (addr_list && strcmp(c->keys[i], "host") == 0) continue;
        keys[k] = c->keys[i];
        vals[k++] = c->vals[i];
    }
    if (addr_list) {
        keys[k] = "host";
        vals[k++] = host_list;
        keys[k] = "hostaddr";
        vals[k++] = addr_list;
    }
    c->pg = PQconnectStartParams(keys, vals, 0);
    free(keys);
    free(vals);
    if (!c->pg) {
        connect_failed(c, "out of memory");
        return;
    }
    PQsetNoticeReceiver(c->pg, on_notice, c);
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    /* As the libpq manual says: start as if PQconnectPoll asked for write. */
    c->connect_events = UV_WRITABLE;
    if (set_state(c, VG_PGCONN_CONNECTING) != 0)
        connect_failed(c, "could not watch the connection's socket");
}

/* Numeric addresses and socket paths need no lookup; neither does a host
 * list (libpq resolves those itself) or an explicit hostaddr. */
static bool needs_lookup(const vg_pgconn_t *c, const char *host)
{
    if (!host || !*host || host[0] == '/' || host[0] == '@') return false;
    if (strchr(host, ',')) return false;
    const char *ha = param(c, "hostaddr");
    if (ha && *ha) return false;
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1;
}

/* The host name was looked up in libuv's thread pool (getaddrinfo blocks);
 * hand libpq the addresses through hostaddr, one per address, so it tries
 * each as it would have. */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    vg_pgconn_t *c = req->data;
    c->gai_pending = false;
    c->handles_open--;
    if (c->state != VG_PGCONN_RESOLVING) { /* closed or timed out meanwhile */
        if (res) uv_freeaddrinfo(res);
        maybe_free(c);
        return;
    }
    const char *host = param(c, "host");
    if (status != 0) {
        vg_buf_t b = VG_BUF_INIT;
        vg_buf_printf(&b, "could not translate host name \"%s\" to address: %s", host,
                      uv_strerror(status));
        connect_failed(c, b.data);
        vg_buf_free(&b);
        return;
    }
    vg_buf_t hosts = VG_BUF_INIT, addrs = VG_BUF_INIT;
    int count = 0;
    for (struct addrinfo *ai = res; ai && count < MAX_ADDRS; ai = ai->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        if (uv_ip_name(ai->ai_addr, ip, sizeof ip) != 0) continue;
        if (addrs.len && strstr(addrs.data, ip)) continue; /* duplicates (per protocol) */
        if (count++) {
            vg_buf_addc(&hosts, ',');
            vg_buf_addc(&addrs, ',');
        }
        vg_buf_adds(&hosts, host);
        vg_buf_adds(&addrs, ip);
    }
    uv_freeaddrinfo(res);
    if (count == 0) {
        vg_buf_t b = VG_BUF_INIT;
        vg_buf_printf(&b, "could not translate host name \"%s\" to address: no addresses", host);
        connect_failed(c, b.data);
        vg_buf_free(&b);
    } else {
        start_libpq(c, hosts.data, addrs.data);
    }
    vg_buf_free(&hosts);
    vg_buf_free(&addrs);
}

static void on_timer(uv_timer_t *h)
{
    vg_pgconn_t *c = h->data;
    if (c->state != VG_PGCONN_RESOLVING && c->state != VG_PGCONN_CONNECTING) return;
    if (c->fail_pending) { /* a failure found at start */
        c->fail_pending = false;
        set_state(c, VG_PGCONN_BROKEN);
        emit(c, VG_PGCONN_EV_CONNECT_FAILED);
        return;
    }
    if (c->gai_pending) uv_cancel((uv_req_t *)&c->gai);
    /* BROKEN from here on: on_resolved ignores a late answer. */
    connect_failed(c, "timeout expired while connecting");
}

vg_pgconn_t *vg_pgconn_connect(uv_loop_t *loop, const vg_pgconn_params_t *p,
                               vg_pgconn_event_fn on_event, void *arg)
{
    vg_pgconn_t *c = vg_xcalloc(1, sizeof *c);
    c->loop = loop;
    c->poll_fd = -1;
    c->exec_slot = -1;
    c->keys = vg_strv_copy(p->keys);
    c->vals = vg_strv_copy(p->vals);
    c->on_event = on_event;
    c->event_arg = arg;
    set_state(c, VG_PGCONN_RESOLVING);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles_open++;
    double ms = p->timeout_s > 0 ? p->timeout_s * 1000.0 : 0;
    if (ms > 0) uv_timer_start(&c->timer, on_timer, (uint64_t)(ms < 1 ? 1 : ms), 0);

    const char *host = param(c, "host");
    if (needs_lookup(c, host)) {
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        c->gai.data = c;
        int rc = uv_getaddrinfo(loop, &c->gai, on_resolved, host, NULL, &hints);
        if (rc == 0) {
            c->gai_pending = true;
            c->handles_open++;
            return c;
        }
        vg_buf_t b = VG_BUF_INIT;
        vg_buf_printf(&b, "could not translate host name \"%s\" to address: %s", host,
                      uv_strerror(rc));
        connect_failed_later(c, b.data);
        vg_buf_free(&b);
        return c;
    }
    /* Failures inside start_libpq must not call the owner back from here. */
    c->on_event = NULL;
    start_libpq(c, NULL, NULL);
    c->on_event = on_event;
    if (c->state == VG_PGCONN_BROKEN) {
        char *why = vg_xstrdup(c->error);
        finish_pg(c);
        connect_failed_later(c, why);
        free(why);
    }
    return c;
}

/* ---- idle ------------------------------------------------------------------ */

static void went_broken(vg_pgconn_t *c, const char *msg)
{
    if (!c->fatal_seen || !c->error) set_error(c, msg);
    set_state(c, VG_PGCONN_BROKEN);
}

/* Read what the socket holds: notifications, or the end of the connection. */
static bool idle_read(vg_pgconn_t *c)
{
    if (!PQconsumeInput(c->pg)) {
        went_broken(c, PQerrorMessage(c->pg));
        return false;
    }
    drain_notifies(c); /* also parses the input: FATAL messages reach on_notice */
    if (c->fatal_seen || PQstatus(c->pg) == CONNECTION_BAD) {
        went_broken(c, PQerrorMessage(c->pg));
        return false;
    }
    return true;
}

bool vg_pgconn_check(vg_pgconn_t *c)
{
    if (c->state != VG_PGCONN_IDLE) return false;
    /* Nothing to read (the usual case): the connection is as we left it,
     * known with one syscall. The loop also watches idle connections, so
     * this only catches what arrived since it last looked. */
    struct pollfd pfd = {.fd = PQsocket(c->pg), .events = POLLIN};
    int n;
    do n = poll(&pfd, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n == 0) return true;
    /* Something came (or poll failed: let the reads tell). Twice: the first
     * read may return the server's last message, the second the EOF behind
     * it. Neither blocks. */
    return idle_read(c) && idle_read(c);
}

/* ---- queries ---------------------------------------------------------------- */

static void keep_result(vg_pgconn_t *c, PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    bool is_error = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE ||
                    st == PGRES_NONFATAL_ERROR;
    if (c->result_is_error) { /* the first error is the one to report */
        PQclear(r);
        return;
    }
    PQclear(c->result);
    c->result = r;
    c->result_is_error = is_error;
}

static bool result_is_fatal(const PGresult *r)
{
    if (!r) return false;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

/* The query is over: hand res to whoever waits for it (once). */
static void deliver(vg_pgconn_t *c, PGresult *res)
{
    vg_pgconn_done_fn done = c->on_done;
    void *arg = c->done_arg;
    c->on_done = NULL;
    c->done_arg = NULL;
    if (done) done(c, res, arg);
    else PQclear(res);
}

static void finish_query(vg_pgconn_t *c)
{
    PGresult *res = c->result;
    vg_pgexec_free(c->pending);
    c->pending = NULL;
    if (c->exec_slot >= 0 && c->result_is_error && res) {
        /* The server lost the statement (DEALLOCATE, DISCARD ALL) or will not
         * run it with a changed result type ("cached plan must not change
         * result type"): prepare afresh next time. */
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (st && (strcmp(st, "26000") == 0 || strcmp(st, "0A000") == 0))
            vg_pgstmts_clear(&c->stmts);
    }
    if (c->drops_stmts) vg_pgstmts_clear(&c->stmts);
    c->drops_stmts = false;
    c->exec_slot = -1;
    c->result = NULL;
    c->result_is_error = false;
    c->flushing = false;
    c->last_used_ms = uv_now(c->loop);
    if (PQstatus(c->pg) == CONNECTION_BAD || result_is_fatal(res)) {
        went_broken(c, res && PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
                                                           : PQerrorMessage(c->pg));
    } else {
        set_state(c, VG_PGCONN_IDLE);
    }
    deliver(c, res);
}

/* COPY is not something a script can drive through this API: give up on
 * the connection rather than leave it in a state no one can end. The
 * caller tells it from a lost connection by vg_pgconn_refused_copy(). */
static void copy_unsupported(vg_pgconn_t *c, PGresult *r)
{
    PQclear(r);
    PQclear(c->result);
    c->result = NULL;
    c->result_is_error = false;
    PGresult *err = PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
    set_error(c, "COPY is not supported by db.query");
    c->fatal_seen = true;
    c->refused_copy = true;
    set_state(c, VG_PGCONN_BROKEN);
    finish_pg(c);
    deliver(c, err);
}

/* The statement of c->pending is prepared (or failed to be): cache it and
 * send the execute. Returns false when the query ends here: the prepare
 * failed (its error is the query's error, and nothing is cached) or the
 * execute could not be sent. */
static bool execute_prepared(vg_pgconn_t *c)
{
    vg_pgexec_t *e = c->pending;
    c->pending = NULL;
    if (c->result_is_error || !c->result || PQstatus(c->pg) == CONNECTION_BAD ||
        !vg_pgstmts_has_room(&c->stmts)) {
        vg_pgexec_free(e);
        return false;
    }
    PQclear(c->result);
    c->result = NULL;
    int slot = vg_pgstmts_add(&c->stmts, &e->stmt);
    c->prepared_total++;
    char name[24];
    vg_pgstmt_name(name, sizeof name, c->stmts.slots[slot].id);
    int ok = PQsendQueryPrepared(c->pg, name, e->n, (const char *const *)e->vals, e->lens,
                                 e->fmts, 0);
    vg_pgexec_free(e);
    if (!ok) {
        c->result = PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
        c->result_is_error = true;
        return false;
    }
    c->exec_slot = slot;
    c->flushing = PQflush(c->pg) == 1;
    return true;
}

static void busy_io(vg_pgconn_t *c, int events)
{
    if (events & UV_READABLE) {
        /* A failed read leaves the connection bad; PQgetResult below then
         * returns libpq's error result without blocking. */
        (void)PQconsumeInput(c->pg);
    }
    if (c->flushing) {
        int r = PQflush(c->pg);
        if (r <= 0) c->flushing = false; /* sent, or failed: reading tells */
    }
    drain_notifies(c);
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            if (c->pending && execute_prepared(c)) continue;
            finish_query(c);
            return;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            copy_unsupported(c, r);
            return;
        }
        if (drops_statements(r)) c->drops_stmts = true;
        keep_result(c, r);
    }
    set_state(c, VG_PGCONN_BUSY); /* writability only while data is still to go */
}

int vg_pgconn_send(vg_pgconn_t *c, const char *sql, int nparams, const Oid *types,
                   const char *const *values, const int *lengths, const int *formats,
                   vg_pgconn_done_fn done, void *arg)
{
    if (c->state != VG_PGCONN_IDLE || !c->pg) {
        if (c->state != VG_PGCONN_BROKEN || !c->error)
            set_error(c, c->state == VG_PGCONN_BUSY ? "another query is in flight on this "
                                                      "connection"
                                                    : "the connection is not open");
        return -1;
    }
    int ok;
    int slot = -1;
    vg_pgexec_t *pending = NULL;
    if (nparams < 0) {
        ok = PQsendQuery(c->pg, sql);
    } else if (!sql) { /* libpq reports it */
        ok = PQsendQueryParams(c->pg, sql, nparams, types, values, lengths, formats, 0);
    } else {
        vg_pgstmt_ref_t ref;
        vg_pgstmt_ref(&ref, sql, nparams, types);
        char name[24];
        slot = vg_pgstmts_find(&c->stmts, &ref);
        if (slot >= 0) {
            vg_pgstmt_name(name, sizeof name, c->stmts.slots[slot].id);
            ok = PQsendQueryPrepared(c->pg, name, nparams, values, lengths, formats, 0);
        } else if (!c->no_prepare && vg_pgstmts_has_room(&c->stmts)) {
            size_t klen;
            char *key = vg_pgstmt_key(&ref, &klen);
            unsigned id = c->stmts.next_id++;
            vg_pgstmt_name(name, sizeof name, id);
            ok = PQsendPrepare(c->pg, name, sql, nparams, types);
            if (ok) {
                pending = vg_pgexec_copy(nparams, values, lengths, formats);
                pending->stmt = (vg_pgstmt_t){key, klen, ref.hash, id};
            } else {
                free(key);
            }
        } else { /* turned off, or the cache is full: the unnamed statement */
            ok = PQsendQueryParams(c->pg, sql, nparams, types, values, lengths, formats, 0);
        }
    }
    if (!ok) {
        set_error(c, PQerrorMessage(c->pg));
        if (PQstatus(c->pg) == CONNECTION_BAD) set_state(c, VG_PGCONN_BROKEN);
        return -1;
    }
    c->on_done = done;
    c->done_arg = arg;
    c->result = NULL;
    c->result_is_error = false;
    c->refused_copy = false;
    c->pending = pending;
    c->exec_slot = slot;
    int r = PQflush(c->pg);
    c->flushing = r == 1;
    if (set_state(c, VG_PGCONN_BUSY) != 0) {
        /* Cannot happen with a valid socket; treat as lost. */
        c->on_done = NULL;
        finish_pg(c);
        set_state(c, VG_PGCONN_BROKEN);
        set_error(c, "could not watch the connection's socket");
        return -1;
    }
    return 0;
}

void vg_pgconn_set_done(vg_pgconn_t *c, vg_pgconn_done_fn done, void *arg)
{
    c->on_done = done;
    c->done_arg = arg;
}

/* ---- the poll callback: the one place socket events enter --------------- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    vg_pgconn_t *c = h->data;
    if (status < 0) {
        /* POLLERR (a reset: the server went away with our query unread).
         * libuv has stopped the watcher before calling us, so it watches
         * nothing now, whatever poll_events says: forget that, so that the
         * state's poll_set below starts it again. The first read may return
         * the data that came before the reset (the server's FATAL) and
         * leave libpq waiting: without the watcher, the reset behind it
         * would never be read and the query would wait forever. */
        c->poll_events = 0;
        events = UV_READABLE | UV_WRITABLE; /* let libpq find the error */
    }
    switch (c->state) {
    case VG_PGCONN_CONNECTING:
        connect_step(c);
        break;
    case VG_PGCONN_IDLE:
        if (!idle_read(c)) emit(c, VG_PGCONN_EV_BROKEN);
        else if (status < 0) set_state(c, VG_PGCONN_IDLE); /* watch again */
        break;
    case VG_PGCONN_BUSY:
        busy_io(c, events);
        break;
    default:
        poll_stop(c);
        break;
    }
}

/* ---- cancel ---------------------------------------------------------------- */

typedef struct {
    uv_work_t work;
    PGcancel *cancel;
    void (*done)(void *arg);
    void *arg;
    int ok;
    char err[256];
} cancel_req_t;

static void cancel_work(uv_work_t *w)
{
    cancel_req_t *r = w->data;
    r->ok = PQcancel(r->cancel, r->err, sizeof r->err);
}

static void cancel_after(uv_work_t *w, int status)
{
    cancel_req_t *r = w->data;
    PQfreeCancel(r->cancel);
    if (status == 0 && !r->ok)
        vg_log(VG_LOG_DEBUG, "db_cancel_failed", VG_F_STR("error", r->err), VG_F_END);
    if (r->done) r->done(r->arg);
    free(r);
}

int vg_pgconn_cancel(vg_pgconn_t *c, void (*done)(void *arg), void *arg)
{
    if (!c->pg || c->state != VG_PGCONN_BUSY) return -1;
    PGcancel *pc = PQgetCancel(c->pg);
    if (!pc) return -1;
    cancel_req_t *r = vg_xcalloc(1, sizeof *r);
    r->cancel = pc;
    r->done = done;
    r->arg = arg;
    r->work.data = r;
    if (uv_queue_work(c->loop, &r->work, cancel_work, cancel_after) != 0) {
        PQfreeCancel(pc);
        free(r);
        return -1;
    }
    return 0;
}

/* ---- closing ---------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
    vg_pgconn_t *c = h->data;
    c->handles_open--;
    maybe_free(c);
}

void vg_pgconn_close(vg_pgconn_t *c)
{
    if (c->state == VG_PGCONN_CLOSED) return;
    bool was_busy = c->state == VG_PGCONN_BUSY;
    set_state(c, VG_PGCONN_CLOSED); /* closes the poll handle */
    if (c->gai_pending) uv_cancel((uv_req_t *)&c->gai);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    finish_pg(c);
    PQclear(c->result);
    c->result = NULL;
    vg_pgexec_free(c->pending);
    c->pending = NULL;
    vg_pgstmts_clear(&c->stmts); /* the session is gone, and its statements with it */
    if (!c->error) set_error(c, "the connection was closed");
    vg_pgconn_done_fn done = c->on_done;
    void *arg = c->done_arg;
    c->on_done = NULL;
    if (was_busy && done) done(c, NULL, arg);
}

void vg_pgconn_free(vg_pgconn_t *c)
{
    if (!c) return;
    vg_pgconn_close(c);
    c->freeing = true;
    maybe_free(c);
}

/* ---- accessors -------------------------------------------------------------- */

const char *vg_pgconn_error(const vg_pgconn_t *c)
{
    return c->error ? c->error : "no error";
}

int vg_pgconn_pid(const vg_pgconn_t *c)
{
    return c->pg && c->state != VG_PGCONN_CONNECTING && c->state != VG_PGCONN_RESOLVING
               ? PQbackendPID(c->pg)
               : 0;
}

PGTransactionStatusType vg_pgconn_tx_status(const vg_pgconn_t *c)
{
    return c->pg ? PQtransactionStatus(c->pg) : PQTRANS_UNKNOWN;
}

vg_pgconn_state_t vg_pgconn_state(const vg_pgconn_t *c) { return c->state; }

vg_pgconn_owner_t *vg_pgconn_owner(vg_pgconn_t *c) { return &c->own; }

uint64_t vg_pgconn_last_used_ms(const vg_pgconn_t *c) { return c->last_used_ms; }

void vg_pgconn_set_prepare(vg_pgconn_t *c, bool prepare) { c->no_prepare = !prepare; }

uint64_t vg_pgconn_prepared_total(const vg_pgconn_t *c) { return c->prepared_total; }

bool vg_pgconn_refused_copy(const vg_pgconn_t *c) { return c->refused_copy; }
