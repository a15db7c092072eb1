/* The HTTP server core: listener, connections, limits (see vg/http.h).
 * No Lua here. Each connection is a small state machine changed in one
 * function (set_state):
 *
 *   READING -> READY (in the server's ready queue) -> ANSWERING (taken)
 *           -> WRITING -> LINGER (FIN sent; unread input drained) -> CLOSED
 *
 * A request the core refuses (400, 408, 413, 431, 503) goes from READING
 * straight to WRITING. The lingering close lets a client that is still
 * sending (a body we refused) read our answer instead of a reset. */
#include "vg/http.h"

#include <ctype.h>
#include <limits.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg/buf.h"
#include "vg/log.h"

typedef enum { C_READING, C_READY, C_ANSWERING, C_WRITING, C_LINGER, C_CLOSED } cstate_t;

struct vg_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    uv_shutdown_t shut;
    vg_http_server_t *srv;
    vg_http_conn_t *prev, *next;   /* all connections of the server */
    vg_http_conn_t *ready_next;    /* the ready queue */
    vg_http_conn_t **owner;
    cstate_t state;
    int handles_open;
    http_parser parser;
    vg_buf_t target, hbuf, body;
    enum { LAST_NONE, LAST_FIELD, LAST_VALUE } last;
    size_t header_bytes;
    bool message_done;
    int refuse_status;             /* set by a parser callback */
    char *out;                     /* the response being written */
    const char **names, **values;
    vg_http_request_t req;
    char remote[64];
};

struct vg_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    vg_http_limits_t limits;
    vg_http_notify_fn on_ready, on_closed;
    void *arg;
    vg_http_conn_t *conns;
    vg_http_conn_t *ready_head, *ready_tail;
    bool closing, listener_closed;
    int port;
    vg_http_stats_t stats;
};

static http_parser_settings parser_settings;

const char *vg_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

/* ---- closing -------------------------------------------------------------- */

static void maybe_server_done(vg_http_server_t *s)
{
    if (!s->closing || !s->listener_closed || s->conns) return;
    vg_http_notify_fn cb = s->on_closed;
    void *arg = s->arg;
    free(s);
    if (cb) cb(arg);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    vg_http_conn_t *c = h->data;
    if (--c->handles_open > 0) return;
    vg_http_server_t *s = c->srv;
    vg_buf_free(&c->target);
    vg_buf_free(&c->hbuf);
    vg_buf_free(&c->body);
    free(c->out);
    free(c->names);
    free(c->values);
    free(c);
    maybe_server_done(s);
}

static void ready_remove(vg_http_server_t *s, vg_http_conn_t *c)
{
    vg_http_conn_t **pp = &s->ready_head, *prev = NULL;
    while (*pp && *pp != c) {
        prev = *pp;
        pp = &(*pp)->ready_next;
    }
    if (!*pp) return;
    *pp = c->ready_next;
    if (s->ready_tail == c) s->ready_tail = prev;
    c->ready_next = NULL;
    s->stats.waiting_requests--;
}

static void on_timer(uv_timer_t *t);

/* The one place a connection changes state. */
static void set_state(vg_http_conn_t *c, cstate_t to)
{
    vg_http_server_t *s = c->srv;
    cstate_t from = c->state;
    if (from == to || from == C_CLOSED) return;
    c->state = to;
    if (from == C_READY) ready_remove(s, c);
    switch (to) {
    case C_READY:
        uv_read_stop((uv_stream_t *)&c->tcp);
        uv_timer_stop(&c->timer);
        c->ready_next = NULL;
        if (s->ready_tail) s->ready_tail->ready_next = c;
        else s->ready_head = c;
        s->ready_tail = c;
        s->stats.waiting_requests++;
        s->stats.requests_total++;
        break;
    case C_ANSWERING:
        break;
    case C_WRITING:
    case C_LINGER:
        /* Bounded by the request timeout as well. */
        uv_timer_stop(&c->timer);
        uv_timer_start(&c->timer, on_timer, (uint64_t)(s->limits.request_timeout * 1000), 0);
        break;
    case C_CLOSED:
        if (c->owner) *c->owner = NULL;
        c->owner = NULL;
        if (c->prev) c->prev->next = c->next;
        else s->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        s->stats.open_connections--;
        uv_read_stop((uv_stream_t *)&c->tcp);
        uv_timer_stop(&c->timer);
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
        uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
        break;
    default:
        break;
    }
}

/* ---- writing -------------------------------------------------------------- */

static void on_linger_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    vg_http_conn_t *c = st->data;
    free(buf->base);
    if (n < 0) set_state(c, C_CLOSED);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = vg_xmalloc(16384);
    buf->len = 16384;
}

static void on_shutdown_done(uv_shutdown_t *req, int status)
{
    vg_http_conn_t *c = req->data;
    if (c->state != C_LINGER) return;
    if (status < 0) {
        set_state(c, C_CLOSED);
        return;
    }
    /* Drain what the client still sends until it closes its side. */
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_linger_read) != 0)
        set_state(c, C_CLOSED);
}

