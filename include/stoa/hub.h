/* hub.h - rooms, peers, presence and relay, independent of any transport.
 *
 * Every transport (WebSocket, SSE, long-poll, the cross-instance bus) is
 * an adapter that opens a session here, feeds it client messages through
 * proto.h, and drains its outbound queue. The hub holds one mutex; no
 * function here does I/O, and the lock is never held while a transport is
 * woken: wakeups are collected under the lock and delivered after it is
 * released, through the transport's ops->wake.
 *
 * Sessions are reference counted. stoa_hub_open returns one reference to
 * the caller (the transport); the hub keeps its own until stoa_hub_close.
 */
#ifndef STOA_HUB_H
#define STOA_HUB_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/error.h"
#include "stoa/msg.h"

typedef struct stoa_hub stoa_hub_t;
typedef struct stoa_session stoa_session_t;

typedef enum {
    STOA_LEFT_LEAVE,        /* "leave": the peer asked */
    STOA_LEFT_DISCONNECT,   /* "disconnect": its connection closed or was dropped */
    STOA_LEFT_TIMEOUT,      /* "timeout": no heartbeat within heartbeat_timeout_s */
} stoa_left_reason_t;

const char *stoa_left_reason_name(stoa_left_reason_t reason);

typedef struct stoa_transport_ops {
    const char *name;
    /* The session has outbound messages, or must be closed. Called from
     * any thread with no hub lock held; must not block and must not call
     * back into the hub. */
    void (*wake)(void *transport, stoa_session_t *sess);
} stoa_transport_ops_t;

/* cfg is borrowed and must outlive the hub. */
stoa_hub_t *stoa_hub_new(const stoa_config_t *cfg);
/* Frees the hub and every session still open in it (their transports
 * must be gone). */
void stoa_hub_free(stoa_hub_t *hub);

/* Open a session for ident (ownership taken) attached to a transport:
 * `transport` is the adapter instance handed to ops->wake (it must outlive
 * the hub's use of it), `conn` the adapter's per-connection object, read
 * back with stoa_session_conn. Queues the `welcome` message. Returns a
 * session with one reference owned by the caller. */
stoa_session_t *stoa_hub_open(stoa_hub_t *hub, stoa_identity_t *ident, const stoa_transport_ops_t *ops,
                              void *transport, void *conn);
/* The session's transport is gone: leave every room with `reason`, drop
 * queued messages and the hub's reference. Idempotent. The caller's own
 * reference stays valid until stoa_session_unref. */
void stoa_hub_close(stoa_session_t *sess, stoa_left_reason_t reason);

stoa_session_t *stoa_session_ref(stoa_session_t *sess);
void stoa_session_unref(stoa_session_t *sess);
/* The public peer id (immutable). */
const char *stoa_session_peer(const stoa_session_t *sess);
stoa_hub_t *stoa_session_hub(const stoa_session_t *sess);

/* Client operations. Each returns STOA_OK, having queued its replies
 * (room_state, ack when id is not NULL) and relayed to the room; or an
 * error code with a human-readable reason in why (the caller reports it).
 * json_object arguments are borrowed. */
stoa_err_t stoa_hub_join(stoa_session_t *sess, const char *room, json_object *state, json_object *id,
                         char *why, size_t whylen);
stoa_err_t stoa_hub_leave(stoa_session_t *sess, const char *room, json_object *id, char *why, size_t whylen);
stoa_err_t stoa_hub_presence(stoa_session_t *sess, const char *room, json_object *patch, json_object *id,
                             char *why, size_t whylen);
stoa_err_t stoa_hub_heartbeat(stoa_session_t *sess, const char *room, json_object *id, char *why,
                              size_t whylen);
stoa_err_t stoa_hub_ephemeral(stoa_session_t *sess, const char *room, json_object *data, json_object *id,
                              char *why, size_t whylen);

/* Queue msg (ownership of the reference taken) for this session only. */
void stoa_hub_send(stoa_session_t *sess, stoa_msg_t *msg);

/* Outbound side, for the session's transport. The next queued message (a
 * reference owned by the caller), or NULL when the queue is empty. */
stoa_msg_t *stoa_session_pop(stoa_session_t *sess);
/* STOA_OK, or the reason the hub wants the transport to close the
 * session now (STOA_ERR_SLOW_CONSUMER when its queue overflowed). */
stoa_err_t stoa_session_close_reason(stoa_session_t *sess);
/* The per-connection object the session is attached to, if it is attached
 * to a transport with these ops; NULL once closed. */
void *stoa_session_conn(stoa_session_t *sess, const stoa_transport_ops_t *ops);

/* Evict peers silent for longer than heartbeat_timeout_s. Call about once
 * a second from any thread. */
void stoa_hub_tick(stoa_hub_t *hub, int64_t now_ms);

/* {"room":..., "peers":[{"peer","user","state"}...]} as JSON text owned by
 * the caller (free()); a room nobody is in has no peers. */
char *stoa_hub_room_json(stoa_hub_t *hub, const char *room);

/* Sessions open and rooms with at least one peer. */
void stoa_hub_stats(stoa_hub_t *hub, size_t *sessions, size_t *rooms);

#endif
