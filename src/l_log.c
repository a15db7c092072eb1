/* require "vg.log": structured logging from Lua.
 *
 *   log.info(event [, fields])          and debug/warning/error/critical
 *   local lg = log.bind(fields)         a logger whose lines carry fields
 *   lg:info(event [, fields])           (lg.info(...) works too)
 *   log.context(fields)                 bind fields to the running task and
 *                                       every task it spawns afterwards
 *   log.clear_context(key, ...)         unbind them
 *   log.get_context()                   a copy of the task's context
 *   log.enabled(level)
 *   log.to_stderr()                     send lines to stderr (admin commands
 *                                       whose stdout is their result)
 */
#include <lauxlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/l_json.h"
#include "vg/lclass.h"
#include "vg/log.h"
#include "vg/sched_host.h"

#define LOGGER_MT "vg.log.Logger"

/* Append ,"key":value for every field of the table at idx. Keys the host
 * owns (timestamp, level, event, worker_id) are renamed where the line is
 * written (vg/log.h), for C and Lua lines alike. */
static void add_fields(lua_State *L, int idx, vg_buf_t *b)
{
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t klen;
        vg_buf_addc(b, ',');
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tolstring(L, -2, &klen);
            vg_json_str(b, k, klen);
        } else {
            const char *k = luaL_tolstring(L, -2, &klen);
            vg_json_str(b, k, klen);
            lua_pop(L, 1);
        }
        vg_buf_addc(b, ':');
        vg_l_json_encode(L, -1, b);
        lua_pop(L, 1);
    }
}

/* Copy every field of the table at from into the table at to. */
static void merge_into(lua_State *L, int to, int from)
{
    to = lua_absindex(L, to);
    from = lua_absindex(L, from);
    lua_pushnil(L);
    while (lua_next(L, from)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, to);
    }
}

static bool is_logger(lua_State *L, int idx)
{
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return false;
    luaL_getmetatable(L, LOGGER_MT);
    bool r = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return r;
}

static int emit(lua_State *L, vg_log_level_t level)
{
    bool bound = is_logger(L, 1);
    int base = bound ? 2 : 1;
    const char *event = luaL_checkstring(L, base);
    if (!vg_log_enabled(level)) return 0;
    if (!lua_isnoneornil(L, base + 1)) luaL_checktype(L, base + 1, LUA_TTABLE);
    /* One set of keys: the bound fields, then the call's, each later one
     * winning; vg_log_fragment merges the task's context under them, as it
     * does for the host's own lines. */
    lua_settop(L, base + 1);
    int fields = base + 1; /* the call's own table has each key once already */
    if (bound) {
        lua_newtable(L);
        fields = lua_gettop(L);
        lua_getfield(L, 1, "fields");
        if (lua_istable(L, -1)) merge_into(L, fields, -1);
        lua_pop(L, 1);
        if (lua_istable(L, base + 1)) merge_into(L, fields, base + 1);
    }
    vg_buf_t b = VG_BUF_INIT;
    if (lua_istable(L, fields)) add_fields(L, fields, &b);
    vg_log_fragment(level, event, b.data, b.len);
    vg_buf_free(&b);
    return 0;
}

static int l_log_debug(lua_State *L) { return emit(L, VG_LOG_DEBUG); }
static int l_log_info(lua_State *L) { return emit(L, VG_LOG_INFO); }
static int l_log_warning(lua_State *L) { return emit(L, VG_LOG_WARNING); }
static int l_log_error(lua_State *L) { return emit(L, VG_LOG_ERROR); }
static int l_log_critical(lua_State *L) { return emit(L, VG_LOG_CRITICAL); }

/* log.bind(fields) / lg:bind(fields): a new logger with both sets. */
static int l_log_bind(lua_State *L)
{
    int arg = 1;
    lua_newtable(L); /* merged fields */
    int merged = lua_gettop(L);
    if (is_logger(L, 1)) {
        arg = 2;
        lua_getfield(L, 1, "fields");
        merge_into(L, merged, -1);
        lua_pop(L, 1);
    }
    luaL_checktype(L, arg, LUA_TTABLE);
    merge_into(L, merged, arg);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, merged);
    lua_setfield(L, -2, "fields");
    luaL_setmetatable(L, LOGGER_MT);
    return 1;
}

static vg_task_t *running_task(lua_State *L)
{
    vg_task_t *t = vg_task_running();
    if (!t) luaL_error(L, "log context needs a running vg task");
    return t;
}

/* Re-encode the context table (on top of the stack) into the task. */
static void store_context(lua_State *L, vg_task_t *t, int ctx)
{
    vg_buf_t b = VG_BUF_INIT;
    add_fields(L, ctx, &b);
    vg_task_set_log_context(t, b.len ? vg_buf_steal(&b) : NULL);
    vg_buf_free(&b);
}

static int l_log_context(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    vg_task_t *t = running_task(L);
    vg_task_push_context(L, t);
    int ctx = lua_gettop(L);
    merge_into(L, ctx, 1);
    store_context(L, t, ctx);
    return 0;
}

static int l_log_clear_context(lua_State *L)
{
    vg_task_t *t = running_task(L);
    int n = lua_gettop(L);
    vg_task_push_context(L, t);
    int ctx = lua_gettop(L);
    if (n == 0) {
        /* No keys: clear everything. */
        lua_pushnil(L);
        while (lua_next(L, ctx)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_pushnil(L);
            lua_settable(L, ctx);
        }
    }
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, i);
        lua_pushnil(L);
        lua_settable(L, ctx);
    }
    store_context(L, t, ctx);
    return 0;
}

static int l_log_get_context(lua_State *L)
{
    vg_task_t *t = running_task(L);
    lua_newtable(L);
    vg_task_push_context(L, t);
    merge_into(L, -2, -1);
    lua_pop(L, 1);
    return 1;
}

static int l_log_enabled(lua_State *L)
{
    vg_log_level_t lvl;
    if (vg_log_parse_level(luaL_checkstring(L, 1), &lvl) != 0)
        return luaL_argerror(L, 1, "unknown level");
    lua_pushboolean(L, vg_log_enabled(lvl));
    return 1;
}

/* log.to_stderr(): for admin commands whose stdout carries their result. */
static int l_log_to_stderr(lua_State *L)
{
    vg_log_set_fd(2);
    return 0;
}

static const luaL_Reg log_funcs[] = {
    {"to_stderr", l_log_to_stderr},
    {"debug", l_log_debug},
    {"info", l_log_info},
    {"warning", l_log_warning},
    {"warn", l_log_warning},
    {"error", l_log_error},
    {"critical", l_log_critical},
    {"bind", l_log_bind},
    {"context", l_log_context},
    {"clear_context", l_log_clear_context},
    {"get_context", l_log_get_context},
    {"enabled", l_log_enabled},
    {NULL, NULL},
};

int luaopen_vg_log(lua_State *L)
{
    vg_lclass_new(L, LOGGER_MT, log_funcs, NULL, 0);
    luaL_newlib(L, log_funcs);
    return 1;
}
