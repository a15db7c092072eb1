/* require "vg.http.core": the HTTP server core (src/http.c) for Lua. Scripts
 * use lua/vg/http.lua (require "vg.http"), which routes requests to Lua
 * functions, each request in a task of its own.
 *
 *   core.listen{host=, port=, max_connections=, max_header_bytes=,
 *               max_body_bytes=, request_timeout=} -> Server
 *       Listens at once (no task needed). port 0 picks a free port.
 *       Raises listen_failed (with reason "EADDRINUSE", ...) when it cannot.
 *   server:next([{interruptible=false}]) -> request, responder | nil
 *       Waits for the next complete request (from a task; one task at a
 *       time). nil once the server is closed, and (unless interruptible is
 *       false: the server keeps serving through the shutdown grace until
 *       it is closed) once shutdown was requested.
 *       request = {method=, target=, headers={name(lower-case)=value},
 *                  body=, remote=}
 *   responder:send(status, headers, body)
 *       Answers (headers: table name -> string; Content-Length and
 *       Connection: close are added). Returns false when the connection is
 *       already gone. A responder collected or closed (<close>) without an
 *       answer sends 500.
 *   server:port(), server:stats() -> {accepted_total, requests_total,
 *       rejected_total, timeouts_total, open_connections, waiting_requests}
 *   server:close()   stop listening; requests being answered finish
 *   At host exit every connection still open is closed. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/err.h"
#include "vg/http.h"
#include "vg/lclass.h"
#include "vg/sched_host.h"

#define SERVER_MT "vg.http.Server"
#define RESPONDER_MT "vg.http.Responder"

/* Shared by the userdata and the core: freed by whichever lets go last. */
typedef struct l_server {
    vg_http_server_t *srv;      /* NULL once the core has closed it */
    bool closing;
    bool ud_gone;               /* the Lua object was collected */
    vg_task_t *waiter;
    struct l_server *prev, *next;
} l_server_t;

typedef struct { l_server_t *s; } server_ud_t;
typedef struct { vg_http_conn_t *conn; } responder_ud_t;

static l_server_t *servers;     /* open ones, closed at host exit */
static bool atexit_added;

static void server_unlink(l_server_t *s)
{
    if (s->prev) s->prev->next = s->next;
    else if (servers == s) servers = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static void wake_waiter(l_server_t *s)
{
    vg_task_t *t = s->waiter;
    s->waiter = NULL;
    if (t) vg_task_wake(t);
}

static void on_ready(void *arg) { wake_waiter(arg); }

static void on_closed(void *arg)
{
    l_server_t *s = arg;
    s->srv = NULL;
    server_unlink(s);
    wake_waiter(s);
    if (s->ud_gone) free(s);
}

static void on_host_exit(void *arg)
{
    (void)arg;
    for (l_server_t *s = servers; s; s = s->next) {
        s->closing = true;
        if (s->srv) vg_http_server_close_now(s->srv);
    }
}

static l_server_t *check_server(lua_State *L)
{
    server_ud_t *u = luaL_checkudata(L, 1, SERVER_MT);
    return u->s;
}

static lua_Integer opt_int(lua_State *L, const char *key, lua_Integer def, lua_Integer lo,
                           lua_Integer hi)
{
    lua_getfield(L, 1, key);
    lua_Integer v = def;
    if (!lua_isnil(L, -1)) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < lo || v > hi)
            luaL_error(L, "listen: %s must be an integer from %I to %I", key, lo, hi);
    }
    lua_pop(L, 1);
    return v;
}

static int l_http_listen(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "host");
    const char *host = luaL_optstring(L, -1, "127.0.0.1");
    lua_pop(L, 1);
    int port = (int)opt_int(L, "port", 0, 0, 65535);
    vg_http_limits_t lim;
    lim.max_connections = (int)opt_int(L, "max_connections", 64, 1, 100000);
    lim.max_header_bytes = (size_t)opt_int(L, "max_header_bytes", 16384, 256, 1 << 20);
    lim.max_body_bytes = (size_t)opt_int(L, "max_body_bytes", 1 << 20, 0, 1 << 30);
    lua_getfield(L, 1, "request_timeout");
    lua_Number rt = luaL_optnumber(L, -1, 10);
    lua_pop(L, 1);
    luaL_argcheck(L, rt > 0 && rt <= 86400, 1, "request_timeout must be in (0, 86400] seconds");
    lim.request_timeout = rt;

    server_ud_t *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = NULL;
    luaL_setmetatable(L, SERVER_MT);
    l_server_t *s = vg_xcalloc(1, sizeof *s);
    int rc = vg_http_server_start(vg_loop(), host, port, &lim, on_ready, on_closed, s, &s->srv);
    if (rc != 0) {
        free(s);
        vg_err_push(L, "listen_failed", false, "cannot listen on %s:%d: %s", host, port,
                    uv_strerror(rc));
        lua_pushstring(L, uv_err_name(rc));
        lua_setfield(L, -2, "reason");
        return lua_error(L);
    }
    u->s = s;
    s->next = servers;
    if (servers) servers->prev = s;
    servers = s;
    if (!atexit_added) {
        atexit_added = true;
        vg_sched_atexit(on_host_exit, NULL);
    }
    return 1;
}

