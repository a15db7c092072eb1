/* DATABASE_URL handling: normalising driver suffixes and redacting
 * passwords. Pure C, no I/O. */
#ifndef VG_DBURL_H
#define VG_DBURL_H

#include <stddef.h>

/* Normalise a database URL for libpq: "postgres://", "postgresql://" and
 * "postgresql+<driver>://" (e.g. +asyncpg, +psycopg) all become
 * "postgresql://". Returns a malloc'd string, or NULL with *why set to a
 * static message when the URL is not a PostgreSQL URL. */
char *vg_dburl_normalise(const char *url, const char **why);

/* Copy of s (malloc'd) where the password of every URL-like
 * "scheme://user:password@" part is replaced by "***"; also redacts
 * "password=..." key/value pairs as libpq conninfo strings carry them. */
char *vg_dburl_redact(const char *s);

/* Host (or socket directory) and database name for log lines, malloc'd;
 * never contains the password. */
char *vg_dburl_describe(const char *url);

#endif
