/* acceptor.c - accept, peek at the request head, route to lws or MHD. */
#include "stoa/acceptor.h"
#include "stoa/log.h"
#include "stoa/util.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define PEEK_MAX 16384
#define STOP_KEY UINT64_MAX
#define LISTEN_KEY (UINT64_MAX - 1)

typedef struct pending {
    int fd;                      /* -1: free slot */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int64_t deadline_ms;
    int prev, next;              /* FIFO by deadline (accept order), slot indices */
} pending_t;

struct stoa_acceptor {
    const stoa_config_t *cfg;
    int listen_fd, epoll_fd, stop_fd, port;
    stoa_handoff_fn http, ws;
    void *http_ud, *ws_ud;
    pthread_t thread;
    bool started;
    pending_t *slots;
    int nslots, npending;
    int oldest, newest;          /* FIFO ends, -1 when empty */
    int free_head;               /* free slots chained through .next */
};

/* ---- routing ---- */

static const char *find_line_end(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p == '\n')
            return p;
    return NULL;
}

static bool header_has_token(const char *line, size_t len, const char *name, const char *token)
{
    size_t nlen = strlen(name), tlen = strlen(token);
    if (len <= nlen || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
        return false;
    for (size_t i = nlen + 1; i + tlen <= len; i++)
        if (strncasecmp(line + i, token, tlen) == 0)
            return true;
    return false;
}

/* The head ends with an empty line ("\n\n" or "\n\r\n"). */
static bool head_ended(const char *head, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (head[i] == '\n' && (head[i + 1] == '\n' || (head[i + 1] == '\r' && i + 2 < len && head[i + 2] == '\n')))
            return true;
    return false;
}

stoa_route_t stoa_acceptor_route(const char *head, size_t len, int complete)
{
    const char *end = head + len, *eol = find_line_end(head, end), *sp1, *path, *pend;
    size_t plen;

    /* Hand nothing over before the whole head is in: the deadline
     * (handshake_timeout_ms) covers the head, not only its first line;
     * libmicrohttpd would otherwise give a trickling client its own,
     * much longer connection timeout. */
    if (!complete && !head_ended(head, len))
        return STOA_ROUTE_MORE;
    if (!eol)
        return STOA_ROUTE_HTTP;
    if (len < 4 || memcmp(head, "GET ", 4) != 0)
        return STOA_ROUTE_HTTP;
    sp1 = head + 3;
    path = sp1 + 1;
    for (pend = path; pend < eol && *pend != ' ' && *pend != '?'; pend++)
        ;
    plen = (size_t)(pend - path);
    if (plen != 6 || memcmp(path, "/v1/ws", 6) != 0)
        return STOA_ROUTE_HTTP;
    /* /v1/ws: WebSocket only with an Upgrade: websocket header. */
    for (const char *line = eol + 1; line < end;) {
        const char *next = find_line_end(line, end);
        size_t llen;
        if (!next)
            break;
        llen = (size_t)(next - line);
        if (llen > 0 && line[llen - 1] == '\r')
            llen--;
        if (llen == 0)   /* end of headers */
            return STOA_ROUTE_HTTP;
        if (header_has_token(line, llen, "Upgrade", "websocket"))
            return STOA_ROUTE_WS;
        line = next + 1;
    }
    return complete ? STOA_ROUTE_WS : STOA_ROUTE_MORE;   /* headers too large: lws refuses them */
}

/* ---- pending connections ---- */

static void fifo_unlink(stoa_acceptor_t *a, int i)
{
    pending_t *p = &a->slots[i];
    if (p->prev >= 0) a->slots[p->prev].next = p->next; else a->oldest = p->next;
    if (p->next >= 0) a->slots[p->next].prev = p->prev; else a->newest = p->prev;
}

static void release(stoa_acceptor_t *a, int i, bool close_fd)
{
    pending_t *p = &a->slots[i];
    epoll_ctl(a->epoll_fd, EPOLL_CTL_DEL, p->fd, NULL);
    if (close_fd)
        close(p->fd);
    fifo_unlink(a, i);
    p->fd = -1;
    p->next = a->free_head;
    a->free_head = i;
    a->npending--;
}

static void add_pending(stoa_acceptor_t *a, int fd, struct sockaddr_storage *addr, socklen_t addrlen)
{
    int i = a->free_head;
    pending_t *p;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET};
    if (i < 0) {
        STOA_WARN("acceptor: %d connections are still sending their request head; refusing one", a->npending);
        close(fd);
        return;
    }
    p = &a->slots[i];
    a->free_head = p->next;
    p->fd = fd;
    p->addr = *addr;
    p->addrlen = addrlen;
    p->deadline_ms = stoa_now_ms() + a->cfg->handshake_timeout_ms;
    p->prev = a->newest;
    p->next = -1;
    if (a->newest >= 0) a->slots[a->newest].next = i; else a->oldest = i;
    a->newest = i;
    a->npending++;
    ev.data.u64 = (uint64_t)i;
    if (epoll_ctl(a->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        STOA_WARN("acceptor: epoll_ctl: %s", strerror(errno));
        release(a, i, true);
    }
}

static void peek(stoa_acceptor_t *a, int i)
{
    static __thread char buf[PEEK_MAX];
    pending_t *p = &a->slots[i];
    ssize_t n = recv(p->fd, buf, sizeof buf, MSG_PEEK);
    stoa_route_t route;

    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        release(a, i, true);
        return;
    }
    if (n < 0)
        return;
    route = stoa_acceptor_route(buf, (size_t)n, n == (ssize_t)sizeof buf);
    if (route == STOA_ROUTE_MORE)
        return;
    {
        int fd = p->fd;
        struct sockaddr_storage addr = p->addr;
        socklen_t addrlen = p->addrlen;
        release(a, i, false);
        if (route == STOA_ROUTE_WS)
            a->ws(a->ws_ud, fd, (struct sockaddr *)&addr, addrlen);
        else
            a->http(a->http_ud, fd, (struct sockaddr *)&addr, addrlen);
    }
}

