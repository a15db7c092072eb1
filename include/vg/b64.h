/* Base64 (standard and url-safe alphabets). */
#ifndef VG_B64_H
#define VG_B64_H

#include <stddef.h>

/* Encoded length (with padding) for n bytes. */
size_t vg_b64_encoded_len(size_t n);
/* Encode n bytes into out (vg_b64_encoded_len(n) + 1 bytes, NUL-terminated),
 * url-safe alphabet (- and _) when urlsafe, padded with '='. */
void vg_b64_encode(const unsigned char *in, size_t n, char *out, int urlsafe);
/* Decode; accepts padding or not; rejects characters outside the chosen
 * alphabet and impossible lengths. out must hold n*3/4+3 bytes. Returns the
 * decoded length, or -1 on malformed input. */
long vg_b64_decode(const char *in, size_t n, unsigned char *out, int urlsafe);

#endif
