/* Configuration from the environment: one table of known variables with
 * their defaults and validation, parsed once. Problems are collected, never
 * fatal here: the caller reports them all at once. */
#include "vg/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "vg/dburl.h"
#include "vg/fernet.h"
#include "vg/log.h"

#include <libpq-fe.h>

typedef vg_config_kind_t kind_t;
#define K_STR VG_CONFIG_STR
#define K_INT VG_CONFIG_INT
#define K_SECONDS VG_CONFIG_SECONDS
#define K_BOOL VG_CONFIG_BOOL
#define K_URL VG_CONFIG_URL
#define K_FERNET VG_CONFIG_FERNET
#define K_LEVEL VG_CONFIG_LEVEL
#define K_FORMAT VG_CONFIG_FORMAT
#define K_NAME VG_CONFIG_NAME

typedef struct var {
    const char *name;
    kind_t kind;
    const char *def;   /* default as text, NULL when none */
    double min, max;
    /* parsed state */
    bool parsed, set, valid;
    double num;
    char *str;
    char *problem;
} var_t;

#define VAR(n, k, d, lo, hi) {.name = (n), .kind = (k), .def = (d), .min = (lo), .max = (hi)}

static var_t vars[] = {
    VAR("DATABASE_URL", K_URL, NULL, 0, 0),
    VAR("DATABASE_DIRECT_URL", K_URL, NULL, 0, 0),
    VAR("FERNET_KEY", K_FERNET, NULL, 0, 0),
    VAR("WORKER_ID", K_NAME, NULL, 0, 0),
    VAR("RAILWAY_SERVICE_NAME", K_STR, NULL, 0, 0),
    VAR("RAILWAY_REPLICA_ID", K_STR, NULL, 0, 0),
    VAR("LOG_LEVEL", K_LEVEL, "info", 0, 0),
    VAR("LOG_FORMAT", K_FORMAT, "json", 0, 0),
    VAR("VG_DB_POOL_SIZE", K_INT, "10", 1, 1000),
    VAR("VG_DB_MAX_OVERFLOW", K_INT, "5", 0, 1000),
    VAR("VG_DB_POOL_TIMEOUT", K_SECONDS, "30", 0, 86400),
    VAR("VG_DB_PRE_PING", K_BOOL, "on", 0, 1),
    VAR("VG_DB_PREPARE", K_BOOL, "on", 0, 1),
    VAR("VG_DB_CONNECT_TIMEOUT", K_SECONDS, "30", 0, 86400),
    VAR("VG_CONCURRENCY", K_INT, "1", 1, 10000),
    VAR("VG_SHUTDOWN_GRACE", K_SECONDS, "30", 0, 86400),
    VAR("VG_HEARTBEAT_INTERVAL", K_SECONDS, "60", 0.01, 86400),
    VAR("VG_POLL_INTERVAL", K_SECONDS, "5", 0.01, 86400),
    VAR("VG_LEASE_SECONDS", K_SECONDS, "60", 1, 86400),
    VAR("VG_LIVENESS_SECONDS", K_SECONDS, "5", 1, 3600),
    VAR("VG_LIVENESS_DIRECT", K_BOOL, "on", 0, 1),
    VAR("VG_FENCE_MARGIN", K_SECONDS, "1", 0.1, 3600),
    VAR("VG_TASK_SLICE", K_SECONDS, "10", 0, 86400),
    VAR("VG_MAX_ATTEMPTS", K_INT, "3", 1, 1000),
    VAR("VG_RETRY_BASE", K_SECONDS, "10", 0, 86400),
    VAR("VG_RETRY_MAX", K_SECONDS, "600", 0, 604800),
    VAR("VG_BATCH", K_BOOL, "off", 0, 1),
    VAR("VG_PIPELINES", K_STR, "pipelines", 0, 0),
    VAR("VG_WORKSPACE", K_STR, "./workspace", 0, 0),
    VAR("VG_REVIEW_GATES", K_BOOL, "on", 0, 1),
    VAR("VG_HTTP_PORT", K_INT, NULL, 1, 65535),
    VAR("VG_HTTP_HOST", K_STR, "0.0.0.0", 0, 0),
    VAR("PORT", K_INT, "8080", 1, 65535),
    VAR("VG_METRICS_TOP_CHANNELS", K_INT, "50", 1, 100000),
    VAR("VG_WEB_USERS", K_STR, NULL, 0, 0),
};
#define NVARS (sizeof vars / sizeof vars[0])

static var_t *find(const char *name)
{
    for (size_t i = 0; i < NVARS; i++)
        if (strcmp(vars[i].name, name) == 0) return &vars[i];
    return NULL;
}

