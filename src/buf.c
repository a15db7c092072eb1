/* Growable buffers and JSON encoding of scalars. */
#include "vg/buf.h"
#include "vg/util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t n)
{
    /* Nothing can be logged without memory; say it on stderr and stop. */
    fprintf(stderr, "vg-host: out of memory allocating %zu bytes\n", n);
    abort();
}

void *vg_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *vg_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *vg_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *vg_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = vg_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void vg_buf_reserve(vg_buf_t *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1) oom(SIZE_MAX);
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    b->data = vg_xrealloc(b->data, cap);
    b->cap = cap;
    b->data[b->len] = '\0';
}

void vg_buf_add(vg_buf_t *b, const void *p, size_t n)
{
    vg_buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void vg_buf_adds(vg_buf_t *b, const char *s) { vg_buf_add(b, s, strlen(s)); }

void vg_buf_addc(vg_buf_t *b, char c) { vg_buf_add(b, &c, 1); }

void vg_buf_vprintf(vg_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return; /* encoding error in fmt: append nothing */
    vg_buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void vg_buf_printf(vg_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vg_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void vg_buf_reset(vg_buf_t *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void vg_buf_free(vg_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *vg_buf_steal(vg_buf_t *b)
{
    if (!b->data) vg_buf_reserve(b, 0);
    char *p = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void vg_json_str(vg_buf_t *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    vg_buf_reserve(b, n + 2);
    vg_buf_addc(b, '"');
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        /* Copy plain printable ASCII in one go. */
        while (run < n && s[run] >= 0x20 && s[run] < 0x7F && s[run] != '"' && s[run] != '\\')
            run++;
        if (run > i) {
            vg_buf_add(b, s + i, run - i);
            i = run;
            continue;
        }
        unsigned c = s[i];
        switch (c) {
        case '"': vg_buf_add(b, "\\\"", 2); i++; continue;
        case '\\': vg_buf_add(b, "\\\\", 2); i++; continue;
        case '\n': vg_buf_add(b, "\\n", 2); i++; continue;
        case '\r': vg_buf_add(b, "\\r", 2); i++; continue;
        case '\t': vg_buf_add(b, "\\t", 2); i++; continue;
        case '\b': vg_buf_add(b, "\\b", 2); i++; continue;
        case '\f': vg_buf_add(b, "\\f", 2); i++; continue;
        default: break;
        }
        if (c < 0x20 || c == 0x7F) {
            vg_buf_printf(b, "\\u%04x", c);
            i++;
            continue;
        }
        size_t len = vg_utf8_len(s + i, n - i);
        if (len == 0) {
            vg_buf_add(b, "\xEF\xBF\xBD", 3); /* U+FFFD for each bad byte */
            i++;
        } else {
            vg_buf_add(b, s + i, len);
            i += len;
        }
    }
    vg_buf_addc(b, '"');
}

void vg_json_num(vg_buf_t *b, double v)
{
    if (isnan(v)) { vg_buf_adds(b, "\"nan\""); return; }
    if (isinf(v)) { vg_buf_adds(b, v > 0 ? "\"inf\"" : "\"-inf\""); return; }
    if (v == floor(v) && fabs(v) < 1e15) {
        if (v == 0 && signbit(v)) vg_buf_adds(b, "-0");
        else vg_json_int(b, (long long)v);
        return;
    }
    /* Shortest of %.15g / %.17g that reads back as the same double. */
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%.15g", v);
    if (strtod(tmp, NULL) != v) snprintf(tmp, sizeof tmp, "%.17g", v);
    vg_buf_adds(b, tmp);
}

char *vg_udec(char *end, unsigned long long u)
{
    char *p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    return p;
}

/* Decimal digits by hand: log lines and query parameters format integers
 * on every task, where printf's parsing of its format was a measurable share
 * of the worker's CPU. */
void vg_json_int(vg_buf_t *b, long long v)
{
    char tmp[VG_UDEC_MAX + 1];
    char *end = tmp + sizeof tmp;
    char *p = vg_udec(end, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v);
    if (v < 0) *--p = '-';
    vg_buf_add(b, p, (size_t)(end - p));
}
