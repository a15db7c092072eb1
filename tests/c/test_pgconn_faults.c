/* pgconn's state machine walked through real faults against a real server
 * (TEST_DATABASE_URL, the throw-away cluster of tests/pgtmp.sh): a backend
 * terminated in the middle of a query and while idle, a query cancelled on
 * the server, a COPY, the server stopped in the middle of a connect and
 * started again, and, on sockets this test owns, a server that hangs up in
 * the middle of the start-up and one that never answers. Each case checks
 * the events and states pgconn reports, and that the loop ends with nothing
 * left open (run under ASan by make test). Without TEST_DATABASE_URL the
 * server cases are skipped; the stop and start need the cluster's folder
 * too (PGTMP_DIR, set by tests/run.sh when the cluster is its own), and are
 * skipped without it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "vg/pgconn.h"

static uv_loop_t *loop;
static char **keys, **vals;

/* What a connection reported. */
typedef struct {
    int connected, connect_failed, broken;
    int done;
    PGresult *res;
    int cancel_sent;
} seen_t;

static void on_event(vg_pgconn_t *c, vg_pgconn_event_t ev, void *arg)
{
    seen_t *s = arg;
    if (ev == VG_PGCONN_EV_CONNECTED) s->connected++;
    else if (ev == VG_PGCONN_EV_CONNECT_FAILED) s->connect_failed++;
    else s->broken++;
}

static void on_done(vg_pgconn_t *c, PGresult *res, void *arg)
{
    seen_t *s = arg;
    s->done++;
    s->res = res;
}

static void on_cancel_sent(void *arg) { ((seen_t *)arg)->cancel_sent = 1; }

/* Run the loop until *flag is non-zero, or fail after about 30 s. */
static bool run_until(const int *flag)
{
    for (int i = 0; i < 3000 && !*flag; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        if (!*flag) usleep(10000);
    }
    return *flag != 0;
}

static vg_pgconn_t *open_conn(const char *const *k, const char *const *v, double timeout,
                              seen_t *s)
{
    vg_pgconn_params_t p = {k, v, timeout};
    return vg_pgconn_connect(loop, &p, on_event, s);
}

static vg_pgconn_t *connect_ok(seen_t *s)
{
    memset(s, 0, sizeof *s);
    vg_pgconn_t *c = open_conn((const char *const *)keys, (const char *const *)vals, 10, s);
    CHECK(run_until(&s->connected), "connects to the test server");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_IDLE, "an open connection is IDLE");
    return c;
}

static void close_conn(vg_pgconn_t *c)
{
    vg_pgconn_free(c);
    for (int i = 0; i < 100 && uv_loop_alive(loop); i++) uv_run(loop, UV_RUN_NOWAIT);
}

/* A blocking admin session (fine in a test: the loop is not serving
 * anyone else) that terminates a backend. */
static void terminate_backend(int pid)
{
    PGconn *admin = PQconnectdbParams((const char *const *)keys, (const char *const *)vals, 0);
    char sql[64];
    snprintf(sql, sizeof sql, "select pg_terminate_backend(%d)", pid);
    PGresult *r = PQexec(admin, sql);
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK, "pg_terminate_backend ran");
    PQclear(r);
    PQfinish(admin);
}

/* The backend's query is running (seen by the server), so a fault hits it
 * in the middle and not before it started. */
static bool wait_active(int pid)
{
    PGconn *admin = PQconnectdbParams((const char *const *)keys, (const char *const *)vals, 0);
    char sql[128];
    snprintf(sql, sizeof sql, "select 1 from pg_stat_activity where pid = %d and state = 'active'",
             pid);
    bool active = false;
    for (int i = 0; i < 3000 && !active; i++) {
        uv_run(loop, UV_RUN_NOWAIT); /* keep flushing the query */
        PGresult *r = PQexec(admin, sql);
        active = PQntuples(r) == 1;
        PQclear(r);
        if (!active) usleep(10000);
    }
    PQfinish(admin);
    return active;
}

static void test_terminated_mid_query(void)
{
    seen_t s;
    vg_pgconn_t *c = connect_ok(&s);
    int pid = vg_pgconn_pid(c);
    CHECK(vg_pgconn_send(c, "select pg_sleep(30)", -1, NULL, NULL, NULL, NULL, on_done, &s) == 0,
          "a query is sent");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_BUSY, "a connection with a query in flight is BUSY");
    CHECK(wait_active(pid), "the query runs on the server");
    terminate_backend(pid);
    CHECK(run_until(&s.done), "the query ends when its backend is terminated");
    CHECK(s.done == 1, "its done callback runs once");
    CHECK(s.res == NULL || PQresultStatus(s.res) != PGRES_TUPLES_OK, "with no rows");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_BROKEN, "the connection is BROKEN");
    CHECK(strstr(vg_pgconn_error(c), "terminat") != NULL, "the error says why: %s",
          vg_pgconn_error(c));
    CHECK(vg_pgconn_send(c, "select 1", -1, NULL, NULL, NULL, NULL, on_done, &s) == -1,
          "a BROKEN connection takes no query");
    PQclear(s.res);
    close_conn(c);
}

