/* stream.c - long-lived HTTP responses outside libmicrohttpd, on one
 * epoll thread (see stream.h). */
#include "stoa/stream.h"
#include "stoa/log.h"
#include "stoa/util.h"

#include <errno.h>
#ifdef __GLIBC__
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uthash.h>

#define QUEUE_KEY 0          /* ids start at 1 */
#define SWEEP_MS 250         /* how often deadlines are looked at */

struct stoa_stream_conn {
    uint64_t id;                 /* hash key */
    int fd;
    bool chunked, keep_alive, done, want_out;
    const stoa_stream_source_ops_t *ops;
    void *src;
    char *out;                   /* pending bytes, NULL when none */
    size_t outlen, outpos;
    int64_t deadline_ms;
    int64_t blocked_ms;          /* since when the socket takes no bytes (0: it took the last) */
    UT_hash_handle hh;
};

typedef struct item {           /* one entry of the cross-thread queue */
    uint64_t id;
    stoa_stream_conn_t *add;     /* NULL: a wake of id */
} item_t;

struct stoa_stream {
    int max_conns;
    int stall_ms;
    stoa_stream_give_back_fn give_back;
    void *ud;
    int epoll_fd, event_fd;
    pthread_t thread;
    bool started;
    atomic_uint_fast64_t next_id;
    atomic_int reserved;         /* reservations, including open connections */
    atomic_size_t count;         /* open connections */

    pthread_mutex_t mu;          /* guards the queue and the flags below */
    item_t *queue;
    size_t qlen, qcap;
    bool closing, stopping;

    /* Stream thread only. */
    stoa_stream_conn_t *conns;
    bool closing_seen;
    atomic_bool closing_ack;     /* closing_seen, for stoa_stream_close */
    char *scratch;               /* what the current pump wrote */
    size_t slen, scap;
    size_t added_since_trim;
};

/* ---- the queue (any thread) ---- */

