/* ws.h - the WebSocket transport (libwebsockets), an adapter over the hub.
 *
 * ws_threads service threads (shards), each with its own libev (epoll)
 * loop and lws context, owned by this module; every lws call except
 * lws_cancel_service happens on the thread of the connection's shard.
 * Sockets arrive from the acceptor through stoa_ws_adopt (a queue plus
 * lws_cancel_service) and are dealt to the shards in turn.
 */
#ifndef STOA_WS_H
#define STOA_WS_H

#include <stddef.h>

#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/hub.h"

typedef struct stoa_ws stoa_ws_t;

/* Close codes sent with the WebSocket close frame (documented in
 * docs/protocol.md). */
#define STOA_WS_CLOSE_GOING_AWAY 1001
#define STOA_WS_CLOSE_TRY_LATER 1013
#define STOA_WS_CLOSE_POLICY 1008
#define STOA_WS_CLOSE_AUTH_FAILED 4001
#define STOA_WS_CLOSE_SESSION_NOT_FOUND 4004
#define STOA_WS_CLOSE_SUPERSEDED 4009

/* Create the lws context and start its service thread. cfg, hub and auth
 * are borrowed and must outlive the adapter. NULL with err on failure. */
stoa_ws_t *stoa_ws_new(const stoa_config_t *cfg, stoa_hub_t *hub, const stoa_auth_t *auth, char *err,
                       size_t errlen);
/* Hand over an accepted socket whose first bytes (still unread) are a
 * WebSocket upgrade request. Takes ownership of fd. Any thread. */
void stoa_ws_adopt(stoa_ws_t *ws, int fd);
/* The number of service threads cfg asks for (ws_threads; 0: one per
 * online CPU, at most 16). */
int stoa_ws_threads(const stoa_config_t *cfg);
/* Open WebSocket connections (approximate; any thread). */
int stoa_ws_connections(stoa_ws_t *ws);
/* Stop the service thread, close every connection (their peers leave
 * with reason "disconnect") and free the adapter. */
void stoa_ws_free(stoa_ws_t *ws);

#endif