static void test_terminated_while_idle(void)
{
    seen_t s;
    vg_pgconn_t *c = connect_ok(&s);
    vg_pgconn_keep_loop(c, true);
    terminate_backend(vg_pgconn_pid(c));
    CHECK(run_until(&s.broken), "an idle connection whose backend ends reports BROKEN");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_BROKEN, "and is BROKEN");
    CHECK(!vg_pgconn_check(c), "its check says it is unusable");
    close_conn(c);
}

static void test_cancel(void)
{
    seen_t s;
    vg_pgconn_t *c = connect_ok(&s);
    CHECK(vg_pgconn_send(c, "select pg_sleep(30)", -1, NULL, NULL, NULL, NULL, on_done, &s) == 0,
          "a long query is sent");
    CHECK(wait_active(vg_pgconn_pid(c)), "the long query runs on the server");
    CHECK(vg_pgconn_cancel(c, on_cancel_sent, &s) == 0, "a cancel request starts");
    CHECK(run_until(&s.done), "the cancelled query ends");
    const char *st = s.res ? PQresultErrorField(s.res, PG_DIAG_SQLSTATE) : NULL;
    CHECK(st && strcmp(st, "57014") == 0, "with query_canceled (57014)");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_IDLE, "the connection is IDLE again");
    PQclear(s.res);
    s.done = 0;
    s.res = NULL;
    CHECK(vg_pgconn_send(c, "select 1", -1, NULL, NULL, NULL, NULL, on_done, &s) == 0 &&
              run_until(&s.done) && PQresultStatus(s.res) == PGRES_TUPLES_OK,
          "and runs the next query");
    PQclear(s.res);
    run_until(&s.cancel_sent);
    close_conn(c);
}

static void test_copy(void)
{
    seen_t s;
    vg_pgconn_t *c = connect_ok(&s);
    CHECK(vg_pgconn_send(c, "copy (select 1) to stdout", -1, NULL, NULL, NULL, NULL, on_done,
                         &s) == 0,
          "a COPY is sent");
    CHECK(run_until(&s.done), "the COPY ends");
    CHECK(s.res && PQresultStatus(s.res) == PGRES_FATAL_ERROR, "with an error result");
    CHECK(vg_pgconn_refused_copy(c), "reported as a refused COPY");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_BROKEN, "and the connection is given up");
    PQclear(s.res);
    close_conn(c);
}

/* ---- the server stopped mid-connect, then started again ---------------- */

static const char *pgtmp_dir;   /* PGTMP_DIR: the cluster tests/pgtmp.sh made */
static bool server_down;        /* halted by this test and not yet back */

/* sh tests/pgtmp.sh CMD PGTMP_DIR, its output on stderr (stdout carries the
 * TAP lines). True when it exits 0. */
static bool pgtmp(const char *cmd)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0) _exit(127);
        execlp("sh", "sh", "tests/pgtmp.sh", cmd, pgtmp_dir, (char *)NULL);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return false;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* Whatever happened to the checks in between, the suites after this one
 * find the server running (atexit: also when the test ends early). */
static void bring_server_back(void)
{
    if (server_down && pgtmp("restart")) server_down = false;
}

/* libpq's words for a server that went away during the start-up. */
static bool says_server_went_away(const char *err)
{
    return strstr(err, "closed the connection") || strstr(err, "startup packet") ||
           strstr(err, "reset by peer") || strstr(err, "terminat");
}

