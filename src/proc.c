/* Child processes on the libuv loop. No Lua here; see include/vg/proc.h.
 *
 * A child's life, each step changed in one function:
 *   start      pipes and uv_spawn (vg_proc_start)
 *   running    stdout and stderr read into bounded tails, stdin written
 *   exited     libuv reaped it (on_exit_cb); output may still be in flight
 *   done       both streams at EOF, or DRAIN_MS after the exit (finish)
 *   closing    uv_close on every handle (close_all)
 *   freed      in the last close callback once the owner released it
 *
 * The children get real pipes (uv_pipe), not libuv's default socketpairs,
 * so `echo x > /dev/stdout` in a step script works as it does in a shell.
 * Every child is a session (and process group) leader (UV_PROCESS_DETACHED),
 * so a timeout or a cancellation can signal everything it started. */
#include "vg/proc.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "vg/buf.h"
#include "vg/guard.h"
#include "vg/log.h"

/* After the child exits, output is read this much longer at most: a
 * background process it left behind may keep the pipe open forever. */
#define DRAIN_MS 500

/* The handles of one child, for closing them all. */
enum { H_PROCESS, H_STDIN, H_STDOUT, H_STDERR, H_TIMER, H_DRAIN, H_COUNT };

typedef struct {
    char *data;            /* up to 2 * max_output bytes; the tail is kept */
    size_t len, cap;
    unsigned long long total;
    bool eof;
} stream_t;

struct vg_proc {
    uv_process_t process;
    uv_pipe_t in;
    uv_pipe_t out[2];      /* stdout, stderr */
    uv_timer_t timer;      /* the timeout, then the SIGKILL escalation */
    uv_timer_t drain;
    uv_write_t write_req;
    char *stdin_data;
    stream_t stream[2];
    char *command;
    size_t max_output;
    double kill_after;
    int pid;
    int exit_code;
    int term_signal;
    uint64_t t_start, t_exit;
    unsigned inited;       /* bit per H_* handle that needs a uv_close */
    int open_handles;      /* handles whose close callback has not run */
    bool spawned, exited, done, closing, timed_out, terminating, owned;
    vg_proc_listener_fn listener;
    void *listener_arg;
    vg_proc_t *prev, *next;
};

static vg_proc_t *live; /* every vg_proc_t not yet freed */

/* One read buffer for every pipe: libuv calls alloc, read and the read
 * callback back to back, and the callback copies what it keeps. */
static char read_buf[64 * 1024];

static void finish(vg_proc_t *p);

/* ---- memory ----------------------------------------------------------- */

static uv_handle_t *handle_at(vg_proc_t *p, int i)
{
    switch (i) {
    case H_PROCESS: return (uv_handle_t *)&p->process;
    case H_STDIN: return (uv_handle_t *)&p->in;
    case H_STDOUT: return (uv_handle_t *)&p->out[0];
    case H_STDERR: return (uv_handle_t *)&p->out[1];
    case H_TIMER: return (uv_handle_t *)&p->timer;
    default: return (uv_handle_t *)&p->drain;
    }
}

static void free_proc(vg_proc_t *p)
{
    if (p->prev) p->prev->next = p->next;
    else live = p->next;
    if (p->next) p->next->prev = p->prev;
    free(p->stream[0].data);
    free(p->stream[1].data);
    free(p->stdin_data);
    free(p->command);
    free(p);
}

static void maybe_free(vg_proc_t *p)
{
    if (!p->owned && p->open_handles == 0) free_proc(p);
}

static void on_close(uv_handle_t *h)
{
    vg_proc_t *p = h->data;
    p->open_handles--;
    maybe_free(p);
}

static void mark_inited(vg_proc_t *p, int i)
{
    handle_at(p, i)->data = p;
    p->inited |= 1u << i;
    p->open_handles++;
}

static void close_handle(vg_proc_t *p, int i)
{
    uv_handle_t *h = handle_at(p, i);
    if ((p->inited & (1u << i)) && !uv_is_closing(h)) uv_close(h, on_close);
}

