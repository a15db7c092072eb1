/* The list of binding modules registered in package.preload. */
#include "vg/modules.h"

int luaopen_vg_fernet(lua_State *L);
int luaopen_vg_proc(lua_State *L);
int luaopen_vg_db_core(lua_State *L);
int luaopen_vg_http_core(lua_State *L);
int luaopen_vg_crypto(lua_State *L);

void vg_modules_preload(lua_State *L, vg_preload_fn preload)
{
    (void)L;
    (void)preload;
    preload(L, "vg.fernet", luaopen_vg_fernet);
    preload(L, "vg.proc", luaopen_vg_proc);
    preload(L, "vg.db.core", luaopen_vg_db_core);
    preload(L, "vg.http.core", luaopen_vg_http_core);
    preload(L, "vg.crypto", luaopen_vg_crypto);
}
