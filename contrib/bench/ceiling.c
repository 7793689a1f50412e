/*
 * ceiling: the least a WebSocket fan-out server can do, as the benchmarks'
 * upper bound. One thread, epoll, nonblocking sockets.
 *
 * - Any HTTP request is answered with a fixed 101 Switching Protocols (with
 *   the Sec-WebSocket-Accept of its key).
 * - A client's first message is its join: its bytes, whatever they are, name
 *   its group (stoa-bench sends {"join":"bench:<r>"}; with one room this is
 *   "every connection").
 * - Every later message from a client is relayed: ONE unmasked frame is
 *   built with its payload and written to every other connection of the
 *   group. The payload is never parsed. There is no other protocol logic.
 * - Writes that the kernel does not take at once wait in a per-connection
 *   pending buffer (bounded: a client that stops reading is dropped).
 *
 * usage: ceiling --listen 127.0.0.1:PORT
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "bench_common.h"

#define RAW_SZ 65536u
#define HEAD_MAX 8192u
#define MSG_MAX (1u << 20)       /* an incoming message */
#define OUT_MAX (16u << 20)      /* pending output of one connection */
#define KEY_MAX 256u             /* bytes of a join message that name the group */
#define MAX_EVENTS 512
#define NBUCKETS 4096u

/* ---- connections and groups -------------------------------------------- */

struct group;

struct cconn {
    int fd;
    bool upgraded, joined, dead, frag_active, out_armed;
    uint8_t frag_op;
    struct group *group;
    uint32_t slot; /* index in group->members */
    struct buf in, out, frag;
    struct cconn *next_dead;
};

struct group {
    uint64_t hash;
    size_t keylen;
    char key[KEY_MAX];
    struct cconn **members;
    uint32_t n, cap;
    struct group *next;
};

struct server {
    int epfd, lfd;
    int reserve_fd; /* given up to refuse a client when out of descriptors */
    struct group *buckets[NBUCKETS];
    struct cconn *dead; /* closed during this batch of events, freed after it */
    char *raw, *frame;
    unsigned long conns, relayed, refused;
    bool accept_paused; /* out of descriptors without a reserve: listen again later */
};

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static struct group *group_get(struct server *s, const char *key, size_t n)
{
    if (n > KEY_MAX)
        n = KEY_MAX;
    uint64_t h = fnv1a(key, n);
    struct group **head = &s->buckets[h % NBUCKETS];
    for (struct group *g = *head; g; g = g->next)
        if (g->hash == h && g->keylen == n && memcmp(g->key, key, n) == 0)
            return g;
    struct group *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->hash = h;
    g->keylen = n;
    memcpy(g->key, key, n);
    g->next = *head;
    *head = g;
    return g;
}

static bool group_add(struct group *g, struct cconn *c)
{
    if (g->n == g->cap) {
        uint32_t cap = g->cap ? g->cap * 2 : 16;
        struct cconn **m = realloc(g->members, cap * sizeof *m);
        if (!m)
            return false;
        g->members = m;
        g->cap = cap;
    }
    c->group = g;
    c->slot = g->n;
    g->members[g->n++] = c;
    return true;
}

static void group_remove(struct cconn *c)
{
    struct group *g = c->group;
    if (!g)
        return;
    struct cconn *last = g->members[--g->n];
    g->members[c->slot] = last;
    last->slot = c->slot;
    c->group = NULL;
}

/* Closes now; frees after the current batch of events (see sweep). */
static void conn_kill(struct server *s, struct cconn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    close(c->fd);
    c->next_dead = s->dead;
    s->dead = c;
}

static void sweep(struct server *s)
{
    while (s->dead) {
        struct cconn *c = s->dead;
        s->dead = c->next_dead;
        group_remove(c);
        free(c->in.p);
        free(c->out.p);
        free(c->frag.p);
        free(c);
        s->conns--;
    }
}

static void conn_arm(struct server *s, struct cconn *c, bool want_out)
{
    if (c->out_armed == want_out || c->dead)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c};
    if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        conn_kill(s, c);
        return;
    }
    c->out_armed = want_out;
}

static void conn_send(struct server *s, struct cconn *c, const void *d, size_t n)
{
    size_t off = 0;
    if (c->dead)
        return;
    if (buf_size(&c->out) == 0) {
        ssize_t k = send(c->fd, d, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_kill(s, c);
                return;
            }
            k = 0;
        }
        off = (size_t)k;
        if (off == n)
            return;
    }
    if (!buf_append(&c->out, (const char *)d + off, n - off, OUT_MAX)) {
        fprintf(stderr, "ceiling: dropping a client that does not read (%u bytes pending)\n", OUT_MAX);
        conn_kill(s, c);
        return;
    }
    conn_arm(s, c, true);
}

static void conn_flush(struct server *s, struct cconn *c)
{
    while (buf_size(&c->out)) {
        ssize_t k = send(c->fd, buf_data(&c->out), buf_size(&c->out), MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EINTR)
                conn_kill(s, c);
            return;
        }
        buf_consume(&c->out, (size_t)k);
    }
    buf_shrink(&c->out);
    conn_arm(s, c, false);
}

