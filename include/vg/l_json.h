/* Lua values to JSON: a forgiving encoder for log fields and a strict one
 * for data going to PostgreSQL (STYLE.md, convention 14). */
#ifndef VG_L_JSON_H
#define VG_L_JSON_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include "vg/buf.h"

/* Encode the value at idx. nil and the null sentinel (a NULL light
 * userdata, shared by db.null and cjson.null) become null; a table with
 * only keys 1..n becomes an array, any other table an object (non-string
 * keys converted with tostring); an empty table is {}; functions and other
 * userdata become their tostring; nesting deeper than 32 becomes "...".
 * Never raises for a value (it may run __tostring: call in a task or
 * protected context). */
void vg_l_json_encode(lua_State *L, int idx, vg_buf_t *b);

/* How deep the strict encoder nests tables (a table inside 64 tables is
 * refused). */
#define VG_JSON_MAX_DEPTH 64

/* Encode the value at idx exactly, or refuse it: returns true, or false
 * with a reason in err (b then holds a partial text: free it). nil and the
 * null sentinel become null; booleans; integers; finite floats; strings
 * that are valid UTF-8 with no zero byte; tables whose keys are all
 * positive integers become arrays of the largest key's length, holes
 * written as null (refused when the largest key is more than twice the
 * number of elements and more than 10: an excessively sparse array); other
 * tables become objects, with integer keys written as decimal strings.
 * Refused: functions, userdata, threads, NaN and infinities, other key
 * types, a table that contains itself, nesting deeper than
 * VG_JSON_MAX_DEPTH, db.bytea markers. Metatables are ignored (no
 * metamethod runs). Never raises except on out-of-memory. */
bool vg_l_json_encode_strict(lua_State *L, int idx, vg_buf_t *b, char *err, size_t errsize);

#endif
