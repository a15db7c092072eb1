/* require "vg.proc": run external commands without blocking the loop.
 *
 *   proc.run(argv [, opts]) -> result
 *       Runs a command to completion and returns its result table. Waits, so
 *       it must be called from a task. argv is a list of strings (numbers are
 *       converted); argv[1] is looked up in PATH; there is no shell (run
 *       {"sh", "-c", script} for one). The child runs in its own session and
 *       process group; the timeout and cancellation signal that whole group.
 *
 *   proc.spawn(argv [, opts]) -> Process
 *       Starts a long-running child and returns at once (takes the same
 *       opts; a task is not needed). Waits on a Process are not cancelled
 *       by shutdown; the Process object owns the child (see below).
 *
 *   opts (all optional; an unknown key is an error):
 *     timeout     seconds; on expiry SIGTERM to the child's process group,
 *                 then SIGKILL after kill_after; result.timed_out = true
 *     kill_after  seconds between SIGTERM and SIGKILL (default 2)
 *     env         table name -> value added to (or overriding) the host's
 *                 environment; a value of false removes that variable
 *     clear_env   true: start from an empty environment (only opts.env)
 *     cwd         working directory of the child
 *     stdin       string written to the child's stdin, which is then closed
 *                 (default: stdin is /dev/null)
 *     max_output  bytes kept per stream, default 1 MiB (at most 1 GiB); the
 *                 TAIL is kept and <stream>_truncated is set (the buffer
 *                 may briefly hold up to twice that)
 *
 *   result = {
 *     code = int|nil,          exit code; nil when a signal ended the child
 *     signal = int|nil,        the terminating signal, signal_name = "SIGTERM"
 *     stdout = string, stderr = string,
 *     stdout_truncated = bool, stderr_truncated = bool,
 *     timed_out = bool,        opts.timeout expired (the group was terminated)
 *     duration = seconds,      from start to exit
 *     pid = int,
 *   }
 *   Output written after the command exited, by a background process that
 *   still holds the pipe, is read for at most 0.5 s more.
 *
 *   Errors (error objects, see vg.error):
 *     spawn_failed: the command cannot start; fields command and reason
 *       ("ENOENT", "EACCES", ...), and a message naming both (and the cwd
 *       when that is what is missing). retriable=false, except when the
 *       host ran out of processes, descriptors or memory (EAGAIN, EMFILE,
 *       ENFILE, ENOMEM).
 *     cancelled: the task calling proc.run was cancelled (e.g. at shutdown):
 *       the child's group gets SIGTERM, then SIGKILL after kill_after; the
 *       child is reaped and its handles closed in the background.
 *
 *   Process (from proc.spawn):
 *     p:pid()                    -> integer
 *     p:running()                -> true until the child has exited
 *     p:kill([sig [, {group=true}]])
 *                                -> true when sent, false when the child
 *                                   has already exited. sig: "TERM",
 *                                   "SIGTERM", "KILL", "INT", ... or a
 *                                   number (default TERM); to the process
 *                                   itself unless group=true
 *     p:wait([timeout])          -> result (as proc.run), or nil + error
 *                                   {code="timeout"} when timeout seconds
 *                                   pass first (the child keeps running)
 *     p:stdout(), p:stderr()     -> text captured so far (bounded tail)
 *     p:wait_output(pattern [, timeout [, {plain=true, stream="stdout"}]])
 *                                -> the matched text (and any captures) as
 *                                   soon as the captured stream contains the
 *                                   Lua pattern; nil + error {code="timeout"}
 *                                   when timeout passes first, or nil + error
 *                                   {code="exited"} when the child's output
 *                                   ended without a match
 *     Closing a Process while another task waits on it ends that wait with
 *       nil + error {code="closed"}.
 *     <close> / garbage collection: SIGKILL to the child's process group if
 *       it still runs, then the Process is closed (methods raise "attempt to
 *       use a closed process"). Keep a reference for as long as the child
 *       should live; `local p <close> = proc.spawn(...)` kills it at the end
 *       of the scope even when a test fails.
 *   Children still running when the host exits are killed (SIGKILL to the
 *   group); ones being terminated (a cancelled proc.run) first get the rest
 *   of their kill_after, at most 5 s in all.
 *
 *   proc.signals               {HUP = 1, INT = 2, KILL = 9, TERM = 15, ...}
 */
