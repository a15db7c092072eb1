/* The step guard (see vg/guard.h). The host side writes fixed-size records
 * to a pipe; the guard side is a poll() loop with only system calls in it
 * (no stdio, no Lua, no libuv: it is forked from a process that may have
 * threads). */
#define _GNU_SOURCE 1 /* pipe2 */
#include "vg/guard.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vg/log.h"

enum { OP_ADD = 1, OP_REMOVE = 2, OP_DEADLINE = 3 };

/* 16 bytes: far below PIPE_BUF, so every write is atomic. */
typedef struct {
    int32_t op;
    int32_t pgid;
    int64_t deadline_ns; /* OP_DEADLINE: CLOCK_MONOTONIC ns, 0 = none */
} record_t;

static struct {
    int fd;          /* write end, -1 when none */
    int pid;
    bool failed;     /* could not start or lost: logged once */
    double deadline;
} G = {-1, 0, false, 0.0};

/* ---- the guard process -------------------------------------------------- */

typedef struct {
    int *pgids;
    size_t n, cap;
} groups_t;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void kill_all(groups_t *g)
{
    for (size_t i = 0; i < g->n; i++)
        if (g->pgids[i] > 1) kill(-g->pgids[i], SIGKILL);
}

static void groups_add(groups_t *g, int pgid)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        int *p = realloc(g->pgids, cap * sizeof *p);
        if (!p) { /* cannot track it: it must not outlive its deadline */
            kill(-pgid, SIGKILL);
            return;
        }
        g->pgids = p;
        g->cap = cap;
    }
    g->pgids[g->n++] = pgid;
}

static void groups_remove(groups_t *g, int pgid)
{
    for (size_t i = 0; i < g->n; i++)
        if (g->pgids[i] == pgid) {
            g->pgids[i] = g->pgids[--g->n];
            return;
        }
}

/* Only fd 3 (the pipe) stays open; 0-2 go to /dev/null, so the guard never
 * holds a socket, a log pipe or a step's pipe of the host's. */
static void guard_fds(int fd)
{
    if (fd != 3) {
        if (dup2(fd, 3) < 0) _exit(1);
        close(fd);
    }
    int null = open("/dev/null", O_RDWR);
    for (int i = 0; i < 3; i++)
        if (null >= 0 && null != i) dup2(null, i);
    /* close_range needs glibc 2.34; walk the usual range otherwise. */
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int i = 4; i < max; i++) close(i);
}

static void guard_main(int fd)
{
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    (void)prctl(PR_SET_NAME, "vg-host-guard", 0, 0, 0);
    guard_fds(fd);
    fd = 3;

    groups_t g = {NULL, 0, 0};
    int64_t deadline = 0;
    record_t rec;
    size_t have = 0;
    for (;;) {
        int timeout = -1;
        if (deadline > 0 && g.n > 0) {
            int64_t left = deadline - mono_ns();
            if (left <= 0) {
                kill_all(&g);
                g.n = 0;
                continue;
            }
            /* Round up: waking early only loops once more. */
            int64_t ms = (left + 999999) / 1000000;
            timeout = ms > 60000 ? 60000 : (int)ms;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        int rc = poll(&pfd, 1, timeout);
        if (rc < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (rc == 0) continue; /* the deadline: checked at the top */
        ssize_t n = read(fd, (char *)&rec + have, sizeof rec - have);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) break; /* EOF: the host is gone */
        have += (size_t)n;
        if (have < sizeof rec) continue;
        have = 0;
        switch (rec.op) {
        case OP_ADD:
            if (rec.pgid > 1) {
                groups_add(&g, rec.pgid);
                if (deadline > 0 && mono_ns() >= deadline) kill(-rec.pgid, SIGKILL);
            }
            break;
        case OP_REMOVE: groups_remove(&g, rec.pgid); break;
        case OP_DEADLINE: deadline = rec.deadline_ns; break;
        default: break;
        }
    }
    kill_all(&g);
    _exit(0);
}

/* ---- the host side ------------------------------------------------------ */

static void guard_lost(const char *why, int err)
{
    if (G.fd >= 0) close(G.fd);
    G.fd = -1;
    if (G.failed) return;
    G.failed = true;
    vg_log(VG_LOG_ERROR, "step_guard_unavailable", VG_F_STR("error", why),
           VG_F_STR("detail", strerror(err)), VG_F_END);
}

static int guard_start(void)
{
    if (G.fd >= 0) return 0;
    if (G.failed) return -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        guard_lost("pipe", errno);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        guard_lost("fork", e);
        return -1;
    }
    if (pid == 0) {
        close(fds[1]);
        guard_main(fds[0]);
    }
    close(fds[0]);
    G.fd = fds[1];
    G.pid = (int)pid;
    if (G.deadline > 0) vg_guard_set_deadline(G.deadline);
    return 0;
}

static int send_record(const record_t *r)
{
    if (G.fd < 0) return -1;
    for (;;) {
        ssize_t n = write(G.fd, r, sizeof *r);
        if (n == (ssize_t)sizeof *r) return 0;
        if (n < 0 && errno == EINTR) continue;
        guard_lost("write", n < 0 ? errno : EIO);
        return -1;
    }
}

int vg_guard_add(int pgid)
{
    if (pgid <= 1 || guard_start() != 0) return -1;
    record_t r = {OP_ADD, pgid, 0};
    return send_record(&r);
}

void vg_guard_remove(int pgid)
{
    if (pgid <= 1) return;
    record_t r = {OP_REMOVE, pgid, 0};
    (void)send_record(&r);
}

void vg_guard_set_deadline(double mono_seconds)
{
    G.deadline = mono_seconds > 0 ? mono_seconds : 0.0;
    if (G.fd < 0) return; /* sent when the guard starts */
    record_t r = {OP_DEADLINE, 0, (int64_t)(G.deadline * 1e9)};
    (void)send_record(&r);
}

double vg_guard_deadline(void) { return G.deadline; }

int vg_guard_pid(void) { return G.fd >= 0 ? G.pid : 0; }

void vg_guard_close(void)
{
    if (G.fd < 0) return;
    close(G.fd);
    G.fd = -1;
    /* It exits at once on EOF; reap it so no zombie is left behind when the
     * host lives on (a test process, a PID 1). Bounded: it only kills. */
    for (int i = 0; i < 200; i++) {
        pid_t r = waitpid(G.pid, NULL, WNOHANG);
        if (r == G.pid || (r < 0 && errno != EINTR)) break;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    G.pid = 0;
}