static void test_server_stopped_mid_connect(void)
{
    const char *what = "the server stopped mid-connect and started again";
    if (!pgtmp_dir) {
        check_skip("PGTMP_DIR is not set (the cluster is not this test's own)", "%s", what);
        return;
    }
    if (access("tests/pgtmp.sh", R_OK) != 0) {
        check_skip("tests/pgtmp.sh is not in the working directory", "%s", what);
        return;
    }
    seen_t s;
    memset(&s, 0, sizeof s);
    vg_pgconn_t *c = open_conn((const char *const *)keys, (const char *const *)vals, 30, &s);
    CHECK(vg_pgconn_state(c) == VG_PGCONN_CONNECTING, "a connect is in progress");
    /* The loop does not run while the server goes down, so the connect is
     * caught between its TCP connection and the server's answer to the
     * start-up packet: the backend that took it is killed (immediate
     * mode) before it could answer. */
    server_down = true;
    bool halted = pgtmp("halt");
    CHECK(halted, "the server stops in immediate mode while the connect is in progress");
    if (halted) {
        CHECK(run_until(&s.connect_failed), "the connect fails");
        CHECK(s.connected == 0 && s.broken == 0, "reported once, as CONNECT_FAILED");
        CHECK(vg_pgconn_state(c) == VG_PGCONN_BROKEN, "the connection is BROKEN");
        const char *err = vg_pgconn_error(c); /* its first line in the TAP line */
        CHECK(says_server_went_away(err), "the error says the server went away: %.*s",
              (int)strcspn(err, "\n"), err);
        CHECK(vg_pgconn_pid(c) == 0, "it has no backend");
        CHECK(vg_pgconn_send(c, "select 1", -1, NULL, NULL, NULL, NULL, on_done, &s) == -1,
              "and takes no query");
    }
    close_conn(c);

    if (halted) { /* down: refused at once, not left hanging */
        memset(&s, 0, sizeof s);
        c = open_conn((const char *const *)keys, (const char *const *)vals, 30, &s);
        CHECK(run_until(&s.connect_failed), "a connect while the server is down fails");
        char human[256];
        const char *kind = "";
        vg_pgconn_explain(vg_pgconn_error(c), human, sizeof human, &kind);
        CHECK(strcmp(kind, "refused") == 0, "as refused: %s", human);
        close_conn(c);
    }

    bool back = pgtmp("restart");
    if (back) server_down = false;
    CHECK(back, "the server starts again");
    c = connect_ok(&s);
    CHECK(vg_pgconn_send(c, "select 1", -1, NULL, NULL, NULL, NULL, on_done, &s) == 0 &&
              run_until(&s.done) && PQresultStatus(s.res) == PGRES_TUPLES_OK,
          "a new connection works once it is back");
    PQclear(s.res);
    close_conn(c);
}

/* A TCP listener on 127.0.0.1 this test owns; returns its fd and port. */
static int listen_local(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &n) != 0)
        return -1;
    *port = ntohs(a.sin_port);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static vg_pgconn_t *connect_local(int port, double timeout, seen_t *s)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    const char *k[] = {"host", "port", "dbname", "user", "sslmode", NULL};
    const char *v[] = {"127.0.0.1", portstr, "vg", "vg", "disable", NULL};
    memset(s, 0, sizeof *s);
    return open_conn(k, v, timeout, s);
}

/* A listener this test owns, a client connecting to it (timeout 10 s),
 * and the server's side of that connection, accepted while the client's
 * loop runs. */
static vg_pgconn_t *connect_to_own_server(seen_t *s, int *lfd, int *cfd_out)
{
    int port;
    *lfd = listen_local(&port);
    CHECK(*lfd >= 0, "a local listener");
    vg_pgconn_t *c = connect_local(port, 10, s);
    int cfd = -1;
    for (int i = 0; i < 3000 && cfd < 0; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        cfd = accept(*lfd, NULL, NULL);
        if (cfd < 0) usleep(1000);
    }
    CHECK(cfd >= 0, "the client connected to the listener");
    *cfd_out = cfd;
    return c;
}

static void test_hang_up_mid_connect(void)
{
    seen_t s;
    int lfd, cfd;
    vg_pgconn_t *c = connect_to_own_server(&s, &lfd, &cfd);
    /* The start-up packet arrives; the "server" reads it and hangs up. */
    char buf[512];
    for (int i = 0; i < 300 && recv(cfd, buf, sizeof buf, MSG_DONTWAIT) <= 0; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    close(cfd);
    CHECK(run_until(&s.connect_failed), "a server that hangs up mid-connect fails the connect");
    CHECK(s.connected == 0, "and never reports CONNECTED");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_BROKEN, "the connection is BROKEN");
    close_conn(c);
    close(lfd);
}

/* Read from the client until n bytes came, the loop running meanwhile. */
static bool recv_n(int fd, char *buf, size_t n)
{
    size_t got = 0;
    for (int i = 0; i < 3000 && got < n; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        ssize_t r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
        if (r > 0) got += (size_t)r;
        else if (r == 0) return false;
        else usleep(1000);
    }
    return got == n;
}

/* A PostgreSQL message: its type, then a 4-byte length, then the body. */
static bool recv_msg(int fd, char *type, char *body, size_t cap)
{
    char head[5];
    if (!recv_n(fd, head, 5)) return false;
    uint32_t len;
    memcpy(&len, head + 1, 4);
    len = ntohl(len);
    if (len < 4 || len - 4 > cap) return false;
    *type = head[0];
    return recv_n(fd, body, len - 4);
}

