/* Lua -> JSON. vg_l_json_encode is written for log lines: it never fails
 * on an odd value, it writes something readable instead.
 * vg_l_json_encode_strict is for data going to the database: it writes
 * exactly what it was given or refuses it. */
#include "vg/l_json.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "vg/l_db_types.h"
#include "vg/lstack.h"
#include "vg/util.h"

#define MAX_DEPTH 32

static void encode(lua_State *L, int idx, vg_buf_t *b, int depth);

/* Is the table at idx a sequence 1..n with no other keys? */
static lua_Integer array_len(lua_State *L, int idx)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    lua_Integer count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1)) {
            lua_pop(L, 1);
            return -1;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k < 1 || k > n) {
            lua_pop(L, 1);
            return -1;
        }
        count++;
    }
    return count == n && n > 0 ? n : -1;
}

static void encode_tostring(lua_State *L, int idx, vg_buf_t *b)
{
    size_t len;
    const char *s = luaL_tolstring(L, idx, &len);
    vg_json_str(b, s, len);
    lua_pop(L, 1);
}

static void encode_table(lua_State *L, int idx, vg_buf_t *b, int depth)
{
    if (depth >= MAX_DEPTH || !lua_checkstack(L, 4)) {
        vg_buf_adds(b, "\"...\"");
        return;
    }
    /* Error objects and other values with __tostring but no plain fields
     * read best as their string. */
    if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
        lua_pop(L, 1);
        if (luaL_getmetafield(L, idx, "__name") != LUA_TNIL) {
            bool is_err = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "vg.error") == 0;
            lua_pop(L, 1);
            if (!is_err) {
                encode_tostring(L, idx, b);
                return;
            }
        } else {
            encode_tostring(L, idx, b);
            return;
        }
    }
    lua_Integer n = array_len(L, idx);
    if (n > 0) {
        vg_buf_addc(b, '[');
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1) vg_buf_addc(b, ',');
            lua_rawgeti(L, idx, i);
            encode(L, lua_gettop(L), b, depth + 1);
            lua_pop(L, 1);
        }
        vg_buf_addc(b, ']');
        return;
    }
    vg_buf_addc(b, '{');
    bool first = true;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (!first) vg_buf_addc(b, ',');
        first = false;
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t len;
            const char *k = lua_tolstring(L, -2, &len);
            vg_json_str(b, k, len);
        } else {
            encode_tostring(L, lua_gettop(L) - 1, b);
        }
        vg_buf_addc(b, ':');
        encode(L, lua_gettop(L), b, depth + 1);
        lua_pop(L, 1);
    }
    vg_buf_addc(b, '}');
}

static void encode(lua_State *L, int idx, vg_buf_t *b, int depth)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL: vg_buf_adds(b, "null"); break;
    case LUA_TBOOLEAN: vg_buf_adds(b, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) vg_json_int(b, (long long)lua_tointeger(L, idx));
        else vg_json_num(b, lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        vg_json_str(b, s, len);
        break;
    }
    case LUA_TTABLE: encode_table(L, idx, b, depth); break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            vg_buf_adds(b, "null");
            break;
        }
        /* fall through */
    default: encode_tostring(L, idx, b); break;
    }
}

void vg_l_json_encode(lua_State *L, int idx, vg_buf_t *b)
{
    encode(L, lua_absindex(L, idx), b, 0);
}

/* ---- strict ---------------------------------------------------------------- */

typedef struct {
    lua_State *L;
    vg_buf_t *b;
    int seen;              /* stack index of a table: the tables being encoded */
    char *err;
    size_t errsize;
} strict_t;

static bool refuse(strict_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool refuse(strict_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, s->errsize, fmt, ap);
    va_end(ap);
    return false;
}

static bool strict_value(strict_t *s, int idx, int depth);

static bool strict_string(strict_t *s, const char *str, size_t len)
{
    if (memchr(str, 0, len))
        return refuse(s, "a string with a zero byte (PostgreSQL's jsonb cannot hold \\u0000)");
    if (!vg_utf8_valid(str, len)) return refuse(s, "a string that is not valid UTF-8 text");
    vg_json_str(s->b, str, len);
    return true;
}

