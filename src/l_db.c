/* require "vg.db.core": the C half of the vg.db module (lua/vg/db.lua adds
 * db.transaction and the module-level functions over the default pool).
 *
 *   core.null                    the NULL value (same as cjson.null)
 *   core.bytea(s)                marks s as binary (sent as bytea)
 *   core.error(code, retriable, message) -> error object
 *   core.default()               the process's pool, from DATABASE_URL and
 *                                VG_DB_* (created on first use)
 *   core.configure(opts)         settings for the default pool (closes it if
 *                                it exists; the next use opens a new one)
 *   core.new_pool(opts)          another pool: opts url, pool_size,
 *                                max_overflow, pool_timeout, pre_ping, prepare,
 *                                generic_plans,
 *                                connect_timeout, application_name
 *   core.Pool                    the pool methods table (db.lua adds
 *                                transaction)
 *
 *   pool:query(sql, ...)         -> rows, affected
 *   pool:acquire()               -> conn (conn:query, conn:release,
 *                                   conn:tx_status, conn:pid)
 *   pool:stats()                 -> table
 *   pool:close([timeout])        -> true, or false when connections still
 *                                   checked out were closed by force
 *   pool:probe([timeout])        -> true, or false, message, kind, detail:
 *                                   one connection attempt (lua/vg/db.lua
 *                                   builds pool:wait_ready on it)
 *   core.config_num(name)        a VG_* setting; core.backoff_first and
 *                                core.backoff_max, the retry back-off
 *   pool:listen, pool:unlisten, pool:wait_notification: src/l_db_listen.c
 *
 * Every wait is a scheduler wait with one cleanup (vg/sched.h): a task
 * cancelled in the middle of a query gives its connection back to the
 * pool, which cancels the query on the server and resets the connection
 * before anyone else gets it. */
#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/config.h"
#include "vg/dburl.h"
#include "vg/err.h"
#include "vg/l_db.h"
#include "vg/l_db_types.h"
#include "vg/lclass.h"
#include "vg/log.h"
#include "vg/lref.h"
#include "vg/pgpool.h"
#include "vg/sched_host.h"

#define POOL_MT VG_L_DB_POOL_MT
#define CONN_MT "vg.db.Conn"

typedef vg_l_db_pool_t l_pool_t;

typedef struct qop qop_t;

typedef struct {
    vg_pgconn_t *c;         /* NULL once given back or lost */
    vg_pgpool_t *p;
    qop_t *busy;            /* the query in flight on it */
} l_conn_t;

static struct {
    l_pool_t *pools;
    int default_ref;        /* registry ref of the default pool userdata */
    int opts_ref;           /* db.configure options */
    bool atexit_done;
} D = {NULL, LUA_NOREF, LUA_NOREF, false};

/* ---- pools: creation, options, exit --------------------------------------- */

static void on_exit_hook(void *arg)
{
    /* Every task has ended: close everything now; the host then runs the
     * loop until the handles have closed. The module's references go too
     * (arg is the main Lua state): no script runs any more. */
    for (l_pool_t *lp = D.pools; lp; lp = lp->next) {
        if (!lp->pool) continue;
        vg_pgpool_destroy(lp->pool);
        lp->pool = NULL;
    }
    lua_State *L = arg;
    vg_ref_release(L, &D.default_ref);
    vg_ref_release(L, &D.opts_ref);
    vg_l_db_types_close(L);
}

