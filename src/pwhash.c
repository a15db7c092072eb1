/* Password hashes and secrets (see vg/pwhash.h). */
#include "vg/pwhash.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

bool vg_pbkdf2_sha256(const char *password, size_t plen, const unsigned char *salt,
                      size_t slen, unsigned iterations, unsigned char *out, size_t outlen)
{
    if (plen > INT_MAX || slen > INT_MAX || outlen > INT_MAX || iterations == 0 ||
        iterations > INT_MAX)
        return false;
    return PKCS5_PBKDF2_HMAC(password, (int)plen, salt, (int)slen, (int)iterations,
                             EVP_sha256(), (int)outlen, out) == 1;
}

bool vg_hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                    unsigned char out[32])
{
    unsigned int len = 0;
    if (klen > INT_MAX) return false;
    return HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &len) != NULL && len == 32;
}

bool vg_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen) return false;
    return CRYPTO_memcmp(a, b, alen) == 0;
}

bool vg_random_bytes(unsigned char *out, size_t n)
{
    if (n > INT_MAX) return false;
    return RAND_bytes(out, (int)n) == 1;
}