static bool is_marked(lua_State *L, int idx, const char *mt)
{
    if (!lua_getmetatable(L, idx)) return false;
    luaL_getmetatable(L, mt);
    bool yes = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return yes;
}

static bool strict_array(strict_t *s, int idx, lua_Integer n, int depth)
{
    vg_buf_addc(s->b, '[');
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1) vg_buf_addc(s->b, ',');
        lua_rawgeti(s->L, idx, i);
        bool ok = strict_value(s, lua_gettop(s->L), depth + 1);
        lua_pop(s->L, 1);
        if (!ok) return false;
    }
    vg_buf_addc(s->b, ']');
    return true;
}

static bool strict_object(strict_t *s, int idx, int depth)
{
    lua_State *L = s->L;
    vg_buf_addc(s->b, '{');
    bool first = true;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (!first) vg_buf_addc(s->b, ',');
        first = false;
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t len;
            const char *k = lua_tolstring(L, -2, &len);
            if (!strict_string(s, k, len)) return false;
        } else { /* an integer: checked by strict_table */
            vg_buf_printf(s->b, "\"%lld\"", (long long)lua_tointeger(L, -2));
        }
        vg_buf_addc(s->b, ':');
        bool ok = strict_value(s, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
        if (!ok) return false;
    }
    vg_buf_addc(s->b, '}');
    return true;
}

static bool strict_table(strict_t *s, int idx, int depth)
{
    lua_State *L = s->L;
    if (depth >= VG_JSON_MAX_DEPTH)
        return refuse(s, "tables nested deeper than %d levels", VG_JSON_MAX_DEPTH);
    if (!lua_checkstack(L, 6)) return refuse(s, "tables nested too deeply");
    if (is_marked(L, idx, VG_L_DB_BYTEA_MT))
        return refuse(s, "db.bytea inside a table (JSON cannot hold binary data)");
    lua_pushvalue(L, idx);
    if (lua_rawget(L, s->seen) != LUA_TNIL) return refuse(s, "a table that contains itself");
    lua_pop(L, 1);
    lua_Integer count = 0, max = 0;
    bool array = true;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);
            if (k >= 1 && k > max) max = k;
            if (k < 1) array = false;
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            array = false;
        } else {
            return refuse(s, "a table key of type %s (JSON keys are strings)",
                          luaL_typename(L, -1));
        }
    }
    if (count == 0) {
        vg_buf_adds(s->b, "{}");
        return true;
    }
    if (array && max > 2 * count && max > 10)
        return refuse(s, "an excessively sparse array (largest index %lld, %lld elements)",
                      (long long)max, (long long)count);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, s->seen);
    bool ok = array ? strict_array(s, idx, max, depth) : strict_object(s, idx, depth);
    if (!ok) return false;
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, s->seen);
    return true;
}

static bool strict_value(strict_t *s, int idx, int depth)
{
    lua_State *L = s->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: vg_buf_adds(s->b, "null"); return true;
    case LUA_TBOOLEAN: vg_buf_adds(s->b, lua_toboolean(L, idx) ? "true" : "false"); return true;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            vg_json_int(s->b, (long long)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (d != d || d - d != 0) return refuse(s, "NaN or an infinity (JSON has neither)");
            vg_json_num(s->b, d);
        }
        return true;
    case LUA_TSTRING: {
        size_t len;
        const char *str = lua_tolstring(L, idx, &len);
        return strict_string(s, str, len);
    }
    case LUA_TTABLE: return strict_table(s, idx, depth);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            vg_buf_adds(s->b, "null");
            return true;
        }
        /* fall through */
    default: return refuse(s, "a %s", luaL_typename(L, idx));
    }
}

bool vg_l_json_encode_strict(lua_State *L, int idx, vg_buf_t *b, char *err, size_t errsize)
{
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L);
    luaL_checkstack(L, 8, "encoding JSON");
    VG_STACK_MARK(L);
    lua_newtable(L);
    strict_t s = {L, b, lua_gettop(L), err, errsize};
    bool ok = strict_value(&s, idx, 0);
    if (ok) { /* a success leaves exactly the seen table */
        lua_pop(L, 1);
        VG_STACK_CHECK(L, 0);
    }
    lua_settop(L, top);
    return ok;
}
