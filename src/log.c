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

/* The time in UTC with milliseconds. The part up to the seconds is made
 * once a second: busy workers write thousands of lines a second, and
 * gmtime_r with printf was a tenth of their CPU. */
static void add_timestamp(vg_buf_t *b)
{
    static time_t cached_sec = (time_t)-1;
    static char prefix[64]; /* "YYYY-MM-DDTHH:MM:SS." */
    static size_t prefix_len;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        int n = -1;
        if (gmtime_r(&ts.tv_sec, &tm))
            n = snprintf(prefix, sizeof prefix, "%04d-%02d-%02dT%02d:%02d:%02d.",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                         tm.tm_min, tm.tm_sec);
        if (n <= 0 || (size_t)n >= sizeof prefix) n = snprintf(prefix, sizeof prefix, "?.");
        prefix_len = (size_t)n;
        cached_sec = ts.tv_sec;
    }
    long ms = ts.tv_nsec / 1000000L;
    char tail[4] = {(char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z'};
    vg_buf_add(b, prefix, prefix_len);
    vg_buf_add(b, tail, sizeof tail);
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

/* ---- one set of keys ---------------------------------------------------- */

/* The host's own members come first and only once. A field of the same
 * name is kept as "field_<name>", as vg.log has always done: nothing is
 * lost, and no key is written twice or overridden. */
static const struct {
    const char *key, *renamed; /* encoded, quotes included */
} host_keys[] = {
    {"\"timestamp\"", "\"field_timestamp\""},
    {"\"level\"", "\"field_level\""},
    {"\"event\"", "\"field_event\""},
    {"\"worker_id\"", "\"field_worker_id\""},
};

/* A member ,"key":value of a fragment. key NULL: a piece that is not a
 * member (never from the host's encoders), written as it is. */
typedef struct {
    const char *key, *val;
    size_t klen, vlen;
} member_t;

static struct {
    member_t *v;
    size_t n, cap;
} mem; /* reused from line to line */

static void member_add(const char *key, size_t klen, const char *val, size_t vlen)
{
    if (mem.n == mem.cap) {
        mem.cap = mem.cap ? mem.cap * 2 : 16;
        mem.v = vg_xrealloc(mem.v, mem.cap * sizeof *mem.v);
    }
    for (size_t i = 0; key && i < sizeof host_keys / sizeof host_keys[0]; i++) {
        if (klen == strlen(host_keys[i].key) && memcmp(key, host_keys[i].key, klen) == 0) {
            key = host_keys[i].renamed;
            klen = strlen(key);
            break;
        }
    }
    mem.v[mem.n++] = (member_t){key, val, klen, vlen};
}

/* Split the fragment f[0..n) into members. */
static void members_of(const char *f, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (f[i] == ',') {
            i++;
            continue;
        }
        size_t klen = f[i] == '"' ? json_value_len(f + i, n - i) : 0;
        size_t v = i + klen + 1;
        if (klen < 2 || v >= n || f[v - 1] != ':') {
            member_add(NULL, 0, f + i, n - i);
            return;
        }
        size_t vlen = json_value_len(f + v, n - v);
        member_add(f + i, klen, f + v, vlen);
        i = v + vlen;
    }
}

/* Is member i written? Not when a later one has the same key: the call's
 * fields come after the context, so they win, and a key given twice keeps
 * its last value. */
static bool member_kept(size_t i)
{
    const member_t *m = &mem.v[i];
    if (!m->key) return true;
    for (size_t j = i + 1; j < mem.n; j++)
        if (mem.v[j].klen == m->klen && memcmp(mem.v[j].key, m->key, m->klen) == 0)
            return false;
    return true;
}

/* Console format: each member as " key=value"; plain strings lose their
 * quotes so the line reads naturally. */
static void add_console_member(vg_buf_t *b, const member_t *m)
{
    vg_buf_addc(b, ' ');
    if (!m->key) {
        vg_buf_add(b, m->val, m->vlen);
        return;
    }
    vg_buf_add(b, m->key + 1, m->klen - 2);
    vg_buf_addc(b, '=');
    const char *v = m->val;
    size_t vlen = m->vlen;
    bool plain = vlen >= 2 && v[0] == '"' && !memchr(v + 1, ' ', vlen - 2) &&
                 !memchr(v + 1, '\\', vlen - 2);
    if (plain) vg_buf_add(b, v + 1, vlen - 2);
    else vg_buf_add(b, v, vlen);
}

static void add_json_member(vg_buf_t *b, const member_t *m)
{
    if (m->key) {
        vg_buf_addc(b, ',');
        vg_buf_add(b, m->key, m->klen);
        vg_buf_addc(b, ':');
    }
    vg_buf_add(b, m->val, m->vlen);
}

/* One line: the host's members, then those of ctx (a fragment or NULL) and
 * of fields merged into one set of keys. */
static void write_line(vg_log_level_t level, const char *event, const char *ctx,
                       const char *fields, size_t len)
{
    vg_buf_t *b = &line;
    if (!buffered) vg_buf_reset(b);
    mem.n = 0;
    if (ctx) members_of(ctx, strlen(ctx));
    if (fields) members_of(fields, len);
    if (format == VG_LOG_CONSOLE) {
        add_timestamp(b);
        vg_buf_printf(b, " %-8s %s", vg_log_level_name(level), event);
        vg_buf_adds(b, " worker_id=");
        vg_buf_adds(b, vg_log_worker_id());
        for (size_t i = 0; i < mem.n; i++)
            if (member_kept(i)) add_console_member(b, &mem.v[i]);
    } else {
        vg_buf_adds(b, "{\"timestamp\":\"");
        add_timestamp(b);
        vg_buf_adds(b, "\",\"level\":\"");
        vg_buf_adds(b, vg_log_level_name(level));
        vg_buf_adds(b, "\",\"event\":");
        vg_json_str(b, event, strlen(event));
        vg_buf_adds(b, ",\"worker_id\":");
        const char *id = vg_log_worker_id();
        vg_json_str(b, id, strlen(id));
        for (size_t i = 0; i < mem.n; i++)
            if (member_kept(i)) add_json_member(b, &mem.v[i]);
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