/* Record why v's value is refused (a printf format and its arguments);
 * returns false, for parse_value to return. */
static __attribute__((format(printf, 2, 3))) bool refuse(var_t *v, const char *fmt, ...)
{
    vg_buf_t b = VG_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    vg_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    free(v->problem);
    v->problem = vg_buf_steal(&b);
    return false;
}

static bool parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno == ERANGE || !isfinite(v)) return false;
    *out = v;
    return *end == '\0';
}

/* Seconds, optionally with a unit: 500ms, 30s, 2m, 1h. */
bool vg_config_parse_duration(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno == ERANGE || !isfinite(v)) return false;
    double scale = 1;
    if (strcmp(end, "") == 0 || strcmp(end, "s") == 0) scale = 1;
    else if (strcmp(end, "ms") == 0) scale = 0.001;
    else if (strcmp(end, "m") == 0) scale = 60;
    else if (strcmp(end, "h") == 0) scale = 3600;
    else return false;
    *out = v * scale;
    return true;
}

static bool parse_bool(const char *s, double *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) { *out = 1; return true; }
        if (strcasecmp(s, no[i]) == 0) { *out = 0; return true; }
    }
    return false;
}

/* Why libpq cannot use url as meant (malloc'd), or NULL. A password holding
 * a raw '@', '/' or a stray '%' changes how the URL parses, and libpq's own
 * message then quotes pieces of it: such URLs are refused here, by the
 * position of the password, before libpq sees them. */
static char *url_problem(const char *name, const char *url)
{
    char *problem = vg_dburl_password_problem(url);
    if (problem) return problem;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (opts) {
        PQconninfoFree(opts);
        return NULL;
    }
    char *red = vg_dburl_redact(perr ? perr : "out of memory");
    size_t n = strlen(red);
    while (n && (red[n - 1] == '\n' || red[n - 1] == ' ')) red[--n] = '\0';
    vg_buf_t b = VG_BUF_INIT;
    vg_buf_printf(&b, "%s cannot be parsed: %s", name, red);
    free(red);
    if (perr) PQfreemem(perr);
    return vg_buf_steal(&b);
}

/* Parse s into v->num / v->str; on a problem set v->problem, return false. */
static bool parse_value(var_t *v, const char *s)
{
    const char *why = NULL;
    double num = 0;
    switch (v->kind) {
    case K_STR:
        v->str = vg_xstrdup(s);
        break;
    case K_NAME: {
        size_t n = strlen(s);
        bool ok = n <= 128;
        for (size_t i = 0; ok && i < n; i++)
            ok = isgraph((unsigned char)s[i]);
        if (!ok) return refuse(v, "%s must be 1 to 128 visible characters without spaces", v->name);
        v->str = vg_xstrdup(s);
        break;
    }
    case K_URL:
        v->str = vg_dburl_normalise(s, &why);
        if (!v->str) {
            char *red = vg_dburl_redact(s);
            refuse(v, "%s is not a PostgreSQL URL (%s); got \"%s\"", v->name, why, red);
            free(red);
            return false;
        }
        if ((v->problem = url_problem(v->name, v->str)) != NULL) {
            free(v->str);
            v->str = NULL;
            return false;
        }
        break;
    case K_FERNET: {
        vg_fernet_key_t key;
        /* Never echo the key itself, not even a wrong one. */
        if (vg_fernet_key_parse(s, &key, &why) != 0)
            return refuse(v, "FERNET_KEY must be url-safe base64 of 32 bytes (44 characters): "
                             "%s (got %zu characters)", why, strlen(s));
        v->str = vg_xstrdup(s);
        break;
    }
    case K_LEVEL: {
        vg_log_level_t lvl;
        if (vg_log_parse_level(s, &lvl) != 0)
            return refuse(v, "%s must be one of debug, info, warning, error, critical; got \"%s\"",
                          v->name, s);
        v->num = lvl;
        v->str = vg_xstrdup(vg_log_level_name(lvl));
        break;
    }
    case K_FORMAT:
        if (strcasecmp(s, "json") != 0 && strcasecmp(s, "console") != 0)
            return refuse(v, "%s must be json or console; got \"%s\"", v->name, s);
        v->num = strcasecmp(s, "console") == 0;
        v->str = vg_xstrdup(v->num ? "console" : "json");
        break;
    case K_INT:
        if (!parse_double(s, &num) || num != floor(num) || num < v->min || num > v->max)
            return refuse(v, "%s must be a whole number from %.0f to %.0f; got \"%s\"", v->name,
                          v->min, v->max, s);
        v->num = num;
        break;
    case K_SECONDS:
        if (!vg_config_parse_duration(s, &num) || num < v->min || num > v->max)
            return refuse(v, "%s must be a duration in seconds from %g to %g (units ms, s, m, h "
                             "allowed); got \"%s\"", v->name, v->min, v->max, s);
        v->num = num;
        break;
    case K_BOOL:
        if (!parse_bool(s, &num))
            return refuse(v, "%s must be on/off (true/false, 1/0, yes/no); got \"%s\"", v->name, s);
        v->num = num;
        break;
    }
    return true;
}

