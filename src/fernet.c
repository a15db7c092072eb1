/* Fernet tokens, https://github.com/fernet/spec (version 0x80):
 *
 *   0x80 | timestamp (8 bytes, big-endian) | IV (16) | ciphertext | HMAC (32)
 *
 * AES-128-CBC with PKCS7 padding; HMAC-SHA256 over everything before the MAC
 * with the first half of the key, AES with the second half; the whole token
 * in url-safe base64 with padding. Behaviour on bad tokens follows Python's
 * cryptography.fernet, the implementation the seed application used. */
#include "vg/fernet.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "vg/b64.h"
#include "vg/buf.h"

#define FERNET_VERSION 0x80
#define HDR_LEN 25 /* version + timestamp + IV */
#define MAC_LEN 32
#define BLOCK 16
/* Tolerated clock difference between the writer and us, as in cryptography. */
#define MAX_CLOCK_SKEW 60
/* A base64 key of 32 bytes is 44 characters; anything much longer is wrong,
 * and the bound keeps the decode buffer on the stack. */
#define KEY_B64_MAX 64

int vg_fernet_key_parse(const char *b64key, vg_fernet_key_t *key, const char **why)
{
    unsigned char raw[KEY_B64_MAX * 3 / 4 + 3];
    size_t n = b64key ? strlen(b64key) : 0;
    long len;

    if (n == 0 || n > KEY_B64_MAX) {
        *why = "FERNET_KEY must be url-safe base64 of 32 bytes (44 characters)";
        return -1;
    }
    len = vg_b64_decode(b64key, n, raw, 1);
    if (len != 32) {
        OPENSSL_cleanse(raw, sizeof raw);
        *why = "FERNET_KEY must be url-safe base64 of 32 bytes (44 characters)";
        return -1;
    }
    memcpy(key->signing, raw, 16);
    memcpy(key->encryption, raw + 16, 16);
    OPENSSL_cleanse(raw, sizeof raw);
    return 0;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* EVP_CipherUpdate takes an int length; feed larger inputs in slices. */
static int cipher_update(EVP_CIPHER_CTX *ctx, unsigned char *out, size_t *outlen,
                         const unsigned char *in, size_t n)
{
    const size_t slice = 1u << 30;

    *outlen = 0;
    while (n > 0) {
        int chunk = (int)(n < slice ? n : slice);
        int written = 0;
        if (EVP_CipherUpdate(ctx, out + *outlen, &written, in, chunk) != 1)
            return -1;
        *outlen += (size_t)written;
        in += chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

/* One AES-128-CBC pass (enc = 1 encrypt, 0 decrypt), PKCS7 padding done by
 * EVP. out must hold n + BLOCK bytes. Returns the output length or -1; on
 * decryption -1 also means the padding was wrong. */
static long aes_cbc(const unsigned char *key, const unsigned char *iv, int enc,
                    const unsigned char *in, size_t n, unsigned char *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    size_t len = 0;
    int last = 0;
    long result = -1;

    if (ctx == NULL)
        return -1;
    if (EVP_CipherInit_ex(ctx, EVP_aes_128_cbc(), NULL, key, iv, enc) == 1 &&
        cipher_update(ctx, out, &len, in, n) == 0 &&
        EVP_CipherFinal_ex(ctx, out + len, &last) == 1 && len <= LONG_MAX - BLOCK)
        result = (long)(len + (size_t)last);
    EVP_CIPHER_CTX_free(ctx);
    return result;
}

static int mac_compute(const vg_fernet_key_t *key, const unsigned char *data, size_t n,
                       unsigned char mac[MAC_LEN])
{
    unsigned int maclen = 0;

    if (HMAC(EVP_sha256(), key->signing, sizeof key->signing, data, n, mac, &maclen) == NULL ||
        maclen != MAC_LEN)
        return -1;
    return 0;
}

char *vg_fernet_encrypt(const vg_fernet_key_t *key, const unsigned char *msg, size_t n,
                        uint64_t now, const unsigned char *iv)
{
    size_t ctmax, rawcap, rawlen;
    unsigned char *raw;
    char *token = NULL;
    long ctlen;

    /* Guard the size arithmetic below (and base64's 4/3 growth). */
    if (n > SIZE_MAX / 2 - HDR_LEN - MAC_LEN - BLOCK)
        return NULL;
    ctmax = n + BLOCK;
    rawcap = HDR_LEN + ctmax + MAC_LEN;
    raw = vg_xmalloc(rawcap);
    raw[0] = FERNET_VERSION;
    put_be64(raw + 1, now);
    if (iv != NULL)
        memcpy(raw + 9, iv, BLOCK);
    else if (RAND_bytes(raw + 9, BLOCK) != 1)
        goto out;
    ctlen = aes_cbc(key->encryption, raw + 9, 1, msg, n, raw + HDR_LEN);
    if (ctlen < 0)
        goto out;
    rawlen = HDR_LEN + (size_t)ctlen;
    if (mac_compute(key, raw, rawlen, raw + rawlen) != 0)
        goto out;
    rawlen += MAC_LEN;
    token = vg_xmalloc(vg_b64_encoded_len(rawlen) + 1);
    vg_b64_encode(raw, rawlen, token, 1);
out:
    free(raw);
    return token;
}

/* Decode the base64 and check the framing. Returns the raw token (malloc'd,
 * caller frees) and its length, or NULL. */
static unsigned char *token_decode(const char *token, size_t n, size_t *rawlen)
{
    unsigned char *raw;
    long len;

    if (n == 0 || n > SIZE_MAX / 4)
        return NULL;
    raw = vg_xmalloc(n / 4 * 3 + 3);
    len = vg_b64_decode(token, n, raw, 1);
    /* The ciphertext is whole blocks, and at least one: PKCS7 always pads. */
    if (len < HDR_LEN + BLOCK + MAC_LEN || raw[0] != FERNET_VERSION ||
        ((size_t)len - HDR_LEN - MAC_LEN) % BLOCK != 0) {
        free(raw);
        return NULL;
    }
    *rawlen = (size_t)len;
    return raw;
}

static int mac_verify(const vg_fernet_key_t *key, const unsigned char *raw, size_t rawlen)
{
    unsigned char mac[MAC_LEN];

    if (mac_compute(key, raw, rawlen - MAC_LEN, mac) != 0)
        return -1;
    /* Constant time, so the comparison leaks nothing about a forged MAC. */
    return CRYPTO_memcmp(mac, raw + rawlen - MAC_LEN, MAC_LEN) == 0 ? 0 : -1;
}

/* The expiry rules written so that no sum can overflow, whatever timestamp
 * the token carries. */
static const char *ttl_check(uint64_t ts, int64_t ttl, uint64_t now)
{
    if (ttl <= 0)
        return NULL;
    if (now > (uint64_t)ttl && ts < now - (uint64_t)ttl)
        return "token expired";
    if (ts > MAX_CLOCK_SKEW && ts - MAX_CLOCK_SKEW > now)
        return "token from the future";
    return NULL;
}

int vg_fernet_decrypt(const vg_fernet_key_t *key, const char *token, size_t n,
                      int64_t ttl, uint64_t now, unsigned char **out, size_t *outlen,
                      const char **why)
{
    size_t rawlen = 0, ctlen;
    unsigned char *raw = token_decode(token, n, &rawlen);
    unsigned char *plain;
    long len;

    if (raw == NULL) {
        *why = "malformed token";
        return -1;
    }
    /* The MAC goes first: timestamps and padding of a token we did not sign
     * mean nothing, and reporting on them would only help a forger. */
    if (mac_verify(key, raw, rawlen) != 0) {
        *why = "invalid signature";
        free(raw);
        return -1;
    }
    *why = ttl_check(get_be64(raw + 1), ttl, now);
    if (*why != NULL) {
        free(raw);
        return -1;
    }
    ctlen = rawlen - HDR_LEN - MAC_LEN;
    /* + 1 so the plaintext can be NUL-terminated for callers that want it. */
    plain = vg_xmalloc(ctlen + BLOCK + 1);
    len = aes_cbc(key->encryption, raw + 9, 0, raw + HDR_LEN, ctlen, plain);
    free(raw);
    if (len < 0) {
        OPENSSL_cleanse(plain, ctlen + BLOCK + 1);
        free(plain);
        *why = "decryption failed";
        return -1;
    }
    plain[len] = '\0';
    *out = plain;
    *outlen = (size_t)len;
    return 0;
}
