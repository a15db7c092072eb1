/* Lua values to JSON, for log fields and query parameters. */
#ifndef VG_L_JSON_H
#define VG_L_JSON_H

#include <lua.h>
#include "vg/buf.h"

/* Encode the value at idx. nil and the null sentinel (a NULL light
 * userdata, shared by db.null and cjson.null) become null; a table with
 * only keys 1..n becomes an array, any other table an object (non-string
 * keys converted with tostring); an empty table is {}; functions and other
 * userdata become their tostring; nesting deeper than 32 becomes "...".
 * Never raises for a value (it may run __tostring: call in a task or
 * protected context). */
void vg_l_json_encode(lua_State *L, int idx, vg_buf_t *b);

#endif
