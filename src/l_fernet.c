/* require "vg.fernet": Fernet tokens for channel credentials (src/fernet.c).
 *
 *   local f = fernet.new([key])   key: url-safe base64 of 32 bytes; default
 *                                 FERNET_KEY from the environment. A bad or
 *                                 missing key raises an error object with
 *                                 code "invalid_key" (the key never appears
 *                                 in the message).
 *   f:encrypt(plaintext [, opts]) -> token (any bytes in, a str token out)
 *   f:decrypt(token [, ttl_seconds [, opts]]) -> plaintext; a bad token
 *       raises an error object {code = "invalid_token", retriable = false,
 *       message = "malformed token" | "invalid signature" | "token expired"
 *       | "token from the future" | "decryption failed"}. ttl nil or <= 0:
 *       no expiry check.
 *   fernet.generate_key() -> a new random key (44 characters)
 *
 * opts (for tests and interoperability vectors): time = the clock to use
 * instead of now (seconds since the epoch), and for encrypt iv = a 16-byte
 * string instead of a random IV.
 *
 * The object holds the key in a userdata; its __tostring says only
 * "vg.fernet.Fernet (key hidden)", and the key is wiped when it is
 * collected or closed (__gc and __close share one function). */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "vg/b64.h"
#include "vg/config.h"
#include "vg/err.h"
#include "vg/fernet.h"
#include "vg/lclass.h"

#define FERNET_MT "vg.fernet.Fernet"

typedef struct {
    vg_fernet_key_t key;
    int open;
} l_fernet_t;

static l_fernet_t *check_fernet(lua_State *L)
{
    l_fernet_t *f = luaL_checkudata(L, 1, FERNET_MT);
    if (!f->open) luaL_error(L, "attempt to use a closed Fernet object");
    return f;
}

/* The clock for a call: opts.time when given (tests), else now. */
static uint64_t opt_time(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return (uint64_t)time(NULL);
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "time");
    uint64_t t = (uint64_t)time(NULL);
    if (!lua_isnil(L, -1)) {
        lua_Number v = luaL_checknumber(L, -1);
        luaL_argcheck(L, v >= 0, idx, "time must not be negative");
        t = (uint64_t)v;
    }
    lua_pop(L, 1);
    return t;
}

static int l_fernet_new(lua_State *L)
{
    const char *b64 = lua_isnoneornil(L, 1) ? vg_config_str("FERNET_KEY") : luaL_checkstring(L, 1);
    const char *why = NULL;
    vg_fernet_key_t key;

    if (b64 == NULL || *b64 == '\0')
        return vg_err_raise(L, "invalid_key", false,
                            "no Fernet key: pass one or set FERNET_KEY (url-safe base64 of 32 "
                            "bytes, 44 characters)");
    if (vg_fernet_key_parse(b64, &key, &why) != 0)
        return vg_err_raise(L, "invalid_key", false, "%s",
                            lua_isnoneornil(L, 1) ? why
                                                  : "a Fernet key must be url-safe base64 of "
                                                    "32 bytes (44 characters)");
    l_fernet_t *f = lua_newuserdatauv(L, sizeof *f, 0);
    f->key = key;
    f->open = 1;
    OPENSSL_cleanse(&key, sizeof key);
    luaL_setmetatable(L, FERNET_MT);
    return 1;
}

static int l_fernet_encrypt(lua_State *L)
{
    l_fernet_t *f = check_fernet(L);
    size_t n;
    const char *msg = luaL_checklstring(L, 2, &n);
    uint64_t now = opt_time(L, 3);
    const unsigned char *iv = NULL;

    if (!lua_isnoneornil(L, 3)) {
        lua_getfield(L, 3, "iv");
        if (!lua_isnil(L, -1)) {
            size_t ivlen;
            iv = (const unsigned char *)luaL_checklstring(L, -1, &ivlen);
            luaL_argcheck(L, ivlen == 16, 3, "iv must be 16 bytes");
        }
        /* The string stays referenced by the opts table while we use it. */
        lua_pop(L, 1);
    }
    char *token = vg_fernet_encrypt(&f->key, (const unsigned char *)msg, n, now, iv);
    if (token == NULL) return vg_err_raise(L, "fernet_failed", false, "encryption failed (libcrypto)");
    lua_pushstring(L, token);
    free(token);
    return 1;
}

static int l_fernet_decrypt(lua_State *L)
{
    l_fernet_t *f = check_fernet(L);
    size_t n;
    const char *token = luaL_checklstring(L, 2, &n);
    lua_Integer ttl = luaL_optinteger(L, 3, 0);
    uint64_t now = opt_time(L, 4);
    unsigned char *out = NULL;
    size_t outlen = 0;
    const char *why = NULL;

    if (vg_fernet_decrypt(&f->key, token, n, (int64_t)ttl, now, &out, &outlen, &why) != 0)
        return vg_err_raise(L, "invalid_token", false, "%s", why ? why : "invalid token");
    lua_pushlstring(L, (const char *)out, outlen);
    OPENSSL_cleanse(out, outlen);
    free(out);
    return 1;
}

static int l_fernet_close(lua_State *L)
{
    l_fernet_t *f = luaL_checkudata(L, 1, FERNET_MT);
    OPENSSL_cleanse(&f->key, sizeof f->key);
    f->open = 0;
    return 0;
}

static int l_fernet_tostring(lua_State *L)
{
    l_fernet_t *f = luaL_checkudata(L, 1, FERNET_MT);
    lua_pushstring(L, f->open ? "vg.fernet.Fernet (key hidden)" : "vg.fernet.Fernet (closed)");
    return 1;
}

static int l_fernet_generate_key(lua_State *L)
{
    unsigned char raw[32];
    char out[64];

    if (RAND_bytes(raw, sizeof raw) != 1)
        return vg_err_raise(L, "fernet_failed", false, "no random bytes (libcrypto)");
    vg_b64_encode(raw, sizeof raw, out, 1);
    OPENSSL_cleanse(raw, sizeof raw);
    lua_pushstring(L, out);
    OPENSSL_cleanse(out, sizeof out);
    return 1;
}

static const luaL_Reg fernet_methods[] = {
    {"encrypt", l_fernet_encrypt},
    {"decrypt", l_fernet_decrypt},
    {"close", l_fernet_close},
    {NULL, NULL},
};

static const luaL_Reg fernet_meta[] = {
    {"__gc", l_fernet_close},
    {"__close", l_fernet_close},
    {"__tostring", l_fernet_tostring},
    {NULL, NULL},
};

static const luaL_Reg fernet_funcs[] = {
    {"new", l_fernet_new},
    {"generate_key", l_fernet_generate_key},
    {NULL, NULL},
};

int luaopen_vg_fernet(lua_State *L)
{
    vg_lclass_new(L, FERNET_MT, fernet_methods, fernet_meta, 0);
    /* Hide the metatable from scripts: nothing to read or swap there. */
    luaL_getmetatable(L, FERNET_MT);
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    luaL_newlib(L, fernet_funcs);
    return 1;
}
