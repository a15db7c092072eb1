/* Debug-build checks that a C function leaves the Lua stack as it says
 * (STYLE.md, convention 6). Compiled in when VG_DEBUG_STACK is defined (the
 * ASan build, make asan); in other builds they cost nothing.
 *
 *   VG_STACK_MARK(L);              remember the top
 *   ...
 *   VG_STACK_CHECK(L, +1);         the top must be the mark plus 1
 *
 * A mismatch prints where and aborts: Debian's liblua has no API checks,
 * so an unbalanced stack would otherwise corrupt memory silently. */
#ifndef VG_LSTACK_H
#define VG_LSTACK_H

#include <lua.h>

#ifdef VG_DEBUG_STACK
void vg_lstack_fail(const char *file, int line, int expected, int got);
#define VG_STACK_MARK(L) const int vg_stack_mark_ = lua_gettop(L)
#define VG_STACK_CHECK(L, delta)                                                       \
    do {                                                                               \
        if (lua_gettop(L) != vg_stack_mark_ + (delta))                                 \
            vg_lstack_fail(__FILE__, __LINE__, vg_stack_mark_ + (delta), lua_gettop(L)); \
    } while (0)
#else
#define VG_STACK_MARK(L) ((void)0)
#define VG_STACK_CHECK(L, delta) ((void)0)
#endif

#endif
