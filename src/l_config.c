/* require "vg.config": configuration from the environment.
 *
 *   config.load{"DATABASE_URL", "FERNET_KEY"}  -> values; on any problem
 *       logs one critical configuration_invalid line listing them all and
 *       raises an error object (code "configuration_invalid"), which ends
 *       the script with exit 1 unless it is caught.
 *   config.check(required [, env]) -> values, problems (a list; empty when
 *       all is well). env, a table, stands in for the process environment.
 *   config.redacted(values) -> a copy safe to log (passwords and keys
 *       hidden).
 *   config.fail(problems) reports problems found elsewhere (step commands)
 *       the way load does: one configuration_invalid line, then raises.
 *   config.duration(text) -> seconds (units ms, s, m, h), or nil, message.
 *   config.environ(prefix) -> {name = value} of the environment variables
 *       whose names start with prefix.
 * required may carry a function, required.check(values) -> a list of
 * further problems (the worker's step commands: vg.steps.config_check),
 * reported in the same line as the others.
 * values maps every known variable to its parsed value (numbers, booleans,
 * normalised strings) plus worker_id and instance.
 * load and check (of the process environment) are the script's
 * configuration check: the problems of the host's own settings
 * (LOG_LEVEL, ...), which the host held back, are among theirs, and the host
 * stops watching the script for them (vg/config_gate.h). */
#include <lauxlib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#include "vg/config.h"
#include "vg/config_gate.h"
#include "vg/dburl.h"
#include "vg/err.h"
#include "vg/log.h"

/* Value of name from the env table at idx (0: the process environment). */
static const char *env_value(lua_State *L, int env, const char *name)
{
    if (!env) return getenv(name);
    lua_getfield(L, env, name);
    const char *v = lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps the string alive */
    return v;
}

/* Pushes values and problems. */
static void check(lua_State *L, int req, int env)
{
    lua_newtable(L);
    int values = lua_gettop(L);
    lua_newtable(L);
    int problems = lua_gettop(L);
    int np = 0;
    vg_config_kind_t kind;
    const char *name;
    for (size_t i = 0; (name = vg_config_name(i, &kind)) != NULL; i++) {
        const char *raw = env_value(L, env, name);
        double num;
        char *str, *problem;
        if (vg_config_parse(name, raw, &num, &str, &problem) != 0) {
            lua_pushstring(L, problem);
            lua_rawseti(L, problems, ++np);
        } else if (kind == VG_CONFIG_BOOL) {
            lua_pushboolean(L, num != 0);
            lua_setfield(L, values, name);
        } else if (kind == VG_CONFIG_INT || kind == VG_CONFIG_SECONDS) {
            if (num == (lua_Integer)num) lua_pushinteger(L, (lua_Integer)num);
            else lua_pushnumber(L, num);
            lua_setfield(L, values, name);
        } else if (str) {
            lua_pushstring(L, str);
            lua_setfield(L, values, name);
        }
        free(str);
        free(problem);
    }
    if (req) {
        lua_Integer n = luaL_len(L, req);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, req, i);
            const char *rname = luaL_checkstring(L, -1);
            const char *raw = env_value(L, env, rname);
            if (!raw || !*raw) {
                lua_pushfstring(L, "%s is required but not set", rname);
                lua_rawseti(L, problems, ++np);
            } else if (!vg_config_known(rname)) {
                lua_pushstring(L, raw);
                lua_setfield(L, values, rname);
            }
            lua_pop(L, 1);
        }
    }
    char *wid = vg_config_derive_worker_id(env_value(L, env, "WORKER_ID"),
                                           env_value(L, env, "RAILWAY_SERVICE_NAME"),
                                           env_value(L, env, "RAILWAY_REPLICA_ID"));
    lua_pushstring(L, wid);
    free(wid);
    lua_setfield(L, values, "worker_id");
    lua_pushstring(L, vg_config_instance());
    lua_setfield(L, values, "instance");
    /* required.check(values) -> more problems (a script's own settings,
     * such as the worker's step commands), reported in the same line. */
    if (req && lua_getfield(L, req, "check") == LUA_TFUNCTION) {
        lua_pushvalue(L, values);
        lua_call(L, 1, 1);
        if (lua_istable(L, -1)) {
            lua_Integer n = luaL_len(L, -1);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                lua_rawseti(L, problems, ++np);
            }
        }
    }
    lua_pop(L, 1);
}