static double opt_num(lua_State *L, int idx, const char *key, double def)
{
    if (idx == 0) return def;
    lua_getfield(L, idx, key);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1)) luaL_error(L, "option %s must be a number", key);
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* Options: opts table at idx (or 0), else db.configure's, else VG_DB_*. */
static void push_pool(lua_State *L, int idx)
{
    int cfg_idx = 0;
    if (idx == 0 && D.opts_ref != LUA_NOREF) {
        vg_ref_push(L, D.opts_ref);
        cfg_idx = lua_gettop(L);
    } else if (idx) {
        cfg_idx = lua_absindex(L, idx);
    }
    vg_pgpool_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    const char *url = vg_config_str("DATABASE_URL");
    char *norm = NULL;
    if (cfg_idx) {
        lua_getfield(L, cfg_idx, "url");
        if (lua_isstring(L, -1)) {
            const char *why;
            norm = vg_dburl_normalise(lua_tostring(L, -1), &why);
            if (!norm) vg_err_raise(L, "configuration_invalid", false, "%s", why);
            url = norm;
        }
        lua_pop(L, 1);
        lua_getfield(L, cfg_idx, "application_name");
        cfg.application_name = lua_tostring(L, -1); /* kept on the stack below */
    }
    if (!url) {
        free(norm);
        vg_err_raise(L, "configuration_invalid", false,
                     "DATABASE_URL is not set (or is not a PostgreSQL URL)");
    }
    cfg.url = url;
    cfg.size = (int)opt_num(L, cfg_idx, "pool_size", vg_config_num("VG_DB_POOL_SIZE"));
    cfg.max_overflow = (int)opt_num(L, cfg_idx, "max_overflow",
                                    vg_config_num("VG_DB_MAX_OVERFLOW"));
    cfg.connect_timeout = opt_num(L, cfg_idx, "connect_timeout",
                                  vg_config_num("VG_DB_CONNECT_TIMEOUT"));
    cfg.pool_timeout = opt_num(L, cfg_idx, "pool_timeout", vg_config_num("VG_DB_POOL_TIMEOUT"));
    cfg.pre_ping = vg_config_num("VG_DB_PRE_PING") != 0;
    if (cfg_idx) {
        lua_getfield(L, cfg_idx, "pre_ping");
        if (lua_isboolean(L, -1)) cfg.pre_ping = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    /* The process's pool (no url of its own) goes through a transaction-
     * mode pooler when DATABASE_DIRECT_URL is set: it sends no "options"
     * and, unless VG_DB_PREPARE says otherwise, prepares nothing (PgBouncer
     * before 1.21 cannot), and its LISTEN connection goes straight to the
     * server. A pool with a url of its own is direct unless told
     * {pooler = true}. */
    const char *direct = norm ? NULL : vg_config_str("DATABASE_DIRECT_URL");
    cfg.pooler = direct != NULL;
    cfg.listen_url = direct;
    if (cfg_idx) {
        lua_getfield(L, cfg_idx, "pooler");
        if (lua_isboolean(L, -1)) cfg.pooler = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    cfg.prepare = vg_config_num("VG_DB_PREPARE") != 0;
    if (cfg.pooler && !getenv("VG_DB_PREPARE")) cfg.prepare = false;
    if (cfg_idx) {
        lua_getfield(L, cfg_idx, "prepare");
        if (lua_isboolean(L, -1)) cfg.prepare = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, cfg_idx, "generic_plans");
        cfg.generic_plans = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    char *err = NULL;
    vg_pgpool_t *pool = vg_pgpool_new(vg_loop(), &cfg, &err);
    free(norm);
    if (!pool) {
        lua_pushstring(L, err);
        free(err);
        vg_err_raise(L, "configuration_invalid", false, "%s", lua_tostring(L, -1));
    }
    l_pool_t *lp = lua_newuserdatauv(L, sizeof *lp, 0);
    lp->pool = pool;
    lp->pool_timeout = cfg.pool_timeout;
    lp->next = D.pools;
    D.pools = lp;
    luaL_setmetatable(L, POOL_MT);
}

l_pool_t *vg_l_db_check_lpool(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, POOL_MT);
}

vg_pgpool_t *vg_l_db_check_pool(lua_State *L, int idx)
{
    l_pool_t *lp = vg_l_db_check_lpool(L, idx);
    if (!lp->pool || vg_pgpool_closed(lp->pool))
        vg_err_raise(L, "pool_closed", false, "the database pool is closed");
    return lp->pool;
}

static int l_pool_gc(lua_State *L)
{
    l_pool_t *lp = vg_l_db_check_lpool(L, 1);
    for (l_pool_t **pp = &D.pools; *pp; pp = &(*pp)->next) {
        if (*pp == lp) {
            *pp = lp->next;
            break;
        }
    }
    if (lp->pool) vg_pgpool_destroy(lp->pool);
    lp->pool = NULL;
    return 0;
}

/* core.default([create]) -> the default pool; with create false, nil when
 * it was not made yet. */
static int l_core_default(lua_State *L)
{
    if (D.default_ref != LUA_NOREF) {
        vg_ref_push(L, D.default_ref);
        return 1;
    }
    if (lua_isboolean(L, 1) && !lua_toboolean(L, 1)) return 0;
    lua_settop(L, 0);
    push_pool(L, 0);
    lua_pushvalue(L, -1);
    D.default_ref = vg_ref_take(L);
    return 1;
}

static int l_core_new_pool(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    push_pool(L, 1);
    return 1;
}

static int l_core_configure(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    vg_ref_release(L, &D.opts_ref);
    lua_pushvalue(L, 1);
    D.opts_ref = vg_ref_take(L);
    if (D.default_ref != LUA_NOREF) { /* the next use opens a new pool */
        vg_ref_push(L, D.default_ref);
        l_pool_t *lp = lua_touserdata(L, -1);
        if (lp->pool) vg_pgpool_destroy(lp->pool);
        lp->pool = NULL;
        vg_ref_release(L, &D.default_ref);
    }
    return 0;
}

/* ---- queries ---------------------------------------------------------------------- */

enum { Q_ACQUIRE = 1, Q_QUERY };

struct qop {
    vg_task_t *task;
    vg_pgpool_t *pool;
    l_conn_t *lc;           /* conn:query; NULL for pool:query */
    vg_pgconn_t *conn;
    vg_pgpool_req_t req;
    int phase;
    PGresult *res;
    const char *err_code;
    char *err_msg;
    vg_l_db_params_t params; /* built before the checkout, freed once sent */
    bool have_params;
};

static void qop_drop_params(qop_t *op)
{
    if (op->have_params) vg_l_db_free_params(&op->params);
    op->have_params = false;
}

static void qop_free(qop_t *op)
{
    qop_drop_params(op);
    free(op->err_msg);
    free(op);
}

/* A query op owning the parameters p (built already), or none (NULL). */
static qop_t *qop_new(vg_task_t *t, vg_pgpool_t *pool, vg_l_db_params_t *p)
{
    qop_t *op = vg_xcalloc(1, sizeof *op);
    op->task = t;
    op->pool = pool;
    if (p) {
        op->params = *p;
        op->have_params = true;
    }
    return op;
}

/* The wait ended early (cancelled, timed out): detach from the pool and
 * the connection; a query in flight goes to the pool to be cancelled. */
static void qop_cleanup(void *arg)
{
    qop_t *op = arg;
    if (op->phase == Q_ACQUIRE) {
        vg_pgpool_cancel(op->pool, &op->req);
    } else if (op->phase == Q_QUERY && op->conn) {
        vg_pgconn_set_done(op->conn, NULL, NULL);
        if (op->lc) {
            op->lc->c = NULL;
            op->lc->busy = NULL;
        }
        vg_pgpool_release(op->pool, op->conn);
    }
    qop_free(op);
}

static void qop_acquired(vg_pgpool_req_t *r, vg_pgconn_t *c, const char *code, const char *msg)
{
    qop_t *op = r->arg;
    op->conn = c;
    op->err_code = code;
    if (msg) op->err_msg = vg_xstrdup(msg);
    vg_task_wake(op->task);
}

static void qop_done(vg_pgconn_t *c, PGresult *res, void *arg)
{
    qop_t *op = arg;
    op->res = res;
    vg_task_wake(op->task);
}

static int query_sent_k(lua_State *L, int status, lua_KContext ctx);

/* Ask the pool for a connection for task t (op takes the parameters p,
 * when given). Returns op with op->conn set when one was free at once, or
 * op waiting for one (the caller then waits with checkout_wait); raises
 * pool_closed. */
static qop_t *checkout(lua_State *L, vg_task_t *t, vg_pgpool_t *pool, vg_l_db_params_t *p)
{
    qop_t *op = qop_new(t, pool, p);
    op->req.cb = qop_acquired;
    op->req.arg = op;
    op->phase = Q_ACQUIRE;
    vg_pgconn_t *c;
    int rc = vg_pgpool_acquire(pool, &op->req, &c);
    if (rc < 0) {
        qop_free(op);
        vg_err_raise(L, "pool_closed", false, "the database pool is closed");
    }
    if (rc == 0) op->conn = c;
    return op;
}

/* Wait for the connection of a checkout; k runs when it came or failed.
 * No timeout here: the pool fails the request with pool_timeout. */
static int checkout_wait(lua_State *L, qop_t *op, lua_KFunction k)
{
    vg_task_wait(op->task, 0, -1, qop_cleanup, op);
    vg_task_wait_label(op->task, "db checkout");
    return vg_task_yield(L, (lua_KContext)(intptr_t)op, k);
}

/* Send the query of the call whose SQL is at index 2, with op's
 * parameters, on op->conn, and wait. */
static int query_send(lua_State *L, qop_t *op)
{
    const vg_l_db_params_t *p = &op->params;
    const char *sql = lua_tostring(L, 2);
    /* No parameters: the simple protocol, so a migration may hold several
     * statements. */
    int rc = vg_pgconn_send(op->conn, sql, p->n ? p->n : -1,
                            p->types, p->vals, p->lens, p->fmts, qop_done, op);
    qop_drop_params(op); /* libpq or the statement cache copied what it needs */
    if (rc != 0) {
        lua_pushstring(L, vg_pgconn_error(op->conn));
        bool lost = vg_pgconn_state(op->conn) != VG_PGCONN_IDLE;
        if (!op->lc) vg_pgpool_release(op->pool, op->conn);
        qop_free(op);
        vg_l_db_push_query_error(L, NULL, lost, lua_tostring(L, -1));
        return lua_error(L);
    }
    op->phase = Q_QUERY;
    if (op->lc) op->lc->busy = op;
    vg_task_wait(op->task, 0, -1, qop_cleanup, op);
    vg_task_wait_label(op->task, "db query");
    return vg_task_yield(L, (lua_KContext)(intptr_t)op, query_sent_k);
}

static int query_sent_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_task_woken(L); /* raises when cancelled (cleanup already ran) */
    qop_t *op = (qop_t *)(intptr_t)ctx;
    PGresult *res = op->res;
    vg_pgconn_t *conn = op->conn;
    bool lost = vg_pgconn_state(conn) != VG_PGCONN_IDLE;
    bool copy = vg_pgconn_refused_copy(conn);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bool ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY ||
              st == PGRES_SINGLE_TUPLE;
    if (!ok) lua_pushstring(L, vg_pgconn_error(conn));
    if (op->lc) op->lc->busy = NULL;
    else vg_pgpool_release(op->pool, conn);
    qop_free(op);
    if (copy) { /* not a lost connection: retrying would do the same */
        PQclear(res);
        return vg_err_raise(L, "unsupported", false,
                            "COPY is not supported by db.query: use INSERT or SELECT");
    }
    if (!ok) {
        vg_l_db_push_query_error(L, res, lost || !res, lua_tostring(L, -1));
        PQclear(res);
        return lua_error(L);
    }
    int n = vg_l_db_push_result(L, res);
    PQclear(res);
    return n;
}