static void signal_thread(stoa_stream_t *st)
{
    uint64_t one = 1;
    if (write(st->event_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        STOA_WARN("stream: cannot wake the stream thread: %s", strerror(errno));
}

static void push(stoa_stream_t *st, uint64_t id, stoa_stream_conn_t *add)
{
    bool was_empty;
    pthread_mutex_lock(&st->mu);
    if (st->qlen == st->qcap) {
        st->qcap = st->qcap ? st->qcap * 2 : 64;
        st->queue = stoa_xrealloc(st->queue, st->qcap * sizeof *st->queue);
    }
    st->queue[st->qlen++] = (item_t){.id = id, .add = add};
    was_empty = st->qlen == 1;
    pthread_mutex_unlock(&st->mu);
    if (was_empty)
        signal_thread(st);
}

uint64_t stoa_stream_new_id(stoa_stream_t *st)
{
    return atomic_fetch_add(&st->next_id, 1);
}

bool stoa_stream_reserve(stoa_stream_t *st)
{
    if (atomic_fetch_add(&st->reserved, 1) >= st->max_conns) {
        atomic_fetch_sub(&st->reserved, 1);
        return false;
    }
    return true;
}

void stoa_stream_unreserve(stoa_stream_t *st)
{
    atomic_fetch_sub(&st->reserved, 1);
}

void stoa_stream_add(stoa_stream_t *st, int fd, uint64_t id, const char *head, size_t head_len, bool chunked,
                     bool keep_alive, const stoa_stream_source_ops_t *ops, void *src)
{
    stoa_stream_conn_t *c = stoa_xcalloc(1, sizeof *c);
    c->id = id;
    c->fd = fd;
    c->chunked = chunked;
    c->keep_alive = keep_alive;
    c->ops = ops;
    c->src = src;
    if (head_len > 0) {
        c->out = stoa_xmalloc(head_len);
        memcpy(c->out, head, head_len);
        c->outlen = head_len;
    }
    atomic_fetch_add(&st->count, 1);
    push(st, id, c);
}

void stoa_stream_wake(stoa_stream_t *st, uint64_t id)
{
    push(st, id, NULL);
}

size_t stoa_stream_count(stoa_stream_t *st)
{
    return atomic_load(&st->count);
}

/* ---- from a pump ---- */

/* The module of the connection being pumped (one stream thread per
 * process in practice, but keep it per thread). */
static __thread stoa_stream_t *pumping;

void stoa_stream_write(stoa_stream_conn_t *sc, const void *data, size_t len)
{
    stoa_stream_t *st = pumping;
    (void)sc;
    if (st->slen + len > st->scap) {
        st->scap = (st->slen + len) * 2;
        st->scratch = stoa_xrealloc(st->scratch, st->scap);
    }
    memcpy(st->scratch + st->slen, data, len);
    st->slen += len;
}

size_t stoa_stream_written(const stoa_stream_conn_t *sc)
{
    (void)sc;
    return pumping->slen;
}

void stoa_stream_set_deadline(stoa_stream_conn_t *sc, int64_t deadline_ms)
{
    sc->deadline_ms = deadline_ms;
}

/* ---- the stream thread ---- */

static void out_append(stoa_stream_conn_t *c, const char *data, size_t len)
{
    if (c->outpos == c->outlen) {
        free(c->out);
        c->out = NULL;
        c->outpos = c->outlen = 0;
    }
    c->out = stoa_xrealloc(c->out, c->outlen + len);
    memcpy(c->out + c->outlen, data, len);
    c->outlen += len;
}

/* Stop watching and release a connection; the socket is given back or
 * closed. */
static void finish(stoa_stream_t *st, stoa_stream_conn_t *c, bool give_back)
{
    epoll_ctl(st->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    HASH_DEL(st->conns, c);
    c->ops->free(c->src);
    if (give_back)
        st->give_back(st->ud, c->fd);
    else
        close(c->fd);
    free(c->out);
    free(c);
    atomic_fetch_sub(&st->count, 1);
    atomic_fetch_sub(&st->reserved, 1);
}

static void watch(stoa_stream_t *st, stoa_stream_conn_t *c, bool want_out)
{
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLET | (want_out ? EPOLLOUT : 0u), .data.u64 = c->id};
    if (want_out != c->want_out) {
        c->want_out = want_out;
        epoll_ctl(st->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

/* Write what is pending. false when the connection is gone (released). */
static bool flush(stoa_stream_t *st, stoa_stream_conn_t *c)
{
    while (c->outpos < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outpos, c->outlen - c->outpos, MSG_NOSIGNAL);
        if (n > 0) {
            c->outpos += (size_t)n;
            c->blocked_ms = 0;   /* progress */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->blocked_ms)
                c->blocked_ms = stoa_now_ms();
            watch(st, c, true);
            return true;
        }
        finish(st, c, false);   /* the peer is gone */
        return false;
    }
    free(c->out);
    c->out = NULL;
    c->outpos = c->outlen = 0;
    c->blocked_ms = 0;
    watch(st, c, false);
    return true;
}

/* Run c's source while it has something and the socket takes it. */
static void run(stoa_stream_t *st, stoa_stream_conn_t *c, int64_t now)
{
    for (;;) {
        stoa_stream_step_t step;
        if (c->outpos < c->outlen)
            return;   /* blocked: EPOLLOUT brings us back; the source keeps the rest */
        if (c->done) {
            finish(st, c, c->keep_alive && !st->closing_seen);
            return;
        }
        st->slen = 0;
        pumping = st;
        step = c->ops->pump(c->src, c, now, st->closing_seen);
        pumping = NULL;
        if (st->slen > 0) {
            if (c->chunked) {
                char line[24];
                out_append(c, line, (size_t)snprintf(line, sizeof line, "%zx\r\n", st->slen));
                out_append(c, st->scratch, st->slen);
                out_append(c, "\r\n", 2);
            } else {
                out_append(c, st->scratch, st->slen);
            }
        }
        if (st->scap > 4 * STOA_STREAM_BATCH) {   /* one big message: do not keep its buffer */
            free(st->scratch);
            st->scratch = NULL;
            st->scap = 0;
        }
        if (step == STOA_STREAM_END) {
            c->done = true;
            if (c->chunked)
                out_append(c, "0\r\n\r\n", 5);
        }
        if (!flush(st, c))
            return;
        if (step == STOA_STREAM_IDLE)
            return;
    }
}

static void register_conn(stoa_stream_t *st, stoa_stream_conn_t *c, int64_t now)
{
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLET, .data.u64 = c->id};
    HASH_ADD(hh, st->conns, id, sizeof c->id, c);
    if (epoll_ctl(st->epoll_fd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        STOA_WARN("stream: epoll_ctl: %s", strerror(errno));
        finish(st, c, false);
        return;
    }
    if (flush(st, c))   /* the head */
        run(st, c, now);
}

static void drain_queue(stoa_stream_t *st)
{
    item_t *items;
    size_t n;
    uint64_t v;
    bool closing;
    int64_t now = stoa_now_ms();

    if (read(st->event_fd, &v, sizeof v) < 0 && errno != EAGAIN)
        STOA_WARN("stream: eventfd: %s", strerror(errno));
    pthread_mutex_lock(&st->mu);
    items = st->queue;
    n = st->qlen;
    st->queue = NULL;
    st->qlen = st->qcap = 0;
    closing = st->closing;
    pthread_mutex_unlock(&st->mu);

    for (size_t i = 0; i < n; i++) {
        stoa_stream_conn_t *c;
        if (items[i].add) {
            register_conn(st, items[i].add, now);
            st->added_since_trim++;
            continue;
        }
        HASH_FIND(hh, st->conns, &items[i].id, sizeof items[i].id, c);
        if (c)
            run(st, c, now);
    }
    free(items);
    if (closing && !st->closing_seen) {
        stoa_stream_conn_t *c, *tmp;
        st->closing_seen = true;
        atomic_store(&st->closing_ack, true);
        HASH_ITER(hh, st->conns, c, tmp) run(st, c, now);
    }
}

static void sweep(stoa_stream_t *st, int64_t now)
{
    stoa_stream_conn_t *c, *tmp;
    HASH_ITER(hh, st->conns, c, tmp) {
        if (c->outpos < c->outlen) {
            /* A client that stopped reading: its backlog waits in the
             * session's bounded buffer; after stall_ms, let it go. */
            if (c->blocked_ms && now - c->blocked_ms >= st->stall_ms)
                finish(st, c, false);
            continue;
        }
        if (c->deadline_ms && now >= c->deadline_ms) {
            c->deadline_ms = 0;   /* the pump sets the next one */
            run(st, c, now);
        }
    }
}

/* A connection handed over here leaves its libmicrohttpd memory pool
 * (http_memory_limit, 16 KiB by default, allocated with malloc on MHD's
 * thread) free between sessions allocated meanwhile: holes that stay
 * resident until stoa_heap_trim gives their pages back. */
static void trim(stoa_stream_t *st)
{
    if (st->added_since_trim && stoa_heap_trim())
        st->added_since_trim = 0;
}

static void *stream_main(void *arg)
{
    stoa_stream_t *st = arg;
    struct epoll_event events[128];
    int64_t next_sweep = stoa_now_ms() + SWEEP_MS;

    for (;;) {
        int64_t now = stoa_now_ms();
        int n, timeout = next_sweep > now ? (int)(next_sweep - now) : 0;
        bool stopping;

        n = epoll_wait(st->epoll_fd, events, (int)STOA_ARRAY_LEN(events), timeout);
        if (n < 0 && errno != EINTR) {
            STOA_ERROR("stream: epoll_wait: %s", strerror(errno));
            break;
        }
        for (int k = 0; k < n; k++) {
            uint64_t id = events[k].data.u64;
            stoa_stream_conn_t *c;
            if (id == QUEUE_KEY) {
                drain_queue(st);
                continue;
            }
            HASH_FIND(hh, st->conns, &id, sizeof id, c);
            if (!c)
                continue;
            if (events[k].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                finish(st, c, false);   /* the client went away */
                continue;
            }
            if (events[k].events & EPOLLOUT && flush(st, c))
                run(st, c, stoa_now_ms());
        }
        now = stoa_now_ms();
        if (now >= next_sweep) {
            sweep(st, now);
            trim(st);
            next_sweep = now + SWEEP_MS;
        }
        pthread_mutex_lock(&st->mu);
        stopping = st->stopping;
        pthread_mutex_unlock(&st->mu);
        if (stopping)
            break;
    }
    return NULL;
}

/* ---- setup ---- */

stoa_stream_t *stoa_stream_new(int max_conns, int stall_ms, stoa_stream_give_back_fn give_back, void *ud,
                               char *err, size_t errlen)
{
    stoa_stream_t *st = stoa_xcalloc(1, sizeof *st);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = QUEUE_KEY};
    st->max_conns = max_conns;
    st->stall_ms = stall_ms;
    st->give_back = give_back;
    st->ud = ud;
    atomic_init(&st->next_id, 1);
    atomic_init(&st->reserved, 0);
    atomic_init(&st->count, 0);
    atomic_init(&st->closing_ack, false);
    pthread_mutex_init(&st->mu, NULL);
    st->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    st->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (st->epoll_fd < 0 || st->event_fd < 0 || epoll_ctl(st->epoll_fd, EPOLL_CTL_ADD, st->event_fd, &ev) < 0 ||
        pthread_create(&st->thread, NULL, stream_main, st) != 0) {
        snprintf(err, errlen, "stream: %s", strerror(errno));
        stoa_stream_free(st);
        return NULL;
    }
    st->started = true;
    return st;
}

size_t stoa_stream_close(stoa_stream_t *st, int timeout_ms)
{
    int64_t deadline = stoa_now_ms() + timeout_ms;
    pthread_mutex_lock(&st->mu);
    st->closing = true;
    pthread_mutex_unlock(&st->mu);
    signal_thread(st);
    /* The thread takes note on its next round; wait for that even with a
     * timeout of 0, so that no socket is given back once this returns. */
    while (!atomic_load(&st->closing_ack) && st->started && stoa_now_ms() < deadline + 1000)
        usleep(1000);
    while (stoa_stream_count(st) > 0 && stoa_now_ms() < deadline)
        usleep(5000);
    return stoa_stream_count(st);
}

void stoa_stream_free(stoa_stream_t *st)
{
    stoa_stream_conn_t *c, *tmp;
    if (!st)
        return;
    if (st->started) {
        pthread_mutex_lock(&st->mu);
        st->stopping = true;
        pthread_mutex_unlock(&st->mu);
        signal_thread(st);
        pthread_join(st->thread, NULL);
    }
    /* Whatever is left: queued adds and open connections. */
    for (size_t i = 0; i < st->qlen; i++)
        if (st->queue[i].add) {
            c = st->queue[i].add;
            c->ops->free(c->src);
            close(c->fd);
            free(c->out);
            free(c);
        }
    HASH_ITER(hh, st->conns, c, tmp) {
        HASH_DEL(st->conns, c);
        c->ops->free(c->src);
        close(c->fd);
        free(c->out);
        free(c);
    }
    free(st->queue);
    free(st->scratch);
    if (st->epoll_fd >= 0) close(st->epoll_fd);
    if (st->event_fd >= 0) close(st->event_fd);
    pthread_mutex_destroy(&st->mu);
    free(st);
}
