/* DATABASE_URL handling.
 *
 * The URL shape is libpq's:
 *   postgresql://[user[:password]@][host][:port][,...][/dbname][?param=value&...]
 * Redaction errs on the side of hiding too much: a log line with a few extra
 * stars is harmless, a leaked password is not. */
#include "vg/dburl.h"

#define _GNU_SOURCE
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vg/buf.h"
#include "vg/util.h"

/* Passwords of every URL normalised so far (raw and percent-decoded), masked
 * wherever vg_dburl_redact finds them: libpq's messages quote pieces of a
 * URL it cannot parse without the URL around them. */
static char **secrets;
static size_t n_secrets;

static void remember_url_secret(const char *url);

static const char *const bad_scheme =
    "DATABASE_URL must start with postgresql:// (or postgres://, postgresql+asyncpg://)";

/* ---- normalise ---------------------------------------------------------- */

/* Length of the scheme when s starts with "<scheme>://", else 0. */
static size_t scheme_len(const char *s)
{
    const char *sep = strstr(s, "://");

    return sep ? (size_t)(sep - s) : 0;
}

/* A driver name as SQLAlchemy writes it: "asyncpg", "psycopg", "pg8000". */
static bool is_driver(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_')
            return false;
    return true;
}

/* Scheme names are case-insensitive (RFC 3986), so accept "PostgreSQL://". */
static bool is_pg_scheme(const char *s, size_t n)
{
    static const char *const bases[] = {"postgresql", "postgres"};

    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        size_t b = strlen(bases[i]);
        if (n < b || strncasecmp(s, bases[i], b) != 0)
            continue;
        if (n == b)
            return true;
        if (s[b] == '+' && is_driver(s + b + 1, n - b - 1))
            return true;
    }
    return false;
}

char *vg_dburl_normalise(const char *url, const char **why)
{
    static const char canonical[] = "postgresql";
    size_t slen, rest;
    char *out;

    if (url == NULL || url[0] == '\0') {
        *why = "DATABASE_URL is empty";
        return NULL;
    }
    slen = scheme_len(url);
    if (slen == 0 || !is_pg_scheme(url, slen)) {
        *why = bad_scheme;
        return NULL;
    }
    rest = strlen(url + slen); /* "://..." */
    out = vg_xmalloc(sizeof canonical - 1 + rest + 1);
    memcpy(out, canonical, sizeof canonical - 1);
    memcpy(out + sizeof canonical - 1, url + slen, rest + 1);
    remember_url_secret(out);
    return out;
}

/* ---- redact ------------------------------------------------------------- */

/* The last '@' before the first character of `stops` (or the end). */
static const char *last_at(const char *p, const char *stops)
{
    const char *at = NULL;

    for (; *p != '\0' && strchr(stops, *p) == NULL; p++)
        if (*p == '@')
            at = p;
    return at;
}

/* Where the "user:password" part of the authority starting at p ends: the
 * LAST '@' before the first '/', since a careless password may hold a raw '@'.
 * Failing that, the last '@' before the query or a blank: generated passwords
 * often hold an unencoded '/' (base64), and such a URL still ends up in error
 * messages. NULL when there is no '@' (no credentials). */
static const char *userinfo_end(const char *p)
{
    const char *at = last_at(p, "/");

    return at ? at : last_at(p, "?# \t\r\n");
}

/* At s[0] just after "://": copy the authority's user part to b and stars for
 * a non-empty password. Returns how many bytes of s were consumed. */
static size_t redact_userinfo(vg_buf_t *b, const char *s)
{
    const char *at = userinfo_end(s);
    const char *colon;

    if (at == NULL)
        return 0;
    colon = memchr(s, ':', (size_t)(at - s));
    if (colon == NULL || colon + 1 == at)
        return 0;
    vg_buf_add(b, s, (size_t)(colon + 1 - s));
    vg_buf_adds(b, "***");
    return (size_t)(at - s);
}

/* If s starts with "password" (any case), optional blanks and '=', the length
 * up to and including the '='; else 0. Matching inside longer keys
 * (PGPASSWORD=, db_password=) is deliberate. */
static size_t password_key_len(const char *s)
{
    size_t i = sizeof "password" - 1;

    if (strncasecmp(s, "password", i) != 0)
        return 0;
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    return s[i] == '=' ? i + 1 : 0;
}

/* Length of the value at s: a libpq single-quoted value (backslash escapes
 * the next character), else up to a blank, or in a URL query also up to '&'
 * or '#'. */
static size_t password_value_len(const char *s, bool in_query)
{
    size_t i = 0;

    while (s[i] == ' ' || s[i] == '\t')
        i++;
    if (s[i] == '\'') {
        for (i++; s[i] != '\0' && s[i] != '\''; i++)
            if (s[i] == '\\' && s[i + 1] != '\0')
                i++;
        return s[i] == '\'' ? i + 1 : i;
    }
    while (s[i] != '\0' && !isspace((unsigned char)s[i]) &&
           !(in_query && (s[i] == '&' || s[i] == '#')))
        i++;
    return i;
}

