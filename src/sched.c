/* The scheduler: tasks (Lua coroutines), the ready queue, waits, timeouts,
 * cancellation and the shutdown sequence. This is the only place that calls
 * lua_resume. libuv callbacks only record results and call vg_task_wake().
 * The Lua API over it (task methods, events, sleep, spawn) is src/l_vg.c. */
#include "vg/sched.h"
#include "vg/sched_host.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/err.h"
#include "vg/host_exit.h"
#include "vg/log.h"
#include "vg/lref.h"
#include "vg/lstack.h"

/* Uservalues of a task's full userdata. */
enum { UV_THREAD = 1, UV_RESULT = 2, UV_CONTEXT = 3, UV_COUNT = 3 };

typedef enum { T_NEW, T_READY, T_RUNNING, T_WAITING, T_DONE } task_state_t;

struct vg_task {
    uv_timer_t timer;           /* sleeps and wait timeouts; closed when done */
    lua_State *co;
    int anchor;                 /* registry ref keeping the userdata alive */
    long long id;
    task_state_t state;
    bool queued;                /* on the ready queue */
    bool is_main;
    bool cancel_pending;        /* deliver `cancelled` at the current/next wait */
    bool failed;
    bool cancelled;             /* ended by a cancellation */
    bool sliced;                /* ran longer than the slice without yielding */
    int nargs;                  /* arguments for the first resume */
    /* The pending wait. */
    unsigned wait_flags;
    vg_wait_cleanup_fn cleanup;
    void *op;
    vg_wake_t wake;
    const char *waiting_for;    /* for the shutdown report */
    /* Links. */
    vg_task_t *next_ready;
    vg_task_t *prev, *next;     /* live tasks */
    vg_task_t *joiners;         /* wait list: tasks in join() on this one */
    vg_task_t *wl_next;         /* link in the wait list this task is on */
    vg_task_t **wl_head;        /* that list, NULL when on none */
    char *log_context;          /* pre-encoded fragment, see vg_log_set_context */
};

static struct {
    lua_State *L;
    uv_loop_t *loop;
    uv_idle_t idle;             /* runs the ready queue */
    uv_prepare_t flush;         /* writes the log lines of the iteration */
    uv_timer_t grace;           /* shutdown grace, then the forced-exit bound */
    vg_task_t *ready_head, *ready_tail;
    vg_task_t *live;            /* doubly linked list of tasks not yet done */
    long long live_count;
    long long next_id;
    vg_task_t *running;
    vg_task_t *main_task;
    bool shutdown;
    bool grace_over;
    bool ended;                 /* uv_stop was called because no task remains */
    int exit_code;
    double grace_seconds;
    uint64_t slice_ns;          /* VG_TASK_SLICE; 0: no limit */
    uint64_t resumed_at;        /* uv_hrtime() of the current resume */
    int on_shutdown_ref;        /* table of functions; made on first use */
    vg_gate_allow_fn gate_allow; /* the main task's prologue gate, NULL when none */
    void (*gate_deny)(void);
    struct atexit_fn { vg_atexit_fn fn; void *arg; } *atexit_fns;
    size_t n_atexit;
} S;

static void ready_push(vg_task_t *t);
static void on_wait_timeout(uv_timer_t *h);
static void on_idle(uv_idle_t *h);

uv_loop_t *vg_loop(void) { return S.loop; }

bool vg_shutdown_requested(void) { return S.shutdown; }

vg_task_t *vg_task_running(void) { return S.running; }

long long vg_task_id(const vg_task_t *t) { return t->id; }

void vg_sched_atexit(vg_atexit_fn fn, void *arg)
{
    S.atexit_fns = vg_xrealloc(S.atexit_fns, (S.n_atexit + 1) * sizeof *S.atexit_fns);
    S.atexit_fns[S.n_atexit].fn = fn;
    S.atexit_fns[S.n_atexit].arg = arg;
    S.n_atexit++;
}

/* ---- the ready queue -------------------------------------------------- */

static void ready_push(vg_task_t *t)
{
    if (t->queued) return;
    t->queued = true;
    t->state = T_READY;
    t->next_ready = NULL;
    if (S.ready_tail) S.ready_tail->next_ready = t;
    else S.ready_head = t;
    S.ready_tail = t;
    if (!uv_is_active((uv_handle_t *)&S.idle)) uv_idle_start(&S.idle, on_idle);
}

