/* Signals: SIGTERM and SIGINT arrive through uv_signal_t and call the
 * handler on the loop (never in a raw signal context); SIGPIPE is ignored. */
#ifndef VG_SIG_H
#define VG_SIG_H

#include <uv.h>

typedef void (*vg_sig_fn)(const char *signame);

int vg_sig_init(uv_loop_t *loop, vg_sig_fn handler);
void vg_sig_close(void);

#endif
