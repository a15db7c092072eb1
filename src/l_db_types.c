/* Lua values to query parameters, query results to Lua values, and SQL
 * errors to error objects: the conversions of vg.db (see vg/l_db_types.h). */
#include "vg/l_db_types.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/util.h"
#include "vg/err.h"
#include "vg/l_json.h"
#include "vg/lref.h"
#include "vg/lstack.h"
#include "vg/pgconn.h"

/* PostgreSQL type OIDs (pg_type.h). */
enum {
    OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23,
    OID_OID = 26, OID_JSON = 114, OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_JSONB = 3802
};

static int decode_ref = LUA_NOREF; /* cjson.decode */

void vg_l_db_types_init(lua_State *L)
{
    if (decode_ref != LUA_NOREF) return;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1)) {
        lua_getfield(L, -1, "decode");
        decode_ref = vg_ref_take(L);
    }
    lua_pop(L, 1);
}

void vg_l_db_types_close(lua_State *L) { vg_ref_release(L, &decode_ref); }

/* ---- parameters ----------------------------------------------------------- */

static bool is_bytea(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return false;
    luaL_getmetatable(L, VG_L_DB_BYTEA_MT);
    bool yes = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return yes;
}

static char *owned(vg_l_db_params_t *p, int i, char *s)
{
    p->owned[i] = s;
    return s;
}

/* Refuse the parameter at index first + i: free what was built, raise. */
static void refuse_param(lua_State *L, vg_l_db_params_t *p, int first, int i, const char *what)
{
    char msg[400];
    snprintf(msg, sizeof msg, "parameter $%d: %s", i + 1, what);
    vg_l_db_free_params(p);
    luaL_argerror(L, first + i, msg);
}

/* Build libpq's parameter arrays from the arguments first..top. Strings
 * stay where they are (on the Lua stack, alive while the call's frame is:
 * across its yields too). */
void vg_l_db_build_params(lua_State *L, int first, vg_l_db_params_t *p)
{
    int top = lua_gettop(L);
    p->n = top >= first ? top - first + 1 : 0;
    size_t n = p->n ? (size_t)p->n : 1;
    p->vals = vg_xcalloc(n, sizeof *p->vals);
    p->lens = vg_xcalloc(n, sizeof *p->lens);
    p->fmts = vg_xcalloc(n, sizeof *p->fmts);
    p->types = vg_xcalloc(n, sizeof *p->types);
    p->owned = vg_xcalloc(n, sizeof *p->owned);
    for (int i = 0; i < p->n; i++) {
        int idx = first + i;
        switch (lua_type(L, idx)) {
        case LUA_TBOOLEAN:
            p->vals[i] = lua_toboolean(L, idx) ? "true" : "false";
            break;
        case LUA_TNUMBER: {
            vg_buf_t b = VG_BUF_INIT;
            if (lua_isinteger(L, idx)) {
                vg_json_int(&b, (long long)lua_tointeger(L, idx)); /* digits, no printf */
            } else {
                double d = lua_tonumber(L, idx);
                if (isnan(d)) vg_buf_adds(&b, "NaN");
                else if (isinf(d)) vg_buf_adds(&b, d > 0 ? "Infinity" : "-Infinity");
                else vg_buf_printf(&b, "%.17g", d);
            }
            p->vals[i] = owned(p, i, vg_buf_steal(&b));
            break;
        }
        case LUA_TSTRING: {
            size_t len;
            const char *s = lua_tolstring(L, idx, &len);
            p->vals[i] = s;
            /* Text only: PostgreSQL would store binary data sent for a text
             * column as its hex escape, without an error. */
            if (memchr(s, 0, len))
                refuse_param(L, p, first, i, "text with a zero byte (send binary data "
                                             "with db.bytea(s))");
            if (!vg_utf8_valid(s, len))
                refuse_param(L, p, first, i, "text that is not valid UTF-8 (send binary "
                                             "data with db.bytea(s))");
            break;
        }
        case LUA_TTABLE:
            if (is_bytea(L, idx)) {
                lua_rawgeti(L, idx, 1);
                size_t len;
                p->vals[i] = lua_tolstring(L, -1, &len); /* anchored by the table */
                lua_pop(L, 1);
                p->fmts[i] = 1;
                p->lens[i] = (int)len;
                p->types[i] = OID_BYTEA;
            } else {
                vg_buf_t b = VG_BUF_INIT;
                char why[256], what[320];
                if (!vg_l_json_encode_strict(L, idx, &b, why, sizeof why)) {
                    vg_buf_free(&b);
                    snprintf(what, sizeof what, "cannot be sent as JSON: it holds %s", why);
                    refuse_param(L, p, first, i, what);
                }
                p->vals[i] = owned(p, i, vg_buf_steal(&b));
            }
            break;
        case LUA_TNIL:
            p->vals[i] = NULL;
            break;
        case LUA_TLIGHTUSERDATA:
            if (lua_touserdata(L, idx) == NULL) { /* db.null */
                p->vals[i] = NULL;
                break;
            }
            /* fall through */
        default: {
            char what[128];
            snprintf(what, sizeof what, "cannot send a %s to the database",
                     luaL_typename(L, idx));
            refuse_param(L, p, first, i, what);
        }
        }
    }
}

void vg_l_db_free_params(vg_l_db_params_t *p)
{
    for (int i = 0; i < p->n; i++) free(p->owned[i]);
    free(p->vals);
    free(p->lens);
    free(p->fmts);
    free(p->types);
    free(p->owned);
}

/* ---- results ------------------------------------------------------------- */

