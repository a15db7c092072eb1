/* pool:listen / pool:unlisten / pool:wait_notification, the LISTEN half
 * of vg.db.core, over the pool's one dedicated LISTEN connection
 * (src/pglisten.c).
 *
 *   pool:listen(channel [, {on_connect = sql | {sql, params...}}]) -> true
 *   pool:unlisten([channel])                                    -> true
 *   pool:wait_notification([timeout]) -> {channel=, payload=, pid=} or nil
 */
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/err.h"
#include "vg/l_db.h"
#include "vg/l_db_types.h"
#include "vg/pglisten.h"
#include "vg/sched_host.h"

typedef struct {
    vg_task_t *task;
    vg_pglistener_t *l;
    vg_pglisten_req_t req;
    vg_pgwait_t wait;
    bool done;
    char *error;
    vg_pgnotify_t *n;
} lop_t;

static void lop_listened(vg_pglisten_req_t *r, const char *error)
{
    lop_t *op = r->arg;
    op->done = true;
    if (error) op->error = vg_xstrdup(error);
    vg_task_wake(op->task);
}

static void lop_cleanup(void *arg)
{
    lop_t *op = arg;
    vg_pglistener_forget(op->l, &op->req);
    vg_pglistener_unwait(op->l, &op->wait);
    vg_pgnotify_free(op->n);
    free(op->error);
    free(op);
}

static int listen_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_wake_t why = vg_task_woken(L);
    if (why != VG_WAKE_DONE)
        return vg_err_raise(L, "pool_timeout", true,
                            "LISTEN/UNLISTEN was not confirmed within the pool timeout");
    lop_t *op = (lop_t *)(intptr_t)ctx;
    char *error = op->error;
    free(op);
    if (error) {
        lua_pushstring(L, error);
        free(error);
        return vg_err_raise(L, "listen_failed", true, "%s", lua_tostring(L, -1));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int listen_common(lua_State *L, bool listen)
{
    vg_l_db_pool_t *lp = vg_l_db_check_lpool(L, 1);
    vg_pgpool_t *pool = vg_l_db_check_pool(L, 1);
    const char *channel = listen ? luaL_checkstring(L, 2) : luaL_optstring(L, 2, NULL);
    luaL_argcheck(L, !channel || (*channel && strlen(channel) < 64), 2,
                  "a channel name is 1 to 63 bytes");
    vg_task_t *t = vg_task_current(L);
    vg_pglistener_t *l = vg_pgpool_listener(pool);
    if (listen && lua_istable(L, 3)) {
        /* opts.on_connect = sql or {sql, param, ...}: run first on every new
         * LISTEN connection (a session lock, a SET). */
        lua_getfield(L, 3, "on_connect");
        int oc = lua_gettop(L);
        if (lua_isstring(L, oc)) {
            vg_pglistener_on_connect(l, lua_tostring(L, oc), 0, NULL);
        } else if (lua_istable(L, oc)) {
            lua_rawgeti(L, oc, 1);
            if (!lua_isstring(L, -1)) luaL_argerror(L, 3, "on_connect[1] must be the SQL text");
            int first = lua_gettop(L) + 1;
            lua_Integer n = (lua_Integer)lua_rawlen(L, oc);
            luaL_checkstack(L, (int)n, "too many on_connect parameters");
            for (lua_Integer i = 2; i <= n; i++) lua_rawgeti(L, oc, i);
            vg_l_db_params_t p;
            vg_l_db_build_params(L, first, &p);
            vg_pglistener_on_connect(l, lua_tostring(L, first - 1), p.n, p.vals);
            vg_l_db_free_params(&p);
        } else if (!lua_isnil(L, oc)) {
            luaL_argerror(L, 3, "on_connect must be SQL text or {sql, params...}");
        }
        lua_settop(L, 3);
    }
    lop_t *op = vg_xcalloc(1, sizeof *op);
    op->task = t;
    op->l = l;
    op->req.cb = lop_listened;
    op->req.arg = op;
    if (vg_pglistener_request(op->l, channel, listen, &op->req) != 0) {
        free(op);
        return vg_err_raise(L, "pool_closed", false, "the database pool is closed");
    }
    vg_task_wait(t, 0, lp->pool_timeout > 0 ? lp->pool_timeout : 30, lop_cleanup, op);
    vg_task_wait_label(t, listen ? "db listen" : "db unlisten");
    return vg_task_yield(L, (lua_KContext)(intptr_t)op, listen_k);
}

static int l_pool_listen(lua_State *L) { return listen_common(L, true); }
static int l_pool_unlisten(lua_State *L) { return listen_common(L, false); }

static void push_notify(lua_State *L, vg_pgnotify_t *n)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, n->channel);
    lua_setfield(L, -2, "channel");
    lua_pushstring(L, n->payload);
    lua_setfield(L, -2, "payload");
    lua_pushinteger(L, n->pid);
    lua_setfield(L, -2, "pid");
    vg_pgnotify_free(n);
}

static void lop_notified(vg_pgwait_t *w, vg_pgnotify_t *n)
{
    lop_t *op = w->arg;
    op->n = n;
    op->done = true;
    vg_task_wake(op->task);
}

static int wait_notification_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_wake_t why = vg_task_woken(L);
    if (why != VG_WAKE_DONE) return 0; /* timeout or shutdown: nil (cleanup ran) */
    lop_t *op = (lop_t *)(intptr_t)ctx;
    vg_pgnotify_t *n = op->n;
    free(op);
    if (!n) return 0;
    push_notify(L, n);
    return 1;
}

/* pool:wait_notification([timeout]) -> {channel=, payload=, pid=}, or nil
 * on timeout, on shutdown, or after the LISTEN connection was re-made
 * (notifications may have been missed: look for work). */
static int l_pool_wait_notification(lua_State *L)
{
    vg_pgpool_t *pool = vg_l_db_check_pool(L, 1);
    double timeout = luaL_optnumber(L, 2, -1);
    vg_pglistener_t *l = vg_pgpool_listener(pool);
    vg_pgnotify_t *n = vg_pglistener_pop(l);
    if (n) {
        push_notify(L, n);
        return 1;
    }
    if (vg_shutdown_requested() || timeout == 0) return 0;
    vg_task_t *t = vg_task_current(L);
    lop_t *op = vg_xcalloc(1, sizeof *op);
    op->task = t;
    op->l = l;
    op->wait.cb = lop_notified;
    op->wait.arg = op;
    vg_pglistener_wait(l, &op->wait);
    vg_task_wait(t, VG_WAIT_INTERRUPTIBLE, timeout, lop_cleanup, op);
    vg_task_wait_label(t, "db notification");
    return vg_task_yield(L, (lua_KContext)(intptr_t)op, wait_notification_k);
}

const luaL_Reg vg_l_db_listen_methods[] = {
    {"listen", l_pool_listen},
    {"unlisten", l_pool_unlisten},
    {"wait_notification", l_pool_wait_notification},
    {NULL, NULL},
};