/* A checkout failed: pool_timeout and connect_failed are worth retrying,
 * pool_closed is not. Frees op. */
static int raise_acquire_error(lua_State *L, qop_t *op)
{
    const char *code = op->err_code ? op->err_code : "connect_failed";
    lua_pushstring(L, op->err_msg ? op->err_msg : "no connection");
    qop_free(op);
    vg_err_push(L, code, strcmp(code, "pool_closed") != 0, "%s", lua_tostring(L, -1));
    return lua_error(L);
}

static int query_acquired_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_task_woken(L); /* raises when cancelled (cleanup freed op) */
    qop_t *op = (qop_t *)(intptr_t)ctx;
    if (!op->conn) return raise_acquire_error(L, op);
    return query_send(L, op);
}

/* pool:query(sql, ...) -> rows, affected */
static int l_pool_query(lua_State *L)
{
    vg_pgpool_t *pool = vg_l_db_check_pool(L, 1);
    luaL_checkstring(L, 2);
    vg_task_t *t = vg_task_current(L);
    vg_l_db_params_t p;
    vg_l_db_build_params(L, 3, &p); /* before the checkout: a refusal leaves nothing */
    qop_t *op = checkout(L, t, pool, &p);
    if (op->conn) return query_send(L, op);
    return checkout_wait(L, op, query_acquired_k);
}

