/* Base64, RFC 4648 sections 4 (standard) and 5 (url-safe).
 *
 * The decoder is strict on purpose: Fernet tokens and FERNET_KEY are the only
 * inputs, and a stray character there is a configuration or transport error
 * the caller should hear about rather than have silently skipped. */
#include "vg/b64.h"

#include <limits.h>
#include <stdint.h>

static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t vg_b64_encoded_len(size_t n)
{
    /* n / 3 first so that n close to SIZE_MAX cannot wrap in the rounding. */
    return 4 * (n / 3 + (n % 3 != 0));
}

void vg_b64_encode(const unsigned char *in, size_t n, char *out, int urlsafe)
{
    const char *abc = urlsafe ? url_alphabet : std_alphabet;
    size_t i = 0;
    char *o = out;

    for (; n - i >= 3; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = abc[v >> 18];
        *o++ = abc[(v >> 12) & 63];
        *o++ = abc[(v >> 6) & 63];
        *o++ = abc[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = abc[v >> 18];
        *o++ = abc[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = abc[v >> 18];
        *o++ = abc[(v >> 12) & 63];
        *o++ = abc[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = '\0';
}

/* Value of one alphabet character, or -1. Written as comparisons rather than
 * a table so both alphabets share one definition. */
static int b64_value(unsigned char c, int urlsafe)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (urlsafe ? '-' : '+'))
        return 62;
    if (c == (urlsafe ? '_' : '/'))
        return 63;
    return -1;
}

/* Length without the trailing '=' padding, or (size_t)-1 when the padding is
 * not exactly what the data length calls for. */
static size_t b64_unpadded_len(const char *in, size_t n)
{
    size_t pad = 0;

    while (pad < n && in[n - 1 - pad] == '=')
        pad++;
    if (pad == 0)
        return n;
    /* Padded input comes in whole groups of four; "x===" would be a group
     * with a single character, which cannot hold a byte. */
    if (pad > 2 || n % 4 != 0)
        return (size_t)-1;
    return n - pad;
}

long vg_b64_decode(const char *in, size_t n, unsigned char *out, int urlsafe)
{
    size_t len = b64_unpadded_len(in, n);
    uint32_t acc = 0;
    int bits = 0;
    long outlen = 0;

    /* A single leftover character cannot encode a whole byte. The last test
     * keeps the decoded length (at most 3/4 of len) representable as long. */
    if (len == (size_t)-1 || len % 4 == 1 || len / 4 > (size_t)LONG_MAX / 4)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)in[i], urlsafe);
        if (v < 0)
            return -1;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[outlen++] = (unsigned char)(acc >> bits);
        }
    }
    /* Non-zero leftover bits (e.g. "QR==" instead of "QQ==") are tolerated
     * like most decoders do: they do not change the decoded bytes. */
    return outlen;
}
