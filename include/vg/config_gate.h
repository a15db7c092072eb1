/* The host's own settings and the script's configuration check.
 *
 * The host reads LOG_LEVEL, LOG_FORMAT, WORKER_ID, VG_SHUTDOWN_GRACE and
 * VG_TASK_SLICE before any script runs. When one of them is invalid it goes
 * on with the default and holds the problem back, so that the script's own
 * check (config.load, or config.check of the process environment) reports
 * it in its one configuration_invalid line, together with the variables the
 * script requires and the script's own checks (the worker's step settings).
 *
 * Until the script has made that check it runs behind a gate: it may load
 * modules (whatever runs inside require) and compute with the pure
 * functions of the standard library and vg.config, but its first call to
 * anything else (output, a log line, a wait, a task, os.exit, files,
 * processes), or the end of its first run, makes the host report the held
 * problems itself, with every other invalid variable, in one
 * configuration_invalid line, and exit 1. So a script that never checks its
 * configuration does nothing on the provisional settings. */
#ifndef VG_CONFIG_GATE_H
#define VG_CONFIG_GATE_H

#include <lua.h>
#include <stdbool.h>
#include <stdnoreturn.h>

/* One of the host's own settings is invalid (the gate is needed). */
bool vg_config_gate_needed(void);
/* Log the environment's problems in one critical configuration_invalid
 * line (what the host reports when the script does not). */
void vg_config_gate_report(void);
/* Report them and exit 1. */
noreturn void vg_config_gate_fail(void);
/* Set the gate on the main task: L is the main state with the standard
 * libraries open; after vg_sched_init, before the main task is spawned. */
void vg_config_gate_arm(lua_State *L);
/* The script checked the process environment (config.load/config.check):
 * the held problems are in its report, the gate opens. */
void vg_config_gate_pass(void);

#endif
