/* Structured logging: one JSON object (or one console line) per write(). */
#ifndef VG_LOG_H
#define VG_LOG_H

#include <stdbool.h>
#include "vg/buf.h"

typedef enum {
    VG_LOG_DEBUG = 0,
    VG_LOG_INFO,
    VG_LOG_WARNING,
    VG_LOG_ERROR,
    VG_LOG_CRITICAL
} vg_log_level_t;

typedef enum { VG_LOG_JSON = 0, VG_LOG_CONSOLE } vg_log_format_t;

/* Field tags for vg_log(): key, tag, value triples ended by VG_F_END. */
enum { VG_FT_END = 0, VG_FT_STR, VG_FT_INT, VG_FT_NUM, VG_FT_BOOL, VG_FT_RAW };
#define VG_F_STR(k, v)  (k), VG_FT_STR, (const char *)(v)
#define VG_F_INT(k, v)  (k), VG_FT_INT, (long long)(v)
#define VG_F_NUM(k, v)  (k), VG_FT_NUM, (double)(v)
#define VG_F_BOOL(k, v) (k), VG_FT_BOOL, (int)(v)
#define VG_F_RAW(k, v)  (k), VG_FT_RAW, (const char *)(v) /* pre-encoded JSON value */
#define VG_F_END        (const char *)0

void vg_log_setup(vg_log_level_t level, vg_log_format_t fmt, const char *worker_id);
const char *vg_log_worker_id(void);
bool vg_log_enabled(vg_log_level_t level);
int vg_log_parse_level(const char *s, vg_log_level_t *out); /* 0 ok, -1 bad */
const char *vg_log_level_name(vg_log_level_t level);

/* Context of the running task: a pre-encoded JSON fragment of extra
 * members, each preceded by a comma (e.g. ,"correlation_id":"42"), or
 * NULL. The scheduler sets it whenever it switches task. */
void vg_log_set_context(const char *fragment);
/* Called first thing in main: make sure descriptors 0, 1 and 2 are open.
 * A closed one would be reused by the next file opened (libuv's own
 * descriptors, sockets): log lines would go into it, and libuv aborts when
 * it closes a descriptor below 3. A closed stdout gets a copy of stderr, so
 * the log goes there; a closed stdin or stderr (or stdout with stderr
 * closed too) gets /dev/null. Returns true when stdout now is stderr. */
bool vg_log_guard_fds(void);
/* Where lines go: stdout by default; admin commands whose stdout is their
 * result send the log to stderr. */
void vg_log_set_fd(int fd);

/* Buffered: lines are kept until vg_log_flush() (also called when 64 KiB
 * are pending, and at exit) and then written together, whole. The
 * scheduler turns this on while it runs the loop and flushes once per loop
 * iteration. Off: each line is written at once (flushing what is pending). */
void vg_log_set_buffered(bool on);
void vg_log_flush(void);

/* Log with typed fields: vg_log(VG_LOG_INFO, "db_connected",
 *     VG_F_STR("host", h), VG_F_INT("port", 5432), VG_F_END);
 * Every line has one set of keys, whoever writes it (C or vg.log): the
 * running task's context, then the call's fields, a later one winning over
 * an earlier one of the same key (so the call's fields win, and a key given
 * twice keeps its last value). The host's own keys (timestamp, level, event,
 * worker_id) are written once, first, and never overridden: a field of one
 * of those names is kept as "field_<name>". */
void vg_log(vg_log_level_t level, const char *event, ...);

/* Lower level: write a line whose extra members are already encoded as a
 * fragment of ,"key":value pairs (may be NULL), merged with the context as
 * vg_log does. */
void vg_log_fragment(vg_log_level_t level, const char *event, const char *fields, size_t len);

#endif