static void on_written(uv_write_t *req, int status)
{
    vg_http_conn_t *c = req->data;
    free(c->out);
    c->out = NULL;
    if (c->state != C_WRITING) return;
    if (status < 0) {
        set_state(c, C_CLOSED);
        return;
    }
    set_state(c, C_LINGER);
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown_done) != 0)
        set_state(c, C_CLOSED);
}

static void send_bytes(vg_http_conn_t *c, char *data, size_t len)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    set_state(c, C_WRITING);
    c->out = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
        free(c->out);
        c->out = NULL;
        set_state(c, C_CLOSED);
    }
}

/* A short answer of the core's own, a JSON error body. */
static void send_error(vg_http_conn_t *c, int status, const char *reason)
{
    vg_http_server_t *s = c->srv;
    s->stats.rejected_total++;
    if (status == 408) s->stats.timeouts_total++;
    vg_buf_t body = VG_BUF_INIT, out = VG_BUF_INIT;
    vg_buf_adds(&body, "{\"error\":");
    vg_json_str(&body, reason, strlen(reason));
    vg_buf_adds(&body, "}\n");
    vg_buf_printf(&out,
                  "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                  "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                  status, vg_http_reason(status), body.len);
    vg_buf_add(&out, body.data, body.len);
    vg_buf_free(&body);
    size_t len = out.len;
    send_bytes(c, vg_buf_steal(&out), len);
}

/* ---- parsing -------------------------------------------------------------- */

static int refuse(http_parser *p, int status)
{
    vg_http_conn_t *c = p->data;
    c->refuse_status = status;
    return -1;
}

static int count_header(http_parser *p, size_t n)
{
    vg_http_conn_t *c = p->data;
    c->header_bytes += n;
    return c->header_bytes > c->srv->limits.max_header_bytes ? refuse(p, 431) : 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    vg_http_conn_t *c = p->data;
    if (count_header(p, n)) return -1;
    vg_buf_add(&c->target, at, n);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    vg_http_conn_t *c = p->data;
    if (count_header(p, n + 4)) return -1;
    if (c->last == LAST_VALUE) vg_buf_addc(&c->hbuf, '\0');
    c->last = LAST_FIELD;
    for (size_t i = 0; i < n; i++) vg_buf_addc(&c->hbuf, (char)tolower((unsigned char)at[i]));
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    vg_http_conn_t *c = p->data;
    if (count_header(p, n)) return -1;
    if (c->last == LAST_FIELD) vg_buf_addc(&c->hbuf, '\0');
    if (c->last == LAST_NONE) return refuse(p, 400);
    c->last = LAST_VALUE;
    vg_buf_add(&c->hbuf, at, n);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    vg_http_conn_t *c = p->data;
    if (c->last == LAST_FIELD) vg_buf_addc(&c->hbuf, '\0'); /* a field with no value */
    if (c->last != LAST_NONE) vg_buf_addc(&c->hbuf, '\0');
    /* Content-Length beyond the limit: refused before the body comes. */
    if ((p->flags & F_CONTENTLENGTH) && p->content_length != ULLONG_MAX &&
        p->content_length > c->srv->limits.max_body_bytes)
        return refuse(p, 413);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    vg_http_conn_t *c = p->data;
    if (c->body.len + n > c->srv->limits.max_body_bytes) return refuse(p, 413);
    vg_buf_add(&c->body, at, n);
    return 0;
}

/* The request is complete: build its view and queue it. */
static int on_message_complete(http_parser *p)
{
    vg_http_conn_t *c = p->data;
    c->message_done = true;
    http_parser_pause(p, 1);
    return 0;
}

static void build_request(vg_http_conn_t *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->hbuf.len; i++)
        if (c->hbuf.data[i] == '\0') n++;
    n /= 2;
    c->names = vg_xcalloc(n + 1, sizeof *c->names);
    c->values = vg_xcalloc(n + 1, sizeof *c->values);
    const char *q = c->hbuf.data;
    for (size_t i = 0; i < n; i++) {
        c->names[i] = q;
        q += strlen(q) + 1;
        c->values[i] = q;
        q += strlen(q) + 1;
    }
    vg_buf_addc(&c->target, '\0');
    vg_buf_addc(&c->body, '\0');
    c->body.len--;
    c->target.len--;
    c->req.method = http_method_str(c->parser.method);
    c->req.target = c->target.data;
    c->req.n_headers = n;
    c->req.header_names = c->names;
    c->req.header_values = c->values;
    c->req.body = c->body.data;
    c->req.body_len = c->body.len;
    c->req.remote = c->remote;
    c->req.http_major = c->parser.http_major;
    c->req.http_minor = c->parser.http_minor;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    vg_http_conn_t *c = st->data;
    if (nread == 0) {
        free(buf->base);
        return;
    }
    if (nread < 0) {
        free(buf->base);
        /* The client went away (or closed its side) before a whole request. */
        set_state(c, C_CLOSED);
        return;
    }
    size_t done = http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t)nread);
    free(buf->base);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->message_done) {
        /* Anything after the first request is ignored: one per connection. */
        build_request(c);
        set_state(c, C_READY);
        if (c->srv->on_ready) c->srv->on_ready(c->srv->arg);
        return;
    }
    if (c->refuse_status) {
        send_error(c, c->refuse_status,
                   c->refuse_status == 431   ? "request headers too large"
                   : c->refuse_status == 413 ? "request body too large"
                                             : "malformed request");
        return;
    }
    if (e == HPE_HEADER_OVERFLOW) {
        send_error(c, 431, "request headers too large");
    } else if (e != HPE_OK || done != (size_t)nread) {
        send_error(c, 400, http_errno_description(e));
    }
}

