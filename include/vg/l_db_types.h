/* Conversions for vg.db (src/l_db.c): Lua arguments to libpq parameters,
 * results to Lua rows, failed results to error objects. */
#ifndef VG_L_DB_TYPES_H
#define VG_L_DB_TYPES_H

#include <libpq-fe.h>
#include <lua.h>
#include <stdbool.h>

/* Metatable of db.bytea(s) markers: {s} sent as binary bytea. */
#define VG_L_DB_BYTEA_MT "vg.db.bytea"

/* libpq's parameter arrays. Strings point into the Lua stack, so free them
 * before the call that built them returns (its yields are fine). */
typedef struct {
    int n;
    const char **vals;
    int *lens, *fmts;
    Oid *types;
    char **owned;        /* numbers and JSON formatted here */
} vg_l_db_params_t;

/* Find cjson.decode (for json/jsonb results); once, at module open. Close
 * lets go of it at the end of the host. */
void vg_l_db_types_init(lua_State *L);
void vg_l_db_types_close(lua_State *L);

/* The arguments first..top as parameters, encoded strictly (STYLE.md,
 * convention 14): nil/db.null -> NULL; booleans; integers; floats (NaN,
 * Infinity); strings -> text, which must be valid UTF-8 with no zero byte;
 * db.bytea(s) -> bytea (binary); tables -> JSON text
 * (vg_l_json_encode_strict). Anything else, or a value these rules refuse,
 * raises an argument error, with nothing left allocated: call it before
 * taking a connection. */
void vg_l_db_build_params(lua_State *L, int first, vg_l_db_params_t *p);
void vg_l_db_free_params(vg_l_db_params_t *p);

/* Push rows (array of tables keyed by column name) and the affected count;
 * returns 2. int2/4/8 and oid -> integer; float4/8 -> number; numeric ->
 * string; bool; json/jsonb -> decoded (integers as integers); bytea -> raw
 * string; NULL -> db.null; anything else (text, uuid, timestamps in ISO
 * form) -> its text. */
int vg_l_db_push_result(lua_State *L, PGresult *res);

/* Push the error object of a failed query: code sql_error (or
 * connection_lost when lost: the statement may have run; retriable), message,
 * retriable, sqlstate, detail, hint, severity, constraint, table, column,
 * position. */
void vg_l_db_push_query_error(lua_State *L, const PGresult *res, bool lost,
                              const char *conn_msg);

#endif