/* Close every handle; memory goes in the last close callback (or now, when
 * nothing was ever opened and nobody owns it). */
static void close_all(vg_proc_t *p)
{
    p->closing = true;
    for (int i = 0; i < H_COUNT; i++) close_handle(p, i);
    maybe_free(p);
}

/* ---- output ----------------------------------------------------------- */

/* Append n bytes, keeping at least the last max bytes. The buffer holds up
 * to 2 * max so the tail is moved once per max bytes, not per read. */
static void stream_append(stream_t *st, size_t max, const char *data, size_t n)
{
    st->total += n;
    if (max == 0) return;
    if (n >= max) {
        if (st->cap < max) {
            st->data = vg_xrealloc(st->data, max);
            st->cap = max;
        }
        memcpy(st->data, data + (n - max), max);
        st->len = max;
        return;
    }
    if (st->len + n > 2 * max) {
        size_t keep = max - n; /* < len here */
        memmove(st->data, st->data + (st->len - keep), keep);
        st->len = keep;
    }
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 4096;
        if (cap < st->len + n) cap = st->len + n;
        if (cap > 2 * max) cap = 2 * max;
        st->data = vg_xrealloc(st->data, cap);
        st->cap = cap;
    }
    memcpy(st->data + st->len, data, n);
    st->len += n;
}

void vg_proc_output(const vg_proc_t *p, vg_proc_stream_t s, const char **data, size_t *len,
                    bool *truncated)
{
    const stream_t *st = &p->stream[s == VG_PROC_STDERR ? 1 : 0];
    size_t n = st->len > p->max_output ? p->max_output : st->len;
    *data = n ? st->data + (st->len - n) : "";
    *len = n;
    *truncated = st->total > (unsigned long long)n;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = read_buf;
    buf->len = sizeof read_buf;
}

static void stream_ended(vg_proc_t *p, int s)
{
    if (p->stream[s].eof) return;
    p->stream[s].eof = true;
    (void)uv_read_stop((uv_stream_t *)&p->out[s]); /* always 0 */
    if (p->exited && p->stream[0].eof && p->stream[1].eof) finish(p);
}

static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    vg_proc_t *p = h->data;
    int s = h == (uv_stream_t *)&p->out[1] ? 1 : 0;
    if (nread > 0) {
        stream_append(&p->stream[s], p->max_output, buf->base, (size_t)nread);
        if (p->listener) p->listener(p->listener_arg, VG_PROC_EV_OUTPUT);
        return;
    }
    if (nread == 0) return; /* EAGAIN */
    if (nread != UV_EOF)
        vg_log(VG_LOG_DEBUG, "proc_read_failed", VG_F_INT("pid", p->pid),
               VG_F_STR("stream", s ? "stderr" : "stdout"), VG_F_STR("error", uv_strerror((int)nread)),
               VG_F_END);
    stream_ended(p, s);
}

static void on_write(uv_write_t *req, int status)
{
    vg_proc_t *p = req->data;
    free(p->stdin_data);
    p->stdin_data = NULL;
    /* EPIPE: the child exited or closed stdin without reading it all. */
    if (status < 0 && status != UV_ECANCELED && status != UV_EPIPE)
        vg_log(VG_LOG_DEBUG, "proc_stdin_failed", VG_F_INT("pid", p->pid),
               VG_F_STR("error", uv_strerror(status)), VG_F_END);
    close_handle(p, H_STDIN); /* the child sees EOF */
}

/* ---- exit and termination ---------------------------------------------- */

static uint64_t to_ms(double seconds)
{
    double ms = ceil(seconds * 1000.0);
    if (!(ms > 0)) return 0;
    if (ms > 9e15) ms = 9e15;
    return (uint64_t)ms;
}

/* Timers start only on open handles with a callback, so a failure is a bug
 * worth a log line rather than a silent hang. */