/* ---- checked-out connections (transactions) --------------------------------------- */

static l_conn_t *check_conn(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, CONN_MT);
}

static void push_conn(lua_State *L, vg_pgpool_t *pool, vg_pgconn_t *c)
{
    l_conn_t *lc = lua_newuserdatauv(L, sizeof *lc, 1);
    lc->c = c;
    lc->p = pool;
    lc->busy = NULL;
    luaL_setmetatable(L, CONN_MT);
    lua_pushvalue(L, 1); /* keep the pool alive while the connection is out */
    lua_setiuservalue(L, -2, 1);
}

static int acquire_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_task_woken(L); /* raises when cancelled (cleanup freed op) */
    qop_t *op = (qop_t *)(intptr_t)ctx;
    if (!op->conn) return raise_acquire_error(L, op);
    push_conn(L, op->pool, op->conn);
    qop_free(op);
    return 1;
}

/* pool:acquire() -> conn (give it back with conn:release()) */
static int l_pool_acquire(lua_State *L)
{
    vg_pgpool_t *pool = vg_l_db_check_pool(L, 1);
    lua_settop(L, 1);
    qop_t *op = checkout(L, vg_task_current(L), pool, NULL);
    if (op->conn) {
        push_conn(L, pool, op->conn);
        qop_free(op);
        return 1;
    }
    return checkout_wait(L, op, acquire_k);
}

