/* Small helpers shared by several files: UTF-8 and hex digits, string
 * vectors, the file system. No Lua in here. */
#ifndef VG_UTIL_H
#define VG_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the valid UTF-8 sequence at s (1..4, n bytes available), or 0
 * when invalid: overlong forms, surrogates and code points above U+10FFFF
 * are invalid. */
size_t vg_utf8_len(const unsigned char *s, size_t n);
/* Is s[0..n) valid UTF-8 throughout? (A NUL byte is valid UTF-8.) */
bool vg_utf8_valid(const char *s, size_t n);
/* The value of one hexadecimal digit, or -1. */
int vg_hex_digit(char c);

/* NULL-terminated string vectors: a deep copy, and its free (NULL is fine). */
char **vg_strv_copy(const char *const *v);
void vg_strv_free(char **v);

/* Is path an existing directory (following links)? */
bool vg_is_dir(const char *path);

#endif