static void start_timer(vg_proc_t *p, uv_timer_t *h, uv_timer_cb cb, uint64_t ms)
{
    int rc = uv_timer_start(h, cb, ms, 0);
    if (rc < 0)
        vg_log(VG_LOG_ERROR, "proc_timer_failed", VG_F_INT("pid", p->pid),
               VG_F_STR("error", uv_strerror(rc)), VG_F_END);
}

static int signal_group(vg_proc_t *p, int sig)
{
    if (p->pid <= 0) return UV_ESRCH; /* never kill(0) or kill(-1) */
    return uv_kill(-p->pid, sig);
}

/* The child exited and its output is complete. */
static void finish(vg_proc_t *p)
{
    if (p->done) return;
    p->done = true;
    /* What a terminated command left behind in its group goes too. */
    if (p->terminating) (void)signal_group(p, SIGKILL); /* ESRCH: none left */
    vg_guard_remove(p->pid);
    close_all(p);
    if (p->listener) p->listener(p->listener_arg, VG_PROC_EV_DONE);
}

static void on_drain(uv_timer_t *h)
{
    vg_proc_t *p = h->data;
    vg_log(VG_LOG_DEBUG, "proc_output_abandoned", VG_F_INT("pid", p->pid),
           VG_F_STR("command", p->command), VG_F_END);
    p->stream[0].eof = p->stream[1].eof = true;
    (void)uv_read_stop((uv_stream_t *)&p->out[0]);
    (void)uv_read_stop((uv_stream_t *)&p->out[1]);
    finish(p);
}

static void on_exit_cb(uv_process_t *h, int64_t exit_status, int term_signal)
{
    vg_proc_t *p = h->data;
    p->exited = true;
    p->exit_code = (int)exit_status;
    p->term_signal = term_signal;
    p->t_exit = uv_hrtime();
    if (!p->terminating) uv_timer_stop(&p->timer); /* the timeout no longer applies */
    double duration = (double)(p->t_exit - p->t_start) / 1e9;
    if (term_signal)
        vg_log(VG_LOG_DEBUG, "proc_exited", VG_F_INT("pid", p->pid),
               VG_F_STR("command", p->command), VG_F_INT("signal", term_signal),
               VG_F_NUM("duration", duration), VG_F_END);
    else
        vg_log(VG_LOG_DEBUG, "proc_exited", VG_F_INT("pid", p->pid),
               VG_F_STR("command", p->command), VG_F_INT("code", exit_status),
               VG_F_NUM("duration", duration), VG_F_END);
    if (p->stream[0].eof && p->stream[1].eof) finish(p);
    else start_timer(p, &p->drain, on_drain, DRAIN_MS);
}

/* The timeout (not yet terminating) or the SIGKILL escalation. */
static void on_timer(uv_timer_t *h)
{
    vg_proc_t *p = h->data;
    if (!p->terminating) {
        p->timed_out = true;
        vg_log(VG_LOG_WARNING, "proc_timed_out", VG_F_INT("pid", p->pid),
               VG_F_STR("command", p->command),
               VG_F_NUM("duration", (double)(uv_hrtime() - p->t_start) / 1e9), VG_F_END);
        vg_proc_terminate(p);
        return;
    }
    /* After the exit, this reaches what it left in its group (holding the
     * pipes, as we still drain them). */
    vg_log(VG_LOG_WARNING, "proc_killed", VG_F_INT("pid", p->pid), VG_F_STR("command", p->command),
           VG_F_STR("reason", p->exited ? "its group still running after SIGTERM"
                                        : "still running after SIGTERM"),
           VG_F_NUM("kill_after", p->kill_after), VG_F_END);
    (void)signal_group(p, SIGKILL); /* ESRCH: they just exited */
}

