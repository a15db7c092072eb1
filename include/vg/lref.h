/* Registry references (STYLE.md convention 6: whoever takes one releases
 * it). Every luaL_ref and luaL_unref of the host goes through
 * vg_ref_take and vg_ref_release. Debug builds (VG_DEBUG_STACK, the ASan
 * build) count the live ones and remember where each was taken: at the end
 * of a run the host calls vg_ref_check_leaks(), which names every
 * reference nobody released and aborts, so a leak fails the suite, as
 * Neovim reports its leaked Lua references at exit. A release of a
 * reference that is not live aborts too. Other builds only pass the calls
 * through.
 *
 * References are numbered per Lua state; the count is for the one state a
 * process runs at a time (the host's). */
#ifndef VG_LREF_H
#define VG_LREF_H

#include <lua.h>

#define VG_REF_STR_(x) #x
#define VG_REF_STR(x) VG_REF_STR_(x)

/* Pop the value on top of L and return a reference to it in the registry;
 * nil gives LUA_REFNIL, which holds nothing. */
#define vg_ref_take(L) vg_ref_take_at((L), __FILE__ ":" VG_REF_STR(__LINE__))
int vg_ref_take_at(lua_State *L, const char *where);
/* Release *ref and set it to LUA_NOREF (LUA_NOREF and LUA_REFNIL: nothing
 * to release). */
void vg_ref_release(lua_State *L, int *ref);
/* Push the value *ref refers to (nil for LUA_NOREF and LUA_REFNIL). */
void vg_ref_push(lua_State *L, int ref);

/* Live references: debug builds only; -1 in others, which do not count. */
int vg_ref_live(void);
/* Debug builds: when references are live, name each (with where it was
 * taken) on stderr and abort. Other builds: nothing. */
void vg_ref_check_leaks(void);

#endif
