/* An intrusive doubly linked list, as PgBouncer's (libusual's list.h) and
 * the kernel's: each element holds a vg_link_t, the list is a vg_list_t,
 * and VG_CONTAINER finds the element again from its link. Nothing is
 * allocated; a link is on one list at a time. Used for the queues of
 * waiters (the pool's checkouts, the LISTEN connection's waits), where an
 * element leaves from anywhere when its wait ends early. */
#ifndef VG_LIST_H
#define VG_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct vg_link {
    struct vg_link *prev, *next;
} vg_link_t;

typedef struct {
    vg_link_t *head, *tail;
} vg_list_t;

#define VG_CONTAINER(link, type, member) \
    ((type *)(void *)((char *)(link) - offsetof(type, member)))

/* The element of the list's first link, or NULL when the list is empty. */
#define VG_LIST_FIRST(list, type, member) \
    ((list)->head ? VG_CONTAINER((list)->head, type, member) : (type *)NULL)

static inline void vg_list_push_tail(vg_list_t *l, vg_link_t *e)
{
    e->next = NULL;
    e->prev = l->tail;
    if (l->tail) l->tail->next = e;
    else l->head = e;
    l->tail = e;
}

static inline void vg_list_push_head(vg_list_t *l, vg_link_t *e)
{
    e->prev = NULL;
    e->next = l->head;
    if (l->head) l->head->prev = e;
    else l->tail = e;
    l->head = e;
}

static inline void vg_list_remove(vg_list_t *l, vg_link_t *e)
{
    if (e->prev) e->prev->next = e->next;
    else l->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else l->tail = e->prev;
    e->prev = e->next = NULL;
}

static inline bool vg_list_empty(const vg_list_t *l) { return l->head == NULL; }

#endif
