/* vg_buf_* and the JSON writers of include/vg/buf.h. String output is checked
 * by decoding it with an independent strict JSON-string decoder, so any valid
 * escaping choice passes while invalid JSON or lost/garbled data fails. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "vg/buf.h"

#define FFFD "\xef\xbf\xbd"

/* ---- helpers ------------------------------------------------------------ */

static char *json_str_of(const void *s, size_t n, size_t *len)
{
    vg_buf_t b = VG_BUF_INIT;
    vg_json_str(&b, s, n);
    *len = b.len;
    return vg_buf_steal(&b);
}

static char *json_num_of(double v)
{
    vg_buf_t b = VG_BUF_INIT;
    vg_json_num(&b, v);
    return vg_buf_steal(&b);
}

static char *json_int_of(long long v)
{
    vg_buf_t b = VG_BUF_INIT;
    vg_json_int(&b, v);
    return vg_buf_steal(&b);
}

/* Length of the strictly valid UTF-8 sequence at s (RFC 3629), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] <= 0xdf ? 2
               : s[0] >= 0xe0 && s[0] <= 0xef ? 3 : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    /* Second-byte limits exclude overlongs, surrogates and > U+10FFFF. */
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
        return 0;
    return len;
}

static void put_utf8(vg_buf_t *out, uint32_t cp)
{
    if (cp < 0x80) {
        vg_buf_addc(out, (char)cp);
    } else if (cp < 0x800) {
        vg_buf_addc(out, (char)(0xc0 | cp >> 6));
        vg_buf_addc(out, (char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        vg_buf_addc(out, (char)(0xe0 | cp >> 12));
        vg_buf_addc(out, (char)(0x80 | ((cp >> 6) & 0x3f)));
        vg_buf_addc(out, (char)(0x80 | (cp & 0x3f)));
    } else {
        vg_buf_addc(out, (char)(0xf0 | cp >> 18));
        vg_buf_addc(out, (char)(0x80 | ((cp >> 12) & 0x3f)));
        vg_buf_addc(out, (char)(0x80 | ((cp >> 6) & 0x3f)));
        vg_buf_addc(out, (char)(0x80 | (cp & 0x3f)));
    }
}

static long hex4(const char *s)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* Decode one \u escape (with a following low surrogate when needed) at j[i]
 * (just after "\u"); returns the bytes consumed or 0 when invalid. */
static size_t decode_u(const char *j, size_t i, size_t n, vg_buf_t *out)
{
    long hi = i + 4 <= n ? hex4(j + i) : -1, lo;
    if (hi < 0 || (hi >= 0xdc00 && hi <= 0xdfff))
        return 0;
    if (hi < 0xd800 || hi > 0xdbff) {
        put_utf8(out, (uint32_t)hi);
        return 4;
    }
    if (i + 10 > n || j[i + 4] != '\\' || j[i + 5] != 'u')
        return 0;
    lo = hex4(j + i + 6);
    if (lo < 0xdc00 || lo > 0xdfff)
        return 0;
    put_utf8(out, 0x10000 + (uint32_t)((hi - 0xd800) << 10 | (lo - 0xdc00)));
    return 10;
}

/* Strictly decode a JSON string literal j[0..n) into out. */
static bool json_decode(const char *j, size_t n, vg_buf_t *out)
{
    static const char shorts[] = "\"\"\\\\//b\bf\fn\nr\rt\t";
    const unsigned char *u = (const unsigned char *)j;
    size_t i = 1;

    if (n < 2 || j[0] != '"' || j[n - 1] != '"')
        return false;
    vg_buf_add(out, "", 0);
    while (i < n - 1) {
        if (j[i] == '\\') {
            const char *e = i + 1 < n - 1 ? memchr(shorts, j[i + 1], sizeof shorts - 1) : NULL;
            size_t used;
            if (j[i + 1] == 'u' && (used = decode_u(j, i + 2, n - 1, out)) > 0) {
                i += 2 + used;
            } else if (e != NULL && j[i + 1] != 'u' && (e - shorts) % 2 == 0) {
                vg_buf_addc(out, e[1]);
                i += 2;
            } else {
                return false;
            }
        } else {
            size_t len = utf8_len(u + i, n - 1 - i);
            if (len == 0 || u[i] < 0x20 || u[i] == '"')
                return false;
            vg_buf_add(out, j + i, len);
            i += len;
        }
    }
    return true;
}

/* ---- strings ------------------------------------------------------------ */

static void check_exact(const void *in, size_t n, const char *want, const char *name)
{
    size_t len;
    char *got = json_str_of(in, n, &len);
    CHECK_MEMEQ(got, len, want, strlen(want), "json_str: %s", name);
    free(got);
}

/* in[0..n) must come back unchanged through encode + strict decode. */
static bool round_trips(const void *in, size_t n, const void *want, size_t wantn)
{
    size_t len;
    char *got = json_str_of(in, n, &len);
    vg_buf_t dec = VG_BUF_INIT;
    bool ok = json_decode(got, len, &dec) && dec.len == wantn && memcmp(dec.data, want, wantn) == 0;
    free(got);
    vg_buf_free(&dec);
    return ok;
}

static void test_str_basics(void)
{
    size_t len;
    char *got;

    check_exact("hello", 5, "\"hello\"", "plain ASCII");
    check_exact("", 0, "\"\"", "empty");
    check_exact("a\"b\\c", 5, "\"a\\\"b\\\\c\"", "quote and backslash");
    check_exact("a\0b", 3, "\"a\\u0000b\"", "embedded NUL as \\u0000");
    check_exact("{\"k\":[1,2]}", 11, "\"{\\\"k\\\":[1,2]}\"", "JSON text inside a string");
    got = json_str_of("x", 0, &len);
    CHECK_STREQ(got, "\"\"", "json_str: n = 0 ignores the bytes");
    free(got);
}

/* Every control character, alone and mid-string: \uXXXX or a short escape. */
static void test_str_controls(void)
{
    for (int c = 0; c < 0x20; c++) {
        char in[3] = {'a', (char)c, 'b'};
        size_t len;
        char *got = json_str_of(in, 3, &len);
        bool raw = memchr(got, c, len) != NULL;
        CHECK(!raw && round_trips(in, 3, in, 3), "json_str: control 0x%02x escaped", c);
        free(got);
    }
    {
        char del[] = "a\x7f" "b";
        CHECK(round_trips(del, 3, del, 3), "json_str: DEL kept (raw or \\u007f)");
    }
}

static void test_str_utf8_valid(void)
{
    static const char *const ok[] = {
        "\xc2\x80",         "\xc3\xa9",         "\xdf\xbf",         "\xe0\xa0\x80",
        "\xe2\x82\xac",     "\xed\x9f\xbf",     "\xee\x80\x80",     "\xef\xbf\xbf",
        "\xf0\x90\x80\x80", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "caf\xc3\xa9 \xe2\x98\x83",
    };

    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        vg_buf_t want = VG_BUF_INIT;
        vg_buf_printf(&want, "\"%s\"", ok[i]);
        check_exact(ok[i], strlen(ok[i]), want.data, "valid UTF-8 kept as is");
        vg_buf_free(&want);
    }
}

/* "a" bad "b" must become "a" + one or more U+FFFD (at most one per bad
 * byte) + "b", and nothing of the bad bytes may survive. */
static void check_replaced(const char *bad, const char *name)
{
    size_t badn = strlen(bad), len, k = 0;
    vg_buf_t in = VG_BUF_INIT, dec = VG_BUF_INIT;
    char *got;
    bool ok;

    vg_buf_printf(&in, "a%sb", bad);
    got = json_str_of(in.data, in.len, &len);
    ok = json_decode(got, len, &dec) && dec.len >= 5 && dec.data[0] == 'a' &&
         dec.data[dec.len - 1] == 'b' && (dec.len - 2) % 3 == 0;
    for (size_t i = 1; ok && i + 1 < dec.len; i += 3, k++)
        ok = memcmp(dec.data + i, FFFD, 3) == 0;
    CHECK(ok && k >= 1 && k <= badn, "json_str: %s replaced by U+FFFD", name);
    free(got);
    vg_buf_free(&in);
    vg_buf_free(&dec);
}

static void test_str_utf8_invalid(void)
{
    check_replaced("\x80", "lone continuation byte 80");
    check_replaced("\xbf\x80", "two continuation bytes");
    check_replaced("\xc3", "truncated 2-byte sequence");
    check_replaced("\xe2\x82", "truncated 3-byte sequence");
    check_replaced("\xf0\x9f\x98", "truncated 4-byte sequence");
    check_replaced("\xc0\xaf", "overlong C0 AF");
    check_replaced("\xc1\xbf", "overlong C1 BF");
    check_replaced("\xe0\x80\xaf", "overlong E0 80 AF");
    check_replaced("\xf0\x80\x80\xaf", "overlong F0 80 80 AF");
    check_replaced("\xed\xa0\x80", "surrogate ED A0 80");
    check_replaced("\xed\xbf\xbf", "surrogate ED BF BF");
    check_replaced("\xf4\x90\x80\x80", "U+110000 (F4 90 80 80)");
    check_replaced("\xf5\x80\x80\x80", "lead byte F5");
    check_replaced("\xfe", "byte FE");
    check_replaced("\xff", "byte FF");
    {
        /* Exactly sized on the heap so a read past n shows under ASan; then
         * the bytes past n complete the sequence, which must not count. */
        char *in = malloc(4);
        static const char full[] = "ok\xe2\x82\xac";
        if (in == NULL)
            abort();
        memcpy(in, "ok\xe2\x82", 4);
        CHECK(round_trips(in, 4, "ok" FFFD, 5) || round_trips(in, 4, "ok" FFFD FFFD, 8),
              "json_str: truncated sequence at the very end");
        CHECK(round_trips(full, 4, "ok" FFFD, 5) || round_trips(full, 4, "ok" FFFD FFFD, 8),
              "json_str: never reads past n");
        free(in);
    }
}

/* Random bytes: the output is always a valid JSON string in valid UTF-8. */
static void test_str_fuzz(void)
{
    uint32_t seed = 12345;
    int bad = 0;

    for (int round = 0; round < 3000; round++) {
        unsigned char in[64];
        size_t n = (size_t)(round % 64), len;
        vg_buf_t dec = VG_BUF_INIT;
        char *got;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            /* Bias towards the interesting high and control bytes. */
            in[i] = (unsigned char)((seed >> 16) % 3 == 0 ? (seed >> 8) % 0x20 : 0x7f + (seed >> 8) % 0x81);
        }
        got = json_str_of(in, n, &len);
        if (!json_decode(got, len, &dec))
            bad++;
        free(got);
        vg_buf_free(&dec);
    }
    CHECK(bad == 0, "json_str: 3000 random byte strings give valid JSON (%d bad)", bad);
}

