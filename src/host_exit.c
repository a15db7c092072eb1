/* The one way out of the process (see vg/host_exit.h). */
#include "vg/host_exit.h"

#include <stdlib.h>

#include "vg/guard.h"
#include "vg/log.h"
#include "vg/proc.h"
#include "vg/sched.h"

noreturn void vg_host_exit(int code, const char *reason)
{
    /* Children first: nothing a step started may outlive the host. */
    vg_proc_kill_groups();
    vg_guard_close();
    vg_log_set_buffered(false); /* flushes what is pending */
    if (reason)
        vg_log(VG_LOG_INFO, "worker_shutdown", VG_F_STR("reason", reason),
               VG_F_INT("exit_code", code), VG_F_END);
    else if (vg_shutdown_requested())
        vg_log(VG_LOG_INFO, "worker_shutdown", VG_F_INT("exit_code", code), VG_F_END);
    vg_log_flush();
    exit(code);
}
