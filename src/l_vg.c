/* require "vg": the scheduler, clocks and shutdown, for scripts.
 *
 *   vg.sleep(s [, {interruptible=false}]) -> true, or false when shutdown
 *                                           interrupted it
 *   vg.now()            monotonic seconds (float)
 *   vg.time()           wall clock, seconds since the epoch (float)
 *   vg.spawn(fn, ...)   -> task with :join([timeout]), :cancel(), :done(),
 *                          :status(), :id(); join of a cancelled task
 *                          raises task_cancelled
 *   vg.current_task()   -> the running task
 *   vg.event()          -> ev with :set(), :clear(), :is_set(),
 *                          :wait([timeout]) (true when set, false on
 *                          timeout or shutdown)
 *   vg.shutdown_requested(), vg.on_shutdown(fn)
 *   vg.worker_id(), vg.instance(), vg.version
 *   vg.is_cancelled(err)
 */
#include <lauxlib.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "vg/config.h"
#include "vg/err.h"
#include "vg/lclass.h"
#include "vg/sched_host.h"

/* The wait flags of an options table {interruptible = false} at idx:
 * waits are interruptible by shutdown unless it says false. */
static unsigned wait_flags_opt(lua_State *L, int idx)
{
    unsigned flags = VG_WAIT_INTERRUPTIBLE;
    if (lua_istable(L, idx)) {
        lua_getfield(L, idx, "interruptible");
        if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) flags = 0;
        lua_pop(L, 1);
    }
    return flags;
}

/* ---- tasks ------------------------------------------------------------ */

static vg_task_t *check_task(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, VG_TASK_MT);
}

/* Results of the finished task at idx: its return values, or its error
 * re-raised. */
static int push_results(lua_State *L, int idx)
{
    vg_task_t *t = check_task(L, idx);
    vg_task_push_outcome(L, idx);
    int res = lua_gettop(L);
    lua_getfield(L, res, "error");
    if (!lua_isnil(L, -1)) {
        /* Ended by its cancellation: an error of its own, so the joiner
         * does not look cancelled itself (vg.is_cancelled stays true only
         * for the caller's own cancellation). */
        if (strcmp(vg_task_status(t), "cancelled") == 0)
            return vg_err_raise(L, "task_cancelled", false, "task %I was cancelled",
                                (lua_Integer)vg_task_id(t));
        /* Unwrap the error value; keep tables (error objects) as they are. */
        return lua_error(L);
    }
    lua_pop(L, 1);
    lua_getfield(L, res, "n");
    int n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n, "too many results");
    for (int i = 1; i <= n; i++) lua_rawgeti(L, res, i);
    return n;
}

static int join_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_wake_t why = vg_task_woken(L);
    if (why == VG_WAKE_TIMEOUT) {
        lua_pushnil(L);
        vg_err_push(L, "timeout", true, "join timed out");
        return 2;
    }
    return push_results(L, 1);
}

/* task:join([timeout]) -> results of the task, or raises its error. */
static int l_task_join(lua_State *L)
{
    vg_task_t *target = check_task(L, 1);
    double timeout = luaL_optnumber(L, 2, -1);
    lua_settop(L, 1);
    if (vg_task_done(target)) return push_results(L, 1);
    vg_task_t *self = vg_task_current(L);
    if (self == target) return luaL_error(L, "a task cannot join itself");
    vg_task_wait_on(self, vg_task_joiners(target), 0, timeout, "join");
    return vg_task_yield(L, 0, join_k);
}

