/* Scheduler functions for the host itself and the binding files; bindings
 * that only wait need vg/sched.h alone. */
#ifndef VG_SCHED_HOST_H
#define VG_SCHED_HOST_H

#include "vg/sched.h"

void vg_sched_init(lua_State *L, uv_loop_t *loop, double grace_seconds);
/* VG_TASK_SLICE: the longest a task may run without yielding; <= 0: none. */
void vg_sched_set_slice(double seconds);
/* Run until every task has ended; returns the exit code (0 or 1). */
int vg_sched_run(void);
int vg_sched_exit_code(void);
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

/* Lua functions of the vg module implemented by the scheduler. */
int vg_sched_l_sleep(lua_State *L);
int vg_sched_l_spawn(lua_State *L);
int vg_sched_l_on_shutdown(lua_State *L);
int vg_sched_l_current(lua_State *L);
int vg_sched_l_event(lua_State *L);

#endif