#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "vg/buf.h"
#include "vg/util.h"
#include "vg/err.h"
#include "vg/guard.h"
#include "vg/lclass.h"
#include "vg/proc.h"
#include "vg/sched_host.h"

#define PROCESS_MT "vg.proc.Process"
#define MAX_OUTPUT_LIMIT ((lua_Integer)1 << 30)
#define SHUTDOWN_MAX_WAIT 5.0

extern char **environ;

typedef struct waiter waiter_t;

typedef struct {
    vg_proc_t *p;          /* NULL once closed */
    bool kill_on_close;    /* spawn: yes; run's internal object: no */
    const char *label;     /* "process <command>" for the shutdown report */
    waiter_t *waiters;
} l_process_t;

/* A task waiting on a Process; a userdata on the waiting task's stack. */
struct waiter {
    vg_task_t *task;
    l_process_t *owner;
    waiter_t *prev, *next;
    bool linked;
    bool want_output;         /* wait_output: woken on every read */
    bool terminate_on_cancel; /* proc.run */
    bool plain;
    vg_proc_stream_t stream;
    double deadline;          /* seconds (uv_hrtime), < 0: none */
};

/* ---- waiters -------------------------------------------------------------- */

static void waiter_link(l_process_t *lp, waiter_t *w)
{
    w->prev = NULL;
    w->next = lp->waiters;
    if (lp->waiters) lp->waiters->prev = w;
    lp->waiters = w;
    w->linked = true;
}

static void waiter_unlink(waiter_t *w)
{
    if (!w->linked) return;
    l_process_t *lp = w->owner;
    if (w->prev) w->prev->next = w->next;
    else lp->waiters = w->next;
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
    w->linked = false;
}

/* The wait ended another way (cancel, timeout): detach; a cancelled
 * proc.run terminates its child. */
static void waiter_cleanup(void *op)
{
    waiter_t *w = op;
    waiter_unlink(w);
    if (w->terminate_on_cancel && w->owner->p) vg_proc_terminate(w->owner->p);
}

static void wake_waiters(l_process_t *lp, bool output_only)
{
    waiter_t *w = lp->waiters;
    while (w) {
        waiter_t *next = w->next;
        if (!output_only || w->want_output) {
            waiter_unlink(w);
            vg_task_wake(w->task);
        }
        w = next;
    }
}

/* From the core's libuv callbacks. */
static void on_proc_event(void *arg, vg_proc_event_t ev)
{
    wake_waiters(arg, ev == VG_PROC_EV_OUTPUT);
}

static double now_s(void) { return (double)uv_hrtime() / 1e9; }

/* ---- labels --------------------------------------------------------------- */

/* The scheduler keeps the label pointer after the wait, so labels are
 * interned for the life of the host (a bounded set; "process" beyond it). */
static const char *intern_label(const char *command)
{
    static char *labels[64];
    static size_t n_labels;
    const char *base = strrchr(command, '/');
    base = base ? base + 1 : command;
    char buf[80];
    snprintf(buf, sizeof buf, "process %.60s", base);
    for (size_t i = 0; i < n_labels; i++)
        if (strcmp(labels[i], buf) == 0) return labels[i];
    if (n_labels == sizeof labels / sizeof labels[0]) return "process";
    labels[n_labels] = vg_xstrdup(buf);
    return labels[n_labels++];
}

/* ---- arguments ------------------------------------------------------------ */

