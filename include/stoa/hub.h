/* hub.h - rooms, peers, presence, relay and sessions, independent of any
 * transport.
 *
 * Every transport (WebSocket, SSE, long-poll, the cross-instance bus) is
 * an adapter: it attaches to a session, feeds it client messages through
 * proto.h, and reads the session's numbered outbound messages. The hub
 * holds one mutex; no function here does I/O, and the lock is never held
 * while a transport is woken: wakeups are collected under the lock and
 * delivered after it is released, through the transport's ops->wake.
 *
 * A session outlives its connections. Everything the server sends on it
 * gets the next sequence number (1, 2, 3...) and stays in a bounded buffer
 * (session_buffer_msgs, _bytes, _age_s) so that a client resuming after
 * seq N gets exactly N+1, N+2... in order. When what it missed is no longer
 * buffered, it gets a `resync` and a fresh `room_state` per room instead.
 * A session with no transport for session_grace_ms is closed (its peers
 * leave with reason "disconnect").
 *
 * Sessions are reference counted. stoa_hub_open and stoa_hub_find return
 * one reference to the caller; the hub keeps its own until the session
 * is closed.
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

#define STOA_SESSION_ID_LEN 32
/* Hex characters of a session id's digest (SHA-256, first 16 bytes): what
 * the bus carries instead of the secret id. */
#define STOA_HUB_SIDH_LEN 32

typedef struct stoa_hub stoa_hub_t;
typedef struct stoa_session stoa_session_t;

typedef enum {
    STOA_LEFT_LEAVE,        /* "leave": the peer asked */
    STOA_LEFT_DISCONNECT,   /* "disconnect": its connection closed or was dropped */
    STOA_LEFT_TIMEOUT,      /* "timeout": no heartbeat within heartbeat_timeout_s */
    STOA_LEFT_KICKED,       /* "kicked": removed through the integrator API */
} stoa_left_reason_t;

const char *stoa_left_reason_name(stoa_left_reason_t reason);

/* One wakeup of a batch (stoa_transport_ops_t.wake_batch). */
typedef struct stoa_wake {
    stoa_session_t *sess;   /* a reference, passed to the transport */
    void *conn;
} stoa_wake_t;

typedef struct stoa_transport_ops {
    const char *name;
    /* The session has new messages for `conn`, or `conn` must stop
     * (superseded by another connection, or the session ended). `conn` is
     * the connection attached when the wakeup was collected: it may be gone
     * by now, so the adapter must check it is one of its live connections
     * before touching it. Called from any thread with no hub lock held;
     * must not block and must not call back into the hub. */
    void (*wake)(void *transport, stoa_session_t *sess, void *conn);
    /* Optional: the wakeups of one locked section for this transport at
     * once (a fan-out wakes every recipient), instead of one wake call
     * each: one lock of the transport's queue and one event-loop wakeup
     * for all of them. Each entry's session reference passes to the
     * transport, which drops it (stoa_session_unref) when done with it.
     * wakes[] is only valid during the call. Same rules as wake
     * otherwise. NULL: wake is called for each. */
    void (*wake_batch)(void *transport, stoa_wake_t *wakes, size_t n);
} stoa_transport_ops_t;

/* cfg is borrowed and must outlive the hub. */
stoa_hub_t *stoa_hub_new(const stoa_config_t *cfg);
/* Frees the hub and every session still open in it (their transports
 * must be gone). */
void stoa_hub_free(stoa_hub_t *hub);

/* Open a session for ident (ownership taken). When ops is not NULL the
 * session is attached at once to that transport: `transport` is the
 * adapter instance handed to ops->wake (it must outlive the hub's use of
 * it), `conn` the adapter's per-connection object. Otherwise it starts
 * detached (its grace period runs). *welcome (if not NULL) receives the
 * `welcome` message to send first (a reference owned by the caller; it is
 * not numbered). Returns a session with one reference owned by the caller. */
stoa_session_t *stoa_hub_open(stoa_hub_t *hub, stoa_identity_t *ident, const stoa_transport_ops_t *ops,
                              void *transport, void *conn, stoa_msg_t **welcome);
/* The session with this id, with a reference owned by the caller, or NULL
 * when there is none (never was, closed, or expired). */
stoa_session_t *stoa_hub_find(stoa_hub_t *hub, const char *session_id);
/* Attach a transport connection, replacing (and waking) whichever was
 * attached. With has_last_seq, the client says it has everything up to
 * last_seq: delivery resumes after it, or, when that is no longer
 * buffered (or not a seq this session handed out), with a `resync`. Without it,
 * delivery continues where the session's cursor stands. *welcome receives
 * the `welcome` (resumed: true) to send first (if not NULL), a reference
 * owned by the caller. Returns STOA_OK, or STOA_ERR_SESSION_NOT_FOUND if the session
 * is closed. */