/* An unmasked server frame in s->frame; returns its length. */
static size_t frame_build(struct server *s, unsigned op, const char *pl, size_t n)
{
    unsigned char *f = (unsigned char *)s->frame;
    size_t h = 0;
    f[h++] = (unsigned char)(0x80u | op);
    if (n < 126) {
        f[h++] = (unsigned char)n;
    } else if (n < 65536) {
        f[h++] = 126;
        f[h++] = (unsigned char)(n >> 8);
        f[h++] = (unsigned char)n;
    } else {
        f[h++] = 127;
        for (int i = 7; i >= 0; i--)
            f[h++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    memcpy(f + h, pl, n);
    return h + n;
}

/* ---- the protocol: join, then relay ------------------------------------- */

static void on_message(struct server *s, struct cconn *c, unsigned op, const char *p, size_t n)
{
    if (!c->joined) {
        struct group *g = group_get(s, p, n);
        if (!g || !group_add(g, c)) {
            conn_kill(s, c);
            return;
        }
        c->joined = true;
        return;
    }
    struct group *g = c->group;
    size_t len = frame_build(s, op, p, n);
    for (uint32_t i = 0; i < g->n; i++)
        if (g->members[i] != c)
            conn_send(s, g->members[i], s->frame, len);
    s->relayed++;
}

static void on_frame(struct server *s, struct cconn *c, unsigned op, bool fin, char *pl, size_t n)
{
    switch (op) {
    case 0x1:
    case 0x2:
        if (fin) {
            on_message(s, c, op, pl, n);
        } else {
            c->frag.off = c->frag.len = 0;
            c->frag_active = true;
            c->frag_op = (uint8_t)op;
            if (!buf_append(&c->frag, pl, n, MSG_MAX))
                conn_kill(s, c);
        }
        break;
    case 0x0:
        if (!c->frag_active || !buf_append(&c->frag, pl, n, MSG_MAX)) {
            conn_kill(s, c);
        } else if (fin) {
            c->frag_active = false;
            on_message(s, c, c->frag_op, buf_data(&c->frag), buf_size(&c->frag));
            c->frag.off = c->frag.len = 0;
            buf_shrink(&c->frag);
        }
        break;
    case 0x8:
        conn_send(s, c, s->frame, frame_build(s, 0x8, pl, n >= 2 ? 2 : 0));
        conn_kill(s, c);
        break;
    case 0x9:
        if (n <= 125)
            conn_send(s, c, s->frame, frame_build(s, 0xA, pl, n));
        break;
    case 0xA:
        break;
    default:
        conn_kill(s, c);
        break;
    }
}

/* The frame at p: its total length, 0 when incomplete, -1 when invalid. */
static long frame_parse(struct server *s, struct cconn *c, char *p, size_t n, bool deliver)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t len;
    size_t h;
    if (!ws_frame_len(u, n, &len, &h))
        return 0;
    if (len > MSG_MAX)
        return -1;
    bool masked = u[1] & 0x80u;
    unsigned char key[4] = {0, 0, 0, 0};
    if (masked) {
        if (n < h + 4)
            return 0;
        memcpy(key, u + h, 4);
        h += 4;
    }
    if (n < h + len)
        return 0;
    if (deliver) {
        char *pl = p + h;
        if (masked)
            for (size_t i = 0; i < len; i++)
                pl[i] = (char)((unsigned char)pl[i] ^ key[i & 3u]);
        on_frame(s, c, u[0] & 0x0fu, u[0] & 0x80u, pl, (size_t)len);
    }
    return (long)(h + len);
}

/* Whole frames in place; the tail that straddles reads waits in c->in. */
static void input_ws(struct server *s, struct cconn *c, char *p, size_t n)
{
    if (buf_size(&c->in)) {
        if (!buf_append(&c->in, p, n, MSG_MAX + 16)) {
            conn_kill(s, c);
            return;
        }
        p = buf_data(&c->in);
        n = buf_size(&c->in);
    }
    size_t off = 0;
    while (off < n && !c->dead) {
        long fl = frame_parse(s, c, p + off, n - off, false);
        if (fl < 0) {
            conn_kill(s, c);
            return;
        }
        if (fl == 0)
            break;
        frame_parse(s, c, p + off, n - off, true);
        off += (size_t)fl;
    }
    if (c->dead)
        return;
    if (buf_size(&c->in)) {
        buf_consume(&c->in, off);
        buf_shrink(&c->in);
    } else if (off < n && !buf_append(&c->in, p + off, n - off, MSG_MAX + 16)) {
        conn_kill(s, c);
    }
}

static void answer_upgrade(struct server *s, struct cconn *c, const char *head, size_t n)
{
    static const char name[] = "\nSec-WebSocket-Key:";
    char accept[64] = "";
    for (const char *q = head; (q = memchr(q, '\n', (size_t)(head + n - q))); q++) {
        if ((size_t)(head + n - q) < sizeof name - 1 || strncasecmp(q, name, sizeof name - 1) != 0)
            continue;
        const char *v = q + sizeof name - 1, *e;
        while (v < head + n && *v == ' ')
            v++;
        for (e = v; e < head + n && *e != '\r' && *e != '\n' && *e != ' '; e++) {
        }
        ws_accept_key(v, (size_t)(e - v), accept);
        break;
    }
    char resp[256];
    int k = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    conn_send(s, c, resp, (size_t)k);
    c->upgraded = true;
}

static void input(struct server *s, struct cconn *c, char *p, size_t n)
{
    if (c->upgraded) {
        input_ws(s, c, p, n);
        return;
    }
    size_t old = buf_size(&c->in);
    if (!buf_append(&c->in, p, n, HEAD_MAX)) {
        conn_kill(s, c);
        return;
    }
    size_t from = old > 3 ? old - 3 : 0;
    const char *e = memmem(buf_data(&c->in) + from, buf_size(&c->in) - from, "\r\n\r\n", 4);
    if (!e)
        return;
    size_t hl = (size_t)(e - buf_data(&c->in)) + 4;
    answer_upgrade(s, c, buf_data(&c->in), hl);
    /* frames sent right behind the request head */
    size_t rest = buf_size(&c->in) - hl;
    memcpy(s->raw, buf_data(&c->in) + hl, rest);
    c->in.off = c->in.len = 0;
    if (rest && !c->dead)
        input_ws(s, c, s->raw, rest);
}

/* ---- the loop ----------------------------------------------------------- */

/* Out of descriptors: the waiting client is refused (through the reserve
 * descriptor) rather than left to make the level-triggered loop spin; without
 * the reserve, accepting pauses for a while (see main). */
static void refuse_one(struct server *s)
{
    if ((s->refused++ & 1023u) == 0)
        fprintf(stderr, "ceiling: out of file descriptors at %lu connections: refused %lu so far\n", s->conns,
                s->refused);
    if (s->reserve_fd >= 0) {
        close(s->reserve_fd);
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd);
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (s->reserve_fd >= 0)
            return;
    }
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
    s->accept_paused = true;
}

