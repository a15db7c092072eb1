/* Small helpers shared by several files (see vg/util.h). */
#include "vg/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "vg/buf.h"

size_t vg_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

bool vg_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        size_t len = vg_utf8_len(s + i, n - i);
        if (len == 0) return false;
        i += len;
    }
    return true;
}

int vg_hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

char **vg_strv_copy(const char *const *v)
{
    size_t n = 0;
    while (v[n]) n++;
    char **out = vg_xcalloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++) out[i] = vg_xstrdup(v[i]);
    return out;
}

void vg_strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++) free(v[i]);
    free(v);
}

bool vg_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

#ifdef VG_DEBUG_STACK
#include "vg/lstack.h"

void vg_lstack_fail(const char *file, int line, int expected, int got)
{
    fprintf(stderr, "vg-host: Lua stack unbalanced at %s:%d: top %d, expected %d\n", file,
            line, got, expected);
    abort();
}
#endif