/* conn:query(sql, ...) -> rows, affected */
static int l_conn_query(lua_State *L)
{
    l_conn_t *lc = check_conn(L, 1);
    luaL_checkstring(L, 2);
    if (!lc->c) {
        vg_err_push(L, "connection_lost", true,
                    "this connection was given back or lost (its transaction is over)");
        return lua_error(L);
    }
    if (lc->busy) return luaL_error(L, "another query is running on this connection");
    vg_task_t *t = vg_task_current(L);
    vg_l_db_params_t p;
    vg_l_db_build_params(L, 3, &p);
    qop_t *op = qop_new(t, lc->p, &p);
    op->lc = lc;
    op->conn = lc->c;
    return query_send(L, op);
}

static int l_conn_release(lua_State *L)
{
    l_conn_t *lc = check_conn(L, 1);
    if (lc->c && !lc->busy) {
        vg_pgpool_release(lc->p, lc->c);
        lc->c = NULL;
    }
    return 0;
}

static int l_conn_tx_status(lua_State *L)
{
    l_conn_t *lc = check_conn(L, 1);
    const char *s = "closed";
    if (lc->c && vg_pgconn_state(lc->c) == VG_PGCONN_IDLE) {
        switch (vg_pgconn_tx_status(lc->c)) {
        case PQTRANS_IDLE: s = "idle"; break;
        case PQTRANS_INTRANS: s = "intrans"; break;
        case PQTRANS_INERROR: s = "inerror"; break;
        case PQTRANS_ACTIVE: s = "active"; break;
        default: s = "unknown"; break;
        }
    } else if (lc->c && vg_pgconn_state(lc->c) == VG_PGCONN_BUSY) {
        s = "active";
    } else if (lc->c) {
        s = "broken";
    }
    lua_pushstring(L, s);
    return 1;
}

static int l_conn_pid(lua_State *L)
{
    l_conn_t *lc = check_conn(L, 1);
    lua_pushinteger(L, lc->c ? vg_pgconn_pid(lc->c) : 0);
    return 1;
}

/* ---- stats, close ---------------------------------------------------------------- */

static void push_stats(lua_State *L, const vg_pgpool_stats_t *s)
{
    lua_createtable(L, 0, 14);
#define F(name) (lua_pushinteger(L, (lua_Integer)s->name), lua_setfield(L, -2, #name))
    F(size); F(max_overflow); F(open); F(connecting); F(idle); F(checked_out);
    F(resetting); F(overflow); F(waiters); F(opened_total); F(closed_total); F(failed_total);
    F(pings_total); F(prepared_total); F(timeouts_total);
#undef F
}

static int l_pool_stats(lua_State *L)
{
    l_pool_t *lp = vg_l_db_check_lpool(L, 1);
    vg_pgpool_stats_t s;
    if (lp->pool) vg_pgpool_stats(lp->pool, &s);
    else memset(&s, 0, sizeof s);
    push_stats(L, &s);
    lua_pushboolean(L, !lp->pool || vg_pgpool_closed(lp->pool));
    lua_setfield(L, -2, "closed");
    return 1;
}

typedef struct {
    vg_task_t *task;        /* NULL when the waiting task went away */
    bool done;
    int forced;
} close_op_t;

