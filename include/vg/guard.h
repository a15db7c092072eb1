/* The step guard: a small process outside the host that SIGKILLs the process
 * groups of the host's step commands when the host is gone, however it went
 * (SIGKILL, a crash, exit()), and when the host's fence deadline passes while
 * the host itself cannot act on it (a Lua loop that never yields, a stopped
 * or starved process). No Lua in here.
 *
 * Why a process of its own: PR_SET_PDEATHSIG reaches only the direct child,
 * and a subreaper or a thread inside the host dies with the host. The guard
 * is forked (without exec) the first time a group is registered; it holds
 * the read end of a pipe whose only write end is the host's (close-on-exec,
 * so step commands never inherit it). EOF on that pipe means the host is
 * gone: the guard kills every group it knows and exits. It ignores SIGINT,
 * SIGTERM and SIGHUP, so a Ctrl-C that reaches the whole terminal group
 * leaves it to do its job after the host's own shutdown.
 *
 * What it cannot reach: a process that left its group (setsid, setpgid).
 * Step commands are expected to stay in the group they were started in. */
#ifndef VG_GUARD_H
#define VG_GUARD_H

#include <stdbool.h>

/* Register / forget a process group (a step command's pgid). The first
 * registration starts the guard. Returns 0, or -1 when the guard cannot be
 * reached (logged once; the host still kills its groups itself). */
int vg_guard_add(int pgid);
void vg_guard_remove(int pgid);

/* The fence deadline, in seconds of the monotonic clock (uv_hrtime() / 1e9,
 * CLOCK_MONOTONIC): when it passes, the guard SIGKILLs every registered
 * group at once, and any group registered while it stays passed. <= 0 clears
 * it. */
void vg_guard_set_deadline(double mono_seconds);
double vg_guard_deadline(void);

/* The guard's pid, or 0 when none runs. */
int vg_guard_pid(void);

/* At exit: close the pipe, so the guard kills what is left and exits. */
void vg_guard_close(void);

#endif
