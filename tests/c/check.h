/* A tiny header-only test harness. Each check prints "ok - name" or
 * "not ok - name" plus a "# file:line: detail" line; check_done() prints the
 * TAP plan and returns the exit status (non-zero when anything failed).
 * Names are printf formats, CHECK(x == 1, "case %d", i); every macro
 * evaluates its arguments once and returns whether the check passed. */
#ifndef VG_CHECK_H
#define VG_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define CHECK_FMT_(i) __attribute__((format(printf, i, i + 1)))
static int check_run_, check_failed_;

/* Print s[0..n) quoted on one line, escaping anything that could break it. */
static inline void check_put_(const unsigned char *s, size_t n)
{
    if (s == NULL) { fputs("(null)", stdout); return; }
    putchar('"');
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] >= 0x7f || s[i] == '"' || s[i] == '\\') printf("\\x%02x", s[i]);
        else putchar(s[i]);
    putchar('"');
}

/* Report one check; when show is set, a and b are printed as got / want. */
static inline int check_v_(int ok, const char *file, int line, const char *what, int show,
                           const void *a, size_t an, const void *b, size_t bn,
                           const char *fmt, va_list ap)
{
    check_run_++;
    fputs(ok ? "ok - " : "not ok - ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    if (!ok) {
        check_failed_++;
        printf("# %s:%d: %s", file, line, what);
        if (show) {
            fputs(": got ", stdout), check_put_(a, an);
            fputs(", want ", stdout), check_put_(b, bn);
        }
        putchar('\n');
    }
    fflush(stdout);
    return ok;
}

static inline CHECK_FMT_(5) int check_(int ok, const char *file, int line, const char *what,
                                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ok = check_v_(ok, file, line, what, 0, NULL, 0, NULL, 0, fmt, ap);
    va_end(ap);
    return ok;
}

static inline CHECK_FMT_(8) int check_mem_(const char *file, int line, const char *what,
                                           const void *a, size_t an, const void *b, size_t bn,
                                           const char *fmt, ...)
{
    va_list ap;
    int ok = a != NULL && b != NULL && an == bn && memcmp(a, b, an) == 0;
    va_start(ap, fmt);
    ok = check_v_(ok, file, line, what, 1, a, an, b, bn, fmt, ap);
    va_end(ap);
    return ok;
}

static inline CHECK_FMT_(6) int check_str_(const char *file, int line, const char *what,
                                           const char *a, const char *b, const char *fmt, ...)
{
    va_list ap;
    size_t an = a ? strlen(a) : 0, bn = b ? strlen(b) : 0;
    int ok = a != NULL && b != NULL && an == bn && memcmp(a, b, an) == 0;
    va_start(ap, fmt);
    ok = check_v_(ok, file, line, what, 1, a, an, b, bn, fmt, ap);
    va_end(ap);
    return ok;
}

#define CHECK(cond, ...) check_(!!(cond), __FILE__, __LINE__, "failed: " #cond, __VA_ARGS__)
/* Byte strings of known length (may hold NULs); C strings (NULL never equal). */
#define CHECK_MEMEQ(a, an, b, bn, ...) \
    check_mem_(__FILE__, __LINE__, #a " == " #b, (a), (an), (b), (bn), __VA_ARGS__)
#define CHECK_STREQ(a, b, ...) check_str_(__FILE__, __LINE__, #a " == " #b, (a), (b), __VA_ARGS__)

/* A check that cannot run here: "ok - name # SKIP why" (TAP's skip). */
static inline CHECK_FMT_(2) void check_skip(const char *why, const char *fmt, ...)
{
    va_list ap;
    check_run_++;
    fputs("ok - ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(" # SKIP %s\n", why);
    fflush(stdout);
}

static inline int check_done(void)
{
    printf("1..%d\n# %d passed, %d failed\n", check_run_, check_run_ - check_failed_, check_failed_);
    return check_failed_ ? 1 : 0;
}

#endif
