/* Fernet: the official spec vectors (github.com/fernet/spec generate.json,
 * verify.json, invalid.json), tokens made by Python's cryptography.fernet,
 * tampering, TTL edges, round trips with random IVs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "vg/b64.h"
#include "vg/fernet.h"

#define SPEC_SECRET "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
#define SPEC_TOKEN                                                              \
    "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7" \
    "JcbmrR64jVmpU4IwqDA=="
#define T0 499162800u /* 1985-10-26T01:20:00-07:00 */

static const unsigned char iv_0_15[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static vg_fernet_key_t key_from(const char *b64)
{
    vg_fernet_key_t k;
    const char *why = NULL;
    if (vg_fernet_key_parse(b64, &k, &why) != 0) {
        fprintf(stderr, "bad test key %s: %s\n", b64, why);
        abort();
    }
    return k;
}

/* Decrypt and compare with want (NULL: expect failure with reason why_want). */
static void expect(const vg_fernet_key_t *k, const char *token, int64_t ttl, uint64_t now,
                   const void *want, size_t wantlen, const char *why_want, const char *name)
{
    unsigned char *out = NULL;
    size_t outlen = 0;
    const char *why = NULL;
    int rc = vg_fernet_decrypt(k, token, strlen(token), ttl, now, &out, &outlen, &why);

    if (want != NULL) {
        if (!CHECK(rc == 0, "%s: decrypts", name))
            printf("# why: %s\n", why ? why : "(null)");
        if (rc == 0)
            CHECK_MEMEQ(out, outlen, want, wantlen, "%s: plaintext", name);
    } else {
        CHECK(rc == -1, "%s: rejected", name);
        CHECK_STREQ(why, why_want, "%s: reason", name);
    }
    free(out);
}

static void test_keys(void)
{
    static const char *const bad[] = {
        "",
        "c2hvcnQ=",                                          /* 5 bytes */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4eHh4",   /* 35 bytes */
        "cw/0x689RpI+jtRR7oE8h/eQsKImvJapLeSbXpwF4e4=",      /* standard alphabet */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4= ",     /* trailing blank */
        "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=",
    };
    vg_fernet_key_t k;
    const char *why = NULL;

    CHECK(vg_fernet_key_parse(SPEC_SECRET, &k, &why) == 0, "key: spec secret parses");
    {
        unsigned char raw[40];
        CHECK(vg_b64_decode(SPEC_SECRET, strlen(SPEC_SECRET), raw, 1) == 32 &&
                  memcmp(k.signing, raw, 16) == 0 && memcmp(k.encryption, raw + 16, 16) == 0,
              "key: signing half first, encryption half second");
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why = NULL;
        CHECK(vg_fernet_key_parse(bad[i], &k, &why) == -1 && why != NULL, "key: bad key %zu", i);
    }
    why = NULL;
    CHECK(vg_fernet_key_parse(NULL, &k, &why) == -1 && why != NULL, "key: NULL rejected");
}

static void test_spec_generate_verify(void)
{
    vg_fernet_key_t k = key_from(SPEC_SECRET);
    char *tok = vg_fernet_encrypt(&k, (const unsigned char *)"hello", 5, T0, iv_0_15);

    CHECK_STREQ(tok, SPEC_TOKEN, "spec generate.json vector");
    free(tok);
    expect(&k, SPEC_TOKEN, 60, T0 + 1, "hello", 5, NULL, "spec verify.json vector");
    expect(&k, SPEC_TOKEN, 0, T0 + 100000000, "hello", 5, NULL, "no ttl: old token accepted");
    expect(&k, SPEC_TOKEN, 0, 0, "hello", 5, NULL, "no ttl: future token accepted");
}

static void test_spec_invalid(void)
{
    static const struct {
        const char *desc, *token, *why;
        uint64_t now;
    } cases[] = {
        {"incorrect mac",
         "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykQUFBQUFBQUFBQQ==",
         "invalid signature", T0 + 1},
        {"too short", "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPA==", "malformed token",
         T0 + 1},
        {"invalid base64",
         "%%%%%%%%%%%%%AECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykRtfsH-p1YsUD2Q==",
         "malformed token", T0 + 1},
        {"payload size not multiple of block size",
         "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPOm73QeoCk9uGib28Xe5vz6oxq5nmxbx_v7mrfyudzUm",
         "malformed token", T0 + 1},
        {"payload padding error",
         "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0ODz4LEpdELGQAad7aNEHbf-JkLPIpuiYRLQ3RtXatOYREu2FWke6CnJNYIbkuKNqOhw==",
         "decryption failed", T0 + 1},
        {"far-future TS (unacceptable clock skew)",
         "gAAAAAAdwStRAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAnja1xKYyhd-Y6mSkTOyTGJmw2Xc2a6kBd-iX9b_qXQcw==",
         "token from the future", T0 + 1},
        {"expired TTL",
         "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykRtfsH-p1YsUD2Q==",
         "token expired", T0 + 91},
        {"incorrect IV (causes padding error)",
         "gAAAAAAdwJ6xBQECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAkLhFLHpGtDBRLRTZeUfWgHSv49TF2AUEZ1TIvcZjK1zQ==",
         "decryption failed", T0 + 1},
        {"trailing characters after b64 padding", SPEC_TOKEN "trailingdata", "malformed token",
         T0 + 1},
        {"invalid characters in b64",
         "*gAAAAAAdwJ6wAAECAwQFBgcI!CQoLDA0ODy021?cpGVWKZ_eEwC@GM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==",
         "malformed token", T0 + 1},
        {"invalid non-urlsafe characters in b64",
         "gAAAAAAdwJ6wAAEC/AwQFBgcICQoLDA0ODy+021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==",
         "malformed token", T0 + 1},
        {"empty token", "", "malformed token", T0},
    };
    vg_fernet_key_t k = key_from(SPEC_SECRET);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect(&k, cases[i].token, 60, cases[i].now, NULL, 0, cases[i].why, cases[i].desc);
}

/* Tokens made with Python's cryptography 48 (Fernet._encrypt_from_parts),
 * key = bytes 100..131, now = 2026-01-01T00:00:00Z. */
static void test_python_interop(void)
{
    static const char msg[] = "{\"api_key\":\"sk-\xc3\xa9\xe2\x98\x83\xf0\x9f\x98\x80\",\"n\":0}\0\xff";
    static const unsigned char iv_down[16] = {255, 254, 253, 252, 251, 250, 249, 248,
                                              247, 246, 245, 244, 243, 242, 241, 240};
    static const unsigned char iv_zero[16] = {0};
    static const char tok_msg[] =
        "gAAAAABpVbkA__79_Pv6-fj39vX08_Lx8NpW1BGzDFkttLTzQjlZSBVKkvg8YEvJINiXciM0Y0Q9DtxV1x0CN9sz7cNml"
        "lnT_MJOf1Pi2LsNC7adt7Qjyhhb0vEjYiVdlmAykNB4zpY_";
    static const char tok_empty[] =
        "gAAAAABpVbkAAAAAAAAAAAAAAAAAAAAAAAsye4gCrl0kH19rjSEUMPUxLmPdmlpQyRA-Kbn96WPY-4OmanEHmCRyfJ4C3_6BVw==";
    static const char tok_block[] =
        "gAAAAABpVbkAAAAAAAAAAAAAAAAAAAAAAGYhNqVYJ4LwabCH0HAtVhJE3pry6dQ886pd3wuW4EzGm5f0ZGPKWXfpGlyJo4b_"
        "EVO-jCzGF0ikLG_vhzwuWFw=";
    const uint64_t now = 1767225600u;
    vg_fernet_key_t k = key_from("ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM=");
    char *tok;

    tok = vg_fernet_encrypt(&k, (const unsigned char *)msg, sizeof msg - 1, now, iv_down);
    CHECK_STREQ(tok, tok_msg, "python: same token for UTF-8, NUL and 0xff bytes");
    free(tok);
    tok = vg_fernet_encrypt(&k, (const unsigned char *)"", 0, now, iv_zero);
    CHECK_STREQ(tok, tok_empty, "python: same token for an empty message");
    free(tok);
    tok = vg_fernet_encrypt(&k, (const unsigned char *)"0123456789abcdef", 16, now, iv_zero);
    CHECK_STREQ(tok, tok_block, "python: same token for a whole block (full padding block)");
    free(tok);
    expect(&k, tok_msg, 3600, now + 5, msg, sizeof msg - 1, NULL, "python: decrypt binary");
    expect(&k, tok_empty, 3600, now, "", 0, NULL, "python: decrypt empty");
    expect(&k, tok_block, 3600, now, "0123456789abcdef", 16, NULL, "python: decrypt block");
    expect(&k, SPEC_TOKEN, 0, T0, NULL, 0, "invalid signature", "wrong key");
}

/* Flip one bit at every position of the raw token: nothing may decrypt. */
static void test_tampering(void)
{
    vg_fernet_key_t k = key_from(SPEC_SECRET);
    unsigned char raw[128];
    long rawlen = vg_b64_decode(SPEC_TOKEN, strlen(SPEC_TOKEN), raw, 1);
    char tok[sizeof raw * 2];
    int wrong = 0;

    CHECK(rawlen == 73, "tamper: spec token is 73 bytes");
    for (long i = 0; i < rawlen; i++) {
        unsigned char *out = NULL;
        size_t outlen;
        const char *why = NULL;
        raw[i] ^= 0x01;
        vg_b64_encode(raw, (size_t)rawlen, tok, 1);
        if (vg_fernet_decrypt(&k, tok, strlen(tok), 0, T0, &out, &outlen, &why) != -1 ||
            strcmp(why, i == 0 ? "malformed token" : "invalid signature") != 0)
            wrong++;
        free(out);
        raw[i] ^= 0x01;
    }
    CHECK(wrong == 0, "tamper: every flipped bit rejected (%d accepted or misreported)", wrong);
}

static void test_ttl_edges(void)
{
    vg_fernet_key_t k = key_from(SPEC_SECRET);
    char *tok = vg_fernet_encrypt(&k, (const unsigned char *)"x", 1, T0, NULL);
    char *max = vg_fernet_encrypt(&k, (const unsigned char *)"x", 1, UINT64_MAX, NULL);

    expect(&k, tok, 60, T0 + 60, "x", 1, NULL, "ttl: age == ttl accepted");
    expect(&k, tok, 60, T0 + 61, NULL, 0, "token expired", "ttl: age == ttl + 1 expired");
    expect(&k, tok, 1, T0 - 60, "x", 1, NULL, "ttl: 60 s skew accepted");
    expect(&k, tok, 1, T0 - 61, NULL, 0, "token from the future", "ttl: 61 s skew rejected");
    expect(&k, tok, INT64_MAX, T0 + 1000, "x", 1, NULL, "ttl: huge ttl, no overflow");
    expect(&k, tok, INT64_MAX, UINT64_MAX, NULL, 0, "token expired", "ttl: huge ttl and now");
    expect(&k, max, 60, T0, NULL, 0, "token from the future", "ttl: timestamp 2^64-1");
    expect(&k, max, 60, UINT64_MAX, "x", 1, NULL, "ttl: now 2^64-1");
    expect(&k, tok, -5, UINT64_MAX, "x", 1, NULL, "ttl: negative means no expiry");
    free(tok);
    free(max);
}

static void test_round_trip(void)
{
    vg_fernet_key_t k = key_from(SPEC_SECRET);
    size_t big = 100000;
    unsigned char *msg = malloc(big);
    char *a, *b;

    if (msg == NULL)
        abort();
    for (size_t i = 0; i < big; i++)
        msg[i] = (unsigned char)(i * 31 + (i >> 8));
    a = vg_fernet_encrypt(&k, msg, big, T0, NULL);
    b = vg_fernet_encrypt(&k, msg, big, T0, NULL);
    CHECK(a != NULL && b != NULL && strcmp(a, b) != 0, "random IVs differ");
    CHECK(a != NULL && strncmp(a, "gAAAAAAdwJ6w", 12) == 0, "version and timestamp prefix");
    if (a != NULL)
        expect(&k, a, 60, T0, msg, big, NULL, "100 kB round trip");
    for (size_t n = 0; n <= 33; n++) {
        char *t = vg_fernet_encrypt(&k, msg, n, T0, NULL);
        unsigned char *out = NULL;
        size_t outlen = 0;
        const char *why;
        int ok = t != NULL && vg_fernet_decrypt(&k, t, strlen(t), 0, T0, &out, &outlen, &why) == 0 &&
                 outlen == n && memcmp(out, msg, n) == 0 && out[n] == '\0';
        CHECK(ok, "round trip of %zu bytes, NUL-terminated", n);
        free(out);
        free(t);
    }
    free(a);
    free(b);
    free(msg);
}

int main(void)
{
    test_keys();
    test_spec_generate_verify();
    test_spec_invalid();
    test_python_interop();
    test_tampering();
    test_ttl_edges();
    test_round_trip();
    return check_done();
}