/* cjson gives every number as a float; JSON integers are Lua integers. */
static void integerise(lua_State *L, int idx, int depth)
{
    if (depth > 200 || !lua_checkstack(L, 3)) return;
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            double d = lua_tonumber(L, -1);
            if (d == floor(d) && fabs(d) < 9007199254740992.0) {
                lua_pushvalue(L, -2);
                lua_pushinteger(L, (lua_Integer)d);
                lua_rawset(L, idx);
            }
        } else if (lua_type(L, -1) == LUA_TTABLE) {
            integerise(L, -1, depth + 1);
        }
        lua_pop(L, 1);
    }
}

static void push_json(lua_State *L, const char *s, int len)
{
    if (decode_ref != LUA_NOREF) {
        vg_ref_push(L, decode_ref);
        lua_pushlstring(L, s, (size_t)len);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
            if (lua_type(L, -1) == LUA_TTABLE) integerise(L, -1, 0);
            else if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
                double d = lua_tonumber(L, -1);
                if (d == floor(d) && fabs(d) < 9007199254740992.0) {
                    lua_pop(L, 1);
                    lua_pushinteger(L, (lua_Integer)d);
                }
            }
            return;
        }
        lua_pop(L, 1);
    }
    lua_pushlstring(L, s, (size_t)len); /* undecodable: the text itself */
}

static void push_bytea(lua_State *L, const char *s, int len)
{
    if (len >= 2 && s[0] == '\\' && s[1] == 'x') { /* hex output (the default) */
        luaL_Buffer b;
        size_t n = (size_t)(len - 2) / 2;
        char *out = luaL_buffinitsize(L, &b, n);
        size_t k = 0;
        for (int i = 2; i + 1 < len; i += 2) {
            int hi = vg_hex_digit(s[i]), lo = vg_hex_digit(s[i + 1]);
            if (hi < 0 || lo < 0) break;
            out[k++] = (char)(hi << 4 | lo);
        }
        luaL_pushresultsize(&b, k);
        return;
    }
    size_t n = 0;
    unsigned char *raw = PQunescapeBytea((const unsigned char *)s, &n);
    if (!raw) {
        lua_pushlstring(L, s, (size_t)len);
        return;
    }
    lua_pushlstring(L, (const char *)raw, n);
    PQfreemem(raw);
}

static void push_value(lua_State *L, const PGresult *res, int row, int col, Oid type)
{
    if (PQgetisnull(res, row, col)) {
        lua_pushlightuserdata(L, NULL);
        return;
    }
    const char *v = PQgetvalue(res, row, col);
    int len = PQgetlength(res, row, col);
    switch (type) {
    case OID_BOOL:
        lua_pushboolean(L, v[0] == 't');
        break;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
        break;
    case OID_FLOAT4:
    case OID_FLOAT8:
        lua_pushnumber(L, strtod(v, NULL)); /* also NaN, Infinity, -Infinity */
        break;
    case OID_JSON:
    case OID_JSONB:
        push_json(L, v, len);
        break;
    case OID_BYTEA:
        push_bytea(L, v, len);
        break;
    default: /* text, numeric (exact), uuid, dates and times (ISO), arrays... */
        lua_pushlstring(L, v, (size_t)len);
        break;
    }
}

/* rows, affected */
int vg_l_db_push_result(lua_State *L, PGresult *res)
{
    int nrows = PQntuples(res), ncols = PQnfields(res);
    luaL_checkstack(L, 6, "result");
    VG_STACK_MARK(L);
    lua_createtable(L, nrows, 0);
    for (int r = 0; r < nrows; r++) {
        lua_createtable(L, 0, ncols);
        for (int c = 0; c < ncols; c++) {
            push_value(L, res, r, c, PQftype(res, c));
            lua_setfield(L, -2, PQfname(res, c));
        }
        lua_rawseti(L, -2, r + 1);
    }
    const char *n = PQcmdTuples(res);
    lua_pushinteger(L, n && *n ? (lua_Integer)strtoll(n, NULL, 10) : 0);
    VG_STACK_CHECK(L, 2);
    return 2;
}

static void set_str(lua_State *L, const char *key, const char *v)
{
    if (!v) return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, key);
}

/* The error object for a failed query. lost: the connection is gone, so
 * the statement may or may not have run: retriable, never replayed. */
void vg_l_db_push_query_error(lua_State *L, const PGresult *res, bool lost, const char *conn_msg)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!primary && res && PQresultErrorMessage(res)[0]) primary = PQresultErrorMessage(res);
    if (!primary) primary = conn_msg ? conn_msg : "unknown error";
    /* libpq's own messages end in newlines. */
    lua_pushstring(L, primary);
    const char *msg = lua_tostring(L, -1);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) n--;
    lua_pushlstring(L, msg, n);
    lua_remove(L, -2);
    msg = lua_tostring(L, -1);
    if (lost)
        vg_err_push(L, "connection_lost", true,
                    "the database connection was lost during the query (it may or may not "
                    "have been applied): %s", msg);
    else
        vg_err_push(L, "sql_error", vg_pg_sqlstate_retriable(state), "%s", msg);
    lua_remove(L, -2);
    set_str(L, "sqlstate", state);
    if (res) {
        set_str(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
        set_str(L, "hint", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
        set_str(L, "severity", PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
        set_str(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
        set_str(L, "table", PQresultErrorField(res, PG_DIAG_TABLE_NAME));
        set_str(L, "column", PQresultErrorField(res, PG_DIAG_COLUMN_NAME));
        const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
        if (pos) {
            lua_pushinteger(L, atoi(pos));
            lua_setfield(L, -2, "position");
        }
    }
}