static int l_config_check(lua_State *L)
{
    int req = 0, env = 0;
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE), req = 1;
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE), env = 2;
    /* Of the process environment: the host's held problems are among the
     * ones returned, the script answers for them now. */
    if (!env) vg_config_gate_pass();
    check(L, req, env);
    return 2;
}

/* Log the problems list at idx in one configuration_invalid line and raise
 * the error object (code configuration_invalid, .problems the list). */
static int fail(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_Integer np = luaL_len(L, idx);
    vg_buf_t b = VG_BUF_INIT;
    vg_buf_addc(&b, '[');
    for (lua_Integer i = 1; i <= np; i++) {
        lua_rawgeti(L, idx, i);
        size_t len;
        const char *s = luaL_tolstring(L, -1, &len);
        if (i > 1) vg_buf_addc(&b, ',');
        vg_json_str(&b, s, len);
        lua_pop(L, 2);
    }
    vg_buf_addc(&b, ']');
    vg_log(VG_LOG_CRITICAL, "configuration_invalid", VG_F_INT("count", np),
           VG_F_RAW("errors", b.data), VG_F_END);
    vg_buf_free(&b);
    vg_err_push(L, "configuration_invalid", false, "%d configuration problem(s), see the log",
                (int)np);
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, "problems");
    return lua_error(L);
}

static int l_config_load(lua_State *L)
{
    int req = 0;
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE), req = 1;
    vg_config_gate_pass(); /* the host's held problems join this report */
    check(L, req, 0);
    if (luaL_len(L, -1) == 0) {
        lua_pop(L, 1);
        return 1;
    }
    return fail(L, -1);
}

/* config.fail(problems): report problems found outside this module (step
 * commands, pipelines) the same way config.load does; never returns. */
static int l_config_fail(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    return fail(L, 1);
}

/* config.duration(text) -> seconds, or nil and a message. */
static int l_config_duration(lua_State *L)
{
    const char *s = luaL_checkstring(L, 1);
    double secs;
    if (vg_config_parse_duration(s, &secs)) {
        lua_pushnumber(L, secs);
        return 1;
    }
    luaL_pushfail(L);
    lua_pushfstring(L, "not a duration (a number of seconds, or with a unit: 500ms, 30s, 10m, "
                       "1h): \"%s\"", s);
    return 2;
}

static int l_config_redacted(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        if (strcmp(k, "FERNET_KEY") == 0 || strcmp(k, "VG_WEB_USERS") == 0) {
            lua_pop(L, 1);
            lua_pushliteral(L, "***");
        } else if ((strcmp(k, "DATABASE_URL") == 0 || strcmp(k, "DATABASE_DIRECT_URL") == 0)
                   && lua_type(L, -1) == LUA_TSTRING) {
            char *red = vg_dburl_redact(lua_tostring(L, -1));
            lua_pop(L, 1);
            lua_pushstring(L, red);
            free(red);
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_settable(L, 2);
    }
    return 1;
}

/* config.environ(prefix) -> {name = value} for every environment variable
 * whose name starts with prefix (VG_STEP_ for the step settings). */
static int l_config_environ(lua_State *L)
{
    size_t plen;
    const char *prefix = luaL_checklstring(L, 1, &plen);
    lua_newtable(L);
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || strncmp(*e, prefix, plen) != 0 || (size_t)(eq - *e) < plen) continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_pushstring(L, eq + 1);
        lua_settable(L, -3);
    }
    return 1;
}

static const luaL_Reg config_funcs[] = {
    {"load", l_config_load},
    {"check", l_config_check},
    {"redacted", l_config_redacted},
    {"fail", l_config_fail},
    {"duration", l_config_duration},
    {"environ", l_config_environ},
    {NULL, NULL},
};

int luaopen_vg_config(lua_State *L)
{
    luaL_newlib(L, config_funcs);
    return 1;
}
