/* Signal handles. They are unreferenced so they never keep the loop alive:
 * the scheduler decides when the host ends. */
#include "vg/sig.h"

#include <signal.h>
#include <stddef.h>

static uv_signal_t sig_term, sig_int, sig_hup;
static vg_sig_fn on_signal;
static int installed;

static void on_uv_signal(uv_signal_t *h, int signum)
{
    if (on_signal)
        on_signal(signum == SIGTERM ? "SIGTERM" : signum == SIGHUP ? "SIGHUP" : "SIGINT");
}

static int watch(uv_loop_t *loop, uv_signal_t *h, int signum)
{
    int rc = uv_signal_init(loop, h);
    if (rc == 0) rc = uv_signal_start(h, on_uv_signal, signum);
    if (rc == 0) uv_unref((uv_handle_t *)h);
    return rc;
}

int vg_sig_init(uv_loop_t *loop, vg_sig_fn handler)
{
    on_signal = handler;
    /* A write to a closed pipe or socket must return EPIPE, not kill us. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) return -1;
    int rc = watch(loop, &sig_term, SIGTERM);
    if (rc == 0) rc = watch(loop, &sig_int, SIGINT);
    /* A closed terminal: a graceful shutdown like SIGTERM, not a silent death. */
    if (rc == 0) rc = watch(loop, &sig_hup, SIGHUP);
    if (rc == 0) installed = 1;
    return rc;
}

void vg_sig_close(void)
{
    if (!installed) return;
    installed = 0;
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_hup, NULL);
}