/* ---- requests ------------------------------------------------------------- */

static void push_request(lua_State *L, vg_http_conn_t *c)
{
    const vg_http_request_t *r = vg_http_conn_request(c);
    lua_createtable(L, 0, 6);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r->target);
    lua_setfield(L, -2, "target");
    lua_pushlstring(L, r->body, r->body_len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, r->remote);
    lua_setfield(L, -2, "remote");
    lua_createtable(L, 0, (int)r->n_headers);
    for (size_t i = 0; i < r->n_headers; i++) {
        /* A repeated header: its values joined with ", " (RFC 9110 5.3). */
        lua_getfield(L, -1, r->header_names[i]);
        if (lua_isstring(L, -1)) {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, r->header_values[i]);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, r->header_values[i]);
        }
        lua_setfield(L, -2, r->header_names[i]);
    }
    lua_setfield(L, -2, "headers");
    responder_ud_t *ru = lua_newuserdatauv(L, sizeof *ru, 0);
    ru->conn = NULL;
    luaL_setmetatable(L, RESPONDER_MT);
    vg_http_conn_set_owner(c, &ru->conn);
}

static int next_k(lua_State *L, int status, lua_KContext ctx);

/* The wait ended by cancellation or timeout: no wake-up for it any more. */
static void next_cleanup(void *op)
{
    l_server_t *s = op;
    s->waiter = NULL;
}

static int next_wait(lua_State *L, l_server_t *s, unsigned flags)
{
    for (;;) {
        if (s->srv && !s->closing) {
            vg_http_conn_t *c = vg_http_server_take(s->srv);
            if (c) {
                push_request(L, c);
                return 2;
            }
        }
        if (!s->srv || s->closing || ((flags & VG_WAIT_INTERRUPTIBLE) && vg_shutdown_requested())) {
            lua_pushnil(L);
            return 1;
        }
        vg_task_t *t = vg_task_current(L);
        if (s->waiter && s->waiter != t) return luaL_error(L, "another task waits on this server");
        s->waiter = t;
        vg_task_wait(t, flags, -1, next_cleanup, s);
        vg_task_wait_label(t, "http request");
        return vg_task_yield(L, (lua_KContext)flags, next_k);
    }
}

static int next_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    server_ud_t *u = luaL_checkudata(L, 1, SERVER_MT);
    if (u->s) u->s->waiter = NULL;
    vg_wake_t why = vg_task_woken(L); /* raises when cancelled */
    if (!u->s || why == VG_WAKE_INTERRUPTED) {
        lua_pushnil(L);
        return 1;
    }
    return next_wait(L, u->s, (unsigned)ctx);
}

static int l_server_next(lua_State *L)
{
    l_server_t *s = check_server(L);
    if (!s) return luaL_error(L, "attempt to use a closed server");
    unsigned flags = VG_WAIT_INTERRUPTIBLE;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "interruptible");
        if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) flags = 0;
        lua_pop(L, 1);
    }
    lua_settop(L, 1);
    return next_wait(L, s, flags);
}

static int l_server_port(lua_State *L)
{
    l_server_t *s = check_server(L);
    if (!s || !s->srv) return luaL_error(L, "attempt to use a closed server");
    lua_pushinteger(L, vg_http_server_port(s->srv));
    return 1;
}

