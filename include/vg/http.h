/* An HTTP/1.1 server on the libuv loop, for small admin services (health,
 * metrics, a status page). No Lua in here: the binding (src/l_http.c)
 * takes complete requests from the server's ready queue and answers them.
 *
 * Requests are parsed with Debian's libhttp-parser (nodejs/http-parser
 * 2.9). One request per connection: every response carries
 * "Connection: close" and the connection is closed once it is written, so
 * a connection is either reading its request, waiting for its answer, or
 * writing it.
 *
 * Limits (vg_http_limits_t), each answered with a status and a close:
 *   max_connections   more are accepted and told 503 at once
 *   max_header_bytes  request line and headers together: 431
 *   max_body_bytes    Content-Length or chunked body beyond it: 413
 *   request_timeout   the whole request (line, headers, body) must arrive
 *                     within it from the connection's start, however slowly
 *                     bytes trickle in (slowloris): 408. Also bounds the
 *                     time a response may take to be written.
 *   malformed requests: 400. */
#ifndef VG_HTTP_H
#define VG_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct vg_http_server vg_http_server_t;
typedef struct vg_http_conn vg_http_conn_t;

typedef struct {
    int max_connections;
    size_t max_header_bytes;
    size_t max_body_bytes;
    double request_timeout;  /* seconds */
} vg_http_limits_t;

/* A complete request. Header names are lower-cased. Strings are
 * NUL-terminated (the body too, for convenience; it may hold NULs). */
typedef struct {
    const char *method;
    const char *target;                 /* the request target as sent */
    size_t n_headers;
    const char *const *header_names;
    const char *const *header_values;
    const char *body;
    size_t body_len;
    const char *remote;                 /* "127.0.0.1:53422" */
    int http_major, http_minor;
} vg_http_request_t;

typedef struct {
    unsigned long long accepted_total;
    unsigned long long requests_total;      /* complete requests handed over */
    unsigned long long rejected_total;      /* answered by the core: 400/408/413/431/503 */
    unsigned long long timeouts_total;      /* of those, 408 */
    int open_connections;
    int waiting_requests;                   /* in the ready queue */
} vg_http_stats_t;

/* Called when a request joined the ready queue (take it with
 * vg_http_server_take), and when the server has finished closing. */
typedef void (*vg_http_notify_fn)(void *arg);

/* Listen on host:port (port 0: any free port). Returns 0 or a libuv error
 * code; *out is set on success. */
int vg_http_server_start(uv_loop_t *loop, const char *host, int port,
                         const vg_http_limits_t *limits, vg_http_notify_fn on_ready,
                         vg_http_notify_fn on_closed, void *arg, vg_http_server_t **out);
int vg_http_server_port(const vg_http_server_t *s);
void vg_http_server_stats(const vg_http_server_t *s, vg_http_stats_t *out);
/* The oldest complete request waiting for an answer, or NULL. The caller
 * owns the connection's answer from now on: it must call
 * vg_http_conn_send or vg_http_conn_abort exactly once. */
vg_http_conn_t *vg_http_server_take(vg_http_server_t *s);
/* Stop listening; connections still reading a request, or waiting in the
 * ready queue, are closed now; those being answered close once their
 * response is written (or aborted). on_closed runs when all is closed and
 * the server's memory is gone. Idempotent. */
void vg_http_server_close(vg_http_server_t *s);
/* Close every connection now, answered or not (the host is ending). */
void vg_http_server_close_now(vg_http_server_t *s);

const vg_http_request_t *vg_http_conn_request(const vg_http_conn_t *c);
/* Send a whole response (status line, headers, body: built by the caller)
 * and close the connection after it; takes ownership of data (malloc'd).
 * The connection must not be used afterwards. */
void vg_http_conn_send(vg_http_conn_t *c, char *data, size_t len);
/* No answer will come: close the connection (500 is sent if nothing was). */
void vg_http_conn_abort(vg_http_conn_t *c);
/* While a connection is being answered, *slot = c; the core sets *slot to
 * NULL if it closes the connection itself first (vg_http_server_close_now),
 * so the answerer never touches freed memory. */
void vg_http_conn_set_owner(vg_http_conn_t *c, vg_http_conn_t **slot);

/* The reason phrase of a status code ("OK", "Not Found"...), "" if unknown. */
const char *vg_http_reason(int status);

#endif
