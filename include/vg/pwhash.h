/* Password hashes and secrets for the status service, on OpenSSL's
 * libcrypto. No Lua in here (the binding is src/l_crypto.c). */
#ifndef VG_PWHASH_H
#define VG_PWHASH_H

#include <stdbool.h>
#include <stddef.h>

/* PBKDF2-HMAC-SHA256 of password with salt, iterations rounds, into out
 * (outlen bytes). Returns false when libcrypto fails. */
bool vg_pbkdf2_sha256(const char *password, size_t plen, const unsigned char *salt,
                      size_t slen, unsigned iterations, unsigned char *out, size_t outlen);
/* HMAC-SHA256 of msg under key into out (32 bytes). */
bool vg_hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                    unsigned char out[32]);
/* Equal lengths and bytes, in time that depends on the length only. */
bool vg_ct_equal(const void *a, size_t alen, const void *b, size_t blen);
/* n bytes from the CSPRNG. */
bool vg_random_bytes(unsigned char *out, size_t n);

#endif
