/* The LISTEN connection (see vg/pglisten.h): one connection outside the
 * pool, a queue of LISTEN/UNLISTEN commands run one at a time, the set of
 * channels to subscribe again after a reconnection, and the notifications
 * queued for the tasks that wait for them. */
#include "vg/pglisten.h"

#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/util.h"
#include "vg/log.h"

#define NOTIFY_QUEUE_MAX 10000

typedef struct lcmd {
    struct lcmd *next;
    char *sql;
    char *channel;      /* LISTEN <channel>: dropped from the set if it fails */
    vg_pglisten_req_t *req;
} lcmd_t;

struct vg_pglistener {
    uv_loop_t *loop;
    char **keys, **vals;    /* connection parameters (copies) */
    double connect_timeout;
    char *describe;         /* host and database, for log lines */
    vg_pgconn_t *c;
    bool busy;          /* a command in flight */
    bool resubscribe;   /* LISTEN to every channel before anything else */
    bool reconnecting;  /* this connection replaces a lost one */
    bool established;   /* a LISTEN succeeded once: keep reconnecting */
    bool closed, freeing;
    char **channels;
    int n_channels, cap_channels;
    lcmd_t *cmd_head, *cmd_tail;
    vg_pgnotify_t *q_head, *q_tail;
    int q_len;
    bool dropping;      /* dropped since the queue was last drained: logged once */
    vg_list_t waiters;                 /* vg_pgwait_t, first come first served */
    uv_timer_t retry;
    double backoff;
    /* A statement run first on every new connection (e.g. a session lock). */
    char *oc_sql;
    char **oc_vals;
    int oc_n;
    bool need_on_connect;
    enum { SEND_NONE = 0, SEND_ON_CONNECT, SEND_RESUB, SEND_CMD } sending;
};

void vg_pgnotify_free(vg_pgnotify_t *n)
{
    if (!n) return;
    free(n->channel);
    free(n->payload);
    free(n);
}

static void listener_kick(vg_pglistener_t *l);

/* Keep the loop alive for the listener only while someone waits on it. */
static void listener_update_ref(vg_pglistener_t *l)
{
    bool want = !vg_list_empty(&l->waiters) || l->cmd_head;
    if (l->c) vg_pgconn_keep_loop(l->c, want);
    if (want) uv_ref((uv_handle_t *)&l->retry);
    else uv_unref((uv_handle_t *)&l->retry);
}

static void quote_ident(vg_buf_t *b, const char *s)
{
    vg_buf_addc(b, '"');
    for (; *s; s++) {
        if (*s == '"') vg_buf_addc(b, '"');
        vg_buf_addc(b, *s);
    }
    vg_buf_addc(b, '"');
}

static int channel_index(const vg_pglistener_t *l, const char *ch)
{
    for (int i = 0; i < l->n_channels; i++)
        if (strcmp(l->channels[i], ch) == 0) return i;
    return -1;
}

static void channel_remove(vg_pglistener_t *l, const char *ch)
{
    int i = channel_index(l, ch);
    if (i < 0) return;
    free(l->channels[i]);
    l->channels[i] = l->channels[--l->n_channels];
}

static void cmd_finish(vg_pglistener_t *l, const char *error)
{
    lcmd_t *cmd = l->cmd_head;
    l->cmd_head = cmd->next;
    if (!l->cmd_head) l->cmd_tail = NULL;
    if (error && cmd->channel) channel_remove(l, cmd->channel);
    if (!error && cmd->channel) l->established = true;
    vg_pglisten_req_t *r = cmd->req;
    free(cmd->sql);
    free(cmd->channel);
    free(cmd);
    if (r) {
        r->cmd = NULL;
        r->cb(r, error);
    }
}

static void wake_all_waiters(vg_pglistener_t *l)
{
    vg_pgwait_t *w;
    while ((w = VG_LIST_FIRST(&l->waiters, vg_pgwait_t, link))) {
        vg_pglistener_unwait(l, w);
        w->cb(w, NULL);
    }
}