static vg_task_t *ready_pop(void)
{
    vg_task_t *t = S.ready_head;
    if (!t) return NULL;
    S.ready_head = t->next_ready;
    if (!S.ready_head) S.ready_tail = NULL;
    t->queued = false;
    return t;
}

/* ---- waits ------------------------------------------------------------ */

vg_task_t *vg_task_current(lua_State *L)
{
    vg_task_t *t = *(vg_task_t **)lua_getextraspace(L);
    if (!t || t->co != L || t->state != T_RUNNING)
        luaL_error(L, "this call waits, so it must run in a vg task (not in the main "
                      "state, a nested coroutine, a metamethod or a require)");
    /* Checked before anything is started: a wait that could not yield
     * would leave its operation (a connection, a timer) behind. */
    if (!lua_isyieldable(L))
        luaL_error(L, "this call waits, and it cannot wait here: it runs inside a C call "
                      "that cannot yield (a require'd module's top level, a table.sort "
                      "comparator, a string.gsub callback, a metamethod such as "
                      "__tostring)");
    return t;
}

void vg_task_wait(vg_task_t *t, unsigned flags, double timeout_s,
                  vg_wait_cleanup_fn cleanup, void *op)
{
    t->wait_flags = flags;
    t->cleanup = cleanup;
    t->op = op;
    t->wake = VG_WAKE_DONE;
    t->waiting_for = NULL;
    if (timeout_s >= 0) {
        double ms = ceil(timeout_s * 1000.0);
        if (ms > 9e15) ms = 9e15;
        uv_update_time(S.loop);
        uv_timer_start(&t->timer, on_wait_timeout, (uint64_t)ms, 0);
    }
}

void vg_task_wait_label(vg_task_t *t, const char *what) { t->waiting_for = what; }

/* End the pending wait for a reason other than completion. */
static void end_wait(vg_task_t *t, vg_wake_t why)
{
    if (t->state != T_WAITING) return;
    vg_wait_cleanup_fn cleanup = t->cleanup;
    void *op = t->op;
    t->cleanup = NULL;
    t->op = NULL;
    uv_timer_stop(&t->timer);
    t->wake = why;
    if (cleanup) cleanup(op);
    ready_push(t);
}

static void on_wait_timeout(uv_timer_t *h)
{
    end_wait((vg_task_t *)h, VG_WAKE_TIMEOUT);
}

int vg_task_yield(lua_State *L, lua_KContext ctx, lua_KFunction k)
{
    vg_task_t *t = *(vg_task_t **)lua_getextraspace(L);
    t->state = T_WAITING;
    return lua_yieldk(L, 0, ctx, k);
}

void vg_task_wake(vg_task_t *t)
{
    if (!t || t->state != T_WAITING) return;
    uv_timer_stop(&t->timer);
    t->cleanup = NULL;
    t->op = NULL;
    t->wake = VG_WAKE_DONE;
    ready_push(t);
}

vg_wake_t vg_task_woken(lua_State *L)
{
    vg_task_t *t = *(vg_task_t **)lua_getextraspace(L);
    vg_wake_t why = t->wake;
    t->wake = VG_WAKE_DONE;
    if (why == VG_WAKE_CANCELLED) {
        t->cancelled = true;
        vg_err_raise(L, "cancelled", false, "task %I was cancelled", (lua_Integer)t->id);
    }
    return why;
}

/* Decide, right after the task yielded, whether its wait must end at once:
 * a pending cancellation, or shutdown for an interruptible wait. */
static void check_wait_now(vg_task_t *t)
{
    if (t->cancel_pending) {
        t->cancel_pending = false;
        end_wait(t, VG_WAKE_CANCELLED);
    } else if (S.shutdown && (t->wait_flags & VG_WAIT_INTERRUPTIBLE)) {
        end_wait(t, VG_WAKE_INTERRUPTED);
    }
}

/* ---- task lifecycle --------------------------------------------------- */

static void on_task_timer_closed(uv_handle_t *h)
{
    vg_task_t *t = (vg_task_t *)h;
    free(t->log_context);
    t->log_context = NULL;
    /* The userdata may now be collected once scripts drop their handles. */
    vg_ref_release(S.L, &t->anchor);
}

