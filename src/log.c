/* Structured logging. Every line is built in one buffer and written whole
 * with a single write(), so lines of concurrent tasks never interleave.
 * While the scheduler runs the loop, lines are collected and written
 * together once per loop iteration, before the loop waits for I/O (or when
 * 64 KiB are pending, with any error line, and at exit): a busy worker
 * makes one write() for the lines of many tasks instead of one each, and no
 * line waits longer than the iteration that logged it. */
#include "vg/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static vg_log_level_t min_level = VG_LOG_INFO;
static vg_log_format_t format = VG_LOG_JSON;
static char *worker_id;
static const char *context; /* owned by the running task */
static vg_buf_t line = VG_BUF_INIT; /* the line being built, after any pending ones */
static int out_fd = STDOUT_FILENO;
static bool buffered;               /* collect lines until vg_log_flush() */
static bool flush_at_exit;

#define PENDING_MAX (64 * 1024)

static const char *const level_names[] = {"debug", "info", "warning", "error", "critical"};

void vg_log_setup(vg_log_level_t level, vg_log_format_t fmt, const char *id)
{
    min_level = level;
    format = fmt;
    free(worker_id);
    worker_id = vg_xstrdup(id ? id : "worker-local");
}

const char *vg_log_worker_id(void) { return worker_id ? worker_id : "worker-local"; }

bool vg_log_enabled(vg_log_level_t level) { return level >= min_level; }

const char *vg_log_level_name(vg_log_level_t level)
{
    return level <= VG_LOG_CRITICAL ? level_names[level] : "info";
}

int vg_log_parse_level(const char *s, vg_log_level_t *out)
{
    for (int i = 0; i <= VG_LOG_CRITICAL; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (vg_log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warn") == 0) { *out = VG_LOG_WARNING; return 0; }
    return -1;
}

void vg_log_set_context(const char *fragment) { context = fragment; }

static bool fd_open(int fd) { return fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

/* Put a file on fd: a copy of from when from >= 0, else /dev/null. */
static void fill_fd(int fd, int from)
{
    if (from >= 0) {
        (void)dup2(from, fd);
        return;
    }
    int n = open("/dev/null", O_RDWR);
    if (n >= 0 && n != fd) {
        (void)dup2(n, fd);
        close(n);
    }
}

bool vg_log_guard_fds(void)
{
    bool moved = false;
    if (!fd_open(0)) fill_fd(0, -1);
    if (!fd_open(1)) {
        moved = fd_open(2);
        fill_fd(1, moved ? 2 : -1);
    }
    if (!fd_open(2)) fill_fd(2, -1);
    return moved;
}

static void write_all(const char *p, size_t n);

void vg_log_flush(void)
{
    if (line.len == 0) return;
    write_all(line.data, line.len);
    vg_buf_reset(&line);
}

void vg_log_set_buffered(bool on)
{
    if (!on) vg_log_flush();
    if (on && !flush_at_exit) flush_at_exit = atexit(vg_log_flush) == 0;
    buffered = on;
}

void vg_log_set_fd(int fd)
{
    vg_log_flush();
    out_fd = fd;
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(out_fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            /* stdout was made non-blocking by someone else: wait briefly. */
            struct pollfd pfd = {.fd = out_fd, .events = POLLOUT};
            (void)poll(&pfd, 1, 1000);
        } else {
            return; /* stdout closed (EPIPE etc.): nothing else to do */
        }
    }
}

static void add_timestamp(vg_buf_t *b)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    vg_buf_printf(b, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  ts.tv_nsec / 1000000L);
}

/* Length of the JSON value starting at p (string, object, array, scalar). */
static size_t json_value_len(const char *p, size_t n)
{
    size_t i = 0;
    int depth = 0;
    bool in_str = false;
    for (; i < n; i++) {
        char c = p[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') {
                in_str = false;
                if (depth == 0) return i + 1;
            }
            continue;
        }
        if (c == '"') in_str = true;
        else if (c == '{' || c == '[') depth++;
        else if (c == '}' || c == ']') {
            if (--depth <= 0) return i + 1;
        } else if (c == ',' && depth == 0) return i;
    }
    return i;
}