stoa_err_t stoa_hub_attach(stoa_session_t *sess, const stoa_transport_ops_t *ops, void *transport, void *conn,
                           bool has_last_seq, uint64_t last_seq, stoa_msg_t **welcome);
/* conn's transport is gone. If conn is still the session's connection the
 * session is detached: with `end` it is closed at once (the client said
 * goodbye), otherwise its grace period starts. No-op for a connection that
 * was superseded. */
void stoa_hub_detach(stoa_session_t *sess, void *conn, bool end);
/* Close the session: leave every room with `reason`, drop its buffer and
 * the hub's reference. Idempotent. The caller's own reference stays valid
 * until stoa_session_unref. */
void stoa_hub_close(stoa_session_t *sess, stoa_left_reason_t reason);

stoa_session_t *stoa_session_ref(stoa_session_t *sess);
void stoa_session_unref(stoa_session_t *sess);
/* The public peer id, and the secret session id (both immutable). */
const char *stoa_session_peer(const stoa_session_t *sess);
const char *stoa_session_id(const stoa_session_t *sess);
/* The user id (sub) of the session's identity (immutable). */
const char *stoa_session_sub(const stoa_session_t *sess);
stoa_hub_t *stoa_session_hub(const stoa_session_t *sess);

/* Client operations. Each returns STOA_OK, having queued its replies
 * (room_state, ack when id is not NULL) and relayed to the room; or an
 * error code with a human-readable reason in why (the caller reports it).
 * json_object arguments are borrowed. */
stoa_err_t stoa_hub_join(stoa_session_t *sess, const char *room, json_object *state, json_object *id,
                         char *why, size_t whylen);
/* The same; with observe, as an observer: it gets the room's messages but
 * is not announced (no peer_joined or peer_left), not listed in
 * room_state or presence, and has no presence state (max_observers_per_room). */
stoa_err_t stoa_hub_join_ex(stoa_session_t *sess, const char *room, json_object *state, bool observe,
                            json_object *id, char *why, size_t whylen);
stoa_err_t stoa_hub_leave(stoa_session_t *sess, const char *room, json_object *id, char *why, size_t whylen);
stoa_err_t stoa_hub_presence(stoa_session_t *sess, const char *room, json_object *patch, json_object *id,
                             char *why, size_t whylen);
stoa_err_t stoa_hub_heartbeat(stoa_session_t *sess, const char *room, json_object *id, char *why,
                              size_t whylen);
stoa_err_t stoa_hub_ephemeral(stoa_session_t *sess, const char *room, json_object *data, json_object *id,
                              char *why, size_t whylen);
/* The same with data as text: data_len bytes (borrowed) of JSON as
 * stoa_json_encode writes it (stoa_json_canonical text is), relayed as
 * they are. */
stoa_err_t stoa_hub_ephemeral_text(stoa_session_t *sess, const char *room, const char *data, size_t data_len,
                                   json_object *id, char *why, size_t whylen);

/* Integrator operations (callers have checked the API key).
 * Publish a server `message` {room, data} to every peer of room (data
 * borrowed); *delivered receives how many peers got it. */
stoa_err_t stoa_hub_publish(stoa_hub_t *hub, const char *room, json_object *data, size_t *delivered, char *why,
                            size_t whylen);
/* Remove peer from room with reason "kicked" (it is told too). STOA_OK or
 * STOA_ERR_NOT_FOUND. */
stoa_err_t stoa_hub_kick(stoa_hub_t *hub, const char *room, const char *peer, char *why, size_t whylen);
/* [{"room","peers"}] of every room with peers: a new array owned by the
 * caller. */
json_object *stoa_hub_rooms(stoa_hub_t *hub);

/* Queue a `notice` for every session (one message, shared): of every
 * instance with `everywhere`, else only this one's (a shutdown). */
void stoa_hub_notice(stoa_hub_t *hub, const char *level, const char *message, bool everywhere);

/* Queue msg (ownership of the reference taken) for this session only. */
void stoa_hub_send(stoa_session_t *sess, stoa_msg_t *msg);

/* Outbound side, for the attached connection `conn`: the next message
 * after the delivery cursor (a reference owned by the caller) with its
 * seq in *seq (if not NULL), advancing the cursor; NULL when there is
 * nothing more, or when conn is not (or no longer) the session's
 * connection, which *gone (if not NULL) then reports. */
