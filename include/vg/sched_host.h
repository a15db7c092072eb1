/* Scheduler functions for the host itself and the binding files; bindings
 * that only wait need vg/sched.h alone. */
#ifndef VG_SCHED_HOST_H
#define VG_SCHED_HOST_H

#include "vg/sched.h"

void vg_sched_init(lua_State *L, uv_loop_t *loop, double grace_seconds);
/* VG_TASK_SLICE: the longest a task may run without yielding; <= 0: none. */
void vg_sched_set_slice(double seconds);
/* A gate on the main task's prologue. Until vg_sched_gate_clear(), every
 * call the main task (or a coroutine it creates) makes to a C function is
 * first shown to allow(co, f); when it says no, deny() runs instead (it
 * must not return: it ends the process). deny() also runs when the main
 * task's first run ends (it returned, raised or waited) with the gate still
 * set. Set it after vg_sched_init, before the main task is spawned. */
typedef bool (*vg_gate_allow_fn)(lua_State *co, lua_CFunction f);
void vg_sched_gate(vg_gate_allow_fn allow, void (*deny)(void));
void vg_sched_gate_clear(void);
/* Run until every task has ended; returns the exit code (0 or 1). */
int vg_sched_run(void);
/* A shutdown signal arrived (first: start the grace; second: skip it). */
void vg_sched_shutdown(const char *signame);

/* Function and nargs arguments on top of L become a task; pushes its handle. */
vg_task_t *vg_task_spawn(lua_State *L, int nargs, bool is_main);
void vg_task_cancel(vg_task_t *t);
vg_task_t *vg_task_running(void);
long long vg_task_id(const vg_task_t *t);
/* Label shown in the shutdown report for what the task waits on. */
void vg_task_wait_label(vg_task_t *t, const char *what);
/* Log context: the task takes ownership of fragment (malloc'd or NULL). */
void vg_task_set_log_context(vg_task_t *t, char *fragment);
/* Push the task's context table (the bound fields, inherited by spawn). */
void vg_task_push_context(lua_State *L, vg_task_t *t);

/* What the vg module's bindings (src/l_vg.c) need from the scheduler. A
 * task's handle is a full userdata with metatable VG_TASK_MT; the scheduler
 * creates it, require "vg" gives it its methods. */
#define VG_TASK_MT "vg.Task"
bool vg_task_done(const vg_task_t *t);
/* "running", "completed", "failed" or "cancelled". */
const char *vg_task_status(const vg_task_t *t);
/* The task whose coroutine is L, or NULL (main state, nested coroutine). */
vg_task_t *vg_task_of(lua_State *L);
/* Push the task's handle. */
void vg_task_push(lua_State *L, vg_task_t *t);
/* Push the outcome of the finished task whose handle is at idx:
 * {n=, [1..n]=results} or {error=, traceback=}. */
void vg_task_push_outcome(lua_State *L, int idx);
/* Wait lists: tasks waiting for something another task does (join, events).
 * A list is a vg_task_t * head, NULL when empty. */
vg_task_t **vg_task_joiners(vg_task_t *t);
void vg_task_wait_on(vg_task_t *t, vg_task_t **list, unsigned flags, double timeout_s,
                     const char *label);
void vg_task_wake_all(vg_task_t **list);
/* Register the function at idx to run as a task of its own at shutdown
 * (at once when shutdown has begun). */
void vg_sched_on_shutdown(lua_State *L, int idx);

#endif