static void on_listen_notify(vg_pgconn_t *c, PGnotify *pn, void *arg)
{
    vg_pglistener_t *l = arg;
    vg_pgnotify_t *n = vg_xcalloc(1, sizeof *n);
    n->channel = vg_xstrdup(pn->relname);
    n->payload = vg_xstrdup(pn->extra ? pn->extra : "");
    n->pid = pn->be_pid;
    PQfreemem(pn);
    vg_pgwait_t *w = VG_LIST_FIRST(&l->waiters, vg_pgwait_t, link);
    if (w) {
        vg_pglistener_unwait(l, w);
        w->cb(w, n);
        return;
    }
    if (l->q_len >= NOTIFY_QUEUE_MAX) { /* nobody reads: drop the oldest */
        vg_pgnotify_t *old = l->q_head;
        l->q_head = old->next;
        if (!l->q_head) l->q_tail = NULL;
        l->q_len--;
        if (!l->dropping) /* once until the queue is read empty again */
            vg_log(VG_LOG_WARNING, "db_notifications_dropped", VG_F_STR("channel", old->channel),
                   VG_F_INT("queued", l->q_len), VG_F_END);
        l->dropping = true;
        vg_pgnotify_free(old);
    }
    if (l->q_tail) l->q_tail->next = n;
    else l->q_head = n;
    l->q_tail = n;
    l->q_len++;
}

static void on_listen_retry(uv_timer_t *h);

static void listener_lost(vg_pglistener_t *l, const char *why)
{
    if (l->c) {
        vg_log(VG_LOG_WARNING, "db_listen_connection_lost", VG_F_STR("error", why),
               VG_F_INT("channels", l->n_channels), VG_F_END);
        vg_pgconn_free(l->c);
        l->c = NULL;
    }
    l->busy = false;
    l->reconnecting = true;
    if (l->n_channels > 0 || l->cmd_head) {
        uv_timer_start(&l->retry, on_listen_retry, (uint64_t)(l->backoff * 1000), 0);
        l->backoff = l->backoff * 2 > VG_PG_BACKOFF_MAX ? VG_PG_BACKOFF_MAX : l->backoff * 2;
    }
    listener_update_ref(l);
}

static void on_listen_event(vg_pgconn_t *c, vg_pgconn_event_t ev, void *arg)
{
    vg_pglistener_t *l = arg;
    if (ev == VG_PGCONN_EV_CONNECTED) {
        /* The back-off starts again once the on-connect statement, if
         * any, has succeeded too: one that keeps failing is retried at
         * the back-off's pace, not at every connect. */
        if (!l->oc_sql) l->backoff = VG_PG_BACKOFF_FIRST;
        l->need_on_connect = l->oc_sql != NULL;
        l->resubscribe = l->n_channels > 0;
        listener_kick(l);
        return;
    }
    char *why = vg_xstrdup(vg_pgconn_error(c));
    if (ev == VG_PGCONN_EV_CONNECT_FAILED && !l->established) {
        /* Never subscribed: report to the callers instead of retrying. */
        vg_pgconn_free(l->c);
        l->c = NULL;
        char human[512];
        vg_pgconn_explain(why, human, sizeof human, NULL);
        while (l->cmd_head) cmd_finish(l, human);
        /* Nothing will arrive on a connection that is not retried: tasks
         * waiting for a notification go and look for work themselves. */
        wake_all_waiters(l);
        listener_update_ref(l);
    } else if (ev == VG_PGCONN_EV_CONNECT_FAILED) {
        char human[512];
        vg_pgconn_explain(why, human, sizeof human, NULL);
        vg_log(VG_LOG_WARNING, "db_listen_reconnect_failed", VG_F_STR("host", l->describe),
               VG_F_STR("error", human), VG_F_NUM("retry_in", l->backoff), VG_F_END);
        vg_pgconn_free(l->c);
        l->c = NULL;
        listener_lost(l, why);
    } else {
        listener_lost(l, why);
    }
    free(why);
}