static void live_unlink(vg_task_t *t)
{
    if (t->prev) t->prev->next = t->next;
    else S.live = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
    S.live_count--;
}

/* Push the task's userdata (anchored while it lives) onto L. */
static void push_task(lua_State *L, vg_task_t *t)
{
    vg_ref_push(L, t->anchor);
}

/* Protected: luaL_tolstring can run a __tostring metamethod. */
static int tostring_p(lua_State *L)
{
    luaL_tolstring(L, 1, NULL);
    return 1;
}

static const char *safe_tostring(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_pushcfunction(L, tostring_p);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "(error object is not a string)");
    }
    return lua_tostring(L, -1);
}

/* ---- wait lists (join, events) -------------------------------------- */

static void waitlist_add(vg_task_t **head, vg_task_t *t)
{
    t->wl_head = head;
    t->wl_next = *head;
    *head = t;
}

/* The cleanup of a wait on a list: take the task off it. */
static void waitlist_remove(void *op)
{
    vg_task_t *t = op;
    if (!t->wl_head) return;
    for (vg_task_t **p = t->wl_head; *p; p = &(*p)->wl_next) {
        if (*p == t) {
            *p = t->wl_next;
            break;
        }
    }
    t->wl_next = NULL;
    t->wl_head = NULL;
}

static void waitlist_wake_all(vg_task_t **head)
{
    vg_task_t *t = *head;
    *head = NULL;
    while (t) {
        vg_task_t *next = t->wl_next;
        t->wl_next = NULL;
        t->wl_head = NULL;
        vg_task_wake(t);
        t = next;
    }
}

static void cancel_all(void);

/* The task's coroutine returned (ok) or raised (!ok); its results or error
 * are on co's stack. Record them in the UV_RESULT table. */
static void task_finish(vg_task_t *t, bool ok, int nres)
{
    lua_State *L = S.L;
    /* The main state is nearly empty here; what follows needs a handful of
     * slots, never nres of them (results move one at a time). */
    lua_checkstack(L, LUA_MINSTACK);
    VG_STACK_MARK(L);
    int top = lua_gettop(L);
    push_task(L, t);
    int ud = lua_gettop(L);
    t->state = T_DONE;
    if (ok) {
        lua_createtable(L, nres, 1);
        int res = lua_gettop(L);
        for (int i = nres; i >= 1; i--) {
            lua_xmove(t->co, L, 1);
            lua_rawseti(L, res, i);
        }
        lua_pushinteger(L, nres);
        lua_setfield(L, res, "n");
        lua_setiuservalue(L, ud, UV_RESULT);
    } else {
        lua_xmove(t->co, L, 1);
        int errv = lua_gettop(L);
        bool cancelled = t->cancelled || vg_err_is(L, errv, "cancelled");
        t->failed = true;
        t->cancelled = cancelled;
        const char *msg = safe_tostring(L, errv);
        luaL_traceback(L, t->co, msg, 0);
        const char *tb = lua_tostring(L, -1);
        if (cancelled) {
            vg_log(VG_LOG_DEBUG, "task_cancelled", VG_F_INT("task", t->id), VG_F_END);
        } else if (!t->is_main && vg_err_is(L, errv, "slice_exceeded")) {
            vg_log(VG_LOG_ERROR, "task_slice_exceeded", VG_F_INT("task", t->id),
                   VG_F_STR("error", msg), VG_F_STR("traceback", tb), VG_F_END);
        } else if (t->is_main && vg_err_is(L, errv, "configuration_invalid")) {
            /* already reported in its own critical line */
        } else if (t->is_main) {
            vg_log(VG_LOG_CRITICAL, "script_error", VG_F_STR("error", msg),
                   VG_F_STR("traceback", tb), VG_F_END);
        } else {
            vg_log(VG_LOG_ERROR, "task_failed", VG_F_INT("task", t->id),
                   VG_F_STR("error", msg), VG_F_STR("traceback", tb), VG_F_END);
        }
        lua_createtable(L, 0, 3);
        lua_pushvalue(L, errv);
        lua_setfield(L, -2, "error");
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "traceback");
        lua_setiuservalue(L, ud, UV_RESULT);
        lua_resetthread(t->co); /* runs pending to-be-closed variables */
    }
    /* Drop the coroutine: its stack is no longer needed. */
    lua_pushnil(L);
    lua_setiuservalue(L, ud, UV_THREAD);
    t->co = NULL;
    lua_settop(L, top);
    VG_STACK_CHECK(L, 0);

    live_unlink(t);
    waitlist_wake_all(&t->joiners);
    uv_close((uv_handle_t *)&t->timer, on_task_timer_closed);

    if (t->is_main) {
        S.main_task = NULL;
        if (!ok && !(t->cancelled && S.shutdown)) {
            S.exit_code = 1;
            cancel_all(); /* an uncaught script error ends the host */
        }
    }
    if (S.live_count == 0 && !S.ended) {
        S.ended = true;
        uv_stop(S.loop);
    }
}

