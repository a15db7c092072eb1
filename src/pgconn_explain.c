/* pgconn's messages for people: libpq connection failures turned into
 * sentences a person can act on, and which SQLSTATEs are worth a retry
 * (declared in vg/pgconn.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg/dburl.h"
#include "vg/pgconn.h"


/* Copy the text between the first pair of double quotes after key. */
static void quoted_after(const char *msg, const char *key, char *out, size_t size)
{
    out[0] = '\0';
    const char *p = strstr(msg, key);
    if (!p) return;
    const char *q = strchr(p, '"');
    if (!q) return;
    const char *e = strchr(q + 1, '"');
    if (!e) return;
    size_t n = (size_t)(e - q - 1);
    if (n >= size) n = size - 1;
    memcpy(out, q + 1, n);
    out[n] = '\0';
}

const char *vg_pgconn_explain(const char *msg, char *buf, size_t size, const char **kind)
{
    char name[128], first[256];
    const char *k = "other";
    if (!msg) msg = "";
    size_t fl = strcspn(msg, "\n");
    if (fl >= sizeof first) fl = sizeof first - 1;
    memcpy(first, msg, fl);
    first[fl] = '\0';
    if (strstr(msg, "password authentication failed")) {
        quoted_after(msg, "for user", name, sizeof name);
        snprintf(buf, size, "wrong password for user \"%s\": check the password in DATABASE_URL",
                 name);
        k = "auth";
    } else if (strstr(msg, "no password supplied")) {
        snprintf(buf, size, "the server asks for a password and DATABASE_URL has none");
        k = "auth";
    } else if (strstr(msg, "pg_hba.conf")) {
        snprintf(buf, size, "the server does not accept this client (no pg_hba.conf entry for "
                            "this host, user, database or SSL mode)");
        k = "auth";
    } else if (strstr(msg, "database \"") && strstr(msg, "does not exist")) {
        quoted_after(msg, "database", name, sizeof name);
        snprintf(buf, size, "database \"%s\" does not exist on the server: check the database "
                            "name in DATABASE_URL", name);
        k = "no_database";
    } else if (strstr(msg, "role \"") && strstr(msg, "does not exist")) {
        quoted_after(msg, "role", name, sizeof name);
        snprintf(buf, size, "user \"%s\" does not exist on the server: check the user name in "
                            "DATABASE_URL", name);
        k = "no_role";
    } else if (strstr(msg, "Connection refused") ||
               (strstr(msg, "No such file or directory") && strstr(msg, "socket"))) {
        snprintf(buf, size, "connection refused: nothing listens at that address (is "
                            "PostgreSQL running, and are host and port right?)");
        k = "refused";
    } else if (strstr(msg, "could not translate host name") ||
               strstr(msg, "Name or service not known")) {
        quoted_after(msg, "host name", name, sizeof name);
        snprintf(buf, size, "unknown host \"%s\": the name does not resolve (check the host in "
                            "DATABASE_URL)", name);
        k = "unknown_host";
    } else if (strstr(msg, "timeout expired") || strstr(msg, "timed out")) {
        snprintf(buf, size, "no answer from the server within the connect timeout (wrong host, "
                            "firewall, or the server is overloaded)");
        k = "timeout";
    } else if (strstr(msg, "invalid connection option") || strstr(msg, "invalid URI") ||
               strstr(msg, "invalid integer value") || strstr(msg, "invalid port") ||
               strstr(msg, "missing \"=\"") || strstr(msg, "unterminated quoted string") ||
               strstr(msg, "invalid percent-encoded") || strstr(msg, "invalid sslmode") ||
               strstr(msg, "invalid value for parameter")) {
        snprintf(buf, size, "DATABASE_URL is not valid: %s", first);
        k = "bad_url";
    } else if (strstr(msg, "starting up") || strstr(msg, "shutting down") ||
               strstr(msg, "in recovery mode") || strstr(msg, "not yet accepting")) {
        snprintf(buf, size, "the database server is starting up or shutting down");
        k = "starting_up";
    } else if (strstr(msg, "too many connections") || strstr(msg, "connection slots")) {
        snprintf(buf, size, "the server has no free connection slots (max_connections "
                            "reached)");
        k = "too_many";
    } else {
        snprintf(buf, size, "%s", first); /* libpq's own message, first line only */
    }
    /* libpq may quote pieces of the connection string (a password among
     * them): whoever shows this text shows it redacted. */
    char *red = vg_dburl_redact(buf);
    snprintf(buf, size, "%s", red);
    free(red);
    if (kind) *kind = k;
    return buf;
}

bool vg_pg_sqlstate_retriable(const char *s)
{
    if (!s || strlen(s) != 5) return false;
    return strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0 || strncmp(s, "08", 2) == 0 ||
           strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 ||
           strcmp(s, "53300") == 0;
}
