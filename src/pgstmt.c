/* The prepared-statement cache of one connection (see vg/pgstmt.h). */
#include "vg/pgstmt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"

void vg_pgstmt_name(char *buf, size_t size, unsigned id)
{
    snprintf(buf, size, "vg_s%u", id);
}

char *vg_pgstmt_key(const char *sql, int nparams, const Oid *types, size_t *len,
                    uint32_t *hash)
{
    size_t sl = strlen(sql);
    size_t tl = (size_t)nparams * sizeof(Oid);
    size_t n = sl + 1 + sizeof nparams + tl;
    char *k = vg_xmalloc(n);
    memcpy(k, sql, sl + 1);
    memcpy(k + sl + 1, &nparams, sizeof nparams);
    if (tl) {
        if (types) memcpy(k + sl + 1 + sizeof nparams, types, tl);
        else memset(k + sl + 1 + sizeof nparams, 0, tl);
    }
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)k[i]) * 16777619u;
    *len = n;
    *hash = h;
    return k;
}

int vg_pgstmts_find(const vg_pgstmts_t *s, const char *key, size_t len, uint32_t hash)
{
    for (int i = 0; i < s->n; i++) {
        const vg_pgstmt_t *st = &s->slots[i];
        if (st->hash == hash && st->keylen == len && memcmp(st->key, key, len) == 0) return i;
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