/* A string from the value on top (string or number), anchored in the keep
 * table at `keep`; pops the value. NULL when it is neither. */
static const char *keep_string(lua_State *L, int keep)
{
    int t = lua_type(L, -1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER) {
        lua_pop(L, 1);
        return NULL;
    }
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len) {
        lua_pop(L, 1);
        return NULL;
    }
    lua_rawseti(L, keep, (lua_Integer)lua_rawlen(L, keep) + 1);
    return s;
}

static char **new_strv(lua_State *L, int keep, size_t n)
{
    char **v = lua_newuserdatauv(L, (n + 1) * sizeof *v, 0);
    lua_rawseti(L, keep, (lua_Integer)lua_rawlen(L, keep) + 1);
    memset(v, 0, (n + 1) * sizeof *v);
    return v;
}

static void parse_argv(lua_State *L, int idx, int keep, vg_proc_opts_t *o)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    size_t n = lua_rawlen(L, idx);
    luaL_argcheck(L, n > 0, idx, "argv must not be empty");
    char **v = new_strv(L, keep, n);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i + 1);
        v[i] = (char *)keep_string(L, keep);
        if (!v[i])
            luaL_argerror(L, idx, lua_pushfstring(L, "argv[%d] must be a string without NUL",
                                                  (int)i + 1));
        if (i == 0 && !*v[i]) luaL_argerror(L, idx, "argv[1] must not be empty");
    }
    o->argv = v;
}

/* The child's environment: the host's (unless clear_env) with env's
 * entries added, replaced, or (false) removed. */
static void parse_env(lua_State *L, int opts, int keep, vg_proc_opts_t *o)
{
    lua_getfield(L, opts, "clear_env");
    bool clear = lua_toboolean(L, -1);
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        luaL_argerror(L, opts, "clear_env must be a boolean");
    lua_pop(L, 1);
    lua_getfield(L, opts, "env");
    int env = lua_gettop(L);
    if (lua_isnil(L, env) && !clear) {
        lua_pop(L, 1);
        return; /* inherit as it is */
    }
    if (!lua_isnil(L, env) && !lua_istable(L, env)) luaL_argerror(L, opts, "env must be a table");
    lua_newtable(L); /* name -> value */
    int merged = lua_gettop(L);
    if (!clear) {
        for (char **e = environ; e && *e; e++) {
            const char *eq = strchr(*e, '=');
            if (!eq || eq == *e) continue;
            lua_pushlstring(L, *e, (size_t)(eq - *e));
            lua_pushstring(L, eq + 1);
            lua_rawset(L, merged);
        }
    }
    if (!lua_isnil(L, env)) {
        lua_pushnil(L);
        while (lua_next(L, env)) {
            const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            if (!name || !*name || strchr(name, '=') || strlen(name) != lua_rawlen(L, -2))
                luaL_argerror(L, opts, "env names must be non-empty strings without '='");
            int t = lua_type(L, -1);
            if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
                lua_pop(L, 1);
                lua_pushvalue(L, -1);
                lua_pushnil(L);
            } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
                size_t len;
                const char *val = lua_tolstring(L, -1, &len); /* converts the copy */
                if (strlen(val) != len)
                    luaL_argerror(L, opts, lua_pushfstring(L, "env.%s contains a NUL", name));
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
            } else {
                luaL_argerror(L, opts,
                              lua_pushfstring(L, "env.%s must be a string, number or false", name));
            }
            lua_rawset(L, merged); /* leaves the key for lua_next */
        }
    }
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, merged)) {
        n++;
        lua_pop(L, 1);
    }
    char **v = new_strv(L, keep, n);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, merged)) {
        lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
        v[i++] = (char *)keep_string(L, keep);
        lua_pop(L, 1);
    }
    o->env = v;
    lua_pop(L, 2); /* merged, env */
}

