/* The host's held configuration problems and the gate in front of a script
 * that has not checked its configuration yet (see vg/config_gate.h). */
#include "vg/config_gate.h"

#include <lauxlib.h>
#include <stdlib.h>

#include "vg/buf.h"
#include "vg/config.h"
#include "vg/host_exit.h"
#include "vg/log.h"
#include "vg/sched_host.h"

int luaopen_vg_log(lua_State *L);
int luaopen_vg_config(lua_State *L);

/* The C functions a script may call before its check. */
static lua_CFunction *allowed;
static size_t n_allowed;
static lua_CFunction require_fn;

bool vg_config_gate_needed(void)
{
    vg_buf_t errs = VG_BUF_INIT;
    bool host = false;
    (void)vg_config_env_problems(&errs, &host);
    vg_buf_free(&errs);
    return host;
}

void vg_config_gate_report(void)
{
    vg_buf_t errs = VG_BUF_INIT;
    bool host = false;
    int n = vg_config_env_problems(&errs, &host);
    vg_buf_t arr = VG_BUF_INIT;
    vg_buf_printf(&arr, "[%s]", errs.data ? errs.data : "");
    vg_log(VG_LOG_CRITICAL, "configuration_invalid", VG_F_INT("count", n),
           VG_F_RAW("errors", arr.data), VG_F_END);
    vg_buf_free(&arr);
    vg_buf_free(&errs);
}

noreturn void vg_config_gate_fail(void)
{
    vg_config_gate_report();
    vg_host_exit(1, NULL);
}

static void allow(lua_CFunction f)
{
    if (!f) return;
    allowed = vg_xrealloc(allowed, (n_allowed + 1) * sizeof *allowed);
    allowed[n_allowed++] = f;
}

/* The C function in field name of the table at t. */
static void allow_field(lua_State *L, int t, const char *name)
{
    lua_getfield(L, t, name);
    allow(lua_tocfunction(L, -1));
    lua_pop(L, 1);
}

/* Every C function in the global table lib (string, table, ...). */
static void allow_library(lua_State *L, const char *lib)
{
    if (lua_getglobal(L, lib) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            allow(lua_tocfunction(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* The functions the standard iterators hand out (ipairs' step, gmatch's,
 * utf8.codes'), which live in no table, and cjson's encode and decode. */
static const char more[] =
    "local a = ipairs({}) local b = string.gmatch('', '') local c = utf8.codes('') "
    "local ok, cjson = pcall(require, 'cjson') if not ok then cjson = {} end "
    "return a, b, c, cjson.encode, cjson.decode";
enum { N_MORE = 5 };

static bool gate_allow(lua_State *co, lua_CFunction f)
{
    for (size_t i = 0; i < n_allowed; i++)
        if (allowed[i] == f) return true;
    /* Loading a module: its loader and whatever its top level calls. */
    lua_Debug ar;
    for (int level = 1; lua_getstack(co, level, &ar); level++) {
        if (!lua_getinfo(co, "f", &ar)) continue;
        bool in_require = lua_tocfunction(co, -1) == require_fn;
        lua_pop(co, 1);
        if (in_require) return true;
    }
    return false;
}

static void gate_deny(void) { vg_config_gate_fail(); }

void vg_config_gate_arm(lua_State *L)
{
    static const char *const base[] = {
        "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal",
        "rawget", "rawlen", "rawset", "select", "setmetatable", "tonumber", "tostring",
        "type", "xpcall", "load", "require", NULL,
    };
    static const char *const os_pure[] = {"getenv", "time", "clock", "date", "difftime", NULL};
    /* vg.config's own functions (fail reports problems: not before the
     * check) and vg.log's that write nothing. */
    static const char *const config_fns[] = {"load", "check", "duration", "redacted",
                                             "environ", NULL};
    static const char *const log_fns[] = {"to_stderr", "bind", "enabled", "get_context", NULL};
    int top = lua_gettop(L);
    lua_pushglobaltable(L);
    for (size_t i = 0; base[i]; i++) allow_field(L, -1, base[i]);
    lua_getfield(L, -1, "require");
    require_fn = lua_tocfunction(L, -1);
    lua_pop(L, 2);
    allow_library(L, "string");
    allow_library(L, "table");
    allow_library(L, "math");
    allow_library(L, "utf8");
    if (lua_getglobal(L, "os") == LUA_TTABLE)
        for (size_t i = 0; os_pure[i]; i++) allow_field(L, -1, os_pure[i]);
    lua_pop(L, 1);
    if (luaL_loadstring(L, more) == LUA_OK && lua_pcall(L, 0, N_MORE, 0) == LUA_OK) {
        for (int i = 1; i <= N_MORE; i++) allow(lua_tocfunction(L, -i));
    }
    lua_settop(L, top);
    luaopen_vg_config(L);
    for (size_t i = 0; config_fns[i]; i++) allow_field(L, -1, config_fns[i]);
    lua_pop(L, 1);
    luaopen_vg_log(L);
    for (size_t i = 0; log_fns[i]; i++) allow_field(L, -1, log_fns[i]);
    lua_pop(L, 1);
    vg_sched_gate(gate_allow, gate_deny);
}

void vg_config_gate_pass(void)
{
    vg_sched_gate_clear();
    free(allowed);
    allowed = NULL;
    n_allowed = 0;
}