static int l_server_stats(lua_State *L)
{
    l_server_t *s = check_server(L);
    vg_http_stats_t st;
    memset(&st, 0, sizeof st);
    if (s && s->srv) vg_http_server_stats(s->srv, &st);
    lua_createtable(L, 0, 6);
#define F(name) (lua_pushinteger(L, (lua_Integer)st.name), lua_setfield(L, -2, #name))
    F(accepted_total); F(requests_total); F(rejected_total); F(timeouts_total);
    F(open_connections); F(waiting_requests);
#undef F
    return 1;
}

static int l_server_close(lua_State *L)
{
    l_server_t *s = check_server(L);
    if (s && !s->closing) {
        s->closing = true;
        if (s->srv) vg_http_server_close(s->srv);
        wake_waiter(s);
    }
    return 0;
}

static int l_server_gc(lua_State *L)
{
    server_ud_t *u = luaL_checkudata(L, 1, SERVER_MT);
    l_server_t *s = u->s;
    if (!s) return 0;
    u->s = NULL;
    s->waiter = NULL;
    if (s->srv) {
        s->ud_gone = true;
        if (!s->closing) {
            s->closing = true;
            vg_http_server_close(s->srv);
        }
    } else {
        free(s);
    }
    return 0;
}

/* ---- responses ------------------------------------------------------------ */

static bool header_text_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0') return false;
    return true;
}

static int l_responder_send(lua_State *L)
{
    responder_ud_t *ru = luaL_checkudata(L, 1, RESPONDER_MT);
    lua_Integer status = luaL_checkinteger(L, 2);
    luaL_argcheck(L, status >= 100 && status <= 599, 2, "status must be 100..599");
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    size_t blen = 0;
    const char *body = luaL_optlstring(L, 4, "", &blen);
    vg_buf_t out = VG_BUF_INIT;
    vg_buf_printf(&out, "HTTP/1.1 %d %s\r\n", (int)status, vg_http_reason((int)status));
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            size_t nl, vl;
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
                vg_buf_free(&out);
                return luaL_argerror(L, 3, "header names and values must be strings");
            }
            const char *name = lua_tolstring(L, -2, &nl);
            const char *value = lua_tolstring(L, -1, &vl);
            if (nl == 0 || !header_text_ok(name, nl) || strchr(name, ':') ||
                !header_text_ok(value, vl)) {
                vg_buf_free(&out);
                return luaL_argerror(L, 3, "header with a line break, NUL or bad name");
            }
            vg_buf_add(&out, name, nl);
            vg_buf_adds(&out, ": ");
            vg_buf_add(&out, value, vl);
            vg_buf_adds(&out, "\r\n");
            lua_pop(L, 1);
        }
    }
    vg_buf_printf(&out, "Content-Length: %zu\r\nConnection: close\r\n\r\n", blen);
    vg_buf_add(&out, body, blen);
    if (!ru->conn) {
        vg_buf_free(&out);
        lua_pushboolean(L, 0);
        return 1;
    }
    vg_http_conn_t *c = ru->conn;
    ru->conn = NULL;
    size_t len = out.len;
    vg_http_conn_send(c, vg_buf_steal(&out), len);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_responder_gc(lua_State *L)
{
    responder_ud_t *ru = luaL_checkudata(L, 1, RESPONDER_MT);
    if (ru->conn) {
        vg_http_conn_t *c = ru->conn;
        ru->conn = NULL;
        vg_http_conn_abort(c);
    }
    return 0;
}

static int l_responder_open(lua_State *L)
{
    responder_ud_t *ru = luaL_checkudata(L, 1, RESPONDER_MT);
    lua_pushboolean(L, ru->conn != NULL);
    return 1;
}

static const luaL_Reg server_methods[] = {
    {"next", l_server_next},   {"port", l_server_port}, {"stats", l_server_stats},
    {"close", l_server_close}, {NULL, NULL},
};

static const luaL_Reg server_meta[] = {
    {"__gc", l_server_gc}, {"__close", l_server_close}, {NULL, NULL},
};

static const luaL_Reg responder_methods[] = {
    {"send", l_responder_send}, {"open", l_responder_open}, {NULL, NULL},
};

static const luaL_Reg responder_meta[] = {
    {"__gc", l_responder_gc}, {"__close", l_responder_gc}, {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"listen", l_http_listen},
    {NULL, NULL},
};

int luaopen_vg_http_core(lua_State *L)
{
    vg_lclass_new(L, SERVER_MT, server_methods, server_meta, 0);
    vg_lclass_new(L, RESPONDER_MT, responder_methods, responder_meta, 0);
    luaL_newlib(L, funcs);
    return 1;
}