/* ---- the time slice ---------------------------------------------------- */

/* Instructions between two looks at the clock: a clock read per ~10,000 VM
 * instructions costs nothing measurable and notices a spin within well
 * under a millisecond past the slice. */
#define SLICE_HOOK_COUNT 10000

/* A task that runs longer than the slice without yielding freezes every
 * other task, the heartbeat, lease renewal and signal handling. The hook
 * stops it: where the task can yield, the hook yields it and the scheduler
 * ends it with a slice_exceeded error, without resuming it again, so no
 * pcall inside it can swallow that. Where it cannot yield (inside a C call
 * without a continuation, such as a table.sort comparator, or in a plain
 * coroutine of its own), the hook raises slice_exceeded instead, at every
 * tick until the task yields or ends. A single long C call (a huge
 * string.rep, a regex over megabytes) runs no hook: the slice cannot stop
 * it until it returns. */
static void slice_hook(lua_State *co, lua_Debug *ar)
{
    (void)ar;
    vg_task_t *t = S.running;
    if (!t || S.slice_ns == 0) return;
    uint64_t ran = uv_hrtime() - S.resumed_at;
    if (ran < S.slice_ns) return;
    t->sliced = true;
    if (co == t->co && lua_isyieldable(co)) {
        lua_yield(co, 0); /* task_resume ends the task */
        return;
    }
    vg_err_raise(co, "slice_exceeded", true,
                 "task %I ran %f s without yielding (VG_TASK_SLICE is %f s)", (lua_Integer)t->id,
                 (lua_Number)ran / 1e9, (lua_Number)S.slice_ns / 1e9);
}

/* The hook of every task's coroutine: the slice (count events) and, while
 * the prologue gate is set, the gate (call events). */
static void task_hook(lua_State *co, lua_Debug *ar)
{
    if (ar->event == LUA_HOOKCOUNT) {
        slice_hook(co, ar);
        return;
    }
    if (ar->event != LUA_HOOKCALL && ar->event != LUA_HOOKTAILCALL) return;
    if (!S.gate_allow) { /* the gate was cleared: calls are not watched any more */
        lua_sethook(co, task_hook, LUA_MASKCOUNT, SLICE_HOOK_COUNT);
        return;
    }
    if (!lua_getinfo(co, "f", ar)) return;
    lua_CFunction f = lua_tocfunction(co, -1);
    lua_pop(co, 1);
    if (f && !S.gate_allow(co, f)) S.gate_deny();
}

static int task_hook_mask(void)
{
    return S.gate_allow ? LUA_MASKCOUNT | LUA_MASKCALL : LUA_MASKCOUNT;
}

void vg_sched_gate(vg_gate_allow_fn allow, void (*deny)(void))
{
    S.gate_allow = allow;
    S.gate_deny = deny;
}

void vg_sched_gate_clear(void)
{
    S.gate_allow = NULL;
    S.gate_deny = NULL;
}

void vg_sched_set_slice(double seconds)
{
    S.slice_ns = seconds > 0 ? (uint64_t)(seconds * 1e9) : 0;
}

