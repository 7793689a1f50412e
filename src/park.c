/* park.c - the registry of suspended libmicrohttpd connections. */
#include "stoa/park.h"
#include "stoa/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <uthash.h>

struct stoa_parked {
    struct MHD_Connection *conn;
    bool suspended;
    bool woken;                /* a wake came while not suspended */
    int64_t deadline_ms;
    stoa_parked_t *self;       /* key */
    UT_hash_handle hh;
};

struct stoa_park {
    pthread_mutex_t mu;
    stoa_parked_t *all;
    bool closing;
};

stoa_park_t *stoa_park_new(void)
{
    stoa_park_t *park = stoa_xcalloc(1, sizeof *park);
    pthread_mutex_init(&park->mu, NULL);
    return park;
}

void stoa_park_free(stoa_park_t *park)
{
    stoa_parked_t *p, *tmp;
    if (!park)
        return;
    HASH_ITER(hh, park->all, p, tmp) {
        HASH_DEL(park->all, p);
        free(p);
    }
    pthread_mutex_destroy(&park->mu);
    free(park);
}

stoa_parked_t *stoa_park_add(stoa_park_t *park, struct MHD_Connection *conn)
{
    stoa_parked_t *p = stoa_xcalloc(1, sizeof *p);
    p->conn = conn;
    p->self = p;
    pthread_mutex_lock(&park->mu);
    HASH_ADD_PTR(park->all, self, p);
    pthread_mutex_unlock(&park->mu);
    return p;
}

void stoa_park_remove(stoa_park_t *park, stoa_parked_t *p)
{
    pthread_mutex_lock(&park->mu);
    HASH_DEL(park->all, p);
    pthread_mutex_unlock(&park->mu);
    free(p);
}

bool stoa_park_suspend(stoa_park_t *park, stoa_parked_t *p, int64_t deadline_ms)
{
    bool suspend;
    pthread_mutex_lock(&park->mu);
    suspend = !p->woken && !park->closing;
    p->woken = false;
    if (suspend) {
        p->suspended = true;
        p->deadline_ms = deadline_ms;
        MHD_suspend_connection(p->conn);
    }
    pthread_mutex_unlock(&park->mu);
    return suspend;
}

static void resume_locked(stoa_parked_t *p)
{
    if (p->suspended) {
        p->suspended = false;
        MHD_resume_connection(p->conn);
    } else {
        p->woken = true;
    }
}

void stoa_park_wake(stoa_park_t *park, void *handle)
{
    stoa_parked_t *p;
    pthread_mutex_lock(&park->mu);
    HASH_FIND_PTR(park->all, &handle, p);
    if (p)
        resume_locked(p);
    pthread_mutex_unlock(&park->mu);
}

void stoa_park_tick(stoa_park_t *park, int64_t now_ms)
{
    pthread_mutex_lock(&park->mu);
    for (stoa_parked_t *p = park->all; p; p = p->hh.next)
        if (p->suspended && p->deadline_ms && now_ms >= p->deadline_ms)
            resume_locked(p);
    pthread_mutex_unlock(&park->mu);
}

size_t stoa_park_close(stoa_park_t *park)
{
    size_t n;
    pthread_mutex_lock(&park->mu);
    park->closing = true;
    for (stoa_parked_t *p = park->all; p; p = p->hh.next)
        resume_locked(p);
    n = HASH_COUNT(park->all);
    pthread_mutex_unlock(&park->mu);
    return n;
}

bool stoa_park_closing(stoa_park_t *park)
{
    bool c;
    pthread_mutex_lock(&park->mu);
    c = park->closing;
    pthread_mutex_unlock(&park->mu);
    return c;
}

size_t stoa_park_count(stoa_park_t *park)
{
    size_t n;
    pthread_mutex_lock(&park->mu);
    n = HASH_COUNT(park->all);
    pthread_mutex_unlock(&park->mu);
    return n;
}