static int l_task_cancel(lua_State *L)
{
    vg_task_t *t = check_task(L, 1);
    if (vg_task_done(t)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    vg_task_cancel(t);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_task_done(lua_State *L)
{
    lua_pushboolean(L, vg_task_done(check_task(L, 1)));
    return 1;
}

static int l_task_status(lua_State *L)
{
    lua_pushstring(L, vg_task_status(check_task(L, 1)));
    return 1;
}

static int l_task_id(lua_State *L)
{
    lua_pushinteger(L, vg_task_id(check_task(L, 1)));
    return 1;
}

static int l_task_tostring(lua_State *L)
{
    lua_pushfstring(L, "vg.Task(%I)", (lua_Integer)vg_task_id(check_task(L, 1)));
    return 1;
}

static const luaL_Reg task_methods[] = {
    {"join", l_task_join},     {"cancel", l_task_cancel}, {"done", l_task_done},
    {"status", l_task_status}, {"id", l_task_id},         {NULL, NULL},
};

static const luaL_Reg task_meta[] = {{"__tostring", l_task_tostring}, {NULL, NULL}};

static int l_vg_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    vg_task_spawn(L, lua_gettop(L) - 1, false);
    return 1;
}

static int l_vg_current_task(lua_State *L)
{
    vg_task_t *t = vg_task_of(L);
    if (!t) return 0;
    vg_task_push(L, t);
    return 1;
}

static int l_vg_on_shutdown(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    vg_sched_on_shutdown(L, 1);
    return 0;
}

/* ---- events ----------------------------------------------------------- */

#define EVENT_MT "vg.Event"

typedef struct {
    bool set;
    vg_task_t *waiters;
} event_t;

static int l_event_set(lua_State *L)
{
    event_t *e = luaL_checkudata(L, 1, EVENT_MT);
    e->set = true;
    vg_task_wake_all(&e->waiters);
    return 0;
}

static int l_event_clear(lua_State *L)
{
    ((event_t *)luaL_checkudata(L, 1, EVENT_MT))->set = false;
    return 0;
}

static int l_event_is_set(lua_State *L)
{
    lua_pushboolean(L, ((event_t *)luaL_checkudata(L, 1, EVENT_MT))->set);
    return 1;
}

static int event_wait_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_task_woken(L);
    lua_pushboolean(L, ((event_t *)lua_touserdata(L, 1))->set);
    return 1;
}

/* ev:wait([timeout [, {interruptible=false}]]) -> true when the event is
 * set, false on timeout or shutdown. */
static int l_event_wait(lua_State *L)
{
    event_t *e = luaL_checkudata(L, 1, EVENT_MT);
    double timeout = luaL_optnumber(L, 2, -1);
    unsigned flags = wait_flags_opt(L, 3);
    lua_settop(L, 1);
    if (e->set) {
        lua_pushboolean(L, 1);
        return 1;
    }
    vg_task_t *t = vg_task_current(L);
    vg_task_wait_on(t, &e->waiters, flags, timeout, "event");
    return vg_task_yield(L, 0, event_wait_k);
}

static const luaL_Reg event_methods[] = {
    {"set", l_event_set}, {"clear", l_event_clear}, {"is_set", l_event_is_set},
    {"wait", l_event_wait}, {NULL, NULL},
};

/* vg.event() -> an event tasks can wait on until another task sets it. */
static int l_vg_event(lua_State *L)
{
    event_t *e = lua_newuserdatauv(L, sizeof *e, 0);
    e->set = false;
    e->waiters = NULL;
    luaL_setmetatable(L, EVENT_MT);
    return 1;
}

/* ---- sleep ------------------------------------------------------------ */

static int sleep_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_wake_t why = vg_task_woken(L);
    lua_pushboolean(L, why != VG_WAKE_INTERRUPTED);
    return 1;
}

/* vg.sleep(seconds [, {interruptible=false}]) -> true when it slept the
 * whole time, false when shutdown interrupted it. */
static int l_vg_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && s == s, 1, "seconds must be a non-negative number");
    unsigned flags = wait_flags_opt(L, 2);
    vg_task_t *t = vg_task_current(L);
    vg_task_wait(t, flags, s, NULL, NULL);
    vg_task_wait_label(t, "sleep");
    return vg_task_yield(L, 0, sleep_k);
}

/* ---- clocks, identity, shutdown ---------------------------------------- */

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
    {"sleep", l_vg_sleep},
    {"now", l_vg_now},
    {"time", l_vg_time},
    {"spawn", l_vg_spawn},
    {"current_task", l_vg_current_task},
    {"event", l_vg_event},
    {"shutdown_requested", l_vg_shutdown_requested},
    {"on_shutdown", l_vg_on_shutdown},
    {"worker_id", l_vg_worker_id},
    {"instance", l_vg_instance},
    {"is_cancelled", l_vg_is_cancelled},
    {NULL, NULL},
};

int luaopen_vg(lua_State *L)
{
    luaL_getmetatable(L, VG_TASK_MT); /* made by the scheduler */
    vg_lclass_fill(L, task_methods, task_meta, 0);
    lua_pop(L, 1);
    vg_lclass_new(L, EVENT_MT, event_methods, NULL, 0);
    luaL_newlib(L, vg_funcs);
    lua_pushstring(L, VG_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
