/* pgconn's messages for people: libpq connection failures turned into
 * sentences a person can act on, and which SQLSTATEs are worth a retry.
 * The libpq messages are the ones libpq 15 and PostgreSQL 15 print. */
#include <string.h>

#include "check.h"
#include "vg/pgconn.h"

static void test_explain(void)
{
    static const struct {
        const char *msg, *kind, *contains;
    } cases[] = {
        {"connection to server at \"db\" (10.0.0.5), port 5432 failed: FATAL:  password "
         "authentication failed for user \"app\"\n",
         "auth", "wrong password for user \"app\""},
        {"connection to server at \"db\" (10.0.0.5), port 5432 failed: fe_sendauth: no "
         "password supplied\n",
         "auth", "has none"},
        {"connection to server at \"db\" (10.0.0.5), port 5432 failed: FATAL:  no pg_hba.conf "
         "entry for host \"10.0.0.9\", user \"app\", database \"vg\", no encryption\n",
         "auth", "pg_hba.conf"},
        {"connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  database \"vgx\" "
         "does not exist\n",
         "no_database", "database \"vgx\" does not exist"},
        {"connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  role \"bob\" does "
         "not exist\n",
         "no_role", "user \"bob\""},
        {"connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the "
         "server running on that host and accepting TCP/IP connections?\n",
         "refused", "connection refused"},
        {"connection to server on socket \"/tmp/.s.PGSQL.5432\" failed: No such file or "
         "directory\n\tIs the server running locally and accepting connections on that "
         "socket?\n",
         "refused", "connection refused"},
        {"could not translate host name \"nohost.invalid\" to address: Name or service not "
         "known\n",
         "unknown_host", "unknown host \"nohost.invalid\""},
        {"timeout expired while connecting", "timeout", "connect timeout"},
        {"invalid integer value \"x\" for connection option \"port\"\n", "bad_url",
         "DATABASE_URL is not valid"},
        {"invalid URI query parameter: \"foo\"\n", "bad_url", "DATABASE_URL is not valid"},
        {"connection to server at \"db\", port 5432 failed: FATAL:  the database system is "
         "starting up\n",
         "starting_up", "starting up"},
        {"connection to server at \"db\", port 5432 failed: FATAL:  sorry, too many clients "
         "already\nFATAL: remaining connection slots are reserved\n",
         "too_many", "max_connections"},
        {"something else entirely\nsecond line", "other", "something else entirely"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[512];
        const char *kind = NULL;
        const char *out = vg_pgconn_explain(cases[i].msg, buf, sizeof buf, &kind);
        CHECK_STREQ(kind, cases[i].kind, "explain kind %zu", i);
        CHECK(strstr(out, cases[i].contains) != NULL, "explain text %zu: %s", i, out);
        CHECK(strchr(out, '\n') == NULL, "explain text %zu is one line", i);
    }
    char tiny[8];
    vg_pgconn_explain("password authentication failed for user \"someone\"", tiny,
                      sizeof tiny, NULL);
    CHECK(strlen(tiny) == sizeof tiny - 1, "explain truncates to the buffer");
}

static void test_retriable(void)
{
    static const char *const yes[] = {"40001", "40P01", "08006", "08003", "57P01", "57P03"};
    static const char *const no[] = {"23505", "42601", "22012", "42P01", "", "4000", NULL};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        CHECK(vg_pg_sqlstate_retriable(yes[i]), "%s is retriable", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        CHECK(!vg_pg_sqlstate_retriable(no[i]), "%s is not retriable", no[i] ? no[i] : "NULL");
}

int main(void)
{
    test_explain();
    test_retriable();
    return check_done();
}
