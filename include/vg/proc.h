/* Child processes on the libuv loop: spawn with real pipes, capture stdout
 * and stderr (bounded, the tail kept), feed stdin, time out and terminate
 * the child's whole process group. No Lua in here; src/l_proc.c is the
 * binding.
 *
 * Lifetime: vg_proc_start() returns a vg_proc_t owned by the caller until
 * vg_proc_release(). The struct itself lives until its libuv handles are
 * closed, which happens once the child has exited and its output is read
 * (or at vg_proc_shutdown()), so a release before the exit is safe: the
 * child is still reaped and nothing leaks. */
#ifndef VG_PROC_H
#define VG_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct vg_proc vg_proc_t;

typedef enum { VG_PROC_STDOUT = 0, VG_PROC_STDERR = 1 } vg_proc_stream_t;

typedef enum {
    VG_PROC_EV_OUTPUT, /* new bytes on stdout or stderr */
    VG_PROC_EV_DONE    /* exited and the output is complete (once) */
} vg_proc_event_t;

/* Called from libuv callbacks; must not call back into vg_proc_release. */
typedef void (*vg_proc_listener_fn)(void *arg, vg_proc_event_t ev);

#define VG_PROC_DEFAULT_MAX_OUTPUT ((size_t)1 << 20)
#define VG_PROC_DEFAULT_KILL_AFTER 2.0

typedef struct {
    char **argv;            /* NULL-terminated; argv[0] looked up in PATH */
    char **env;             /* NULL: inherit the host's; else "NAME=value"s */
    const char *cwd;        /* NULL: the host's */
    const char *stdin_data; /* NULL: stdin is /dev/null */
    size_t stdin_len;
    size_t max_output;      /* bytes kept per stream (the tail) */
    double timeout;         /* seconds; <= 0 means none */
    double kill_after;      /* SIGTERM -> SIGKILL delay, seconds */
} vg_proc_opts_t;

typedef struct {
    int pid;
    bool exited;            /* the child has exited (it may still be draining) */
    bool done;              /* exited and its output is complete */
    int code;               /* exit code, when signal == 0 */
    int signal;             /* terminating signal, or 0 */
    bool timed_out;
    bool terminating;       /* SIGTERM/SIGKILL sent by timeout/terminate */
    double duration;        /* seconds from start to exit (or to now) */
} vg_proc_status_t;

/* Start a child. Returns 0 and *out, or a negative libuv error (UV_ENOENT,
 * UV_EACCES, ...) with nothing for the caller to release. The listener
 * (may be NULL) hears about output and completion. */
int vg_proc_start(uv_loop_t *loop, const vg_proc_opts_t *opts, vg_proc_listener_fn listener,
                  void *listener_arg, vg_proc_t **out);

/* The owner lets go: no more listener calls; memory is freed once the
 * handles are closed (at once if they are already). Does not signal. */
void vg_proc_release(vg_proc_t *p);

void vg_proc_status(const vg_proc_t *p, vg_proc_status_t *st);
int vg_proc_pid(const vg_proc_t *p);
/* The command (argv[0]) for messages and logs. */
const char *vg_proc_command(const vg_proc_t *p);

/* The kept tail of a stream (data valid until the next loop callback) and
 * whether earlier bytes were dropped. */
void vg_proc_output(const vg_proc_t *p, vg_proc_stream_t s, const char **data, size_t *len,
                    bool *truncated);

/* Send sig to the child (group=false) or its process group. Returns 0, or
 * UV_ESRCH once the child has exited (nothing is sent then, so a reused
 * pid is never hit), or another negative libuv error. */
int vg_proc_signal(vg_proc_t *p, int sig, bool group);

/* SIGTERM to the group now, SIGKILL after the start option kill_after
 * unless the child exits first. Idempotent. */
void vg_proc_terminate(vg_proc_t *p);

/* At host exit: children already being terminated keep their SIGKILL
 * schedule (capped at max_wait seconds), all others get SIGKILL to their
 * group now; then runs the loop (bounded) until they have exited, and
 * closes whatever is left. */
void vg_proc_shutdown(uv_loop_t *loop, double max_wait);

/* SIGKILL, now, to the process group of every child that has not been
 * reaped: for an exit that cannot wait for the loop (vg_host_exit). */
void vg_proc_kill_groups(void);

/* Signals by name ("TERM", "SIGTERM", case-insensitive): number or -1. */
int vg_proc_signal_number(const char *name);
/* "SIGTERM" for 15; NULL for unknown numbers. */
const char *vg_proc_signal_name(int sig);
/* Iterate the known signals: names without "SIG"; returns false past the end. */
bool vg_proc_signal_at(size_t i, const char **name, int *number);

#endif