static double opt_seconds(lua_State *L, int opts, const char *key, double dflt, bool positive)
{
    lua_getfield(L, opts, key);
    double v = dflt;
    if (!lua_isnil(L, -1)) {
        int isnum;
        v = lua_tonumberx(L, -1, &isnum);
        if (!isnum || v != v || v > 1e9 || (positive ? v <= 0 : v < 0))
            luaL_argerror(L, opts,
                          lua_pushfstring(L, "%s must be a %s number of seconds", key,
                                          positive ? "positive" : "non-negative"));
    }
    lua_pop(L, 1);
    return v;
}

static const char *opt_string(lua_State *L, int opts, int keep, const char *key, size_t *len)
{
    lua_getfield(L, opts, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_argerror(L, opts, lua_pushfstring(L, "%s must be a string", key));
    const char *s = lua_tolstring(L, -1, len);
    lua_rawseti(L, keep, (lua_Integer)lua_rawlen(L, keep) + 1);
    return s;
}

static void check_option_names(lua_State *L, int opts)
{
    static const char *const known[] = {"timeout", "kill_after", "env",   "clear_env",
                                        "cwd",     "stdin",      "max_output", NULL};
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        bool ok = false;
        for (int i = 0; k && known[i]; i++)
            if (strcmp(k, known[i]) == 0) ok = true;
        if (!ok)
            luaL_argerror(L, opts, lua_pushfstring(L, "unknown option '%s'",
                                                   k ? k : luaL_typename(L, -1)));
    }
}

/* Fill o from argv and opts; every string stays anchored in the table it
 * pushes (pop it after vg_proc_start). */
static void parse_args(lua_State *L, int argv, int opts, vg_proc_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->max_output = VG_PROC_DEFAULT_MAX_OUTPUT;
    o->kill_after = VG_PROC_DEFAULT_KILL_AFTER;
    o->timeout = -1;
    lua_newtable(L);
    int keep = lua_gettop(L);
    parse_argv(L, argv, keep, o);
    if (lua_isnoneornil(L, opts)) return;
    luaL_checktype(L, opts, LUA_TTABLE);
    check_option_names(L, opts);
    o->timeout = opt_seconds(L, opts, "timeout", -1, true);
    o->kill_after = opt_seconds(L, opts, "kill_after", VG_PROC_DEFAULT_KILL_AFTER, false);
    o->cwd = opt_string(L, opts, keep, "cwd", NULL);
    o->stdin_data = opt_string(L, opts, keep, "stdin", &o->stdin_len);
    lua_getfield(L, opts, "max_output");
    if (!lua_isnil(L, -1)) {
        int isint;
        lua_Integer m = lua_tointegerx(L, -1, &isint);
        if (!isint || m < 0 || m > MAX_OUTPUT_LIMIT)
            luaL_argerror(L, opts, "max_output must be an integer from 0 to 2^30");
        o->max_output = (size_t)m;
    }
    lua_pop(L, 1);
    parse_env(L, opts, keep, o);
}

static int raise_spawn_failed(lua_State *L, const vg_proc_opts_t *o, int rc)
{
    const char *cmd = o->argv[0];
    /* Out of processes, descriptors or memory may pass; a bad command not. */
    bool retriable = rc == UV_EAGAIN || rc == UV_EMFILE || rc == UV_ENFILE || rc == UV_ENOMEM;
    if (rc == UV_ENOENT && o->cwd && !vg_is_dir(o->cwd))
        vg_err_push(L, "spawn_failed", retriable, "cannot run '%s': working directory '%s': %s",
                    cmd, o->cwd, uv_strerror(rc));
    else
        vg_err_push(L, "spawn_failed", retriable, "cannot run '%s': %s", cmd, uv_strerror(rc));
    lua_pushstring(L, cmd);
    lua_setfield(L, -2, "command");
    lua_pushstring(L, uv_err_name(rc));
    lua_setfield(L, -2, "reason");
    return lua_error(L);
}