void vg_proc_terminate(vg_proc_t *p)
{
    if (p->terminating || p->done || !p->spawned) return;
    p->terminating = true;
    int rc = signal_group(p, SIGTERM);
    if (rc < 0 && rc != UV_ESRCH)
        vg_log(VG_LOG_WARNING, "proc_signal_failed", VG_F_INT("pid", p->pid),
               VG_F_STR("error", uv_strerror(rc)), VG_F_END);
    uv_timer_stop(&p->timer);
    uv_update_time(p->timer.loop); /* we may be called long after the last poll */
    start_timer(p, &p->timer, on_timer, to_ms(p->kill_after));
}

int vg_proc_signal(vg_proc_t *p, int sig, bool group)
{
    /* Once libuv has reaped the child its pid may belong to someone else. */
    if (!p->spawned || p->exited || p->closing || p->pid <= 0) return UV_ESRCH;
    return group ? signal_group(p, sig) : uv_kill(p->pid, sig);
}

/* ---- start ------------------------------------------------------------ */

/* A pipe whose child end goes to the child and whose parent end (non-
 * blocking) is opened in h. Both ends are close-on-exec. */
static int open_pipe(uv_pipe_t *h, bool parent_reads, int *child_fd)
{
    uv_file fds[2];
    int rc = uv_pipe(fds, parent_reads ? UV_NONBLOCK_PIPE : 0, parent_reads ? 0 : UV_NONBLOCK_PIPE);
    if (rc < 0) return rc;
    int mine = parent_reads ? fds[0] : fds[1];
    *child_fd = parent_reads ? fds[1] : fds[0];
    rc = uv_pipe_open(h, mine);
    if (rc < 0) close(mine); /* the handle did not take it */
    return rc;
}

static void start_io(vg_proc_t *p, const vg_proc_opts_t *o)
{
    for (int s = 0; s < 2; s++) {
        int rc = uv_read_start((uv_stream_t *)&p->out[s], on_alloc, on_read);
        if (rc < 0) {
            vg_log(VG_LOG_WARNING, "proc_read_failed", VG_F_INT("pid", p->pid),
                   VG_F_STR("error", uv_strerror(rc)), VG_F_END);
            p->stream[s].eof = true;
        }
    }
    if (!o->stdin_data) return;
    int rc = -1;
    if (o->stdin_len > 0) {
        p->stdin_data = vg_xmalloc(o->stdin_len);
        memcpy(p->stdin_data, o->stdin_data, o->stdin_len);
        uv_buf_t buf = uv_buf_init(p->stdin_data, (unsigned)o->stdin_len);
        p->write_req.data = p;
        rc = uv_write(&p->write_req, (uv_stream_t *)&p->in, &buf, 1, on_write);
        if (rc < 0) {
            vg_log(VG_LOG_DEBUG, "proc_stdin_failed", VG_F_INT("pid", p->pid),
                   VG_F_STR("error", uv_strerror(rc)), VG_F_END);
            free(p->stdin_data);
            p->stdin_data = NULL;
        }
    }
    if (rc < 0) close_handle(p, H_STDIN); /* empty stdin, or the write failed */
}