static void on_listen_done(vg_pgconn_t *c, PGresult *res, void *arg)
{
    vg_pglistener_t *l = arg;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    char *err = NULL;
    if (!ok) {
        err = vg_xstrdup(res && PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
                                                            : vg_pgconn_error(c));
        size_t n = strlen(err);
        while (n && err[n - 1] == '\n') err[--n] = '\0';
    }
    PQclear(res);
    int sending = l->sending;
    l->busy = false;
    l->sending = SEND_NONE;
    if (vg_pgconn_state(c) != VG_PGCONN_IDLE) {
        listener_lost(l, err ? err : vg_pgconn_error(c));
    } else if (sending == SEND_ON_CONNECT && err && l->established) {
        /* After a reconnection: the session is not what the caller asked
         * for until the statement succeeds, so it is never used without
         * it. Drop it and try again with back-off. */
        vg_log(VG_LOG_ERROR, "db_listen_on_connect_failed", VG_F_STR("error", err),
               VG_F_NUM("retry_in", l->backoff), VG_F_END);
        vg_pgconn_free(l->c);
        l->c = NULL;
        listener_lost(l, err);
    } else if (sending == SEND_ON_CONNECT) {
        l->need_on_connect = false;
        if (!err) l->backoff = VG_PG_BACKOFF_FIRST;
        if (err) {
            /* The first connection: whoever waits for a LISTEN behind it
             * learns why (a mistake in the statement shows at once). */
            vg_log(VG_LOG_ERROR, "db_listen_on_connect_failed", VG_F_STR("error", err), VG_F_END);
            while (l->cmd_head) cmd_finish(l, err);
        }
        listener_kick(l);
    } else if (sending == SEND_RESUB) {
        l->resubscribe = false;
        if (err) {
            vg_log(VG_LOG_ERROR, "db_listen_resubscribe_failed", VG_F_STR("error", err), VG_F_END);
        } else if (l->reconnecting) {
            vg_log(VG_LOG_WARNING, "db_listen_reconnected", VG_F_STR("host", l->describe),
                   VG_F_INT("channels", l->n_channels), VG_F_END);
        }
        l->reconnecting = false;
        wake_all_waiters(l); /* notifications may have been missed */
        listener_kick(l);
    } else {
        cmd_finish(l, err);
        listener_kick(l);
    }
    free(err);
    listener_update_ref(l);
}

static void listener_send(vg_pglistener_t *l, int what, const char *sql, int n,
                          const char *const *vals)
{
    if (vg_pgconn_send(l->c, sql, n, NULL, vals, NULL, NULL, on_listen_done, l) == 0) {
        l->busy = true;
        l->sending = what;
        return;
    }
    listener_lost(l, vg_pgconn_error(l->c));
}

static void listener_connect(vg_pglistener_t *l)
{
    vg_pgconn_params_t params = {(const char *const *)l->keys, (const char *const *)l->vals,
                                 l->connect_timeout};
    l->c = vg_pgconn_connect(l->loop, &params, on_listen_event, l);
    vg_pgconn_set_notify(l->c, on_listen_notify, l);
    listener_update_ref(l);
}

static void listener_kick(vg_pglistener_t *l)
{
    if (l->closed || l->busy) return;
    if (!l->c) {
        if ((l->cmd_head || l->n_channels > 0) && !uv_is_active((uv_handle_t *)&l->retry))
            listener_connect(l);
        return;
    }
    if (vg_pgconn_state(l->c) != VG_PGCONN_IDLE) return;
    if (l->need_on_connect && l->oc_sql) {
        listener_send(l, SEND_ON_CONNECT, l->oc_sql, l->oc_n,
                      (const char *const *)l->oc_vals);
    } else if (l->resubscribe) {
        vg_buf_t b = VG_BUF_INIT;
        for (int i = 0; i < l->n_channels; i++) {
            vg_buf_adds(&b, "LISTEN ");
            quote_ident(&b, l->channels[i]);
            vg_buf_adds(&b, ";");
        }
        listener_send(l, SEND_RESUB, b.data, -1, NULL);
        vg_buf_free(&b);
    } else if (l->cmd_head) {
        listener_send(l, SEND_CMD, l->cmd_head->sql, -1, NULL);
    }
}

static void on_listen_retry(uv_timer_t *h)
{
    vg_pglistener_t *l = h->data;
    if (!l->closed && !l->c) listener_connect(l);
}

vg_pglistener_t *vg_pglistener_new(uv_loop_t *loop, const vg_pgconn_params_t *params,
                                   const char *describe)
{
    vg_pglistener_t *l = vg_xcalloc(1, sizeof *l);
    l->loop = loop;
    l->keys = vg_strv_copy(params->keys);
    l->vals = vg_strv_copy(params->vals);
    l->connect_timeout = params->timeout_s;
    l->describe = vg_xstrdup(describe ? describe : "");
    l->backoff = VG_PG_BACKOFF_FIRST;
    uv_timer_init(loop, &l->retry);
    l->retry.data = l;
    uv_unref((uv_handle_t *)&l->retry);
    return l;
}

