/* Configuration from the environment. The table of known variables, their
 * defaults and validation lives in config.c. */
#ifndef VG_CONFIG_H
#define VG_CONFIG_H

#include <stdbool.h>
#include "vg/buf.h"

/* Validated value of a known numeric variable, or its default when unset or
 * invalid (invalid values are reported by vg_config_check). */
double vg_config_num(const char *name);
/* Normalised value of a known string variable, or its default (may be NULL).
 * DATABASE_URL comes back with postgresql+asyncpg:// etc. normalised. The
 * string lives until exit. */
const char *vg_config_str(const char *name);
/* Validate the named variables (required ones must be set) and every known
 * variable that is set. Appends one message per problem to errs (as a JSON
 * array body: "msg","msg"); returns the number of problems. */
int vg_config_check(const char *const *required, size_t n, vg_buf_t *errs);
/* The worker id, derived from WORKER_ID / RAILWAY_SERVICE_NAME /
 * RAILWAY_REPLICA_ID. */
const char *vg_config_worker_id(void);
/* "hostname:pid", telling apart two processes with the same worker id. */
const char *vg_config_instance(void);

bool vg_config_known(const char *name);
bool vg_config_is_set(const char *name);
/* Name of the i-th known variable, NULL past the end. */
const char *vg_config_name(size_t i);
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