int vg_proc_start(uv_loop_t *loop, const vg_proc_opts_t *o, vg_proc_listener_fn listener,
                  void *listener_arg, vg_proc_t **out)
{
    *out = NULL;
    if (!o->argv || !o->argv[0]) return UV_EINVAL;
    if (o->stdin_data && o->stdin_len > 0x7fffffffu) return UV_E2BIG;
    vg_proc_t *p = vg_xcalloc(1, sizeof *p);
    p->owned = true;
    p->listener = listener;
    p->listener_arg = listener_arg;
    p->command = vg_xstrdup(o->argv[0]);
    p->max_output = o->max_output;
    p->kill_after = o->kill_after >= 0 ? o->kill_after : VG_PROC_DEFAULT_KILL_AFTER;
    p->next = live;
    if (live) live->prev = p;
    live = p;

    int child_fd[3] = {-1, -1, -1};
    int rc = 0;
    if ((rc = uv_timer_init(loop, &p->timer)) == 0) mark_inited(p, H_TIMER);
    if (rc == 0 && (rc = uv_timer_init(loop, &p->drain)) == 0) mark_inited(p, H_DRAIN);
    if (rc == 0 && (rc = uv_pipe_init(loop, &p->in, 0)) == 0) mark_inited(p, H_STDIN);
    if (rc == 0 && (rc = uv_pipe_init(loop, &p->out[0], 0)) == 0) mark_inited(p, H_STDOUT);
    if (rc == 0 && (rc = uv_pipe_init(loop, &p->out[1], 0)) == 0) mark_inited(p, H_STDERR);
    if (rc == 0) rc = open_pipe(&p->out[0], true, &child_fd[1]);
    if (rc == 0) rc = open_pipe(&p->out[1], true, &child_fd[2]);
    if (rc == 0 && o->stdin_data) rc = open_pipe(&p->in, false, &child_fd[0]);

    if (rc == 0) {
        uv_stdio_container_t stdio[3];
        memset(stdio, 0, sizeof stdio);
        for (int i = 0; i < 3; i++) {
            stdio[i].flags = child_fd[i] >= 0 ? UV_INHERIT_FD : UV_IGNORE; /* IGNORE: /dev/null */
            stdio[i].data.fd = child_fd[i];
        }
        uv_process_options_t po;
        memset(&po, 0, sizeof po);
        po.exit_cb = on_exit_cb;
        po.file = o->argv[0];
        po.args = o->argv;
        po.env = o->env;
        po.cwd = o->cwd;
        po.flags = UV_PROCESS_DETACHED; /* own session and process group */
        po.stdio_count = 3;
        po.stdio = stdio;
        p->t_start = uv_hrtime();
        rc = uv_spawn(loop, &p->process, &po);
        mark_inited(p, H_PROCESS); /* initialised even when uv_spawn fails */
    }
    /* The child has its copies (or never will). */
    for (int i = 0; i < 3; i++)
        if (child_fd[i] >= 0) close(child_fd[i]);

    if (rc < 0) {
        p->owned = false;
        p->listener = NULL;
        close_all(p);
        return rc;
    }
    p->spawned = true;
    p->pid = p->process.pid;
    /* The guard kills the group if this host dies before the child ends. */
    (void)vg_guard_add(p->pid);
    vg_log(VG_LOG_DEBUG, "proc_started", VG_F_INT("pid", p->pid), VG_F_STR("command", p->command),
           VG_F_END);
    start_io(p, o);
    if (o->timeout > 0) {
        uv_update_time(loop);
        start_timer(p, &p->timer, on_timer, to_ms(o->timeout));
    }
    *out = p;
    return 0;
}

/* ---- owner's view ------------------------------------------------------- */

void vg_proc_release(vg_proc_t *p)
{
    p->owned = false;
    p->listener = NULL;
    maybe_free(p);
}

void vg_proc_status(const vg_proc_t *p, vg_proc_status_t *st)
{
    memset(st, 0, sizeof *st);
    st->pid = p->pid;
    st->exited = p->exited;
    st->done = p->done;
    st->code = p->exit_code;
    st->signal = p->term_signal;
    st->timed_out = p->timed_out;
    st->terminating = p->terminating;
    uint64_t end = p->exited ? p->t_exit : uv_hrtime();
    st->duration = p->spawned ? (double)(end - p->t_start) / 1e9 : 0.0;
}

int vg_proc_pid(const vg_proc_t *p) { return p->pid; }

const char *vg_proc_command(const vg_proc_t *p) { return p->command; }

/* ---- host exit ---------------------------------------------------------- */

static uv_timer_t shutdown_timer;
static bool shutdown_expired;

static void on_shutdown_deadline(uv_timer_t *h) { shutdown_expired = true; }

static bool any_unfinished(void)
{
    for (vg_proc_t *p = live; p; p = p->next)
        if (!p->done && !p->closing) return true;
    return false;
}