stoa_msg_t *stoa_session_next(stoa_session_t *sess, void *conn, uint64_t *seq, bool *gone);
/* The same, and whether more messages are waiting after it (in *more), so
 * that a transport asks to be called again only when there are. */
stoa_msg_t *stoa_session_next_more(stoa_session_t *sess, void *conn, uint64_t *seq, bool *gone, bool *more);
/* stoa_session_next_more for many connections under one hub lock (a
 * transport's drain of its wakeups): for each t[i], the next message of
 * t[i].sess (all of this hub) for t[i].conn, as stoa_session_next_more
 * gives it. */
typedef struct stoa_session_next_req {
    stoa_session_t *sess;        /* in (borrowed) */
    void *conn;                  /* in */
    stoa_msg_t *msg;             /* out: a reference owned by the caller, or NULL */
    uint64_t seq;                /* out: msg's seq */
    bool gone, more;             /* out */
} stoa_session_next_req_t;
void stoa_session_next_each(stoa_session_next_req_t *t, size_t n);
/* The batch form, under one hub lock: up to max messages after the
 * delivery cursor into out[] (references owned by the caller), advancing
 * the cursor past them. Returns how many; their seqs are consecutive, the
 * first in *first_seq (if not NULL). *gone and *more (each if not NULL) as
 * for stoa_session_next_more. A transport that could not send some of
 * them gives them back with stoa_session_untake. */
size_t stoa_session_take(stoa_session_t *sess, void *conn, stoa_msg_t **out, size_t max, uint64_t *first_seq,
                         bool *gone, bool *more);
/* conn sent nothing from seq on of what it took (it still drops its own
 * references): the cursor moves back to seq - 1, so they are handed out
 * again (or, if the buffer dropped them meanwhile, a resync is). No-op
 * when conn is no longer the session's connection or seq was not taken. */
void stoa_session_untake(stoa_session_t *sess, void *conn, uint64_t seq);
/* The delivery cursor: the last seq handed to a connection. */
uint64_t stoa_session_delivered(stoa_session_t *sess);
/* The client has everything up to seq: the buffer may drop it. */
void stoa_session_ack(stoa_session_t *sess, uint64_t seq);
/* The per-connection object the session is attached to, if it is attached
 * to a transport with these ops; NULL when detached or closed. */
void *stoa_session_conn(stoa_session_t *sess, const stoa_transport_ops_t *ops);

/* Evict peers silent for longer than heartbeat_timeout_s, close sessions
 * detached for longer than session_grace_ms, drop buffered messages older
 * than session_buffer_age_s. Call about every 250 ms from any thread. */
void stoa_hub_tick(stoa_hub_t *hub, int64_t now_ms);

/* Send the presence changes that waited for the coalescing tick
 * (presence_tick_ms): one message per room, for every member whose state
 * changed since the room's last flush. Call every presence_tick_ms from
 * any thread. */
void stoa_hub_flush_presence(stoa_hub_t *hub, int64_t now_ms);

/* {"room":..., "peers":[{"peer","user","state"}...]} as JSON text owned by
 * the caller (free()); a room nobody is in has no peers. */
char *stoa_hub_room_json(stoa_hub_t *hub, const char *room);

/* The session as the server sees it: {"session","peer","user","transport"
 * (name or null),"rooms","seq" (last numbered),"delivered","buffered"},
 * JSON text owned by the caller (free()). */
char *stoa_hub_session_json(stoa_session_t *sess);
/* Open sessions per attached transport name ("none" when detached): a new
 * JSON object owned by the caller. */
json_object *stoa_hub_transport_counts(stoa_hub_t *hub);

/* Local sessions open and rooms with at least one peer (local or remote). */
void stoa_hub_stats(stoa_hub_t *hub, size_t *sessions, size_t *rooms);

/* ---- Many instances as one (hub_remote.c; the bus is bus.c) ----
 *
 * With a bus, every local change (a session opening, closing or moving,
 * a join, leave, presence change, ephemeral message, publish, notice or
 * kick) is encoded as one JSON event and appended to the bus's queue under
 * the hub lock, so the bus sends them in the order they happened. Events
 * from other instances come back through stoa_hub_remote_apply: their
 * sessions become *remote* sessions in the same rooms, so room_state,
 * presence reads and room counts include every instance's peers, and
 * local members are told of remote joins, changes and leaves as of local
 * ones. Nothing is ever queued for a remote session: its own instance
 * delivers to it. docs/architecture.md describes the events. */
