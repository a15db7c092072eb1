/* Configuration from the environment. The table of known variables, their
 * defaults and validation lives in config.c. */
#ifndef VG_CONFIG_H
#define VG_CONFIG_H

#include <stdbool.h>
#include "vg/buf.h"

/* The kinds of known variables: what their values are and how they are
 * checked. Bindings turn BOOL into booleans, INT and SECONDS into numbers,
 * the others into strings. */
typedef enum {
    VG_CONFIG_STR,
    VG_CONFIG_INT,
    VG_CONFIG_SECONDS,
    VG_CONFIG_BOOL,
    VG_CONFIG_URL,
    VG_CONFIG_FERNET,
    VG_CONFIG_LEVEL,
    VG_CONFIG_FORMAT,
    VG_CONFIG_NAME,
} vg_config_kind_t;

/* Validated value of a known numeric variable, or its default when unset or
 * invalid (invalid values are reported by the script's config.load). */
double vg_config_num(const char *name);
/* Normalised value of a known string variable, or its default (may be NULL).
 * DATABASE_URL comes back with postgresql+asyncpg:// etc. normalised. The
 * string lives until exit. */
const char *vg_config_str(const char *name);
/* Every problem the environment alone shows (known variables that are set
 * but invalid), appended to errs as a JSON array body
 * ("msg","msg"); *host tells whether one of them is a variable the host
 * itself uses before any script runs (LOG_LEVEL, LOG_FORMAT,
 * VG_SHUTDOWN_GRACE, VG_TASK_SLICE, WORKER_ID). Returns the number of
 * problems. */
int vg_config_env_problems(vg_buf_t *errs, bool *host);
/* The worker id, derived from WORKER_ID / RAILWAY_SERVICE_NAME /
 * RAILWAY_REPLICA_ID. */
const char *vg_config_worker_id(void);
/* "hostname:pid:nonce" (64 random bits), telling apart two processes with
 * the same worker id. */
const char *vg_config_instance(void);

bool vg_config_known(const char *name);
/* Name (and kind, when kind is not NULL) of the i-th known variable, NULL
 * past the end. */
const char *vg_config_name(size_t i, vg_config_kind_t *kind);
/* A duration: a number of seconds, or with a unit: 500ms, 30s, 10m, 1h. */
bool vg_config_parse_duration(const char *s, double *out);
/* Validate one value of a known variable without touching the process
 * state (value NULL or empty means unset: the default applies). Returns 0
 * ok, 1 invalid (*problem malloc'd), -1 unknown name. *str is malloc'd or
 * NULL. */
int vg_config_parse(const char *name, const char *value, double *num, char **str,
                    char **problem);
/* worker_id from WORKER_ID, else the Railway service name with a short
 * replica suffix, else "worker-local". Returns malloc'd. */
char *vg_config_derive_worker_id(const char *worker_id, const char *service,
                                 const char *replica);

#endif