/* The server is shut down (restart, fast stop) while a query of ours is on
 * its way: the backend sends its FATAL and exits without reading the
 * query, and the kernel answers the unread query with a reset. Both reach
 * the client before its loop looks again, so it sees the FATAL's data and
 * POLLERR together; libuv stops the watcher on POLLERR. The query must
 * still end, as a lost connection, and not wait forever for the reset
 * behind the data. */
static void test_reset_after_fatal_mid_query(void)
{
    seen_t s;
    int lfd, cfd;
    vg_pgconn_t *c = connect_to_own_server(&s, &lfd, &cfd);
    /* The start-up packet (length, then the rest), answered with
     * AuthenticationOk and ReadyForQuery. */
    char buf[1024];
    uint32_t len = 0;
    bool ok = recv_n(cfd, buf, 4);
    if (ok) {
        memcpy(&len, buf, 4);
        len = ntohl(len);
        ok = len >= 8 && len - 4 <= sizeof buf && recv_n(cfd, buf, len - 4);
    }
    CHECK(ok, "the start-up packet arrived");
    static const char hello[] = {'R', 0, 0, 0, 8, 0, 0, 0, 0, 'Z', 0, 0, 0, 5, 'I'};
    CHECK(send(cfd, hello, sizeof hello, 0) == (ssize_t)sizeof hello, "the server says ready");
    CHECK(run_until(&s.connected), "the connection opens");
    CHECK(vg_pgconn_send(c, "select 1", -1, NULL, NULL, NULL, NULL, on_done, &s) == 0,
          "a query is sent");
    char type = 0;
    CHECK(recv_msg(cfd, &type, buf, sizeof buf) && type == 'Q', "the query arrived");
    /* The FATAL, then the reset, with no turn of the client's loop between. */
    static const char fatal[] = "SFATAL\0VFATAL\0C57P01\0"
                                "Mterminating connection due to administrator command\0";
    char msg[128];
    uint32_t mlen = htonl((uint32_t)(4 + sizeof fatal)); /* sizeof: the final 0 ends the fields */
    msg[0] = 'E';
    memcpy(msg + 1, &mlen, 4);
    memcpy(msg + 5, fatal, sizeof fatal);
    ssize_t want = (ssize_t)(5 + sizeof fatal);
    CHECK(send(cfd, msg, (size_t)want, 0) == want, "the server sends its FATAL");
    struct linger lg = {1, 0};
    CHECK(setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0, "linger 0: close resets");
    /* Our query is unread on the server's side too: the close resets. */
    close(cfd);
    CHECK(run_until(&s.done), "the query ends with an error instead of waiting forever");
    CHECK(s.res == NULL || PQresultStatus(s.res) == PGRES_FATAL_ERROR,
          "as an error result (or none)");
    CHECK(vg_pgconn_state(c) == VG_PGCONN_BROKEN, "the connection is BROKEN");
    PQclear(s.res);
    close_conn(c);
    close(lfd);
}

static void test_silent_server(void)
{
    int port;
    int lfd = listen_local(&port);
    seen_t s;
    vg_pgconn_t *c = connect_local(port, 0.3, &s); /* accepted by the kernel, never answered */
    CHECK(run_until(&s.connect_failed), "a server that never answers fails at the timeout");
    CHECK(strstr(vg_pgconn_error(c), "timeout") != NULL, "with a timeout message: %s",
          vg_pgconn_error(c));
    CHECK(vg_pgconn_state(c) == VG_PGCONN_BROKEN, "the connection is BROKEN");
    close_conn(c);
    close(lfd);
}

static bool parse_url(const char *url)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &err);
    if (!opts) {
        PQfreemem(err);
        return false;
    }
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) n++;
    keys = calloc(n + 1, sizeof *keys);
    vals = calloc(n + 1, sizeof *vals);
    size_t k = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val) continue;
        keys[k] = strdup(o->keyword);
        vals[k++] = strdup(o->val);
    }
    PQconninfoFree(opts);
    return true;
}

int main(void)
{
    loop = uv_default_loop();
    pgtmp_dir = getenv("PGTMP_DIR");
    if (pgtmp_dir && !*pgtmp_dir) pgtmp_dir = NULL;
    if (atexit(bring_server_back) != 0) return 1;
    test_hang_up_mid_connect();
    test_reset_after_fatal_mid_query();
    test_silent_server();
    const char *url = getenv("TEST_DATABASE_URL");
    if (url && *url && parse_url(url)) {
        test_terminated_mid_query();
        test_terminated_while_idle();
        test_cancel();
        test_copy();
        test_server_stopped_mid_connect();
        for (size_t i = 0; keys[i]; i++) {
            free(keys[i]);
            free(vals[i]);
        }
        free(keys);
        free(vals);
    } else {
        printf("# TEST_DATABASE_URL is not set: the server cases are skipped\n");
    }
    CHECK(uv_loop_close(loop) == 0, "nothing is left open on the loop");
    return check_done();
}
