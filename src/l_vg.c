/* require "vg": the scheduler, clocks and shutdown, for scripts.
 *
 *   vg.sleep(s [, {interruptible=false}]) -> true, or false when shutdown
 *                                           interrupted it
 *   vg.now()            monotonic seconds (float)
 *   vg.time()           wall clock, seconds since the epoch (float)
 *   vg.spawn(fn, ...)   -> task with :join([timeout]), :cancel(), :done(),
 *                          :status(), :id()
 *   vg.current_task()   -> the running task
 *   vg.event()          -> ev with :set(), :clear(), :is_set(),
 *                          :wait([timeout]) (true when set, false on
 *                          timeout or shutdown)
 *   vg.shutdown_requested(), vg.on_shutdown(fn)
 *   vg.worker_id(), vg.instance(), vg.version
 *   vg.is_cancelled(err)
 */
#include <lauxlib.h>
#include <time.h>

#include "vg/config.h"
#include "vg/err.h"
#include "vg/sched_host.h"

static int l_vg_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
    return 1;
}

static int l_vg_time(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static int l_vg_shutdown_requested(lua_State *L)
{
    lua_pushboolean(L, vg_shutdown_requested());
    return 1;
}

static int l_vg_worker_id(lua_State *L)
{
    lua_pushstring(L, vg_config_worker_id());
    return 1;
}

static int l_vg_instance(lua_State *L)
{
    lua_pushstring(L, vg_config_instance());
    return 1;
}

static int l_vg_is_cancelled(lua_State *L)
{
    lua_pushboolean(L, vg_err_is(L, 1, "cancelled"));
    return 1;
}

static const luaL_Reg vg_funcs[] = {
    {"sleep", vg_sched_l_sleep},
    {"now", l_vg_now},
    {"time", l_vg_time},
    {"spawn", vg_sched_l_spawn},
    {"current_task", vg_sched_l_current},
    {"event", vg_sched_l_event},
    {"shutdown_requested", l_vg_shutdown_requested},
    {"on_shutdown", vg_sched_l_on_shutdown},
    {"worker_id", l_vg_worker_id},
    {"instance", l_vg_instance},
    {"is_cancelled", l_vg_is_cancelled},
    {NULL, NULL},
};

int luaopen_vg(lua_State *L)
{
    luaL_newlib(L, vg_funcs);
    lua_pushstring(L, VG_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
