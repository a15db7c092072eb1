/* Lua -> JSON. Written for log lines and parameters: it never fails on an
 * odd value, it writes something readable instead. */
#include "vg/l_json.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <string.h>

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
