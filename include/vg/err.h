/* Error objects shared by every binding: a table {code=, message=, retriable=,
 * ...} with metatable "vg.error" whose __tostring gives "code: message". */
#ifndef VG_ERR_H
#define VG_ERR_H

#include <lua.h>
#include <stdbool.h>

/* Push a new error object; the caller may set more fields before raising. */
/* fmt is a lua_pushfstring format (%s %d %I %f %p %c %%), not printf's. */
void vg_err_push(lua_State *L, const char *code, bool retriable, const char *fmt, ...);
/* Push and raise (never returns). */
int vg_err_raise(lua_State *L, const char *code, bool retriable, const char *fmt, ...);
/* Is the value at idx an error object with this code? */
bool vg_err_is(lua_State *L, int idx, const char *code);
/* Registers the metatable; called once at start-up. */
void vg_err_init(lua_State *L);

#endif
