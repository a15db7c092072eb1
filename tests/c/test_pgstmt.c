/* The prepared-statement cache's keys (vg/pgstmt.h): a statement is found
 * by its SQL and parameter types, compared in place; names are vg_s<id>. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "vg/pgstmt.h"

static void add(vg_pgstmts_t *s, const char *sql, int n, const Oid *types, unsigned id)
{
    vg_pgstmt_ref_t r;
    vg_pgstmt_ref(&r, sql, n, types);
    vg_pgstmt_t st;
    st.key = vg_pgstmt_key(&r, &st.keylen);
    st.hash = r.hash;
    st.id = id;
    vg_pgstmts_add(s, &st);
}

static int find(const vg_pgstmts_t *s, const char *sql, int n, const Oid *types)
{
    vg_pgstmt_ref_t r;
    vg_pgstmt_ref(&r, sql, n, types);
    return vg_pgstmts_find(s, &r);
}

static void test_names(void)
{
    char buf[24];
    vg_pgstmt_name(buf, sizeof buf, 0);
    CHECK_STREQ(buf, "vg_s0", "name of id 0");
    vg_pgstmt_name(buf, sizeof buf, 42);
    CHECK_STREQ(buf, "vg_s42", "name of id 42");
    vg_pgstmt_name(buf, sizeof buf, 4294967295u);
    CHECK_STREQ(buf, "vg_s4294967295", "name of the largest id");
    vg_pgstmt_name(buf, 6, 12345);
    CHECK_STREQ(buf, "", "a buffer too small gets an empty name, never a cut one");
}

static void test_find(void)
{
    vg_pgstmts_t s = {0};
    /* Longer than a few words, so the word-at-a-time hash and the compare
     * both see whole words and a tail. */
    char long_sql[3001];
    memset(long_sql, 'x', sizeof long_sql - 1);
    long_sql[sizeof long_sql - 1] = '\0';
    const Oid text_bytea[2] = {0, 17};
    add(&s, "SELECT $1, $2", 2, NULL, 1);
    add(&s, "SELECT $1, $2", 2, text_bytea, 2);
    add(&s, long_sql, 0, NULL, 3);

    const Oid zeros[2] = {0, 0};
    CHECK(find(&s, "SELECT $1, $2", 2, NULL) == 0, "same SQL, no types: found");
    CHECK(find(&s, "SELECT $1, $2", 2, zeros) == 0, "no types is the same as all unspecified");
    CHECK(find(&s, "SELECT $1, $2", 2, text_bytea) == 1, "a bytea parameter: its own statement");
    CHECK(find(&s, "SELECT $1, $3", 2, NULL) == -1, "another SQL of the same length: not found");
    CHECK(find(&s, "SELECT $1, $", 2, NULL) == -1, "a prefix of a known SQL: not found");
    CHECK(find(&s, "SELECT $1, $2", 1, NULL) == -1, "another parameter count: not found");
    CHECK(find(&s, long_sql, 0, NULL) == 2, "a long SQL: found");
    long_sql[2999] = 'y';
    CHECK(find(&s, long_sql, 0, NULL) == -1, "a long SQL with its last byte changed: not found");
    long_sql[2999] = 'x';
    long_sql[8] = 'y';
    CHECK(find(&s, long_sql, 0, NULL) == -1, "a long SQL with a byte in its second word changed: not found");

    vg_pgstmt_ref_t r1, r2;
    vg_pgstmt_ref(&r1, "SELECT $1, $2", 2, text_bytea);
    vg_pgstmt_ref(&r2, "SELECT $1, $2", 2, text_bytea);
    CHECK(r1.hash == r2.hash, "a statement gets the same hash each time it is looked up");
    vg_pgstmts_free(&s);
}

int main(void)
{
    test_names();
    test_find();
    return check_done();
}