static void on_timer(uv_timer_t *t)
{
    vg_http_conn_t *c = t->data;
    if (c->state == C_READING) send_error(c, 408, "request not complete in time");
    else set_state(c, C_CLOSED);
}

/* ---- accepting ------------------------------------------------------------ */

static void on_connection(uv_stream_t *ls, int status)
{
    vg_http_server_t *s = ls->data;
    if (status < 0 || s->closing) return;
    vg_http_conn_t *c = vg_xcalloc(1, sizeof *c);
    c->srv = s;
    c->state = C_READING;
    if (uv_tcp_init(s->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->handles_open = 1;
    if (uv_timer_init(s->loop, &c->timer) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
        return;
    }
    c->timer.data = c;
    c->handles_open = 2;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->stats.open_connections++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        set_state(c, C_CLOSED);
        return;
    }
    s->stats.accepted_total++;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(c->remote, sizeof c->remote, "unknown");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[48] = "";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            if (uv_ip4_name(a, ip, sizeof ip) == 0) port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            if (uv_ip6_name(a, ip, sizeof ip) == 0) port = ntohs(a->sin6_port);
        }
        snprintf(c->remote, sizeof c->remote, "%s:%d", ip, port);
    }
    /* Over the connection limit: told so at once. Far over it (a flood of
     * connections): closed without an answer. */
    if (s->stats.open_connections > s->limits.max_connections) {
        if (s->stats.open_connections > s->limits.max_connections + 16) set_state(c, C_CLOSED);
        else send_error(c, 503, "too many connections");
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    uv_timer_start(&c->timer, on_timer, (uint64_t)(s->limits.request_timeout * 1000), 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read) != 0) set_state(c, C_CLOSED);
}

static void on_listener_closed(uv_handle_t *h)
{
    vg_http_server_t *s = h->data;
    s->listener_closed = true;
    maybe_server_done(s);
}

int vg_http_server_start(uv_loop_t *loop, const char *host, int port,
                         const vg_http_limits_t *limits, vg_http_notify_fn on_ready,
                         vg_http_notify_fn on_closed, void *arg, vg_http_server_t **out)
{
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;

    struct sockaddr_storage addr;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                               : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
    if (rc != 0) return rc;
    vg_http_server_t *s = vg_xcalloc(1, sizeof *s);
    s->loop = loop;
    s->limits = *limits;
    s->on_ready = on_ready;
    s->on_closed = on_closed;
    s->arg = arg;
    if ((rc = uv_tcp_init(loop, &s->listener)) != 0) {
        free(s);
        return rc;
    }
    s->listener.data = s;
    if ((rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection)) != 0) {
        /* Freed in the close callback; nobody is told (on_closed unset). */
        s->on_closed = NULL;
        s->closing = true;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return rc;
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len) == 0)
        s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    return 0;
}

int vg_http_server_port(const vg_http_server_t *s) { return s->port; }

void vg_http_server_stats(const vg_http_server_t *s, vg_http_stats_t *out) { *out = s->stats; }

vg_http_conn_t *vg_http_server_take(vg_http_server_t *s)
{
    vg_http_conn_t *c = s->ready_head;
    if (c) set_state(c, C_ANSWERING);
    return c;
}

void vg_http_server_close(vg_http_server_t *s)
{
    if (s->closing) return;
    s->closing = true;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    vg_http_conn_t *c = s->conns;
    while (c) {
        vg_http_conn_t *next = c->next;
        if (c->state == C_READING || c->state == C_READY) set_state(c, C_CLOSED);
        c = next;
    }
}

void vg_http_server_close_now(vg_http_server_t *s)
{
    vg_http_server_close(s);
    /* The server is freed only from a close callback, so s lives on here. */
    while (s->conns) set_state(s->conns, C_CLOSED);
}

const vg_http_request_t *vg_http_conn_request(const vg_http_conn_t *c) { return &c->req; }

void vg_http_conn_set_owner(vg_http_conn_t *c, vg_http_conn_t **slot)
{
    c->owner = slot;
    if (slot) *slot = c;
}

void vg_http_conn_send(vg_http_conn_t *c, char *data, size_t len)
{
    c->owner = NULL;
    if (c->state != C_ANSWERING) {
        free(data);
        return;
    }
    send_bytes(c, data, len);
}

void vg_http_conn_abort(vg_http_conn_t *c)
{
    c->owner = NULL;
    if (c->state != C_ANSWERING) return;
    send_error(c, 500, "the handler ended without an answer");
    c->srv->stats.rejected_total--; /* not the client's fault: not a refusal */
}
