/* DATABASE_URL: normalising schemes, redacting passwords, describing targets. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "vg/dburl.h"

static void test_normalise_accepts(void)
{
    static const char *const cases[][2] = {
        {"postgresql://u:p@h:5432/db", "postgresql://u:p@h:5432/db"},
        {"postgres://u:p@h:5432/db", "postgresql://u:p@h:5432/db"},
        {"postgresql+asyncpg://u:p@h/db?ssl=require", "postgresql://u:p@h/db?ssl=require"},
        {"postgresql+psycopg://u:p@h/db", "postgresql://u:p@h/db"},
        {"postgresql+psycopg2://h/db", "postgresql://h/db"},
        {"postgresql+pg8000://h/db", "postgresql://h/db"},
        {"postgres+asyncpg://h/db", "postgresql://h/db"},
        {"PostgreSQL://h/db", "postgresql://h/db"},
        {"postgresql://", "postgresql://"},
        {"postgres:///db?host=/var/run/postgresql", "postgresql:///db?host=/var/run/postgresql"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *why = NULL;
        char *out = vg_dburl_normalise(cases[i][0], &why);
        CHECK_STREQ(out, cases[i][1], "normalise %s", cases[i][0]);
        free(out);
    }
}

static void test_normalise_rejects(void)
{
    static const char *const cases[] = {
        "mysql://u:p@h/db", "host=h dbname=db", "h:5432/db", "postgresql:/h/db",
        "postgresql+://h/db", "postgresqlx://h/db", "xpostgresql://h/db", "postgresql+a b://h",
        "postgresql+asyncpg:h/db", "http://x/?u=postgresql://h", " postgresql://h/db", "://h/db",
    };
    const char *why = NULL;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = vg_dburl_normalise(cases[i], &why);
        CHECK(out == NULL && why != NULL && strstr(why, "postgresql://") != NULL,
              "normalise rejects \"%s\"", cases[i]);
        free(out);
    }
    why = NULL;
    CHECK(vg_dburl_normalise("", &why) == NULL && why != NULL, "normalise rejects empty");
    why = NULL;
    CHECK(vg_dburl_normalise(NULL, &why) == NULL && why != NULL, "normalise rejects NULL");
}

/* Every input holds the word "secret" only inside a password. */
static void test_redact(void)
{
    static const char *const cases[][2] = {
        {"postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"},
        {"postgresql://user:se%40cret@host/db", "postgresql://user:***@host/db"},
        {"postgresql://user:se@cret@host/db", "postgresql://user:***@host/db"},
        {"postgresql://user:se@c:ret@host", "postgresql://user:***@host"},
        {"postgresql://user:secret@h1:5432,h2:5433/db", "postgresql://user:***@h1:5432,h2:5433/db"},
        {"postgresql://user:secret@host/db?sslmode=require",
         "postgresql://user:***@host/db?sslmode=require"},
        {"postgresql://user:se/cret@host/db", "postgresql://user:***@host/db"},
        {"postgresql://user:se/c@ret@host?sslmode=require", "postgresql://user:***@host?sslmode=require"},
        {"postgresql://h/db?application_name=a@b", "postgresql://h/db?application_name=a@b"},
        {"postgresql://user@host/db", "postgresql://user@host/db"},
        {"postgresql://user:@host/db", "postgresql://user:@host/db"},
        {"postgresql://host/db", "postgresql://host/db"},
        {"postgresql://host/a@b", "postgresql://host/a@b"},
        {"postgresql://host/db?password=secret&sslmode=require",
         "postgresql://host/db?password=***&sslmode=require"},
        {"postgresql://host/db?sslmode=require&password=secret#x",
         "postgresql://host/db?sslmode=require&password=***#x"},
        {"host=h password=secret dbname=d", "host=h password=*** dbname=d"},
        {"host=h password = 'se cret\\' x' dbname=d", "host=h password =*** dbname=d"},
        {"password='secret", "password=***"},
        {"PGPASSWORD=secret psql", "PGPASSWORD=*** psql"},
        {"db error: postgresql://u:secret@h/db: timeout", "db error: postgresql://u:***@h/db: timeout"},
        {"a postgres://u:secret@h1/d and redis://:secret@h2/0",
         "a postgres://u:***@h1/d and redis://:***@h2/0"},
        {"", ""},
        {"no url here", "no url here"},
        {"://", "://"},
        {"postgresql://host:5432", "postgresql://host:5432"}, /* no "@": no credentials */
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = vg_dburl_redact(cases[i][0]);
        CHECK_STREQ(out, cases[i][1], "redact %s", cases[i][0]);
        free(out);
    }
}

