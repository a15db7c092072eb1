/* vg-host: runs a Lua 5.4 script as a task on a libuv loop.
 *
 * main() only parses the command line and sets up logging; the real
 * start-up (pmain) runs in protected mode so every failure is reported once,
 * in one place, as a critical log line. */
#include <errno.h>
#include <lauxlib.h>
#include <libgen.h>
#include <libpq-fe.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vg/buf.h"
#include "vg/config.h"
#include "vg/config_gate.h"
#include "vg/err.h"
#include "vg/host_exit.h"
#include "vg/log.h"
#include "vg/lref.h"
#include "vg/sched_host.h"
#include "vg/sig.h"
#include "vg/util.h"

int luaopen_vg(lua_State *L);
int luaopen_vg_log(lua_State *L);
int luaopen_vg_config(lua_State *L);
/* Modules added by other binding files register themselves here too. */
#include "vg/modules.h"

enum { EXIT_OK = 0, EXIT_FATAL = 1, EXIT_USAGE = 2 };

static const char usage_text[] =
    "usage: vg-host [--check] [--version] [--help] SCRIPT [ARGS...]\n"
    "\n"
    "Runs SCRIPT (Lua 5.4) as a task on an event loop, with the vg modules\n"
    "(vg, vg.log, vg.config, vg.db, vg.proc, vg.fernet) and cjson.\n"
    "\n"
    "  --check    compile SCRIPT and exit (0 when it compiles)\n"
    "  --version  print the version and exit\n"
    "  --help     print this help and exit\n"
    "\n"
    "Exit codes: 0 done (or shut down after SIGTERM/SIGINT), 1 fatal error,\n"
    "2 usage error. Configuration comes from the environment; see README.md.\n";

typedef struct {
    int argc;
    char **argv;
    int script;   /* index of SCRIPT in argv */
    bool check_only;
} cli_t;

/* Logging as LOG_LEVEL, LOG_FORMAT and WORKER_ID say, or with the defaults
 * of those that are invalid: their problems are held back for the script's
 * configuration check (vg/config_gate.h). */
static void setup_logging(void)
{
    vg_log_level_t level;
    if (vg_log_parse_level(vg_config_str("LOG_LEVEL"), &level) != 0) level = VG_LOG_INFO;
    const char *fmt = vg_config_str("LOG_FORMAT");
    vg_log_setup(level, fmt && strcmp(fmt, "console") == 0 ? VG_LOG_CONSOLE : VG_LOG_JSON,
                 vg_config_worker_id());
}

/* The shipped lua/ tree: VG_LUA_DIR, else next to the binary (installed
 * layout PREFIX/share/vg-host/lua, or the source tree's lua/). */
static char *find_lua_dir(void)
{
    const char *env = getenv("VG_LUA_DIR");
    if (env && *env) return vg_xstrdup(env);
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = '\0';
    char *dir = dirname(exe);
    static const char *const rel[] = {"/../share/vg-host/lua", "/../lua"};
    for (size_t i = 0; i < 2; i++) {
        vg_buf_t b = VG_BUF_INIT;
        vg_buf_printf(&b, "%s%s", dir, rel[i]);
        if (vg_is_dir(b.data)) {
            char *real = realpath(b.data, NULL);
            vg_buf_free(&b);
            if (real) return real;
            continue;
        }
        vg_buf_free(&b);
    }
    return NULL;
}

static void add_path(vg_buf_t *b, const char *dir)
{
    vg_buf_printf(b, "%s/?.lua;%s/?/init.lua;", dir, dir);
}

/* package.path: the script's folder, then LUA_PATH_5_4/LUA_PATH (or the
 * default), then the shipped lua/ folder. */
static void set_package_path(lua_State *L, const char *script)
{
    char *copy = vg_xstrdup(script);
    char *sdir = dirname(copy);
    char *ldir = find_lua_dir();
    vg_buf_t b = VG_BUF_INIT;
    add_path(&b, sdir);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    vg_buf_adds(&b, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (ldir) {
        vg_buf_addc(&b, ';');
        add_path(&b, ldir);
        b.data[--b.len] = '\0'; /* drop the trailing ';' */
    }
    lua_pushstring(L, b.data);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    vg_buf_free(&b);
    free(copy);
    free(ldir);
}

static void preload(lua_State *L, const char *name, lua_CFunction open)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, open);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* os.exit without closing the state: the loop may still own handles that
 * point into Lua memory. It leaves through vg_host_exit like every exit, so
 * step commands still running are killed. */
static int l_os_exit(lua_State *L)
{
    int code;
    if (lua_isboolean(L, 1)) code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
    else code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
    vg_host_exit(code, NULL);
}

static void create_arg_table(lua_State *L, const cli_t *cli)
{
    lua_createtable(L, cli->argc - cli->script - 1, cli->script + 1);
    for (int i = 0; i < cli->argc; i++) {
        lua_pushstring(L, cli->argv[i]);
        lua_rawseti(L, -2, i - cli->script);
    }
    lua_setglobal(L, "arg");
}

static void on_signal(const char *signame) { vg_sched_shutdown(signame); }