/* Start a child from argv and opts; pushes its Process object. */
static l_process_t *start_process(lua_State *L, int argv, int opts, bool kill_on_close)
{
    l_process_t *lp = lua_newuserdatauv(L, sizeof *lp, 0);
    memset(lp, 0, sizeof *lp);
    luaL_setmetatable(L, PROCESS_MT);
    lp->kill_on_close = kill_on_close;
    int ud = lua_gettop(L);
    vg_proc_opts_t o;
    parse_args(L, argv, opts, &o);
    vg_proc_t *p;
    int rc = vg_proc_start(vg_loop(), &o, on_proc_event, lp, &p);
    if (rc < 0) return raise_spawn_failed(L, &o, rc), NULL;
    lp->p = p;
    lp->label = intern_label(o.argv[0]);
    lua_settop(L, ud); /* drop the keep table */
    return lp;
}

/* ---- results -------------------------------------------------------------- */

static void push_stream(lua_State *L, vg_proc_t *p, vg_proc_stream_t s, bool *truncated)
{
    const char *data;
    size_t len;
    vg_proc_output(p, s, &data, &len, truncated);
    lua_pushlstring(L, data, len);
}

static void push_result(lua_State *L, vg_proc_t *p)
{
    vg_proc_status_t st;
    vg_proc_status(p, &st);
    bool trunc;
    lua_createtable(L, 0, 11);
    lua_pushinteger(L, st.pid);
    lua_setfield(L, -2, "pid");
    if (st.signal) {
        lua_pushinteger(L, st.signal);
        lua_setfield(L, -2, "signal");
        const char *name = vg_proc_signal_name(st.signal);
        if (name) lua_pushstring(L, name);
        else lua_pushfstring(L, "SIG%d", st.signal);
        lua_setfield(L, -2, "signal_name");
    } else {
        lua_pushinteger(L, st.code);
        lua_setfield(L, -2, "code");
    }
    push_stream(L, p, VG_PROC_STDOUT, &trunc);
    lua_setfield(L, -2, "stdout");
    lua_pushboolean(L, trunc);
    lua_setfield(L, -2, "stdout_truncated");
    push_stream(L, p, VG_PROC_STDERR, &trunc);
    lua_setfield(L, -2, "stderr");
    lua_pushboolean(L, trunc);
    lua_setfield(L, -2, "stderr_truncated");
    lua_pushboolean(L, st.timed_out);
    lua_setfield(L, -2, "timed_out");
    lua_pushnumber(L, st.duration);
    lua_setfield(L, -2, "duration");
}

/* nil + error object; returns 2. */
static int push_fail(lua_State *L, const char *code, bool retriable, const char *msg,
                     l_process_t *lp)
{
    lua_pushnil(L);
    if (lp->p)
        vg_err_push(L, code, retriable, "%s (pid %d, %s)", msg, vg_proc_pid(lp->p),
                    vg_proc_command(lp->p));
    else
        vg_err_push(L, code, retriable, "%s", msg);
    return 2;
}

/* ---- waiting -------------------------------------------------------------- */

/* Push a waiter on L's stack, link it and yield to k. */
static int wait_on(lua_State *L, vg_task_t *t, l_process_t *lp, waiter_t *w, double timeout,
                   lua_KFunction k)
{
    w->task = t;
    w->owner = lp;
    waiter_link(lp, w);
    vg_task_wait(t, 0, timeout, waiter_cleanup, w);
    vg_task_wait_label(t, lp->label);
    return vg_task_yield(L, 0, k);
}

static waiter_t *new_waiter(lua_State *L)
{
    waiter_t *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    w->deadline = -1;
    return w;
}

/* Stack: 1 argv, 2 opts, 3 Process, 4 waiter. */
static int run_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_task_woken(L); /* raises `cancelled`; otherwise the child is done */
    l_process_t *lp = lua_touserdata(L, 3);
    push_result(L, lp->p);
    /* Free the buffers now rather than at the next GC cycle. */
    vg_proc_t *p = lp->p;
    lp->p = NULL;
    vg_proc_release(p);
    return 1;
}