static void task_resume(vg_task_t *t)
{
    lua_State *co = t->co;
    int nargs = 0;
    if (t->nargs >= 0) { /* first resume: pass the arguments */
        nargs = t->nargs;
        t->nargs = -1;
    }
    t->state = T_RUNNING;
    S.running = t;
    vg_log_set_context(t->log_context);
    int nres = 0;
    S.resumed_at = uv_hrtime();
    int rc = lua_resume(co, S.L, nargs, &nres);
    S.running = NULL;
    vg_log_set_context(NULL);
    /* The main task's first run is over: a prologue gate still set means
     * the script did none of what would have cleared it. */
    if (t->is_main && S.gate_deny) S.gate_deny();
    if (rc == LUA_YIELD && t->sliced && t->state == T_RUNNING) {
        /* The slice hook yielded it: end it here, never to run again. */
        lua_pop(co, nres);
        vg_err_push(co, "slice_exceeded", true,
                    "task %I ran %f s without yielding (VG_TASK_SLICE is %f s) and was stopped",
                    (lua_Integer)t->id, (lua_Number)(uv_hrtime() - S.resumed_at) / 1e9,
                    (lua_Number)S.slice_ns / 1e9);
        task_finish(t, false, 1);
    } else if (rc == LUA_YIELD) {
        t->sliced = false; /* it yielded in time after a raise: a new slice */
        if (t->state == T_RUNNING) {
            /* A plain coroutine.yield() in a task: give others a turn. */
            lua_pop(co, nres);
            ready_push(t);
        } else {
            check_wait_now(t);
        }
    } else {
        task_finish(t, rc == LUA_OK, nres);
    }
}

static void on_idle(uv_idle_t *h)
{
    /* Run only the tasks ready now, so a task that keeps yielding cannot
     * starve I/O: the ones it wakes wait for the next loop iteration. */
    vg_task_t *last = S.ready_tail;
    vg_task_t *t;
    while ((t = ready_pop())) {
        bool was_last = t == last;
        if (t->co) task_resume(t);
        if (was_last) break;
    }
    if (!S.ready_head) uv_idle_stop(h);
}

/* Create a task from the function and nargs arguments on top of L; pushes
 * the task handle. */
vg_task_t *vg_task_spawn(lua_State *L, int nargs, bool is_main)
{
    luaL_checktype(L, -nargs - 1, LUA_TFUNCTION);
    luaL_checkstack(L, 6, "spawning a task");
    VG_STACK_MARK(L);
    vg_task_t *t = lua_newuserdatauv(L, sizeof *t, UV_COUNT);
    memset(t, 0, sizeof *t);
    luaL_setmetatable(L, VG_TASK_MT);
    int ud = lua_gettop(L);
    lua_State *co = lua_newthread(L);
    lua_setiuservalue(L, ud, UV_THREAD);
    /* Room for the function and its arguments before anything is linked:
     * on failure the unanchored userdata and thread are simply collected. */
    if (!lua_checkstack(co, nargs + 1 + LUA_MINSTACK))
        luaL_error(L, "too many arguments for a task (%d)", nargs);
    *(vg_task_t **)lua_getextraspace(co) = t;
    /* Move the function and arguments (below the userdata) to co. */
    lua_rotate(L, ud - nargs - 1, 1); /* userdata below fn+args */
    lua_xmove(L, co, nargs + 1);
    t->co = co;
    t->id = ++S.next_id;
    t->nargs = nargs;
    t->is_main = is_main;
    t->state = T_NEW;
    /* Inherit the log context of the spawning task. */
    vg_task_t *parent = S.running;
    lua_createtable(L, 0, 2);
    int ctx = lua_gettop(L);
    if (parent) {
        push_task(L, parent);
        lua_getiuservalue(L, -1, UV_CONTEXT);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_settable(L, ctx);
        }
        lua_pop(L, 2);
        if (parent->log_context) t->log_context = vg_xstrdup(parent->log_context);
    }
    lua_setiuservalue(L, -2, UV_CONTEXT);
    uv_timer_init(S.loop, &t->timer);
    /* Threads the task creates inherit the hook. */
    lua_sethook(co, task_hook, task_hook_mask(), SLICE_HOOK_COUNT);
    lua_pushvalue(L, -1);
    t->anchor = vg_ref_take(L);
    t->next = S.live;
    if (S.live) S.live->prev = t;
    S.live = t;
    S.live_count++;
    if (is_main) S.main_task = t;
    if (S.grace_over && !is_main) t->cancel_pending = true;
    ready_push(t);
    VG_STACK_CHECK(L, -nargs); /* fn and args replaced by the handle */
    return t;
}

void vg_task_cancel(vg_task_t *t)
{
    switch (t->state) {
    case T_WAITING:
        t->cancel_pending = false;
        end_wait(t, VG_WAKE_CANCELLED);
        break;
    case T_DONE:
        break;
    default:
        t->cancel_pending = true;
        break;
    }
}

