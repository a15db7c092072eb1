/* vg_log's lines (include/vg/log.h): the running task's context and the
 * call's fields merged into one set of keys, the call winning, and the
 * host's own keys (timestamp, level, event, worker_id) written once and
 * never overridden, in the JSON and the console format. Lines go to a temp
 * file and are compared whole after the timestamp, so a key written twice
 * or in the wrong place fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "vg/log.h"

static int fd = -1;
static off_t read_to; /* what earlier cases have read of the file */

/* The line the last call wrote (malloc'd; "" when none), without its
 * newline. */
static char *next_line(void)
{
    off_t end = lseek(fd, 0, SEEK_END);
    size_t n = end > read_to ? (size_t)(end - read_to) : 0;
    char *s = calloc(1, n + 1);
    if (!s) abort();
    if (n && pread(fd, s, n, read_to) != (ssize_t)n) s[0] = '\0';
    read_to = end;
    char *nl = strchr(s, '\n');
    if (nl) *nl = '\0';
    return s;
}

/* The line after its timestamp: JSON from the member after it, console from
 * the space after it. */
static const char *after_timestamp(const char *line, bool json)
{
    const char *p = json ? strstr(line, "\",\"level\"") : strchr(line, ' ');
    return p ? p + (json ? 2 : 0) : line;
}

#define EXPECT_JSON(ctx, want, name, ...)                                       \
    do {                                                                        \
        vg_log_set_context(ctx);                                                \
        vg_log(VG_LOG_INFO, "merged", __VA_ARGS__, VG_F_END);                   \
        vg_log_set_context(NULL);                                               \
        char *got_ = next_line();                                               \
        CHECK_STREQ(after_timestamp(got_, true), want, "%s", name);             \
        CHECK(strncmp(got_, "{\"timestamp\":\"", 14) == 0, "%s: timestamp first", name); \
        free(got_);                                                             \
    } while (0)

static void test_json(void)
{
    EXPECT_JSON(",\"correlation_id\":\"c\",\"a\":\"ctx\",\"b\":\"ctx\",\"level\":\"ctx\"",
                "\"level\":\"info\",\"event\":\"merged\",\"worker_id\":\"w1\","
                "\"correlation_id\":\"c\",\"a\":\"ctx\",\"field_level\":\"ctx\","
                "\"b\":\"call\",\"field_event\":\"mine\",\"field_worker_id\":\"mine\","
                "\"field_timestamp\":1,\"n\":2}",
                "context and call fields in one set of keys, the host's own kept apart",
                VG_F_STR("b", "call"), VG_F_STR("event", "mine"), VG_F_STR("worker_id", "mine"),
                VG_F_INT("timestamp", 1), VG_F_INT("n", 1), VG_F_INT("n", 2));
    EXPECT_JSON(",\"level\":\"ctx\",\"x\":1",
                "\"level\":\"info\",\"event\":\"merged\",\"worker_id\":\"w1\",\"x\":1,"
                "\"field_level\":\"call\"}",
                "a renamed context key gives way to the call's field of that name",
                VG_F_STR("field_level", "call"));
    EXPECT_JSON(",\"tasks\":[{\"a\":1,\"b\":\"x,\\\"y\"}],\"k\":{\"z\":[1,2]},\"s\":\"a\\\\\"",
                "\"level\":\"info\",\"event\":\"merged\",\"worker_id\":\"w1\","
                "\"k\":{\"z\":[1,2]},\"s\":\"a\\\\\",\"tasks\":[]}",
                "values with commas, quotes, nesting and escapes are read whole",
                VG_F_RAW("tasks", "[]"));
    EXPECT_JSON(NULL,
                "\"level\":\"info\",\"event\":\"merged\",\"worker_id\":\"w1\",\"a\":1,"
                "\"b\":null,\"c\":true}",
                "without a context the fields are written as given",
                VG_F_INT("a", 1), VG_F_STR("b", NULL), VG_F_BOOL("c", 1));
}

static void test_console(void)
{
    vg_log_setup(VG_LOG_DEBUG, VG_LOG_CONSOLE, "w1");
    vg_log_set_context(",\"a\":\"ctx\",\"event\":\"x y\"");
    vg_log(VG_LOG_INFO, "merged", VG_F_STR("a", "call"), VG_F_INT("a", 3), VG_F_END);
    vg_log_set_context(NULL);
    char *got = next_line();
    CHECK_STREQ(after_timestamp(got, false),
                " info     merged worker_id=w1 field_event=\"x y\" a=3",
                "console lines merge the same way");
    free(got);
}

/* Milliseconds since the epoch of a line's timestamp
 * ("YYYY-MM-DDTHH:MM:SS.mmmZ"), or -1 when it is not of that shape. */
static long long stamp_ms(const char *line)
{
    const char *p = strstr(line, "{\"timestamp\":\"");
    if (!p) return -1;
    p += 14;
    struct tm tm = {0};
    int ms = -1, used = 0;
    if (sscanf(p, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms, &used) != 7 || used != 23 ||
        strncmp(p + 23, "Z\"", 2) != 0)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (long long)timegm(&tm) * 1000 + ms;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The timestamp is the time of the call in UTC to the millisecond, also
 * after the second changes (the part up to the seconds is reused within a
 * second). */
static void test_timestamp(void)
{
    vg_log_setup(VG_LOG_DEBUG, VG_LOG_JSON, "w1");
    for (int round = 0; round < 2; round++) {
        long long before = now_ms();
        vg_log(VG_LOG_INFO, "stamped", VG_F_END);
        long long after = now_ms();
        char *got = next_line();
        long long at = stamp_ms(got);
        CHECK(at >= before && at <= after, "timestamp %d is the call's time (%lld in [%lld, %lld]): %s",
              round, at, before, after, got);
        free(got);
        /* The next round in the next second: until the clock reaches it. */
        struct timespec next = {.tv_sec = (time_t)(after / 1000) + 1, .tv_nsec = 0};
        while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &next, NULL) != 0) {}
    }
}

int main(void)
{
    char path[] = "/tmp/vg-test-log.XXXXXX";
    fd = mkstemp(path);
    if (fd < 0 || unlink(path) != 0) {
        perror("test_log: temp file");
        return 1;
    }
    vg_log_setup(VG_LOG_DEBUG, VG_LOG_JSON, "w1");
    vg_log_set_fd(fd);
    test_json();
    test_console();
    test_timestamp();
    vg_log_set_fd(STDOUT_FILENO);
    close(fd);
    return check_done();
}