static void test_str_appends(void)
{
    vg_buf_t b = VG_BUF_INIT;
    size_t big = 100000;
    char *s = malloc(big);
    vg_buf_t dec = VG_BUF_INIT;

    if (s == NULL)
        abort();
    vg_buf_adds(&b, "{\"k\":");
    vg_json_str(&b, "v", 1);
    vg_buf_addc(&b, '}');
    CHECK_STREQ(b.data, "{\"k\":\"v\"}", "json_str appends to what is there");
    vg_buf_reset(&b);
    for (size_t i = 0; i < big; i++)
        s[i] = (char)(i % 7 == 0 ? '"' : i % 11 == 0 ? '\n' : 'x');
    vg_json_str(&b, s, big);
    CHECK(json_decode(b.data, b.len, &dec) && dec.len == big && memcmp(dec.data, s, big) == 0,
          "json_str: 100 kB string");
    vg_buf_free(&dec);
    vg_buf_free(&b);
    free(s);
}

/* ---- numbers ------------------------------------------------------------ */

/* RFC 8259 number grammar. */
static bool json_number_ok(const char *s)
{
    if (*s == '-')
        s++;
    if (*s == '0')
        s++;
    else if (*s >= '1' && *s <= '9')
        while (*s >= '0' && *s <= '9')
            s++;
    else
        return false;
    if (*s == '.') {
        if (*++s < '0' || *s > '9')
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        if (*++s == '+' || *s == '-')
            s++;
        if (*s < '0' || *s > '9')
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    return *s == '\0';
}

static void test_num(void)
{
    static const struct {
        double v;
        const char *want;
    } exact[] = {
        {0, "0"}, {3, "3"}, {-42, "-42"}, {123456789012345.0, "123456789012345"},
        {9007199254740992.0, "9007199254740992"}, {-9007199254740991.0, "-9007199254740991"},
        {0.5, "0.5"}, {-2.25, "-2.25"},
    };
    const double trip[] = {0.1, 1.0 / 3, -2.5e-7, 1e300, -1e-300, 5e-324, DBL_MAX, -DBL_MAX,
                           DBL_MIN, 1e15, 1e21, 123.456, 9223372036854775808.0, -0.0, 0.3};
    char *s;

    static const struct {
        double v;
        const char *want;
    } special[] = {{NAN, "\"nan\""}, {INFINITY, "\"inf\""}, {-INFINITY, "\"-inf\""}};

    for (size_t i = 0; i < 3; i++) {
        s = json_num_of(special[i].v);
        CHECK_STREQ(s, special[i].want, "json_num: %s as a string", special[i].want);
        free(s);
    }
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        s = json_num_of(exact[i].v);
        CHECK_STREQ(s, exact[i].want, "json_num: %s", exact[i].want);
        free(s);
    }
    for (size_t i = 0; i < sizeof trip / sizeof trip[0]; i++) {
        s = json_num_of(trip[i]);
        CHECK(json_number_ok(s) && strtod(s, NULL) == trip[i], "json_num: %.17g valid and exact (%s)",
              trip[i], s);
        free(s);
    }
}