void vg_proc_shutdown(uv_loop_t *loop, double max_wait)
{
    for (vg_proc_t *p = live; p; p = p->next) {
        if (p->exited || p->closing || !p->spawned) continue;
        if (!p->terminating) {
            /* Nobody waits for it any more: a leftover spawned process. */
            vg_log(VG_LOG_WARNING, "proc_killed", VG_F_INT("pid", p->pid),
                   VG_F_STR("command", p->command), VG_F_STR("reason", "host exiting"), VG_F_END);
            p->terminating = true;
            (void)signal_group(p, SIGKILL); /* ESRCH: it just exited */
        }
    }
    if (!any_unfinished()) return;
    /* Children being terminated keep their SIGKILL schedule, bounded. */
    shutdown_expired = false;
    if (uv_timer_init(loop, &shutdown_timer) == 0) {
        if (uv_timer_start(&shutdown_timer, on_shutdown_deadline, to_ms(max_wait), 0) == 0) {
            while (!shutdown_expired && any_unfinished())
                if (uv_run(loop, UV_RUN_ONCE) == 0) break;
        }
        uv_close((uv_handle_t *)&shutdown_timer, NULL);
    }
    for (vg_proc_t *p = live; p; p = p->next) {
        if (p->done || p->closing) continue;
        vg_log(VG_LOG_WARNING, "proc_abandoned", VG_F_INT("pid", p->pid),
               VG_F_STR("command", p->command), VG_F_BOOL("exited", p->exited), VG_F_END);
        if (!p->exited) (void)signal_group(p, SIGKILL);
        close_all(p);
    }
}

void vg_proc_kill_groups(void)
{
    for (vg_proc_t *p = live; p; p = p->next)
        if (p->spawned && !p->exited) (void)signal_group(p, SIGKILL);
}

/* ---- signal names ------------------------------------------------------- */

static const struct {
    const char *name; /* with the SIG prefix */
    int number;
} signals[] = {
    {"SIGHUP", SIGHUP},   {"SIGINT", SIGINT},       {"SIGQUIT", SIGQUIT}, {"SIGILL", SIGILL},
    {"SIGTRAP", SIGTRAP}, {"SIGABRT", SIGABRT},     {"SIGBUS", SIGBUS},   {"SIGFPE", SIGFPE},
    {"SIGKILL", SIGKILL}, {"SIGUSR1", SIGUSR1},     {"SIGSEGV", SIGSEGV}, {"SIGUSR2", SIGUSR2},
    {"SIGPIPE", SIGPIPE}, {"SIGALRM", SIGALRM},     {"SIGTERM", SIGTERM}, {"SIGCHLD", SIGCHLD},
    {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP},     {"SIGTSTP", SIGTSTP}, {"SIGTTIN", SIGTTIN},
    {"SIGTTOU", SIGTTOU}, {"SIGURG", SIGURG},       {"SIGXCPU", SIGXCPU}, {"SIGXFSZ", SIGXFSZ},
    {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF}, {"SIGWINCH", SIGWINCH}, {"SIGIO", SIGIO},
    {"SIGSYS", SIGSYS},
};

#define N_SIGNALS (sizeof signals / sizeof signals[0])

int vg_proc_signal_number(const char *name)
{
    if (strncasecmp(name, "SIG", 3) == 0) name += 3;
    for (size_t i = 0; i < N_SIGNALS; i++)
        if (strcasecmp(signals[i].name + 3, name) == 0) return signals[i].number;
    return -1;
}

const char *vg_proc_signal_name(int sig)
{
    for (size_t i = 0; i < N_SIGNALS; i++)
        if (signals[i].number == sig) return signals[i].name;
    return NULL;
}

bool vg_proc_signal_at(size_t i, const char **name, int *number)
{
    if (i >= N_SIGNALS) return false;
    *name = signals[i].name + 3;
    *number = signals[i].number;
    return true;
}