static void accept_all(stoa_acceptor_t *a)
{
    for (;;) {
        struct sockaddr_storage addr;
        socklen_t addrlen = sizeof addr;
        int one = 1;
        int fd = accept4(a->listen_fd, (struct sockaddr *)&addr, &addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                STOA_WARN("acceptor: accept: %s", strerror(errno));
                if (errno == EMFILE || errno == ENFILE)
                    usleep(10000);   /* out of descriptors: let connections close */
            }
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        add_pending(a, fd, &addr, addrlen);
        /* The request head often came with the connection. */
        if (a->newest >= 0 && a->slots[a->newest].fd == fd)
            peek(a, a->newest);
    }
}

static void expire(stoa_acceptor_t *a, int64_t now)
{
    while (a->oldest >= 0 && a->slots[a->oldest].deadline_ms <= now) {
        STOA_DEBUG("acceptor: closing a connection that sent no request head in %d ms",
                   a->cfg->handshake_timeout_ms);
        release(a, a->oldest, true);
    }
}

static void *acceptor_main(void *arg)
{
    stoa_acceptor_t *a = arg;
    struct epoll_event events[64];
    for (;;) {
        int timeout = -1, n;
        int64_t now = stoa_now_ms();
        expire(a, now);
        if (a->oldest >= 0)
            timeout = (int)(a->slots[a->oldest].deadline_ms - now) + 1;
        n = epoll_wait(a->epoll_fd, events, (int)STOA_ARRAY_LEN(events), timeout);
        if (n < 0 && errno != EINTR) {
            STOA_ERROR("acceptor: epoll_wait: %s", strerror(errno));
            return NULL;
        }
        for (int k = 0; k < n; k++) {
            uint64_t key = events[k].data.u64;
            if (key == STOP_KEY)
                return NULL;
            if (key == LISTEN_KEY)
                accept_all(a);
            else if (a->slots[key].fd >= 0)
                peek(a, (int)key);
        }
    }
}

/* ---- setup ---- */

