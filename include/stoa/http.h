/* http.h - the HTTP side of the port (libmicrohttpd): REST and static
 * files, SSE and long-poll.
 *
 * libmicrohttpd runs its own internal epoll thread; handlers run there and
 * call the hub like any transport. Sockets arrive from the acceptor through
 * stoa_http_add (MHD_add_connection, safe from another thread). An SSE
 * stream or a held long-poll leaves MHD once accepted and continues on the
 * stream thread (stream.h), which this module owns; a keep-alive socket
 * comes back through stoa_http_add after its response.
 */
#ifndef STOA_HTTP_H
#define STOA_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "stoa/auth.h"
#include "stoa/bus.h"
#include "stoa/config.h"
#include "stoa/hub.h"
#include "stoa/store.h"

typedef struct stoa_http stoa_http_t;

/* Start libmicrohttpd without a listening socket. cfg, hub, auth and
 * store are borrowed and must outlive it. NULL with err on failure. */
stoa_http_t *stoa_http_new(const stoa_config_t *cfg, stoa_hub_t *hub, const stoa_auth_t *auth,
                           stoa_store_t *store, char *err, size_t errlen);
/* With a database: the bus whose status /healthz reports (borrowed; set
 * before serving, and it must outlive the daemon). */
void stoa_http_set_bus(stoa_http_t *http, stoa_bus_t *bus);
/* Hand over an accepted socket (ownership passes; closed on failure). */
void stoa_http_add(stoa_http_t *http, int fd, const struct sockaddr *addr, socklen_t addrlen);
/* End every stream and answer every held poll (bounded by
 * shutdown_timeout_ms), stop the daemon and the stream thread, and free. */
void stoa_http_free(stoa_http_t *http);

#endif