static void parse_var(var_t *v)
{
    if (v->parsed) return;
    v->parsed = true;
    const char *raw = getenv(v->name);
    v->set = raw && *raw;
    v->valid = true;
    const char *s = v->set ? raw : v->def;
    if (s && !parse_value(v, s)) {
        v->valid = false;
        free(v->str);
        v->str = NULL;
        v->num = 0;
        /* Fall back to the default so the process can still log sanely. */
        if (v->def) (void)parse_value(v, v->def);
    }
}

bool vg_config_known(const char *name) { return find(name) != NULL; }

double vg_config_num(const char *name)
{
    var_t *v = find(name);
    if (!v) return 0;
    parse_var(v);
    return v->num;
}

const char *vg_config_str(const char *name)
{
    var_t *v = find(name);
    if (!v) return NULL;
    parse_var(v);
    return v->str;
}

int vg_config_parse(const char *name, const char *value, double *num, char **str,
                    char **problem)
{
    var_t *known = find(name);
    if (!known) return -1;
    var_t v = *known;
    v.str = NULL;
    v.problem = NULL;
    v.num = 0;
    if (!value || !*value) value = v.def;
    bool ok = !value || parse_value(&v, value);
    *num = v.num;
    *str = v.str;
    *problem = v.problem;
    return ok ? 0 : 1;
}

int vg_config_env_problems(vg_buf_t *errs, bool *host)
{
    static const char *const host_vars[] = {"LOG_LEVEL", "LOG_FORMAT", "VG_SHUTDOWN_GRACE",
                                            "VG_TASK_SLICE", "WORKER_ID"};
    int count = 0;
    *host = false;
    for (size_t i = 0; i < NVARS; i++) {
        parse_var(&vars[i]);
        if (!vars[i].set || vars[i].valid) continue;
        if (count++) vg_buf_addc(errs, ',');
        vg_json_str(errs, vars[i].problem, strlen(vars[i].problem));
        for (size_t h = 0; h < sizeof host_vars / sizeof host_vars[0]; h++)
            if (strcmp(vars[i].name, host_vars[h]) == 0) *host = true;
    }
    return count;
}

const char *vg_config_name(size_t i, vg_config_kind_t *kind)
{
    if (i >= NVARS) return NULL;
    if (kind) *kind = vars[i].kind;
    return vars[i].name;
}

char *vg_config_derive_worker_id(const char *wid, const char *svc, const char *rep)
{
    vg_buf_t b = VG_BUF_INIT;
    if (wid && *wid) {
        vg_buf_adds(&b, wid);
    } else if (svc && *svc) {
        vg_buf_adds(&b, svc);
        /* Replicas of one service share its name: a short suffix of the
         * replica id tells them apart in logs. */
        if (rep && *rep) {
            vg_buf_addc(&b, '-');
            vg_buf_add(&b, rep, strlen(rep) < 6 ? strlen(rep) : 6);
        }
    } else {
        vg_buf_adds(&b, "worker-local");
    }
    return vg_buf_steal(&b);
}

const char *vg_config_worker_id(void)
{
    static char *id;
    if (!id)
        id = vg_config_derive_worker_id(vg_config_str("WORKER_ID"),
                                        vg_config_str("RAILWAY_SERVICE_NAME"),
                                        vg_config_str("RAILWAY_REPLICA_ID"));
    return id;
}

const char *vg_config_instance(void)
{
    static char *inst;
    if (inst) return inst;
    char host[256];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    /* host:pid alone can repeat: a restarted container keeps its host name
     * and often its pid, while the old process's database session (and its
     * liveness lock, keyed by this string) may linger. A random suffix
     * keeps every process's instance its own. */
    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, GRND_NONBLOCK) != (ssize_t)sizeof nonce) {
        /* No entropy yet (early boot): time, pid and an address still differ
         * between two processes in practice. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        nonce = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16) ^
                (uint64_t)(uintptr_t)&nonce;
    }
    vg_buf_t b = VG_BUF_INIT;
    vg_buf_printf(&b, "%s:%ld:%016" PRIx64, host, (long)getpid(), nonce);
    inst = vg_buf_steal(&b);
    return inst;
}