static int parse_listen(const char *spec, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':')
            return -1;
        snprintf(host, hostlen, "%.*s", (int)(close - spec - 1), spec + 1);
        colon = close + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon)
            return -1;
        snprintf(host, hostlen, "%.*s", (int)(colon - spec), spec);
    }
    snprintf(port, portlen, "%s", colon + 1);
    return port[0] ? 0 : -1;
}

stoa_acceptor_t *stoa_acceptor_new(const stoa_config_t *cfg, stoa_handoff_fn http, void *http_ud,
                                   stoa_handoff_fn ws, void *ws_ud, char *err, size_t errlen)
{
    stoa_acceptor_t *a = stoa_xcalloc(1, sizeof *a);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    struct epoll_event ev = {.events = EPOLLIN};
    char host[256], port[16];
    int one = 1, rc;

    a->cfg = cfg;
    a->http = http;
    a->http_ud = http_ud;
    a->ws = ws;
    a->ws_ud = ws_ud;
    a->listen_fd = a->epoll_fd = a->stop_fd = -1;
    a->oldest = a->newest = -1;
    a->nslots = cfg->max_pending_handshakes;
    a->slots = stoa_xcalloc((size_t)a->nslots, sizeof *a->slots);
    for (int i = 0; i < a->nslots; i++) {
        a->slots[i].fd = -1;
        a->slots[i].next = i + 1 < a->nslots ? i + 1 : -1;
    }
    a->free_head = 0;

    if (parse_listen(cfg->listen, host, sizeof host, port, sizeof port) < 0) {
        snprintf(err, errlen, "listen: expected host:port, got \"%s\"", cfg->listen);
        goto fail;
    }
    if ((rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res)) != 0) {
        snprintf(err, errlen, "listen %s: %s", cfg->listen, gai_strerror(rc));
        goto fail;
    }
    a->listen_fd = socket(res->ai_family, res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, res->ai_protocol);
    if (a->listen_fd < 0 || setsockopt(a->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(a->listen_fd, res->ai_addr, res->ai_addrlen) < 0 || listen(a->listen_fd, 1024) < 0 ||
        getsockname(a->listen_fd, (struct sockaddr *)&bound, &blen) < 0) {
        snprintf(err, errlen, "listen %s: %s", cfg->listen, strerror(errno));
        goto fail;
    }
    a->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    a->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    a->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->epoll_fd < 0 || a->stop_fd < 0) {
        snprintf(err, errlen, "acceptor: %s", strerror(errno));
        goto fail;
    }
    ev.data.u64 = LISTEN_KEY;
    epoll_ctl(a->epoll_fd, EPOLL_CTL_ADD, a->listen_fd, &ev);
    ev.data.u64 = STOP_KEY;
    epoll_ctl(a->epoll_fd, EPOLL_CTL_ADD, a->stop_fd, &ev);
    freeaddrinfo(res);
    return a;
fail:
    if (res)
        freeaddrinfo(res);
    stoa_acceptor_free(a);
    return NULL;
}

int stoa_acceptor_port(const stoa_acceptor_t *a)
{
    return a->port;
}

int stoa_acceptor_start(stoa_acceptor_t *a)
{
    if (pthread_create(&a->thread, NULL, acceptor_main, a) != 0)
        return -1;
    a->started = true;
    return 0;
}

void stoa_acceptor_free(stoa_acceptor_t *a)
{
    if (!a)
        return;
    if (a->started) {
        uint64_t one = 1;
        if (write(a->stop_fd, &one, sizeof one) < 0)
            STOA_WARN("acceptor: cannot signal stop: %s", strerror(errno));
        pthread_join(a->thread, NULL);
    }
    for (int i = 0; i < a->nslots; i++)
        if (a->slots[i].fd >= 0)
            close(a->slots[i].fd);
    if (a->listen_fd >= 0) close(a->listen_fd);
    if (a->epoll_fd >= 0) close(a->epoll_fd);
    if (a->stop_fd >= 0) close(a->stop_fd);
    free(a->slots);
    free(a);
}
