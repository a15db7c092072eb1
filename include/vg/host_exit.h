/* The one way out of the process (STYLE convention 15). Every exit (the end
 * of main, os.exit, the forced-shutdown timer, the third signal, a fatal
 * start-up error) calls vg_host_exit: it SIGKILLs the process groups of
 * child processes still running, lets the step guard go, writes the last log
 * line and flushes the log. */
#ifndef VG_HOST_EXIT_H
#define VG_HOST_EXIT_H

#include <stdnoreturn.h>

/* reason: NULL for the end of the script (a worker_shutdown line only after
 * a shutdown signal); otherwise why the host stops early ("forced",
 * "os.exit", ...), logged in the last line. */
noreturn void vg_host_exit(int code, const char *reason);

#endif