static char *redact_patterns(const char *s)
{
    vg_buf_t b = VG_BUF_INIT;
    bool in_url = false, in_query = false; /* within the current word */
    size_t i = 0;

    while (s[i] != '\0') {
        size_t k;
        if (strncmp(s + i, "://", 3) == 0) {
            vg_buf_add(&b, "://", 3);
            i += 3;
            i += redact_userinfo(&b, s + i);
            in_url = true;
        } else if ((k = password_key_len(s + i)) > 0) {
            vg_buf_add(&b, s + i, k);
            i += k;
            i += password_value_len(s + i, in_query);
            vg_buf_adds(&b, "***");
        } else {
            if (isspace((unsigned char)s[i]))
                in_url = in_query = false;
            else if (s[i] == '?' && in_url)
                in_query = true;
            vg_buf_addc(&b, s[i++]);
        }
    }
    return vg_buf_steal(&b);
}

/* ---- describe ----------------------------------------------------------- */

/* Append s[0..n) percent-decoded (libpq decodes host and dbname, so a socket
 * directory may arrive as %2Fvar%2Frun%2Fpostgresql). "%00" and malformed
 * escapes are kept literally. */
static void add_decoded(vg_buf_t *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = -1, lo = -1;
        if (s[i] == '%' && i + 2 < n) {
            hi = vg_hex_digit(s[i + 1]);
            lo = vg_hex_digit(s[i + 2]);
        }
        if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
            vg_buf_addc(b, (char)(hi << 4 | lo));
            i += 2;
        } else {
            vg_buf_addc(b, s[i]);
        }
    }
}

/* A piece of the URL: start and length. */
typedef struct span {
    const char *p;
    size_t n;
} span_t;

typedef struct target {
    span_t host, port, db;
} target_t;

/* Set *out to the value of query parameter `key` in q[0..n), if present; a
 * later occurrence wins, as in libpq. */
static void query_param(const char *q, size_t n, const char *key, span_t *out)
{
    size_t klen = strlen(key);
    size_t i = 0;

    while (i < n) {
        size_t end = i;
        while (end < n && q[end] != '&')
            end++;
        if (end - i > klen && strncmp(q + i, key, klen) == 0 && q[i + klen] == '=') {
            out->p = q + i + klen + 1;
            out->n = end - i - klen - 1;
        }
        i = end + 1;
    }
}

static const char *last_colon(const char *s, size_t n)
{
    while (n > 0)
        if (s[--n] == ':')
            return s + n;
    return NULL;
}

/* Split the part after "://" into host list, port, dbname; query parameters
 * override the URL parts like libpq does. The password is never looked at. */
static void target_parse(const char *s, target_t *t)
{
    const char *at = userinfo_end(s);
    const char *h = at ? at + 1 : s;
    size_t hn = strcspn(h, "/?#");
    const char *rest = h + hn;
    const char *colon;

    memset(t, 0, sizeof *t);
    t->host = (span_t){h, hn};
    /* A single host's ":port" ("[::1]:5432" keeps its brackets); host lists
     * ("h1:5432,h2:5433") are shown whole. */
    colon = last_colon(h, hn);
    if (colon && !memchr(h, ',', hn) && !memchr(colon, ']', (size_t)(h + hn - colon))) {
        t->host.n = (size_t)(colon - h);
        t->port = (span_t){colon + 1, (size_t)(h + hn - colon - 1)};
    }
    if (*rest == '/') {
        size_t dn = strcspn(rest + 1, "?#");
        t->db = (span_t){rest + 1, dn};
        rest += 1 + dn;
    }
    if (*rest == '?') {
        size_t qn = strcspn(rest + 1, "#");
        span_t hostaddr = {NULL, 0};
        query_param(rest + 1, qn, "hostaddr", &hostaddr);
        if (hostaddr.n > 0)
            t->host = hostaddr;
        query_param(rest + 1, qn, "host", &t->host);
        query_param(rest + 1, qn, "port", &t->port);
        query_param(rest + 1, qn, "dbname", &t->db);
    }
}

char *vg_dburl_describe(const char *url)
{
    vg_buf_t b = VG_BUF_INIT;
    size_t slen = url ? scheme_len(url) : 0;
    target_t t;

    if (slen == 0)
        return vg_xstrdup("(not a URL)");
    target_parse(url + slen + 3, &t);
    /* Format "host[:port][/db]"; a socket directory stands where the host
     * would (it starts with '/'); no host at all means libpq's default. */
    if (t.host.n > 0)
        add_decoded(&b, t.host.p, t.host.n);
    else
        vg_buf_adds(&b, "(default)");
    if (t.port.n > 0) {
        vg_buf_addc(&b, ':');
        add_decoded(&b, t.port.p, t.port.n);
    }
    if (t.db.n > 0) {
        vg_buf_addc(&b, '/');
        add_decoded(&b, t.db.p, t.db.n);
    }
    return vg_buf_steal(&b);
}