static void cancel_all(void)
{
    for (vg_task_t *t = S.live; t; t = t->next) vg_task_cancel(t);
}

/* ---- log context ------------------------------------------------------ */

void vg_task_set_log_context(vg_task_t *t, char *fragment)
{
    free(t->log_context);
    t->log_context = fragment;
    if (S.running == t) vg_log_set_context(fragment);
}

void vg_task_push_context(lua_State *L, vg_task_t *t)
{
    VG_STACK_MARK(L);
    push_task(L, t);
    lua_getiuservalue(L, -1, UV_CONTEXT);
    lua_remove(L, -2);
    VG_STACK_CHECK(L, 1);
}

/* ---- shutdown --------------------------------------------------------- */

static void log_still_running(const char *event, vg_log_level_t level)
{
    vg_buf_t b = VG_BUF_INIT;
    vg_buf_addc(&b, '[');
    int n = 0;
    for (vg_task_t *t = S.live; t && n < 50; t = t->next, n++) {
        if (n) vg_buf_addc(&b, ',');
        vg_buf_printf(&b, "{\"task\":%lld,\"state\":\"%s\"", t->id,
                      t->state == T_WAITING ? "waiting" : "ready");
        if (t->waiting_for) {
            vg_buf_adds(&b, ",\"waiting_for\":");
            vg_json_str(&b, t->waiting_for, strlen(t->waiting_for));
        }
        vg_buf_addc(&b, '}');
    }
    vg_buf_addc(&b, ']');
    vg_log(level, event, VG_F_INT("lua_tasks", S.live_count), VG_F_RAW("tasks", b.data),
           VG_F_END);
    vg_buf_free(&b);
}

static void on_force_timeout(uv_timer_t *h)
{
    log_still_running("shutdown_forced", VG_LOG_CRITICAL);
    vg_host_exit(0, "forced");
}

static void grace_expired(void)
{
    if (S.grace_over) return;
    S.grace_over = true;
    if (S.live_count > 0) {
        log_still_running("shutdown_grace_expired", VG_LOG_WARNING);
        cancel_all();
    }
    /* Cleanup code gets a bounded time of its own. */
    uv_timer_start(&S.grace, on_force_timeout, 10000, 0);
}

static void on_grace_timeout(uv_timer_t *h) { grace_expired(); }

static void interrupt_waits(void)
{
    for (vg_task_t *t = S.live; t; t = t->next)
        if (t->state == T_WAITING && (t->wait_flags & VG_WAIT_INTERRUPTIBLE))
            end_wait(t, VG_WAKE_INTERRUPTED);
}

void vg_sched_shutdown(const char *signame)
{
    if (S.shutdown) {
        if (!S.grace_over) {
            vg_log(VG_LOG_WARNING, "shutdown_grace_skipped", VG_F_STR("signal", signame),
                   VG_F_END);
            grace_expired();
        } else {
            vg_log(VG_LOG_WARNING, "shutdown_forced", VG_F_STR("signal", signame), VG_F_END);
            vg_host_exit(0, "forced");
        }
        return;
    }
    S.shutdown = true;
    vg_log(VG_LOG_INFO, "shutdown_signal_received", VG_F_STR("signal", signame),
           VG_F_NUM("grace_seconds", S.grace_seconds), VG_F_INT("lua_tasks", S.live_count),
           VG_F_END);
    interrupt_waits();
    /* on_shutdown callbacks run as tasks of their own. */
    if (S.on_shutdown_ref != LUA_NOREF) {
        lua_State *L = S.L;
        vg_ref_push(L, S.on_shutdown_ref);
        lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            vg_task_spawn(L, 0, false);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    uint64_t ms = (uint64_t)(S.grace_seconds * 1000.0);
    uv_timer_start(&S.grace, on_grace_timeout, ms, 0);
}

/* ---- what the bindings (src/l_vg.c) read ------------------------------ */

bool vg_task_done(const vg_task_t *t) { return t->state == T_DONE; }

const char *vg_task_status(const vg_task_t *t)
{
    if (t->state != T_DONE) return "running";
    return t->cancelled ? "cancelled" : t->failed ? "failed" : "completed";
}

vg_task_t *vg_task_of(lua_State *L)
{
    vg_task_t *t = *(vg_task_t **)lua_getextraspace(L);
    return t && t->co == L ? t : NULL;
}

void vg_task_push(lua_State *L, vg_task_t *t) { push_task(L, t); }

void vg_task_push_outcome(lua_State *L, int idx)
{
    /* From the handle itself: a finished task is no longer anchored. */
    lua_getiuservalue(L, idx, UV_RESULT);
}

vg_task_t **vg_task_joiners(vg_task_t *t) { return &t->joiners; }

void vg_task_wait_on(vg_task_t *t, vg_task_t **list, unsigned flags, double timeout_s,
                     const char *label)
{
    waitlist_add(list, t);
    vg_task_wait(t, flags, timeout_s, waitlist_remove, t);
    vg_task_wait_label(t, label);
}

void vg_task_wake_all(vg_task_t **list) { waitlist_wake_all(list); }

void vg_sched_on_shutdown(lua_State *L, int idx)
{
    VG_STACK_MARK(L);
    idx = lua_absindex(L, idx);
    if (S.on_shutdown_ref == LUA_NOREF) {
        lua_newtable(L);
        S.on_shutdown_ref = vg_ref_take(L);
    }
    vg_ref_push(L, S.on_shutdown_ref);
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, luaL_len(L, -2) + 1);
    lua_pop(L, 1);
    if (S.shutdown) { /* registered late: run it now */
        lua_pushvalue(L, idx);
        vg_task_spawn(L, 0, false);
        lua_pop(L, 1);
    }
    VG_STACK_CHECK(L, 0);
}