static int l_proc_run(lua_State *L)
{
    lua_settop(L, 2);
    vg_task_t *t = vg_task_current(L); /* before starting anything */
    l_process_t *lp = start_process(L, 1, 2, false);
    waiter_t *w = new_waiter(L);
    w->terminate_on_cancel = true;
    return wait_on(L, t, lp, w, -1, run_k);
}

static int l_proc_spawn(lua_State *L)
{
    lua_settop(L, 2);
    start_process(L, 1, 2, true);
    return 1;
}

/* ---- Process ---------------------------------------------------------------- */

static l_process_t *check_process(lua_State *L)
{
    l_process_t *lp = luaL_checkudata(L, 1, PROCESS_MT);
    if (!lp->p) luaL_error(L, "attempt to use a closed process");
    return lp;
}

static int l_process_pid(lua_State *L)
{
    lua_pushinteger(L, vg_proc_pid(check_process(L)->p));
    return 1;
}

static int l_process_running(lua_State *L)
{
    vg_proc_status_t st;
    vg_proc_status(check_process(L)->p, &st);
    lua_pushboolean(L, !st.exited);
    return 1;
}

static int check_signal(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return SIGTERM;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, idx);
        luaL_argcheck(L, n >= 0 && n < 65, idx, "invalid signal number");
        return (int)n;
    }
    const char *name = luaL_checkstring(L, idx);
    int sig = vg_proc_signal_number(name);
    if (sig < 0) luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
    return sig;
}

static int l_process_kill(lua_State *L)
{
    l_process_t *lp = check_process(L);
    int sig = check_signal(L, 2);
    bool group = false;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "group");
        group = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int rc = vg_proc_signal(lp->p, sig, group);
    if (rc == UV_ESRCH) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (rc < 0)
        return vg_err_raise(L, "kill_failed", false, "cannot signal pid %d: %s",
                            vg_proc_pid(lp->p), uv_strerror(rc));
    lua_pushboolean(L, 1);
    return 1;
}

static int output_of(lua_State *L, vg_proc_stream_t s)
{
    bool trunc;
    push_stream(L, check_process(L)->p, s, &trunc);
    return 1;
}

static int l_process_stdout(lua_State *L) { return output_of(L, VG_PROC_STDOUT); }

static int l_process_stderr(lua_State *L) { return output_of(L, VG_PROC_STDERR); }

/* Stack: 1 Process, 2 timeout, 3 waiter. */
static int wait_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_wake_t why = vg_task_woken(L);
    l_process_t *lp = lua_touserdata(L, 1);
    if (!lp->p) return push_fail(L, "closed", false, "the process was closed", lp);
    vg_proc_status_t st;
    vg_proc_status(lp->p, &st);
    if (st.done) {
        push_result(L, lp->p);
        return 1;
    }
    (void)why; /* a timeout, or woken while not done: report the timeout */
    return push_fail(L, "timeout", true, "process still running after the wait's timeout", lp);
}

static int l_process_wait(lua_State *L)
{
    l_process_t *lp = check_process(L);
    double timeout = -1;
    if (!lua_isnoneornil(L, 2)) {
        timeout = luaL_checknumber(L, 2);
        luaL_argcheck(L, timeout >= 0, 2, "timeout must be a non-negative number");
    }
    lua_settop(L, 2);
    vg_proc_status_t st;
    vg_proc_status(lp->p, &st);
    if (st.done) {
        push_result(L, lp->p);
        return 1;
    }
    vg_task_t *t = vg_task_current(L);
    return wait_on(L, t, lp, new_waiter(L), timeout, wait_k);
}

/* Look for the pattern (stack index 2) in the waiter's stream: pushes the
 * matched text and any captures and returns their count, or returns 0. */