static void test_describe(void)
{
    static const char *const cases[][2] = {
        {"postgresql://user:secret@host:5432/db", "host:5432/db"},
        {"postgresql://user:secret@host/db", "host/db"},
        {"postgresql://user:se@cret@host:5432/db", "host:5432/db"},
        {"postgresql://user:se%40cret@host:5432/db", "host:5432/db"},
        {"postgresql://user:secret@host", "host"},
        {"postgresql://user:se/cret@host:5432/db", "host:5432/db"},
        {"postgresql://h:5432/db?application_name=a@b", "h:5432/db"},
        {"postgresql://user:secret@host:6543", "host:6543"},
        {"postgresql:///db?host=/var/run/postgresql", "/var/run/postgresql/db"},
        {"postgresql://%2Fvar%2Frun%2Fpostgresql/db", "/var/run/postgresql/db"},
        {"postgresql://user:secret@/db?host=%2Ftmp&port=5433", "/tmp:5433/db"},
        {"postgresql://[::1]:5432/db", "[::1]:5432/db"},
        {"postgresql://[::1]/db", "[::1]/db"},
        {"postgresql://h1:5432,h2:5433/db", "h1:5432,h2:5433/db"},
        {"postgresql://h/db?password=secret&sslmode=require", "h/db"},
        {"postgresql://h/db?dbname=other", "h/other"},
        {"postgresql://h/my%20db", "h/my db"},
        {"postgresql://h/db%00x", "h/db%00x"},
        {"postgresql://?hostaddr=10.0.0.1&port=5433", "10.0.0.1:5433"},
        {"postgresql://", "(default)"},
        {"postgresql:///db", "(default)/db"},
        {"host=h dbname=d password=secret", "(not a URL)"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = vg_dburl_describe(cases[i][0]);
        CHECK_STREQ(out, cases[i][1], "describe %s", cases[i][0]);
        CHECK(out != NULL && strstr(out, "secret") == NULL && strstr(out, "cret") == NULL,
              "describe %s hides the password", cases[i][0]);
        free(out);
    }
}

/* A long URL: no fixed-size buffer anywhere. */
static void test_long(void)
{
    size_t n = 100000;
    const char *head = "postgresql://user:";
    char *url = malloc(n + 64);
    char *red, *desc;

    if (url == NULL)
        abort();
    strcpy(url, head);
    memset(url + strlen(head), 'x', n);
    strcpy(url + strlen(head) + n, "@host/db");
    red = vg_dburl_redact(url);
    desc = vg_dburl_describe(url);
    CHECK_STREQ(red, "postgresql://user:***@host/db", "redact a 100 kB password");
    CHECK_STREQ(desc, "host/db", "describe with a 100 kB password");
    free(red);
    free(desc);
    free(url);
}

/* Passwords found by their position in the URL, whatever they hold. */
static void test_password_span(void)
{
    static const char *const cases[][2] = {
        {"postgresql://u:MySecret%@host/db", "MySecret%"},
        {"postgresql://u:se@cret@host/db", "se@cret"},
        {"postgresql://u:se:cr:et@host/db", "se:cr:et"},
        {"postgresql://u:se/cret@host/db", "se/cret"},
        {"postgresql://u:s\xc3\xa9" "cr\xe2\x82\xac" "et@host/db", "s\xc3\xa9" "cr\xe2\x82\xac" "et"},
        {"postgresql://u:a%2Fb@host/db", "a%2Fb"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t start = 0, len = 0;
        bool found = vg_dburl_password_span(cases[i][0], &start, &len);
        CHECK(found && len == strlen(cases[i][1]) &&
                  memcmp(cases[i][0] + start, cases[i][1], len) == 0,
              "password span of %s", cases[i][0]);
    }
    size_t st, ln;
    CHECK(!vg_dburl_password_span("postgresql://u@host/db", &st, &ln), "no password");
    CHECK(!vg_dburl_password_span("postgresql://host/db", &st, &ln), "no credentials");
}

/* The parser's messages quote pieces of a password; once the URL has been
 * normalised, every redacted message hides them. */
static void test_redact_remembered(void)
{
    const char *why;
    char *n1 = vg_dburl_normalise("postgresql://u:MySecret%@host/db", &why);
    char *n2 = vg_dburl_normalise("postgres://u:pass/word@host/db", &why);
    char *n3 = vg_dburl_normalise("postgresql://u:p%C3%A4ss%40wd@host/db", &why);
    static const char *const msgs[] = {
        "invalid percent-encoded token: \"MySecret%\"",
        "invalid integer value \"pass\" for connection option \"port\"",
        "could not translate host name \"word@host\" to address",
        "wrong: p\xc3\xa4ss@wd and p%C3%A4ss%40wd",
    };
    static const char *const secrets[] = {"MySecret", "pass", "word", "p\xc3\xa4ss", "C3%A4ss"};
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
        char *red = vg_dburl_redact(msgs[i]);
        for (size_t k = 0; k < sizeof secrets / sizeof secrets[0]; k++)
            CHECK(strstr(red, secrets[k]) == NULL, "\"%s\" hides %s: %s", msgs[i], secrets[k], red);
        CHECK(strstr(red, "***") != NULL, "\"%s\" shows stars", msgs[i]);
        free(red);
    }
    char *plain = vg_dburl_redact("connection refused: is the server running?");
    CHECK_STREQ(plain, "connection refused: is the server running?", "other text is kept");
    free(plain);
    free(n1);
    free(n2);
    free(n3);
}

static void test_password_problem(void)
{
    static const char *const bad[] = {
        "postgresql://u:MySecret%@host/db", "postgresql://u:se@cret@host/db",
        "postgresql://u:se/cret@host/db", "postgresql://u:a%zzb@host/db",
        "postgresql://u:a%00b@host/db",
    };
    static const char *const good[] = {
        "postgresql://u:se:cret@host/db", "postgresql://u:s%40e%2Fc%25@host/db",
        "postgresql://u:s\xc3\xa9" "cret@host/db", "postgresql://u@host/db", "postgresql://host/db",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *p = vg_dburl_password_problem(bad[i]);
        CHECK(p != NULL && strstr(p, "percent-encode") != NULL, "refuses %s", bad[i]);
        CHECK(p == NULL || (strstr(p, "cret") == NULL && strstr(p, "MySecret") == NULL),
              "never quotes the password: %s", p ? p : "");
        free(p);
    }
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char *p = vg_dburl_password_problem(good[i]);
        CHECK(p == NULL, "accepts %s", good[i]);
        free(p);
    }
}

int main(void)
{
    test_normalise_accepts();
    test_normalise_rejects();
    test_redact();
    test_describe();
    test_long();
    test_password_span();
    test_password_problem();
    test_redact_remembered();
    return check_done();
}
