/* Registry references through vg_ref_take / vg_ref_release
 * (include/vg/lref.h). In every build they hold and give back values; in
 * debug builds (make asan) they are counted, a reference released twice
 * aborts, and vg_ref_check_leaks() names each leaked reference and aborts
 * (checked in child processes). */
#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "vg/lref.h"

/* Run fn(L) in a child with stderr captured into err (NUL-terminated);
 * returns the child's wait status, or -1 when it could not run. */
static int in_child(lua_State *L, void (*fn)(lua_State *L), char *err, size_t size)
{
    int p[2];
    if (pipe(p) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        if (dup2(p[1], STDERR_FILENO) < 0) _exit(127);
        close(p[0]);
        fn(L);
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(p[0], err + n, size - 1 - n);
        if (r > 0 && (n += (size_t)r) < size - 1) continue;
        if (r < 0 && errno == EINTR) continue;
        break;
    }
    err[n] = '\0';
    close(p[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return status;
}

static void check_leaks(lua_State *L) { vg_ref_check_leaks(); }

static void release_twice(lua_State *L)
{
    lua_newtable(L);
    int ref = vg_ref_take(L);
    int copy = ref;
    vg_ref_release(L, &ref);
    vg_ref_release(L, &copy);
}

static bool aborted(int status)
{
    return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

int main(void)
{
    lua_State *L = luaL_newstate();
    if (!L) return 1;
    bool counted = vg_ref_live() >= 0;

    lua_pushinteger(L, 42);
    int a = vg_ref_take(L);
    lua_pushnil(L);
    int n = vg_ref_take(L);
    CHECK(a >= 0 && lua_gettop(L) == 0, "a value is taken off the stack into the registry");
    CHECK(n == LUA_REFNIL, "nil gives LUA_REFNIL");
    vg_ref_push(L, a);
    CHECK(lua_tointeger(L, -1) == 42, "the reference gives the value back");
    lua_pop(L, 1);
    vg_ref_push(L, LUA_NOREF);
    CHECK(lua_isnil(L, -1), "LUA_NOREF gives nil");
    lua_pop(L, 1);
    if (counted) CHECK(vg_ref_live() == 1, "debug build: one reference is live");

    char err[1024];
    if (counted) {
        int st = in_child(L, check_leaks, err, sizeof err);
        CHECK(aborted(st), "debug build: a reference still live at the end aborts");
        CHECK(strstr(err, "leaked (taken at tests/c/test_lref.c:") != NULL,
              "and says where it was taken: %.*s", (int)strcspn(err, "\n"), err);
        CHECK(strstr(err, "1 registry reference never released") != NULL, "and how many");
        st = in_child(L, release_twice, err, sizeof err);
        CHECK(aborted(st) && strstr(err, "released but not live") != NULL,
              "debug build: a reference released twice aborts");
    } else {
        check_skip("references are counted in debug builds only (make asan)",
                   "a leaked reference aborts the host at its end");
    }

    vg_ref_release(L, &a);
    vg_ref_release(L, &n);
    CHECK(a == LUA_NOREF && n == LUA_NOREF, "a released reference reads LUA_NOREF");
    vg_ref_release(L, &a); /* LUA_NOREF: nothing to do */
    if (counted) CHECK(vg_ref_live() == 0, "debug build: nothing is live after the release");
    int st = in_child(L, check_leaks, err, sizeof err);
    CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && err[0] == '\0',
          "with nothing live, the check at the end passes quietly");
    vg_ref_check_leaks();
    lua_close(L);
    return check_done();
}