static int try_match(lua_State *L, l_process_t *lp, vg_proc_stream_t s, bool plain)
{
    int top = lua_gettop(L);
    bool trunc;
    push_stream(L, lp->p, s, &trunc);
    lua_pushvalue(L, lua_upvalueindex(1)); /* string.find */
    lua_pushvalue(L, top + 1);
    lua_pushvalue(L, 2);
    lua_pushinteger(L, 1);
    lua_pushboolean(L, plain);
    lua_call(L, 4, LUA_MULTRET);
    if (lua_isnil(L, top + 2)) {
        lua_settop(L, top);
        return 0;
    }
    size_t len;
    const char *text = lua_tolstring(L, top + 1, &len);
    lua_Integer a = lua_tointeger(L, top + 2), b = lua_tointeger(L, top + 3);
    lua_pushlstring(L, text + a - 1, (size_t)(b - a + 1));
    lua_replace(L, top + 1);
    lua_remove(L, top + 2); /* start */
    lua_remove(L, top + 2); /* end */
    return lua_gettop(L) - top;
}

/* Stack: 1 Process, 2 pattern, 3 timeout, 4 opts, 5 waiter. */
static int wait_output_k(lua_State *L, int status, lua_KContext ctx)
{
    vg_wake_t why = vg_task_woken(L);
    l_process_t *lp = lua_touserdata(L, 1);
    waiter_t *w = lua_touserdata(L, 5);
    if (!lp->p) return push_fail(L, "closed", false, "the process was closed", lp);
    int n = try_match(L, lp, w->stream, w->plain);
    if (n > 0) return n;
    vg_proc_status_t st;
    vg_proc_status(lp->p, &st);
    if (st.done) return push_fail(L, "exited", false, "output ended without a match", lp);
    double left = -1;
    if (w->deadline >= 0) {
        left = w->deadline - now_s();
        if (why == VG_WAKE_TIMEOUT || left <= 0)
            return push_fail(L, "timeout", true, "no match in the output before the timeout", lp);
    }
    return wait_on(L, vg_task_current(L), lp, w, left, wait_output_k);
}

static int l_process_wait_output(lua_State *L)
{
    l_process_t *lp = check_process(L);
    luaL_checkstring(L, 2);
    double timeout = -1;
    if (!lua_isnoneornil(L, 3)) {
        timeout = luaL_checknumber(L, 3);
        luaL_argcheck(L, timeout >= 0, 3, "timeout must be a non-negative number");
    }
    bool plain = false;
    vg_proc_stream_t stream = VG_PROC_STDOUT;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_getfield(L, 4, "plain");
        plain = lua_toboolean(L, -1);
        lua_getfield(L, 4, "stream");
        const char *s = luaL_optstring(L, -1, "stdout");
        if (strcmp(s, "stderr") == 0) stream = VG_PROC_STDERR;
        else if (strcmp(s, "stdout") != 0) luaL_argerror(L, 4, "stream must be stdout or stderr");
        lua_pop(L, 2);
    }
    lua_settop(L, 4);
    int n = try_match(L, lp, stream, plain);
    if (n > 0) return n;
    vg_proc_status_t st;
    vg_proc_status(lp->p, &st);
    if (st.done) return push_fail(L, "exited", false, "output ended without a match", lp);
    vg_task_t *t = vg_task_current(L);
    waiter_t *w = new_waiter(L);
    w->want_output = true;
    w->plain = plain;
    w->stream = stream;
    if (timeout >= 0) w->deadline = now_s() + timeout;
    return wait_on(L, t, lp, w, timeout, wait_output_k);
}