static void close_done(void *arg, int forced)
{
    close_op_t *op = arg;
    op->done = true;
    op->forced = forced;
    if (op->task) vg_task_wake(op->task);
    else free(op);
}

static void close_cleanup(void *arg)
{
    close_op_t *op = arg;
    if (op->done) free(op);
    else op->task = NULL; /* close_done frees it */
}

static int close_finish(lua_State *L, l_pool_t *lp, bool forced)
{
    vg_pgpool_stats_t s;
    vg_pgpool_stats(lp->pool, &s);
    /* A normal close is routine (every admin script ends with one): debug,
     * so scripts stay quiet at info. Connections closed by force after the
     * timeout mean queries were cut off: a warning. */
    vg_log(forced ? VG_LOG_WARNING : VG_LOG_DEBUG, "database_connections_closed",
           VG_F_STR("host", vg_pgpool_describe(lp->pool)),
           VG_F_INT("opened_total", s.opened_total), VG_F_INT("closed_total", s.closed_total),
           VG_F_BOOL("forced", forced), VG_F_END);
    lua_pushboolean(L, !forced);
    return 1;
}

static int close_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_task_woken(L);
    close_op_t *op = (close_op_t *)(intptr_t)ctx;
    bool forced = op->forced;
    free(op);
    return close_finish(L, vg_l_db_check_lpool(L, 1), forced);
}

/* pool:close([timeout]) -> true, or false when some checked-out connections
 * had to be closed by force after the timeout (default VG_SHUTDOWN_GRACE). */
static int l_pool_close(lua_State *L)
{
    l_pool_t *lp = vg_l_db_check_lpool(L, 1);
    double timeout = luaL_optnumber(L, 2, vg_config_num("VG_SHUTDOWN_GRACE"));
    lua_settop(L, 1);
    if (!lp->pool) {
        lua_pushboolean(L, 1);
        return 1;
    }
    vg_task_t *t = vg_task_running() ? vg_task_current(L) : NULL;
    close_op_t *op = vg_xcalloc(1, sizeof *op);
    op->task = t;
    vg_pgpool_close(lp->pool, t ? timeout : 0, close_done, op);
    if (op->done) {
        bool forced = op->forced;
        free(op);
        return close_finish(L, lp, forced);
    }
    vg_task_wait(t, 0, -1, close_cleanup, op);
    vg_task_wait_label(t, "db close");
    return vg_task_yield(L, (lua_KContext)(intptr_t)op, close_k);
}

/* ---- one connection attempt (pool:wait_ready in lua/vg/db.lua retries) -- */

typedef struct {
    vg_task_t *task;
    vg_pgpool_probe_t *probe;
    char *error;
} probe_op_t;

static void probe_done(void *arg, const char *error)
{
    probe_op_t *op = arg;
    op->probe = NULL;
    if (error) op->error = vg_xstrdup(error);
    vg_task_wake(op->task);
}

static void probe_cleanup(void *arg)
{
    probe_op_t *op = arg;
    if (op->probe) vg_pgpool_probe_cancel(op->probe);
    free(op->error);
    free(op);
}

static int probe_k(lua_State *L, int status, lua_KContext ctx)
{
    if (vg_task_woken(L) == VG_WAKE_TIMEOUT) { /* cleanup freed op */
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "no answer from the server within the connect timeout");
        lua_pushliteral(L, "timeout");
        return 3;
    }
    probe_op_t *op = (probe_op_t *)(intptr_t)ctx;
    char *error = op->error;
    free(op);
    if (!error) {
        lua_pushboolean(L, 1);
        return 1;
    }
    char human[512];
    const char *kind;
    vg_pgconn_explain(error, human, sizeof human, &kind);
    char *detail = vg_dburl_redact(error);
    free(error);
    lua_pushboolean(L, 0);
    lua_pushstring(L, human);
    lua_pushstring(L, kind);
    lua_pushstring(L, detail);
    free(detail);
    return 4;
}

/* pool:probe([timeout]) -> true when a new connection opened (it joins the
 * pool as idle); else false, a message for people, its kind (see
 * vg_pgconn_explain; "timeout" when timeout seconds passed first) and
 * libpq's own message with any password redacted. One attempt. */
