/* DATABASE_URL handling: normalising driver suffixes and redacting
 * passwords. Pure C, no I/O. */
#ifndef VG_DBURL_H
#define VG_DBURL_H

#include <stdbool.h>
#include <stddef.h>

/* Normalise a database URL for libpq: "postgres://", "postgresql://" and
 * "postgresql+<driver>://" (e.g. +asyncpg, +psycopg) all become
 * "postgresql://". Returns a malloc'd string, or NULL with *why set to a
 * static message when the URL is not a PostgreSQL URL. */
char *vg_dburl_normalise(const char *url, const char **why);

/* Copy of s (malloc'd) where the password of every URL-like
 * "scheme://user:password@" part is replaced by "***"; also redacts
 * "password=..." key/value pairs as libpq conninfo strings carry them, and
 * the password of every URL vg_dburl_normalise has seen, found by its
 * position in that URL: each occurrence, and each quoted token sharing a
 * piece with it (libpq quotes pieces of a URL it cannot parse). */
char *vg_dburl_redact(const char *s);

/* Where the password of url is, by position: after the first ':' of the
 * part following "://", up to the '@' that ends the credentials (the last
 * '@' before the first '/', else the last one before a blank, since a
 * careless password may hold a raw '@' or '/'). false when there is none. */
bool vg_dburl_password_span(const char *url, size_t *start, size_t *len);

/* A malloc'd message (never quoting the password) when the password holds a
 * character libpq would read as part of the URL's structure ('@', '/', '?',
 * '#', a '%' that starts no escape); NULL when it is fine. */
char *vg_dburl_password_problem(const char *url);

/* Host (or socket directory) and database name for log lines, malloc'd;
 * never contains the password. */
char *vg_dburl_describe(const char *url);

#endif
