/* What the vg.db.core binding files (src/l_db.c, src/l_db_listen.c)
 * share: the pool userdata. */
#ifndef VG_L_DB_H
#define VG_L_DB_H

#include <lauxlib.h>

#include "vg/pgpool.h"

#define VG_L_DB_POOL_MT "vg.db.Pool"

typedef struct l_pool {
    vg_pgpool_t *pool;      /* NULL once destroyed */
    double pool_timeout;
    struct l_pool *next;    /* every live pool, for the exit hook */
} vg_l_db_pool_t;

/* The pool userdata at idx (open or closed). */
vg_l_db_pool_t *vg_l_db_check_lpool(lua_State *L, int idx);
/* The open pool at idx; raises pool_closed. */
vg_pgpool_t *vg_l_db_check_pool(lua_State *L, int idx);

/* pool:listen, pool:unlisten, pool:wait_notification (src/l_db_listen.c). */
extern const luaL_Reg vg_l_db_listen_methods[];

#endif
