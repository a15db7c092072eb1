/* Error objects: tables with code, message and retriable, whose __tostring
 * reads "code: message", so scripts can pcall, inspect and print them. */
#include "vg/err.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <string.h>

#define ERR_MT "vg.error"

static int err_tostring(lua_State *L)
{
    lua_getfield(L, 1, "code");
    lua_getfield(L, 1, "message");
    lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "error"), luaL_optstring(L, -1, ""));
    return 1;
}

void vg_err_init(lua_State *L)
{
    if (luaL_newmetatable(L, ERR_MT)) {
        lua_pushcfunction(L, err_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "vg.error");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}

static void push_v(lua_State *L, const char *code, bool retriable, const char *fmt, va_list ap)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushvfstring(L, fmt, ap);
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, retriable);
    lua_setfield(L, -2, "retriable");
    luaL_setmetatable(L, ERR_MT);
}

void vg_err_push(lua_State *L, const char *code, bool retriable, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    push_v(L, code, retriable, fmt, ap);
    va_end(ap);
}

int vg_err_raise(lua_State *L, const char *code, bool retriable, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    push_v(L, code, retriable, fmt, ap);
    va_end(ap);
    return lua_error(L);
}

bool vg_err_is(lua_State *L, int idx, const char *code)
{
    if (lua_type(L, idx) != LUA_TTABLE) return false;
    lua_getfield(L, idx, "code");
    const char *c = lua_tostring(L, -1);
    bool is = c && strcmp(c, code) == 0;
    lua_pop(L, 1);
    return is;
}