static void on_accept(struct server *s)
{
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
            refuse_one(s);
            return;
        }
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                fprintf(stderr, "ceiling: accept: %s\n", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct cconn *c = calloc(1, sizeof *c);
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.ptr = c;
        if (!c || epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        s->conns++;
    }
}

static void on_event(struct server *s, struct cconn *c, uint32_t events)
{
    if (c->dead)
        return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t k = recv(c->fd, s->raw, RAW_SZ, 0);
        if (k > 0)
            input(s, c, s->raw, (size_t)k);
        else if (k == 0 || (errno != EAGAIN && errno != EINTR))
            conn_kill(s, c);
    }
    if (!c->dead && (events & EPOLLOUT))
        conn_flush(s, c);
}

static int listen_on(const char *spec)
{
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof host)
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return -1;
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    size_t hl = strlen(host);
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1 && (ntohl(a4->sin_addr.s_addr) >> 24) == 127) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        sl = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1 && IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        sl = sizeof *a6;
    } else {
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -2;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 4096) < 0) {
        close(fd);
        return -2;
    }
    return fd;
}

static void usage(FILE *f)
{
    fputs("usage: ceiling --listen 127.0.0.1:PORT\n"
          "  A minimal WebSocket fan-out server, the benchmarks' upper bound: every client's first\n"
          "  message is its join (its bytes name its group), every later one is relayed as is to the\n"
          "  other members of the group. Loopback addresses only.\n",
          f);
}

int main(int argc, char **argv)
{
    const char *listen_spec = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen_spec = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!listen_spec) {
        usage(stderr);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    static struct server s; /* large: its bucket table */
    s.lfd = listen_on(listen_spec);
    if (s.lfd == -1) {
        fprintf(stderr, "ceiling: --listen wants a loopback HOST:PORT, got '%s'\n", listen_spec);
        return 2;
    }
    if (s.lfd < 0) {
        fprintf(stderr, "ceiling: cannot listen on %s: %s\n", listen_spec, strerror(errno));
        return 1;
    }
    s.reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    s.raw = malloc(RAW_SZ + HEAD_MAX);
    s.frame = malloc(MSG_MAX + 16);
    s.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!s.raw || !s.frame || s.epfd < 0) {
        fprintf(stderr, "ceiling: out of resources\n");
        return 1;
    }
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(s.epfd, EPOLL_CTL_ADD, s.lfd, &lev);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fprintf(stderr, "ceiling: listening on %s\n", listen_spec);

    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop) {
        if (s.accept_paused && s.conns + 16 < rl.rlim_cur) {
            if (s.reserve_fd < 0)
                s.reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (epoll_ctl(s.epfd, EPOLL_CTL_ADD, s.lfd, &lev) == 0)
                s.accept_paused = false;
        }
        int n = epoll_wait(s.epfd, evs, MAX_EVENTS, s.accept_paused ? 100 : 1000);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "ceiling: epoll_wait: %s\n", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                on_accept(&s);
            else
                on_event(&s, evs[i].data.ptr, evs[i].events);
        }
        sweep(&s);
    }
    fprintf(stderr, "ceiling: stopping (%lu messages relayed)\n", s.relayed);
    return 0;
}