/* __close and __gc: kill a spawned child that still runs, then let go. */
static void close_process(l_process_t *lp, bool wake)
{
    vg_proc_t *p = lp->p;
    if (!p) return;
    if (lp->kill_on_close) {
        vg_proc_status_t st;
        vg_proc_status(p, &st);
        if (!st.exited) vg_proc_signal(p, SIGKILL, true);
    }
    lp->p = NULL;
    /* Waiters see the closed object. In __gc there can be none but at
     * lua_close, when no task may be woken any more. */
    if (wake) wake_waiters(lp, false);
    else lp->waiters = NULL;
    vg_proc_release(p);
}

static int l_process_close(lua_State *L)
{
    close_process(luaL_checkudata(L, 1, PROCESS_MT), true);
    return 0;
}

static int l_process_gc(lua_State *L)
{
    close_process(luaL_checkudata(L, 1, PROCESS_MT), false);
    return 0;
}

static int l_process_tostring(lua_State *L)
{
    l_process_t *lp = luaL_checkudata(L, 1, PROCESS_MT);
    if (!lp->p) {
        lua_pushliteral(L, "vg.proc.Process (closed)");
        return 1;
    }
    vg_proc_status_t st;
    vg_proc_status(lp->p, &st);
    lua_pushfstring(L, "vg.proc.Process(%d %s, %s)", st.pid, vg_proc_command(lp->p),
                    st.exited ? "exited" : "running");
    return 1;
}

static const luaL_Reg process_methods[] = {
    {"pid", l_process_pid},       {"running", l_process_running},
    {"kill", l_process_kill},     {"wait", l_process_wait},
    {"stdout", l_process_stdout}, {"stderr", l_process_stderr},
    {"wait_output", l_process_wait_output}, {NULL, NULL},
};

static const luaL_Reg process_meta[] = {
    {"__close", l_process_close}, {"__gc", l_process_gc}, {"__tostring", l_process_tostring},
    {NULL, NULL},
};

/* ---- module ------------------------------------------------------------------ */

static void on_host_exit(void *arg) { vg_proc_shutdown(vg_loop(), SHUTDOWN_MAX_WAIT); }

/* proc.fence(deadline) -> sets the fence deadline (vg.now() seconds; nil or
 * 0 clears it): when it passes, the step guard SIGKILLs the process group of
 * every child at once, even if this process is spinning or stopped. */
static int l_proc_fence(lua_State *L)
{
    double d = lua_isnoneornil(L, 1) ? 0.0 : (double)luaL_checknumber(L, 1);
    vg_guard_set_deadline(d);
    return 0;
}

/* proc.guard_pid() -> the pid of the step guard, or nil before the first
 * child (for tests and diagnostics). */
static int l_proc_guard_pid(lua_State *L)
{
    int pid = vg_guard_pid();
    if (pid > 0) lua_pushinteger(L, pid);
    else lua_pushnil(L);
    return 1;
}

static const luaL_Reg proc_funcs[] = {
    {"run", l_proc_run},
    {"spawn", l_proc_spawn},
    {"fence", l_proc_fence},
    {"guard_pid", l_proc_guard_pid},
    {NULL, NULL},
};

int luaopen_vg_proc(lua_State *L)
{
    static bool atexit_added;
    if (!atexit_added) {
        vg_sched_atexit(on_host_exit, NULL);
        atexit_added = true;
    }
    /* The methods' upvalue: string.find, as it was when vg.proc opened. */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "string");
    lua_getfield(L, -1, "find");
    if (!lua_isfunction(L, -1)) return luaL_error(L, "vg.proc needs the string library");
    lua_replace(L, -3);
    lua_pop(L, 1);
    vg_lclass_new(L, PROCESS_MT, process_methods, process_meta, 1);
    luaL_newlib(L, proc_funcs);
    lua_newtable(L);
    const char *name;
    int number;
    for (size_t i = 0; vg_proc_signal_at(i, &name, &number); i++) {
        lua_pushinteger(L, number);
        lua_setfield(L, -2, name);
    }
    lua_setfield(L, -2, "signals");
    return 1;
}
