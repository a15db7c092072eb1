/* The list of binding modules registered in package.preload. */
#include "vg/modules.h"

void vg_modules_preload(lua_State *L, vg_preload_fn preload)
{
    (void)L;
    (void)preload;
}
