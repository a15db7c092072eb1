/* Classes of userdata for the binding files (see vg/lclass.h). */
#include "vg/lclass.h"

#include "vg/lstack.h"

void vg_lclass_fill(lua_State *L, const luaL_Reg *methods, const luaL_Reg *meta, int nup)
{
    luaL_checkstack(L, nup + 2, "making a class");
    VG_STACK_MARK(L);
    int mt = lua_absindex(L, -nup - 1);
    lua_newtable(L);
    lua_insert(L, -nup - 1); /* the methods' table below the upvalues */
    luaL_setfuncs(L, methods, nup);
    lua_setfield(L, mt, "__index");
    if (meta) luaL_setfuncs(L, meta, 0); /* the upvalues are gone: mt is on top */
    VG_STACK_CHECK(L, -nup);
}

void vg_lclass_new(lua_State *L, const char *name, const luaL_Reg *methods, const luaL_Reg *meta,
                   int nup)
{
    VG_STACK_MARK(L);
    if (luaL_newmetatable(L, name)) {
        lua_insert(L, -nup - 1);
        vg_lclass_fill(L, methods, meta, nup);
        lua_pop(L, 1);
    } else {
        lua_pop(L, nup + 1);
    }
    VG_STACK_CHECK(L, -nup);
}
