/* Fernet tokens (https://github.com/fernet/spec): AES-128-CBC with PKCS7
 * padding + HMAC-SHA256, url-safe base64. Uses OpenSSL's libcrypto. */
#ifndef VG_FERNET_H
#define VG_FERNET_H

#include <stddef.h>
#include <stdint.h>

typedef struct vg_fernet_key {
    unsigned char signing[16];
    unsigned char encryption[16];
} vg_fernet_key_t;

/* Parse a key: url-safe base64 of exactly 32 bytes. 0 ok, -1 with *why. */
int vg_fernet_key_parse(const char *b64key, vg_fernet_key_t *key, const char **why);

/* Encrypt at time `now` (seconds since the epoch). Returns a malloc'd token
 * (NUL-terminated) or NULL on a libcrypto failure. iv may be NULL (random
 * IV from RAND_bytes) or 16 bytes (for test vectors). */
char *vg_fernet_encrypt(const vg_fernet_key_t *key, const unsigned char *msg, size_t n,
                        uint64_t now, const unsigned char *iv);

/* Decrypt. ttl <= 0 means no expiry check. Returns 0 and a malloc'd
 * plaintext (*out, *outlen) or -1 with *why one of: "malformed token",
 * "invalid signature", "token expired", "token from the future",
 * "decryption failed". The MAC is compared in constant time. */
int vg_fernet_decrypt(const vg_fernet_key_t *key, const char *token, size_t n,
                      int64_t ttl, uint64_t now, unsigned char **out, size_t *outlen,
                      const char **why);

#endif