/* ---- passwords by position ---------------------------------------------- */

bool vg_dburl_password_span(const char *url, size_t *start, size_t *len)
{
    const char *sep = url ? strstr(url, "://") : NULL;
    const char *auth, *at, *colon;

    if (sep == NULL)
        return false;
    auth = sep + 3;
    at = userinfo_end(auth);
    if (at == NULL)
        return false;
    colon = memchr(auth, ':', (size_t)(at - auth));
    if (colon == NULL || colon + 1 == at)
        return false;
    *start = (size_t)(colon + 1 - url);
    *len = (size_t)(at - colon - 1);
    return true;
}

static void add_secret(const char *s, size_t n)
{
    for (size_t i = 0; i < n_secrets; i++)
        if (strlen(secrets[i]) == n && memcmp(secrets[i], s, n) == 0)
            return;
    secrets = vg_xrealloc(secrets, (n_secrets + 1) * sizeof *secrets);
    secrets[n_secrets] = vg_xmalloc(n + 1);
    memcpy(secrets[n_secrets], s, n);
    secrets[n_secrets][n] = '\0';
    n_secrets++;
}

static void remember_url_secret(const char *url)
{
    size_t start, len;
    vg_buf_t dec = VG_BUF_INIT;

    if (!vg_dburl_password_span(url, &start, &len))
        return;
    add_secret(url + start, len);
    add_decoded(&dec, url + start, len);
    if (dec.len > 0)
        add_secret(dec.data, dec.len);
    vg_buf_free(&dec);
}

/* Whether the n bytes at q share a piece with a remembered password: q is
 * part of it, or holds a run of min(4, its length) of its bytes. */
static bool touches_secret(const char *q, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n_secrets; i++) {
        const char *sec = secrets[i];
        size_t sl = strlen(sec), run = sl < 4 ? sl : 4;
        if (n <= sl && memmem(sec, sl, q, n) != NULL)
            return true;
        for (size_t j = 0; j + run <= sl && run > 0; j++)
            if (memmem(q, n, sec + j, run) != NULL)
                return true;
    }
    return false;
}

/* Mask remembered passwords in s: every occurrence, and every quoted
 * token ("..." or '...') that shares a piece with one. */
static char *mask_secrets(const char *s)
{
    vg_buf_t b = VG_BUF_INIT;
    size_t i = 0, n = strlen(s);

    while (i < n) {
        size_t k, m = 0;
        for (k = 0; k < n_secrets && m == 0; k++) {
            size_t sl = strlen(secrets[k]);
            /* Shorter ones would mask ordinary words; their quoted
             * tokens are still masked below. */
            if (sl >= 4 && strncmp(s + i, secrets[k], sl) == 0)
                m = sl;
        }
        if (m > 0) {
            vg_buf_adds(&b, "***");
            i += m;
            continue;
        }
        if (s[i] == '"' || s[i] == '\'') {
            const char *close = strchr(s + i + 1, s[i]);
            if (close && touches_secret(s + i + 1, (size_t)(close - s - i - 1))) {
                vg_buf_addc(&b, s[i]);
                vg_buf_adds(&b, "***");
                vg_buf_addc(&b, s[i]);
                i = (size_t)(close - s) + 1;
                continue;
            }
        }
        vg_buf_addc(&b, s[i++]);
    }
    return vg_buf_steal(&b);
}

char *vg_dburl_redact(const char *s)
{
    char *out = redact_patterns(s ? s : "");
    if (n_secrets > 0) {
        char *masked = mask_secrets(out);
        free(out);
        out = masked;
    }
    return out;
}

/* Characters a password must percent-encode for libpq to read the URL the
 * way it was meant ('%' only when it does not start an escape). */
char *vg_dburl_password_problem(const char *url)
{
    size_t start, len;
    const char *bad = NULL;
    vg_buf_t b = VG_BUF_INIT;

    if (!vg_dburl_password_span(url, &start, &len))
        return NULL;
    for (size_t i = start; i < start + len && bad == NULL; i++) {
        char c = url[i];
        if (c == '@')
            bad = "'@' (write %40)";
        else if (c == '/')
            bad = "'/' (write %2F)";
        else if (c == '?')
            bad = "'?' (write %3F)";
        else if (c == '#')
            bad = "'#' (write %23)";
        else if (c == '%' && (i + 2 >= start + len || vg_hex_digit(url[i + 1]) < 0 ||
                              vg_hex_digit(url[i + 2]) < 0))
            bad = "'%' that does not start a %XX escape (write %25)";
        else if (c == '%' && vg_hex_digit(url[i + 1]) == 0 && vg_hex_digit(url[i + 2]) == 0)
            bad = "%00, which libpq cannot pass on";
    }
    if (bad == NULL)
        return NULL;
    vg_buf_printf(&b, "the password in DATABASE_URL holds a raw %s: percent-encode it "
                      "(the password itself is not shown)", bad);
    return vg_buf_steal(&b);
}
