/* acceptor.h - the one public port: accept, peek, hand over.
 *
 * The acceptor thread owns the listening socket. It accepts connections,
 * peeks at each request head without consuming it (MSG_PEEK) under a
 * deadline, and hands the socket to libwebsockets (a GET of /v1/ws with
 * "Upgrade: websocket") or to libmicrohttpd (everything else). A
 * connection that sends no complete request head (request line and
 * headers, up to the empty line) before the deadline is closed.
 */
#ifndef STOA_ACCEPTOR_H
#define STOA_ACCEPTOR_H

#include <stddef.h>
#include <sys/socket.h>

#include "stoa/config.h"

typedef enum {
    STOA_ROUTE_MORE,   /* not enough bytes yet */
    STOA_ROUTE_HTTP,
    STOA_ROUTE_WS,
} stoa_route_t;

/* Decide where a request head goes from its first len bytes; `complete`
 * says no more bytes will come (buffer full or peer done). STOA_ROUTE_MORE
 * until the head's empty line is in, unless complete. Pure; for tests. */
stoa_route_t stoa_acceptor_route(const char *head, size_t len, int complete);

/* Receives an accepted socket (ownership passes) on the acceptor thread. */
typedef void (*stoa_handoff_fn)(void *ud, int fd, const struct sockaddr *addr, socklen_t addrlen);

typedef struct stoa_acceptor stoa_acceptor_t;

/* Bind and listen on cfg->listen ("host:port"; port 0 picks one).
 * Returns the acceptor (owned by the caller) or NULL with err. */
stoa_acceptor_t *stoa_acceptor_new(const stoa_config_t *cfg, stoa_handoff_fn http, void *http_ud,
                                   stoa_handoff_fn ws, void *ws_ud, char *err, size_t errlen);
/* The bound port. */
int stoa_acceptor_port(const stoa_acceptor_t *acc);
/* Start the acceptor thread. 0 or -1. */
int stoa_acceptor_start(stoa_acceptor_t *acc);
/* Stop the thread, close the listening socket and pending connections,
 * free. */
void stoa_acceptor_free(stoa_acceptor_t *acc);

#endif
