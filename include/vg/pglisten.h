/* LISTEN/NOTIFY on a dedicated connection. No Lua here.
 *
 * One per pool (vg_pgpool_listener), outside the pool's limit. It remembers
 * the channels it listens on and, when its connection is lost, reconnects
 * with back-off (0.2 s doubling to 5 s) and subscribes again; waiters are
 * then woken with no notification (some may have been missed: check for
 * work). Commands run one at a time, in the order they were asked for. */
#ifndef VG_PGLISTEN_H
#define VG_PGLISTEN_H

#include <stdbool.h>
#include <uv.h>

#include "vg/list.h"
#include "vg/pgconn.h"

typedef struct vg_pglistener vg_pglistener_t;

typedef struct vg_pgnotify {
    char *channel;
    char *payload;
    int pid;
    struct vg_pgnotify *next;
} vg_pgnotify_t;
void vg_pgnotify_free(vg_pgnotify_t *n);

/* A LISTEN / UNLISTEN request: cb(r, NULL) once the server confirmed it,
 * cb(r, message) when it failed. */
typedef struct vg_pglisten_req vg_pglisten_req_t;
struct vg_pglisten_req {
    void (*cb)(vg_pglisten_req_t *r, const char *error);
    void *arg;
    void *cmd;         /* private: the listener's command */
};

/* A wait for the next notification: cb(w, n) with n (caller frees) or NULL
 * (reconnected, or the pool closed). */
typedef struct vg_pgwait vg_pgwait_t;
struct vg_pgwait {
    void (*cb)(vg_pgwait_t *w, vg_pgnotify_t *n);
    void *arg;
    vg_link_t link;          /* in the listener's queue of waiters */
    bool queued;
};

/* Nothing connects until the first request. params are copied. */
vg_pglistener_t *vg_pglistener_new(uv_loop_t *loop, const vg_pgconn_params_t *params,
                                   const char *describe);
/* Requests fail, waiters wake with NULL, the connection closes. */
void vg_pglistener_close(vg_pglistener_t *l);
/* Close, then free once the timer handle has closed. */
void vg_pglistener_free(vg_pglistener_t *l);
/* channel NULL with listen false: UNLISTEN *. Returns -1 when closed. */
int vg_pglistener_request(vg_pglistener_t *l, const char *channel, bool listen,
                          vg_pglisten_req_t *r);
/* Forget a request whose caller stopped waiting (the command still runs). */
void vg_pglistener_forget(vg_pglistener_t *l, vg_pglisten_req_t *r);
/* The oldest queued notification, or NULL. */
vg_pgnotify_t *vg_pglistener_pop(vg_pglistener_t *l);
void vg_pglistener_wait(vg_pglistener_t *l, vg_pgwait_t *w);
void vg_pglistener_unwait(vg_pglistener_t *l, vg_pgwait_t *w);
/* A statement (with n text parameters, NULL for NULL) to run first on every
 * new LISTEN connection, e.g. a session-level advisory lock that other
 * processes read as "this process is alive". Runs now if connected. When
 * it fails, the error is logged and the LISTEN requests waiting behind it
 * fail with it. sql NULL removes it. */
void vg_pglistener_on_connect(vg_pglistener_t *l, const char *sql, int n,
                              const char *const *vals);

#endif