int vg_pglistener_request(vg_pglistener_t *l, const char *channel, bool listen,
                          vg_pglisten_req_t *r)
{
    if (l->closed) return -1;
    lcmd_t *cmd = vg_xcalloc(1, sizeof *cmd);
    vg_buf_t b = VG_BUF_INIT;
    vg_buf_adds(&b, listen ? "LISTEN " : "UNLISTEN ");
    if (channel) quote_ident(&b, channel);
    else vg_buf_adds(&b, "*");
    cmd->sql = vg_buf_steal(&b);
    if (listen) {
        cmd->channel = vg_xstrdup(channel);
        if (channel_index(l, channel) < 0) {
            if (l->n_channels == l->cap_channels) {
                l->cap_channels = l->cap_channels ? l->cap_channels * 2 : 8;
                l->channels = vg_xrealloc(l->channels, l->cap_channels * sizeof *l->channels);
            }
            l->channels[l->n_channels++] = vg_xstrdup(channel);
        }
    } else if (channel) {
        channel_remove(l, channel);
    } else {
        while (l->n_channels) channel_remove(l, l->channels[0]);
    }
    cmd->req = r;
    r->cmd = cmd;
    if (l->cmd_tail) l->cmd_tail->next = cmd;
    else l->cmd_head = cmd;
    l->cmd_tail = cmd;
    listener_kick(l);
    listener_update_ref(l);
    return 0;
}

void vg_pglistener_forget(vg_pglistener_t *l, vg_pglisten_req_t *r)
{
    if (r->cmd) ((lcmd_t *)r->cmd)->req = NULL;
    r->cmd = NULL;
}

vg_pgnotify_t *vg_pglistener_pop(vg_pglistener_t *l)
{
    vg_pgnotify_t *n = l->q_head;
    if (!n) return NULL;
    l->q_head = n->next;
    if (!l->q_head) {
        l->q_tail = NULL;
        l->dropping = false;
    }
    l->q_len--;
    n->next = NULL;
    return n;
}

void vg_pglistener_wait(vg_pglistener_t *l, vg_pgwait_t *w)
{
    vg_list_push_tail(&l->waiters, &w->link);
    w->queued = true;
    listener_update_ref(l);
}

void vg_pglistener_unwait(vg_pglistener_t *l, vg_pgwait_t *w)
{
    if (!w->queued) return;
    vg_list_remove(&l->waiters, &w->link);
    w->queued = false;
    listener_update_ref(l);
}

static void on_connect_free(vg_pglistener_t *l)
{
    for (int i = 0; i < l->oc_n; i++) free(l->oc_vals[i]);
    free(l->oc_vals);
    free(l->oc_sql);
    l->oc_vals = NULL;
    l->oc_sql = NULL;
    l->oc_n = 0;
}

void vg_pglistener_on_connect(vg_pglistener_t *l, const char *sql, int n,
                              const char *const *vals)
{
    if (l->closed) return;
    on_connect_free(l);
    if (!sql) return;
    l->oc_sql = vg_xstrdup(sql);
    l->oc_n = n;
    l->oc_vals = vg_xcalloc(n > 0 ? (size_t)n : 1, sizeof *l->oc_vals);
    for (int i = 0; i < n; i++) l->oc_vals[i] = vals[i] ? vg_xstrdup(vals[i]) : NULL;
    /* Connected already: run it now, before anything queued after it. */
    l->need_on_connect = true;
    listener_kick(l);
}

void vg_pglistener_close(vg_pglistener_t *l)
{
    if (l->closed) return;
    l->closed = true;
    uv_timer_stop(&l->retry);
    if (l->c) {
        vg_pgconn_set_done(l->c, NULL, NULL);
        vg_pgconn_free(l->c);
        l->c = NULL;
    }
    while (l->cmd_head) cmd_finish(l, "the database pool is closed");
    wake_all_waiters(l);
    vg_pgnotify_t *n;
    while ((n = vg_pglistener_pop(l))) vg_pgnotify_free(n);
    while (l->n_channels) channel_remove(l, l->channels[0]);
    on_connect_free(l);
    free(l->channels);
    l->channels = NULL;
    l->cap_channels = 0;
}

static void on_retry_closed(uv_handle_t *h)
{
    vg_pglistener_t *l = h->data;
    vg_strv_free(l->keys);
    vg_strv_free(l->vals);
    free(l->describe);
    free(l);
}

void vg_pglistener_free(vg_pglistener_t *l)
{
    if (!l || l->freeing) return;
    vg_pglistener_close(l);
    l->freeing = true;
    uv_close((uv_handle_t *)&l->retry, on_retry_closed);
}
