/* The scheduler: every script activity is a task (a Lua coroutine). Only the
 * scheduler calls lua_resume. A binding that waits:
 *
 *   1. does the fast path if it can;
 *   2. starts the libuv operation with a struct that points at the task;
 *   3. vg_task_wait(t, flags, timeout, cleanup, op)  registers the wait;
 *   4. return vg_task_yield(L, ctx, k);
 *
 * The libuv callback stores its result in the op struct and calls
 * vg_task_wake(t). The continuation k calls vg_task_woken(L), which raises
 * the `cancelled` error when the task was cancelled and otherwise says why
 * the task woke up, then turns the stored result into return values.
 *
 * When a wait ends any other way (timeout, shutdown interrupt, cancel), the
 * scheduler calls cleanup(op) first: it must make sure the operation's later
 * completion no longer touches the task (e.g. set op->task = NULL) and that
 * op's memory is freed by whoever still owns it. */
#ifndef VG_SCHED_H
#define VG_SCHED_H

#include <lua.h>
#include <stdbool.h>
#include <uv.h>

typedef struct vg_task vg_task_t;

typedef enum {
    VG_WAKE_DONE = 0,      /* vg_task_wake() was called */
    VG_WAKE_TIMEOUT,       /* the wait's timeout expired */
    VG_WAKE_INTERRUPTED,   /* shutdown was requested and the wait is interruptible */
    VG_WAKE_CANCELLED      /* never returned: vg_task_woken() raises instead */
} vg_wake_t;

enum {
    VG_WAIT_INTERRUPTIBLE = 1  /* shutdown wakes it (sleep, waiting for work) */
};

typedef void (*vg_wait_cleanup_fn)(void *op);

uv_loop_t *vg_loop(void);

/* The task running on L (raises a Lua error when L is not a task). */
vg_task_t *vg_task_current(lua_State *L);
/* Register a wait. timeout_s < 0 means none. cleanup may be NULL. */
void vg_task_wait(vg_task_t *t, unsigned flags, double timeout_s,
                  vg_wait_cleanup_fn cleanup, void *op);
int vg_task_yield(lua_State *L, lua_KContext ctx, lua_KFunction k);
/* From a libuv callback: the operation the task waits for completed. */
void vg_task_wake(vg_task_t *t);
/* In the continuation: why the task woke. Raises `cancelled` if cancelled. */
vg_wake_t vg_task_woken(lua_State *L);

/* Shutdown state. */
bool vg_shutdown_requested(void);

/* Called by bindings that hold resources which must be released before the
 * loop can end (e.g. the pool). fn runs once when the host finishes, after
 * every task has ended; it may start asynchronous closes on the loop. */
typedef void (*vg_atexit_fn)(void *arg);
void vg_sched_atexit(vg_atexit_fn fn, void *arg);

#endif
