/* The prepared-statement cache of one connection (see vg/pgstmt.h). */
#include "vg/pgstmt.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"

void vg_pgstmt_name(char *buf, size_t size, unsigned id)
{
    /* "vg_s" and the id's digits, without printf: called for every execute. */
    char tmp[VG_UDEC_MAX];
    char *end = tmp + sizeof tmp, *p = vg_udec(end, id);
    size_t n = (size_t)(end - p);
    if (size < 4 + n + 1) {
        if (size) buf[0] = '\0';
        return;
    }
    memcpy(buf, "vg_s", 4);
    memcpy(buf + 4, p, n);
    buf[4 + n] = '\0';
}

/* The key is the SQL with its NUL, nparams, then the parameter types (zeros
 * when none are given); its hash is taken over those three parts in turn,
 * eight bytes at a time. A key is only built when a statement is added:
 * looking one up hashes and compares the caller's SQL in place, since the
 * worker sends the same few statements of up to a few KiB again and again. */
static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
        b += 8;
        n -= 8;
    }
    while (n--) h = (h ^ *b++) * 0x100000001b3ULL;
    return h;
}

static Oid type_of(const vg_pgstmt_ref_t *r, int i) { return r->types ? r->types[i] : 0; }

static size_t key_len(const vg_pgstmt_ref_t *r)
{
    return r->sql_len + 1 + sizeof r->nparams + (size_t)r->nparams * sizeof(Oid);
}

void vg_pgstmt_ref(vg_pgstmt_ref_t *r, const char *sql, int nparams, const Oid *types)
{
    *r = (vg_pgstmt_ref_t){sql, strlen(sql), nparams, types, 0};
    uint64_t h = 0xcbf29ce484222325ULL;
    h = hash_bytes(h, sql, r->sql_len + 1);
    h = hash_bytes(h, &nparams, sizeof nparams);
    for (int i = 0; i < nparams; i++) {
        Oid t = type_of(r, i);
        h = hash_bytes(h, &t, sizeof t);
    }
    r->hash = (uint32_t)(h ^ (h >> 32));
}

char *vg_pgstmt_key(const vg_pgstmt_ref_t *r, size_t *len)
{
    size_t n = key_len(r);
    char *k = vg_xmalloc(n);
    char *p = k;
    memcpy(p, r->sql, r->sql_len + 1);
    p += r->sql_len + 1;
    memcpy(p, &r->nparams, sizeof r->nparams);
    p += sizeof r->nparams;
    for (int i = 0; i < r->nparams; i++, p += sizeof(Oid)) {
        Oid t = type_of(r, i);
        memcpy(p, &t, sizeof t);
    }
    *len = n;
    return k;
}

int vg_pgstmts_find(const vg_pgstmts_t *s, const vg_pgstmt_ref_t *r)
{
    size_t len = key_len(r);
    for (int i = 0; i < s->n; i++) {
        const vg_pgstmt_t *st = &s->slots[i];
        if (st->hash != r->hash || st->keylen != len ||
            memcmp(st->key, r->sql, r->sql_len + 1) != 0)
            continue;
        /* Same SQL and length: compare nparams and the types as stored. */
        const char *p = st->key + r->sql_len + 1;
        int np;
        memcpy(&np, p, sizeof np);
        bool same = np == r->nparams;
        p += sizeof np;
        for (int j = 0; j < r->nparams && same; j++, p += sizeof(Oid)) {
            Oid t;
            memcpy(&t, p, sizeof t);
            same = t == type_of(r, j);
        }
        if (same) return i;
    }
    return -1;
}

int vg_pgstmts_has_room(vg_pgstmts_t *s)
{
    return s->n < VG_PGCONN_MAX_STMTS;
}

int vg_pgstmts_add(vg_pgstmts_t *s, vg_pgstmt_t *stmt)
{
    if (!s->slots) s->slots = vg_xcalloc(VG_PGCONN_MAX_STMTS, sizeof *s->slots);
    int slot = s->n++;
    s->slots[slot] = *stmt;
    stmt->key = NULL;
    return slot;
}

void vg_pgstmts_clear(vg_pgstmts_t *s)
{
    for (int i = 0; i < s->n; i++) free(s->slots[i].key);
    s->n = 0;
}

void vg_pgstmts_free(vg_pgstmts_t *s)
{
    vg_pgstmts_clear(s);
    free(s->slots);
    s->slots = NULL;
}

vg_pgexec_t *vg_pgexec_copy(int n, const char *const *values, const int *lengths,
                            const int *formats)
{
    vg_pgexec_t *e = vg_xcalloc(1, sizeof *e);
    size_t m = n ? (size_t)n : 1;
    e->n = n;
    e->vals = vg_xcalloc(m, sizeof *e->vals);
    e->lens = vg_xcalloc(m, sizeof *e->lens);
    e->fmts = vg_xcalloc(m, sizeof *e->fmts);
    for (int i = 0; i < n; i++) {
        int fmt = formats ? formats[i] : 0;
        e->fmts[i] = fmt;
        if (!values || !values[i]) continue;
        /* libpq reads a binary value's length, a text value up to its NUL. */
        size_t len = fmt ? (size_t)(lengths ? lengths[i] : 0) : strlen(values[i]);
        e->vals[i] = vg_xmalloc(len + 1);
        memcpy(e->vals[i], values[i], len);
        e->vals[i][len] = '\0';
        e->lens[i] = (int)len;
    }
    return e;
}

void vg_pgexec_free(vg_pgexec_t *e)
{
    if (!e) return;
    free(e->stmt.key);
    for (int i = 0; i < e->n; i++) free(e->vals[i]);
    free(e->vals);
    free(e->lens);
    free(e->fmts);
    free(e);
}