/* ---- host start and end ----------------------------------------------- */

static void on_flush(uv_prepare_t *h)
{
    (void)h;
    vg_log_flush();
}

void vg_sched_init(lua_State *L, uv_loop_t *loop, double grace_seconds)
{
    memset(&S, 0, sizeof S);
    S.L = L;
    S.loop = loop;
    S.grace_seconds = grace_seconds;
    uv_idle_init(loop, &S.idle);
    uv_prepare_init(loop, &S.flush);
    uv_unref((uv_handle_t *)&S.flush);
    uv_timer_init(loop, &S.grace);
    uv_unref((uv_handle_t *)&S.grace);
    S.on_shutdown_ref = LUA_NOREF;
    /* Its methods are set by require "vg" (src/l_vg.c). */
    luaL_newmetatable(L, VG_TASK_MT);
    lua_pop(L, 1);
}

/* Let go of tasks that can never run again (a deadlock: each waits for
 * another, and nothing on the loop can wake them): their wait's cleanup
 * runs, their anchor goes once their timer has closed, and what they hold
 * is collected with the Lua state. */
static void drop_stuck_tasks(void)
{
    while (S.live) {
        vg_task_t *t = S.live;
        vg_wait_cleanup_fn cleanup = t->cleanup;
        void *op = t->op;
        t->cleanup = NULL;
        t->op = NULL;
        if (cleanup) cleanup(op);
        t->state = T_DONE;
        live_unlink(t);
        uv_close((uv_handle_t *)&t->timer, on_task_timer_closed);
    }
}

/* Run the loop until every task has ended, then the atexit hooks, then
 * close the scheduler's handles and let go of its references. Returns the
 * exit code. */
int vg_sched_run(void)
{
    /* Log lines are written together once per loop iteration, before the
     * loop waits for I/O (see vg/log.h). */
    uv_prepare_start(&S.flush, on_flush);
    vg_log_set_buffered(true);
    if (S.live_count > 0) uv_run(S.loop, UV_RUN_DEFAULT);
    vg_log_set_buffered(false);
    uv_prepare_stop(&S.flush);
    if (!S.ended && S.live_count > 0) {
        log_still_running("tasks_deadlocked", VG_LOG_CRITICAL);
        S.exit_code = 1;
    }
    for (size_t i = 0; i < S.n_atexit; i++) S.atexit_fns[i].fn(S.atexit_fns[i].arg);
    free(S.atexit_fns);
    S.atexit_fns = NULL;
    S.n_atexit = 0;
    drop_stuck_tasks();
    vg_ref_release(S.L, &S.on_shutdown_ref);
    uv_close((uv_handle_t *)&S.idle, NULL);
    uv_close((uv_handle_t *)&S.flush, NULL);
    uv_close((uv_handle_t *)&S.grace, NULL);
    return S.exit_code;
}

