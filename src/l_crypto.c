/* require "vg.crypto": what the status service (lua/web.lua) needs to
 * check passwords and protect forms, on libcrypto (src/pwhash.c).
 *
 *   crypto.pbkdf2(password, salt, iterations [, bytes=32]) -> raw bytes
 *       PBKDF2-HMAC-SHA256; iterations 1..10,000,000
 *   crypto.hmac(key, message) -> raw 32 bytes (HMAC-SHA256)
 *   crypto.equal(a, b) -> boolean, in time that depends only on the
 *       lengths (never on where the strings differ)
 *   crypto.random(n) -> n raw bytes from the CSPRNG (1..1024)
 *   crypto.hex(bytes) -> lower-case hex; crypto.unhex(text) -> bytes or nil */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/err.h"
#include "vg/pwhash.h"

static int l_crypto_pbkdf2(lua_State *L)
{
    size_t plen, slen;
    const char *pw = luaL_checklstring(L, 1, &plen);
    const char *salt = luaL_checklstring(L, 2, &slen);
    lua_Integer iter = luaL_checkinteger(L, 3);
    lua_Integer n = luaL_optinteger(L, 4, 32);
    luaL_argcheck(L, iter >= 1 && iter <= 10000000, 3, "iterations must be 1..10000000");
    luaL_argcheck(L, n >= 16 && n <= 64, 4, "bytes must be 16..64");
    unsigned char out[64];
    if (!vg_pbkdf2_sha256(pw, plen, (const unsigned char *)salt, slen, (unsigned)iter, out,
                          (size_t)n))
        return vg_err_raise(L, "crypto_failed", false, "PBKDF2 failed");
    lua_pushlstring(L, (const char *)out, (size_t)n);
    return 1;
}

static int l_crypto_hmac(lua_State *L)
{
    size_t klen, mlen;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *msg = luaL_checklstring(L, 2, &mlen);
    unsigned char out[32];
    if (!vg_hmac_sha256(key, klen, msg, mlen, out))
        return vg_err_raise(L, "crypto_failed", false, "HMAC failed");
    lua_pushlstring(L, (const char *)out, sizeof out);
    return 1;
}

static int l_crypto_equal(lua_State *L)
{
    size_t al, bl;
    const char *a = luaL_checklstring(L, 1, &al);
    const char *b = luaL_checklstring(L, 2, &bl);
    lua_pushboolean(L, vg_ct_equal(a, al, b, bl));
    return 1;
}

static int l_crypto_random(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 1024, 1, "n must be 1..1024");
    unsigned char buf[1024];
    if (!vg_random_bytes(buf, (size_t)n))
        return vg_err_raise(L, "crypto_failed", false, "the random generator failed");
    lua_pushlstring(L, (const char *)buf, (size_t)n);
    return 1;
}

static int l_crypto_hex(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    static const char digits[] = "0123456789abcdef";
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        luaL_addchar(&b, digits[s[i] >> 4]);
        luaL_addchar(&b, digits[s[i] & 15]);
    }
    luaL_pushresult(&b);
    return 1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int l_crypto_unhex(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (n % 2) {
        lua_pushnil(L);
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i += 2) {
        int hi = hexval((unsigned char)s[i]), lo = hexval((unsigned char)s[i + 1]);
        if (hi < 0 || lo < 0) {
            luaL_pushresult(&b);
            lua_pop(L, 1);
            lua_pushnil(L);
            return 1;
        }
        luaL_addchar(&b, (char)(hi * 16 + lo));
    }
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg funcs[] = {
    {"pbkdf2", l_crypto_pbkdf2}, {"hmac", l_crypto_hmac}, {"equal", l_crypto_equal},
    {"random", l_crypto_random}, {"hex", l_crypto_hex},   {"unhex", l_crypto_unhex},
    {NULL, NULL},
};

int luaopen_vg_crypto(lua_State *L)
{
    luaL_newlib(L, funcs);
    return 1;
}