typedef struct stoa_hub_bus_ops {
    /* Append one encoded event (len bytes of JSON text, copied) to the
     * outbound queue. Called with the hub lock held: it must only copy. */
    void (*emit)(void *bus, const char *event, size_t len);
    /* Events were appended: wake the bus thread. Called after the hub
     * lock is released. */
    void (*kick)(void *bus);
} stoa_hub_bus_ops_t;

/* Connect the hub to a bus (both borrowed; NULL ops disconnects).
 * instance is this instance's id, copied. Call before serving, or with
 * NULL after the serving threads have stopped. */
void stoa_hub_set_bus(stoa_hub_t *hub, const stoa_hub_bus_ops_t *ops, void *bus, const char *instance);
/* Apply a batch of events (a JSON array, ownership taken) from the
 * instance origin. Returns true when an event named a session this hub
 * does not know from origin: events were missed, and the caller should
 * ask origin for a snapshot (a "sync" event, stoa_hub_bus_sync).
 * Client messages forwarded to this instance ({"t":"fwd"} events) cannot
 * be handled under the hub lock: *forwarded receives them as a new array
 * owned by the caller (NULL when none), to pass to stoa_hub_forwarded. */
bool stoa_hub_remote_apply(stoa_hub_t *hub, const char *origin, json_object *events, json_object **forwarded);
/* One event of a bus payload as the bus thread split it: either parsed
 * (obj), or an ephemeral message or a publish left as text (obj NULL), so
 * that neither its parse nor its encoding for the clients builds a json-c
 * tree. */
typedef struct stoa_hub_bus_event {
    json_object *obj;    /* the event (a reference, taken by the hub), or NULL: */
    const char *peer;    /* an ephemeral message: the sender's peer id, STOA_PEER_ID_LEN
                          * (12) characters; NULL: a publish ({"t":"pub"}) */
    const char *room;    /* the room's JSON string text without its quotes and with
                          * nothing escaped: the name itself, room_len bytes */
    size_t room_len;
    const char *data;    /* the message's data, one valid JSON value, data_len bytes */
    size_t data_len;
} stoa_hub_bus_event_t;
/* stoa_hub_remote_apply for n events under one hub lock: the same, event
 * by event; every obj reference is dropped (under the lock). */
bool stoa_hub_remote_apply_events(stoa_hub_t *hub, const char *origin, stoa_hub_bus_event_t *events, size_t n,
                                  json_object **forwarded);
/* The instance origin is gone (dead or stopped): its peers leave every
 * room with reason "disconnect". */
void stoa_hub_remote_drop(stoa_hub_t *hub, const char *origin);
/* Queue a snapshot of every local session ({"t":"snap"}) on the bus,
 * in order with the other events. */
void stoa_hub_bus_snapshot(stoa_hub_t *hub);
/* Queue a request for a snapshot from instance `to` ("*": every
 * instance). */
void stoa_hub_bus_sync(stoa_hub_t *hub, const char *to);
/* Move here the session with this secret id, which lives on another
 * instance (a request for it landed on this one): it becomes local, with
 * its rooms and presence as the bus last described them; its numbering
 * continues after last_seq (when has_last_seq), and what the other
 * instance had buffered is replaced by a `resync` (reason "moved") and a
 * room_state per room. The other instances are told, and the old one lets
 * its connection go. Returns a reference owned by the caller, or NULL
 * when no instance is known to hold such a session. */
/* Requests for a session that lives on another instance which need not
 * move it: POST .../messages forwards the client messages (a JSON object
 * or array, borrowed) to its instance, DELETE (end) ends it there. Returns
 * false when no instance is known to hold a session with this id. */
bool stoa_hub_forward(stoa_hub_t *hub, const char *session_id, json_object *msgs, bool end);
/* Handle a forwarded event (from stoa_hub_remote_apply's *forwarded) for
 * the local session it names, as if its client had sent it: errors go
 * out on the session. No-op when the session is not here (any more). */
void stoa_hub_forwarded(stoa_hub_t *hub, json_object *fwd);
/* The session as GET /v1/sessions/{id} describes it, when it lives on
 * another instance ("transport": null, "instance": where it is): JSON text
 * owned by the caller, or NULL when unknown. */
char *stoa_hub_remote_session_json(stoa_hub_t *hub, const char *session_id);
/* Whether a session with this id lives on another instance; its user id
 * (sub) is copied into sub (truncated to sublen) so that a token can be
 * checked against it before anything is forwarded or moved. */
bool stoa_hub_remote_sub(stoa_hub_t *hub, const char *session_id, char *sub, size_t sublen);
stoa_session_t *stoa_hub_adopt(stoa_hub_t *hub, const char *session_id, bool has_last_seq, uint64_t last_seq);

#endif