static int l_pool_probe(lua_State *L)
{
    vg_pgpool_t *pool = vg_l_db_check_pool(L, 1);
    double timeout = luaL_optnumber(L, 2, -1);
    vg_task_t *t = vg_task_current(L);
    probe_op_t *op = vg_xcalloc(1, sizeof *op);
    op->task = t;
    op->probe = vg_pgpool_probe(pool, probe_done, op);
    vg_task_wait(t, 0, timeout, probe_cleanup, op);
    vg_task_wait_label(t, "db connect");
    return vg_task_yield(L, (lua_KContext)(intptr_t)op, probe_k);
}

/* core.config_num(name) -> the number a VG_* variable was configured to. */
static int l_core_config_num(lua_State *L)
{
    lua_pushnumber(L, vg_config_num(luaL_checkstring(L, 1)));
    return 1;
}

/* ---- small things ----------------------------------------------------------------- */

static int l_pool_describe(lua_State *L)
{
    l_pool_t *lp = vg_l_db_check_lpool(L, 1);
    lua_pushstring(L, lp->pool ? vg_pgpool_describe(lp->pool) : "(closed)");
    return 1;
}

static int l_pool_tostring(lua_State *L)
{
    l_pool_t *lp = vg_l_db_check_lpool(L, 1);
    lua_pushfstring(L, "vg.db.Pool(%s)", lp->pool ? vg_pgpool_describe(lp->pool) : "closed");
    return 1;
}

static int l_conn_gc(lua_State *L)
{
    l_conn_t *lc = check_conn(L, 1);
    if (lc->c) {
        vg_pgpool_release(lc->p, lc->c);
        lc->c = NULL;
    }
    return 0;
}

static int l_core_bytea(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    luaL_setmetatable(L, VG_L_DB_BYTEA_MT);
    return 1;
}

static int l_core_error(lua_State *L)
{
    const char *code = luaL_checkstring(L, 1);
    bool retriable = lua_toboolean(L, 2);
    const char *msg = luaL_checkstring(L, 3);
    vg_err_push(L, code, retriable, "%s", msg);
    return 1;
}

static const luaL_Reg pool_methods[] = {
    {"query", l_pool_query},
    {"acquire", l_pool_acquire},
    {"stats", l_pool_stats},
    {"close", l_pool_close},
    {"probe", l_pool_probe},
    {"describe", l_pool_describe},
    {NULL, NULL},
};

static const luaL_Reg pool_meta[] = {
    {"__gc", l_pool_gc},
    {"__tostring", l_pool_tostring},
    {NULL, NULL},
};

static const luaL_Reg conn_methods[] = {
    {"query", l_conn_query},
    {"release", l_conn_release},
    {"tx_status", l_conn_tx_status},
    {"pid", l_conn_pid},
    {NULL, NULL},
};

static const luaL_Reg conn_meta[] = {
    {"__gc", l_conn_gc},
    {NULL, NULL},
};

static const luaL_Reg core_funcs[] = {
    {"default", l_core_default},
    {"new_pool", l_core_new_pool},
    {"configure", l_core_configure},
    {"bytea", l_core_bytea},
    {"error", l_core_error},
    {"config_num", l_core_config_num},
    {NULL, NULL},
};

int luaopen_vg_db_core(lua_State *L)
{
    vg_l_db_types_init(L);
    if (!D.atexit_done) { /* pools, and the references above, end with the host */
        D.atexit_done = true;
        lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
        vg_sched_atexit(on_exit_hook, lua_tothread(L, -1));
        lua_pop(L, 1);
    }
    luaL_newlib(L, core_funcs);
    int mod = lua_gettop(L);
    vg_lclass_new(L, POOL_MT, pool_methods, pool_meta, 0);
    luaL_getmetatable(L, POOL_MT); /* the LISTEN methods (l_db_listen.c) join the pool's */
    lua_getfield(L, -1, "__index");
    luaL_setfuncs(L, vg_l_db_listen_methods, 0);
    lua_setfield(L, mod, "Pool");
    lua_pop(L, 1);
    vg_lclass_new(L, CONN_MT, conn_methods, conn_meta, 0);
    luaL_newmetatable(L, VG_L_DB_BYTEA_MT);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, mod, "null");
    lua_pushnumber(L, VG_PG_BACKOFF_FIRST);
    lua_setfield(L, mod, "backoff_first");
    lua_pushnumber(L, VG_PG_BACKOFF_MAX);
    lua_setfield(L, mod, "backoff_max");
    return 1;
}
