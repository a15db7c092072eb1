/* Registry references, counted in debug builds (see vg/lref.h). */
#include "vg/lref.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>

#include "vg/buf.h"

#ifdef VG_DEBUG_STACK
/* Where each live reference was taken, indexed by its number (luaL_ref
 * reuses released numbers, so the array stays as long as the most that
 * were live at once); NULL: not live. */
static struct {
    const char **where;
    size_t cap;
    int live;
} R;

static void note_taken(int ref, const char *where)
{
    size_t i = (size_t)ref;
    if (i >= R.cap) {
        size_t cap = R.cap ? R.cap : 64;
        while (cap <= i) cap *= 2;
        R.where = vg_xrealloc(R.where, cap * sizeof *R.where);
        for (size_t j = R.cap; j < cap; j++) R.where[j] = NULL;
        R.cap = cap;
    }
    if (R.where[i]) {
        fprintf(stderr, "vg-host: registry reference %d taken at %s is still live (taken at %s)\n",
                ref, where, R.where[i]);
        abort();
    }
    R.where[i] = where;
    R.live++;
}

static void note_released(int ref)
{
    size_t i = (size_t)ref;
    if (i >= R.cap || !R.where[i]) {
        fprintf(stderr, "vg-host: registry reference %d released but not live (released twice?)\n",
                ref);
        abort();
    }
    R.where[i] = NULL;
    R.live--;
}

int vg_ref_live(void) { return R.live; }

void vg_ref_check_leaks(void)
{
    if (R.live == 0) {
        free(R.where);
        R.where = NULL;
        R.cap = 0;
        return;
    }
    for (size_t i = 0; i < R.cap; i++)
        if (R.where[i])
            fprintf(stderr, "vg-host: registry reference %zu leaked (taken at %s)\n", i,
                    R.where[i]);
    fprintf(stderr, "vg-host: %d registry reference%s never released\n", R.live,
            R.live == 1 ? "" : "s");
    abort();
}
#else
static void note_taken(int ref, const char *where) { (void)ref, (void)where; }
static void note_released(int ref) { (void)ref; }
int vg_ref_live(void) { return -1; }
void vg_ref_check_leaks(void) {}
#endif

int vg_ref_take_at(lua_State *L, const char *where)
{
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (ref >= 0) note_taken(ref, where);
    return ref;
}

void vg_ref_release(lua_State *L, int *ref)
{
    if (*ref >= 0) {
        note_released(*ref);
        luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    }
    *ref = LUA_NOREF;
}

void vg_ref_push(lua_State *L, int ref)
{
    if (ref >= 0) lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    else lua_pushnil(L);
}
