/* Classes of userdata for the binding files, made the way liolib.c makes
 * its file handle's: one metatable per class (luaL_newmetatable's name in
 * the registry) holding the metamethods, with a table of methods as its
 * __index. Each binding describes its classes with two luaL_Reg tables and
 * one call. */
#ifndef VG_LCLASS_H
#define VG_LCLASS_H

#include <lauxlib.h>

/* Make the metatable name, once per Lua state: the metamethods of meta
 * (__gc, __close, __tostring, ...; may be NULL) and, as __index, the
 * methods, which share the nup upvalues on top of the stack (as with
 * luaL_setfuncs). Pops the upvalues; leaves nothing on the stack. */
void vg_lclass_new(lua_State *L, const char *name, const luaL_Reg *methods, const luaL_Reg *meta,
                   int nup);
/* The same on the metatable at the top of the stack (below the nup
 * upvalues), made elsewhere: the scheduler makes the task's. */
void vg_lclass_fill(lua_State *L, const luaL_Reg *methods, const luaL_Reg *meta, int nup);

#endif
