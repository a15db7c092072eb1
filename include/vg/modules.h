/* The Lua modules beyond vg, vg.log and vg.config: each binding file
 * exports luaopen_vg_<name>, listed once in src/modules.c. */
#ifndef VG_MODULES_H
#define VG_MODULES_H

#include <lua.h>

typedef void (*vg_preload_fn)(lua_State *L, const char *name, lua_CFunction open);
void vg_modules_preload(lua_State *L, vg_preload_fn preload);

#endif
