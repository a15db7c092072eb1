/* Growable byte buffer and JSON writing helpers. No Lua in here. */
#ifndef VG_BUF_H
#define VG_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct vg_buf {
    char *data;   /* always NUL-terminated when len > 0 or after any append */
    size_t len;
    size_t cap;
} vg_buf_t;

#define VG_BUF_INIT {NULL, 0, 0}

/* All appends abort the process on out-of-memory (there is nothing sane a
 * worker can do without memory); they never truncate. */
void vg_buf_reserve(vg_buf_t *b, size_t extra);
void vg_buf_add(vg_buf_t *b, const void *p, size_t n);
void vg_buf_adds(vg_buf_t *b, const char *s);
void vg_buf_addc(vg_buf_t *b, char c);
void vg_buf_printf(vg_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void vg_buf_vprintf(vg_buf_t *b, const char *fmt, va_list ap);
void vg_buf_reset(vg_buf_t *b);  /* len = 0, keeps memory */
void vg_buf_free(vg_buf_t *b);
/* Returns the data (caller frees) and leaves the buffer empty. */
char *vg_buf_steal(vg_buf_t *b);

/* JSON: a quoted string, escaping quotes, backslashes and control characters;
 * invalid UTF-8 sequences become U+FFFD. */
void vg_json_str(vg_buf_t *b, const char *s, size_t n);
/* JSON number; NaN and infinities are written as strings ("nan", "inf",
 * "-inf") since JSON cannot hold them. Integers keep all their digits. */
void vg_json_num(vg_buf_t *b, double v);
void vg_json_int(vg_buf_t *b, long long v);
/* The decimal digits of u, written to end at end (no NUL); returns where
 * they start. end must have VG_UDEC_MAX bytes before it. */
#define VG_UDEC_MAX 20
char *vg_udec(char *end, unsigned long long u);

/* Allocation that aborts on failure, with a message on stderr. */
void *vg_xmalloc(size_t n);
void *vg_xcalloc(size_t n, size_t size);
void *vg_xrealloc(void *p, size_t n);
char *vg_xstrdup(const char *s);

#endif
