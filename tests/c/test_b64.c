/* Base64: RFC 4648 vectors, both alphabets, strict rejection, round trips. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "vg/b64.h"

static const struct {
    const char *plain, *enc;
} rfc[] = {
    {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},         {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
};

/* Decode s (as a C string) into a fresh buffer; returns the length or -1. */
static long decode(const char *s, int urlsafe, unsigned char **out)
{
    size_t n = strlen(s);
    long len;
    *out = malloc(n * 3 / 4 + 3);
    if (*out == NULL)
        abort();
    len = vg_b64_decode(s, n, *out, urlsafe);
    return len;
}

static void test_rfc_vectors(void)
{
    for (size_t i = 0; i < sizeof rfc / sizeof rfc[0]; i++) {
        size_t n = strlen(rfc[i].plain);
        char enc[16];
        unsigned char *dec;
        long len;

        CHECK(vg_b64_encoded_len(n) == strlen(rfc[i].enc), "encoded_len(%zu)", n);
        vg_b64_encode((const unsigned char *)rfc[i].plain, n, enc, 0);
        CHECK_STREQ(enc, rfc[i].enc, "encode \"%s\"", rfc[i].plain);
        len = decode(rfc[i].enc, 0, &dec);
        CHECK_MEMEQ(dec, (size_t)(len < 0 ? 0 : len), rfc[i].plain, n, "decode %s", rfc[i].enc);
        CHECK(len == (long)n, "decode %s length", rfc[i].enc);
        free(dec);
    }
}

static void test_unpadded(void)
{
    const char *in[] = {"Zg", "Zm8", "Zm9vYg", "Zm9vYmE"};
    const char *want[] = {"f", "fo", "foob", "fooba"};

    for (size_t i = 0; i < 4; i++) {
        unsigned char *dec;
        long len = decode(in[i], 1, &dec);
        CHECK(len == (long)strlen(want[i]) && memcmp(dec, want[i], (size_t)len) == 0,
              "decode unpadded %s", in[i]);
        free(dec);
    }
}

static void test_alphabets(void)
{
    const unsigned char bytes[] = {0xfb, 0xff, 0xbf};
    char enc[8];
    unsigned char *dec;
    long len;

    vg_b64_encode(bytes, 3, enc, 0);
    CHECK_STREQ(enc, "+/+/", "standard alphabet encodes + and /");
    vg_b64_encode(bytes, 3, enc, 1);
    CHECK_STREQ(enc, "-_-_", "url-safe alphabet encodes - and _");
    len = decode("-_-_", 1, &dec);
    CHECK_MEMEQ(dec, (size_t)(len < 0 ? 0 : len), bytes, 3, "url-safe decode");
    free(dec);
    len = decode("+/+/", 0, &dec);
    CHECK_MEMEQ(dec, (size_t)(len < 0 ? 0 : len), bytes, 3, "standard decode");
    free(dec);
    CHECK(decode("+/+/", 1, &dec) == -1, "url-safe rejects + and /");
    free(dec);
    CHECK(decode("-_-_", 0, &dec) == -1, "standard rejects - and _");
    free(dec);
}

static void test_rejects(void)
{
    const char *bad[] = {
        "Z",        /* one character cannot hold a byte */
        "Zm9vY",    /* same after a full group */
        "Zg=",      /* short padding */
        "Zg===",    /* long padding */
        "Zm8==",    /* padding does not match the data */
        "Zm9v=",    /* padding after a full group */
        "====",     /* padding only */
        "Zg==Zg==", /* padding in the middle */
        "Zm 9v",    /* blank */
        "Zm9v\n",   /* newline */
        "Zm9v*",    /* outside both alphabets */
        "\xc3\xa9", /* non-ASCII */
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned char *dec;
        CHECK(decode(bad[i], 1, &dec) == -1, "rejects bad input %zu", i);
        free(dec);
    }
    {
        unsigned char out[8];
        CHECK(vg_b64_decode("Zm\0v", 4, out, 1) == -1, "rejects embedded NUL");
    }
}

/* Every length 0..70 and every byte value survive both alphabets. */
static void test_round_trip(void)
{
    unsigned char in[256];
    int failures = 0;

    for (int i = 0; i < 256; i++)
        in[i] = (unsigned char)(i * 167 + 13);
    for (int urlsafe = 0; urlsafe <= 1; urlsafe++) {
        for (size_t n = 0; n <= 256; n += (n < 70 ? 1 : 186)) {
            size_t elen = vg_b64_encoded_len(n);
            char *enc = malloc(elen + 1);
            unsigned char *dec = malloc(elen * 3 / 4 + 3);
            if (enc == NULL || dec == NULL)
                abort();
            vg_b64_encode(in, n, enc, urlsafe);
            if (strlen(enc) != elen || vg_b64_decode(enc, elen, dec, urlsafe) != (long)n ||
                memcmp(dec, in, n) != 0)
                failures++;
            free(enc);
            free(dec);
        }
    }
    CHECK(failures == 0, "round trip of lengths 0..70 and 256 (%d failures)", failures);
}

int main(void)
{
    test_rfc_vectors();
    test_unpadded();
    test_alphabets();
    test_rejects();
    test_round_trip();
    return check_done();
}