/* Console format: the fragment ,"k":v,... becomes " k=v ..."; plain strings
 * lose their quotes so the line reads naturally. */
static void add_console_fields(vg_buf_t *b, const char *f, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (f[i] == ',') { i++; continue; }
        size_t klen = json_value_len(f + i, n - i);
        if (klen < 2) break;
        vg_buf_addc(b, ' ');
        vg_buf_add(b, f + i + 1, klen - 2);
        vg_buf_addc(b, '=');
        i += klen;
        if (i < n && f[i] == ':') i++;
        size_t vlen = json_value_len(f + i, n - i);
        const char *v = f + i;
        bool plain = vlen >= 2 && v[0] == '"' && !memchr(v + 1, ' ', vlen - 2) &&
                     !memchr(v + 1, '\\', vlen - 2);
        if (plain) vg_buf_add(b, v + 1, vlen - 2);
        else vg_buf_add(b, v, vlen);
        i += vlen;
    }
}

/* One line: the host's members, then ctx (a fragment or NULL), then fields. */
static void write_line(vg_log_level_t level, const char *event, const char *ctx,
                       const char *fields, size_t len)
{
    vg_buf_t *b = &line;
    if (!buffered) vg_buf_reset(b);
    if (format == VG_LOG_CONSOLE) {
        add_timestamp(b);
        vg_buf_printf(b, " %-8s %s", vg_log_level_name(level), event);
        vg_buf_adds(b, " worker_id=");
        vg_buf_adds(b, vg_log_worker_id());
        if (ctx) add_console_fields(b, ctx, strlen(ctx));
        if (fields && len) add_console_fields(b, fields, len);
    } else {
        vg_buf_adds(b, "{\"timestamp\":\"");
        add_timestamp(b);
        vg_buf_printf(b, "\",\"level\":\"%s\",\"event\":", vg_log_level_name(level));
        vg_json_str(b, event, strlen(event));
        vg_buf_adds(b, ",\"worker_id\":");
        const char *id = vg_log_worker_id();
        vg_json_str(b, id, strlen(id));
        if (ctx) vg_buf_adds(b, ctx);
        if (fields && len) vg_buf_add(b, fields, len);
        vg_buf_addc(b, '}');
    }
    vg_buf_addc(b, '\n');
    /* Errors go out at once, with what came before them: they may be the
     * last lines before a crash. */
    if (!buffered || b->len >= PENDING_MAX || level >= VG_LOG_ERROR) vg_log_flush();
}

void vg_log_fragment(vg_log_level_t level, const char *event, const char *fields, size_t len)
{
    if (!vg_log_enabled(level)) return;
    write_line(level, event, context, fields, len);
}

void vg_log_merged(vg_log_level_t level, const char *event, const char *fields, size_t len)
{
    if (!vg_log_enabled(level)) return;
    write_line(level, event, NULL, fields, len);
}

void vg_log(vg_log_level_t level, const char *event, ...)
{
    if (!vg_log_enabled(level)) return;
    vg_buf_t f = VG_BUF_INIT;
    va_list ap;
    va_start(ap, event);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (!key) break;
        int tag = va_arg(ap, int);
        vg_buf_addc(&f, ',');
        vg_json_str(&f, key, strlen(key));
        vg_buf_addc(&f, ':');
        switch (tag) {
        case VG_FT_STR: {
            const char *s = va_arg(ap, const char *);
            if (s) vg_json_str(&f, s, strlen(s));
            else vg_buf_adds(&f, "null");
            break;
        }
        case VG_FT_INT: vg_json_int(&f, va_arg(ap, long long)); break;
        case VG_FT_NUM: vg_json_num(&f, va_arg(ap, double)); break;
        case VG_FT_BOOL: vg_buf_adds(&f, va_arg(ap, int) ? "true" : "false"); break;
        case VG_FT_RAW: vg_buf_adds(&f, va_arg(ap, const char *)); break;
        default: vg_buf_adds(&f, "null"); break;
        }
    }
    va_end(ap);
    vg_log_fragment(level, event, f.data, f.len);
    vg_buf_free(&f);
}