static int pmain(lua_State *L)
{
    const cli_t *cli = lua_touserdata(L, 1);
    const char *script = cli->argv[cli->script];
    luaL_openlibs(L);
    vg_err_init(L);
    lua_getglobal(L, "os");
    lua_pushcfunction(L, l_os_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
    preload(L, "vg", luaopen_vg);
    preload(L, "vg.log", luaopen_vg_log);
    preload(L, "vg.config", luaopen_vg_config);
    vg_modules_preload(L, preload);
    set_package_path(L, script);
    create_arg_table(L, cli);

    /* An invalid host setting: the script may still report it with its own
     * problems, but nothing else runs on the provisional settings. */
    bool held = vg_config_gate_needed();
    if (held && cli->check_only) {
        vg_config_gate_report();
        lua_pushinteger(L, EXIT_FATAL);
        return 1;
    }
    int rc = luaL_loadfile(L, script);
    if (rc != LUA_OK && held) {
        vg_config_gate_report();
        lua_pushinteger(L, EXIT_FATAL);
        return 1;
    }
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        bool missing = rc == LUA_ERRFILE && access(script, R_OK) != 0;
        vg_log(VG_LOG_CRITICAL, missing ? "script_not_found" : "script_syntax_error",
               VG_F_STR("script", script), VG_F_STR("error", msg ? msg : "?"), VG_F_END);
        lua_pushinteger(L, EXIT_FATAL);
        return 1;
    }
    if (cli->check_only) {
        lua_pushinteger(L, EXIT_OK);
        return 1;
    }
    uv_loop_t *loop = uv_default_loop();
    vg_sched_init(L, loop, vg_config_num("VG_SHUTDOWN_GRACE"));
    vg_sched_set_slice(vg_config_num("VG_TASK_SLICE"));
    if (held) vg_config_gate_arm(L);
    if (vg_sig_init(loop, on_signal) != 0) {
        vg_log(VG_LOG_CRITICAL, "signal_setup_failed", VG_F_END);
        lua_pushinteger(L, EXIT_FATAL);
        return 1;
    }
    int nargs = cli->argc - cli->script - 1;
    luaL_checkstack(L, nargs, "too many arguments to script");
    for (int i = cli->script + 1; i < cli->argc; i++) lua_pushstring(L, cli->argv[i]);
    vg_task_spawn(L, nargs, true);
    lua_pop(L, 1);
    int code = vg_sched_run();
    lua_pushinteger(L, code);
    return 1;
}

static void log_open_handle(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        vg_log(VG_LOG_WARNING, "handle_still_open", VG_F_STR("type", uv_handle_type_name(h->type)),
               VG_F_END);
}

/* Close what is left on the loop; bounded: handles that will not close are
 * logged, not waited for. */
static void close_loop(void)
{
    uv_loop_t *loop = uv_default_loop();
    vg_sig_close();
    uv_run(loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 10 && uv_loop_alive(loop); i++) uv_run(loop, UV_RUN_NOWAIT);
    if (uv_loop_close(loop) == UV_EBUSY) uv_walk(loop, log_open_handle, NULL);
}

static int parse_cli(int argc, char **argv, cli_t *cli)
{
    memset(cli, 0, sizeof *cli);
    cli->argc = argc;
    cli->argv = argv;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0') break;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            exit(EXIT_OK);
        } else if (strcmp(a, "--version") == 0 || strcmp(a, "-v") == 0) {
            printf("vg-host %s (%s, libuv %s, libpq %d)\n", VG_VERSION, LUA_RELEASE,
                   uv_version_string(), PQlibVersion());
            exit(EXIT_OK);
        } else if (strcmp(a, "--check") == 0) {
            cli->check_only = true;
        } else {
            fprintf(stderr, "vg-host: unknown option '%s'\n%s", a, usage_text);
            return -1;
        }
    }
    if (i >= argc) {
        fprintf(stderr, "vg-host: no script given\n%s", usage_text);
        return -1;
    }
    cli->script = i;
    return 0;
}

int main(int argc, char **argv)
{
    vg_log_guard_fds(); /* before anything opens a descriptor */
    cli_t cli;
    if (parse_cli(argc, argv, &cli) != 0) return EXIT_USAGE;
    setup_logging();

    lua_State *L = luaL_newstate();
    if (!L) {
        vg_log(VG_LOG_CRITICAL, "out_of_memory", VG_F_END);
        return EXIT_FATAL;
    }
    /* Threads copy the main thread's extra space: NULL means "not a task". */
    *(void **)lua_getextraspace(L) = NULL;
    lua_pushcfunction(L, pmain);
    lua_pushlightuserdata(L, &cli);
    int code = EXIT_FATAL;
    bool ran = lua_pcall(L, 1, 1, 0) == LUA_OK;
    if (!ran) {
        const char *msg = lua_tostring(L, -1);
        vg_log(VG_LOG_CRITICAL, "host_error", VG_F_STR("error", msg ? msg : "?"), VG_F_END);
    } else {
        code = (int)lua_tointeger(L, -1);
    }
    bool signalled = vg_shutdown_requested();
    if (!cli.check_only) close_loop();
    lua_close(L);
    /* Every reference taken in a run that ended normally has been released
     * by its owner by now; debug builds abort on a leak (vg/lref.h). */
    if (ran) vg_ref_check_leaks();
    if (signalled && code != EXIT_FATAL) code = EXIT_OK;
    vg_host_exit(code, NULL);
}