static void test_int(void)
{
    static const struct {
        long long v;
        const char *want;
    } cases[] = {
        {0, "0"}, {-1, "-1"}, {9007199254740993LL, "9007199254740993"},
        {LLONG_MAX, "9223372036854775807"}, {LLONG_MIN, "-9223372036854775808"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = json_int_of(cases[i].v);
        CHECK_STREQ(s, cases[i].want, "json_int: %s", cases[i].want);
        free(s);
    }
}

/* ---- buffers ------------------------------------------------------------ */

static void add_fmt(vg_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_fmt(vg_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vg_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

static void test_buf(void)
{
    vg_buf_t b = VG_BUF_INIT;
    char *big = malloc(10001), *p;
    const char *data;

    if (big == NULL)
        abort();
    memset(big, 'y', 10000);
    big[10000] = '\0';
    vg_buf_add(&b, "", 0);
    CHECK(b.data != NULL && b.data[0] == '\0' && b.len == 0, "buf: empty append terminates");
    vg_buf_add(&b, "ab\0cd", 5);
    vg_buf_adds(&b, "ef");
    vg_buf_addc(&b, 'g');
    CHECK_MEMEQ(b.data, b.len + 1, "ab\0cdefg", 9, "buf: add/adds/addc keep NULs and terminate");
    vg_buf_printf(&b, "[%d|%s|%5.2f]", -7, "z", 1.5);
    CHECK_STREQ(b.data + 8, "[-7|z| 1.50]", "buf: printf appends");
    vg_buf_reset(&b);
    CHECK(b.len == 0 && b.data != NULL && b.data[0] == '\0', "buf: reset empties");
    add_fmt(&b, "%s%s", big, "!");
    CHECK(b.len == 10001 && strlen(b.data) == 10001 && b.data[10000] == '!',
          "buf: vprintf grows past the first allocation");
    vg_buf_reset(&b);
    CHECK(b.cap >= 10002, "buf: reset keeps memory");
    vg_buf_reserve(&b, 50000);
    data = b.data;
    vg_buf_add(&b, big, 10000), vg_buf_add(&b, big, 10000), vg_buf_add(&b, big, 10000);
    CHECK(b.data == data && b.len == 30000, "buf: reserve avoids later reallocation");
    p = vg_buf_steal(&b);
    CHECK(p != NULL && strlen(p) == 30000 && b.data == NULL && b.len == 0 && b.cap == 0,
          "buf: steal hands over the data and empties");
    free(p);
    vg_buf_adds(&b, "again");
    CHECK_STREQ(b.data, "again", "buf: usable after steal");
    vg_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0, "buf: free resets");
    vg_buf_free(&b); /* twice is harmless */
    free(big);
}

static void test_alloc(void)
{
    char *s = vg_xstrdup("dup");
    unsigned char *z = vg_xcalloc(100, 4);
    bool zero = true;

    CHECK_STREQ(s, "dup", "xstrdup copies");
    for (size_t i = 0; i < 400; i++)
        zero = zero && z[i] == 0;
    CHECK(zero, "xcalloc zeroes");
    z = vg_xrealloc(z, 100000);
    z[99999] = 1;
    CHECK(z[0] == 0 && z[399] == 0, "xrealloc keeps the contents");
    free(z);
    free(s);
    free(vg_xmalloc(0));
}

int main(void)
{
    test_str_basics();
    test_str_controls();
    test_str_utf8_valid();
    test_str_utf8_invalid();
    test_str_fuzz();
    test_str_appends();
    test_num();
    test_int();
    test_buf();
    test_alloc();
    return check_done();
}
