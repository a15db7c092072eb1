/* The prepared-statement cache of one PostgreSQL connection: which SQL
 * texts (with their parameter types) the session has prepared, under which
 * names. Plain data, no libpq calls; src/pgconn.c sends the statements.
 * The cache lives and dies with the session: a new session starts empty. */
#ifndef VG_PGSTMT_H
#define VG_PGSTMT_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

/* How many statements one connection keeps prepared; when full, further
 * SQL texts use the unnamed statement (parsed and planned every call). */
#define VG_PGCONN_MAX_STMTS 64

/* A statement is known by its SQL text and its parameter types: the types
 * a statement is prepared with stay fixed, and a bytea parameter is sent
 * with its type, so "$1" once text and once bytea are two statements. */
typedef struct {
    char *key;
    size_t keylen;
    uint32_t hash;
    unsigned id;                 /* named vg_s<id>; ids are never reused */
} vg_pgstmt_t;

typedef struct {
    vg_pgstmt_t *slots;          /* VG_PGCONN_MAX_STMTS, allocated on first use */
    int n;
    unsigned next_id;
} vg_pgstmts_t;

/* An execute waiting for its statement's prepare: copies of the caller's
 * parameters, which the caller frees as soon as vg_pgconn_send returns. */
typedef struct {
    vg_pgstmt_t stmt;
    int n;
    char **vals;
    int *lens;
    int *fmts;
} vg_pgexec_t;

/* The statement's server-side name, "vg_s<id>". */
void vg_pgstmt_name(char *buf, size_t size, unsigned id);
/* A statement to look up: (sql, parameter types), with the SQL's length
 * and the key's hash, worked out once per execute by vg_pgstmt_ref. */
typedef struct {
    const char *sql;
    size_t sql_len;
    int nparams;
    const Oid *types;            /* NULL: all unspecified */
    uint32_t hash;
} vg_pgstmt_ref_t;

void vg_pgstmt_ref(vg_pgstmt_ref_t *r, const char *sql, int nparams, const Oid *types);
/* The cache key of r: malloc'd, with its length (its hash is r->hash). */
char *vg_pgstmt_key(const vg_pgstmt_ref_t *r, size_t *len);
/* The slot holding r's statement, or -1. */
int vg_pgstmts_find(const vg_pgstmts_t *s, const vg_pgstmt_ref_t *r);
/* Is there room for one more statement? */
int vg_pgstmts_has_room(vg_pgstmts_t *s);
/* Take stmt (its key too) into a free slot; returns the slot. */
int vg_pgstmts_add(vg_pgstmts_t *s, vg_pgstmt_t *stmt);
/* Forget every statement. Used when the server may no longer have them; a
 * statement still on the server is harmless, its name is never reused. */
void vg_pgstmts_clear(vg_pgstmts_t *s);
void vg_pgstmts_free(vg_pgstmts_t *s);

/* Copy n parameters (values may be NULL; a NULL value is SQL NULL). */
vg_pgexec_t *vg_pgexec_copy(int n, const char *const *values, const int *lengths,
                            const int *formats);
void vg_pgexec_free(vg_pgexec_t *e);

#endif
