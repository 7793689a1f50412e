/* wire.h - encoders of the server-to-client messages of docs/protocol.md.
 *
 * Each returns a new message (one reference, owned by the caller) encoded
 * once as plain JSON. json_object arguments are borrowed; `id` is the
 * client's request id echoed back (any JSON scalar) and may be NULL.
 * json-c reference counts are not atomic: call these only where the
 * objects passed in are not touched by another thread (the hub calls them
 * under its lock).
 */
#ifndef STOA_WIRE_H
#define STOA_WIRE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "stoa/error.h"
#include "stoa/msg.h"

/* seq: the last seq sent before this welcome; the next message is seq + 1. */
stoa_msg_t *stoa_wire_welcome(const char *peer, const char *session, json_object *user, uint64_t seq,
                              bool resumed, int heartbeat_interval_s, int heartbeat_timeout_s,
                              json_object *limits);
stoa_msg_t *stoa_wire_room_state(const char *room, json_object *peers, json_object *id);
stoa_msg_t *stoa_wire_peer_joined(const char *room, const char *peer, json_object *user, json_object *state);
stoa_msg_t *stoa_wire_presence(const char *room, const char *peer, json_object *state);
/* Several peers' presence in one message: peers is [{"peer","state"}...]
 * (a reference is taken). */
stoa_msg_t *stoa_wire_presence_batch(const char *room, json_object *peers);
stoa_msg_t *stoa_wire_peer_left(const char *room, const char *peer, const char *reason);
stoa_msg_t *stoa_wire_ephemeral(const char *room, const char *from, json_object *user, json_object *data);
/* A message from the application's backend (integrator API) to a room. */
stoa_msg_t *stoa_wire_server_message(const char *room, json_object *data);
stoa_msg_t *stoa_wire_notice(const char *level, const char *message);
stoa_msg_t *stoa_wire_error(stoa_err_t code, const char *message, json_object *id, const char *room);
stoa_msg_t *stoa_wire_ack(json_object *id);
stoa_msg_t *stoa_wire_pong(json_object *id);

/* The presence encoders again, from states already encoded as JSON text
 * (each peer's state encoded once, shared by every message it goes into),
 * byte for byte what stoa_wire_presence and stoa_wire_presence_batch
 * produce from the same values. room and peer are plain strings. */
typedef struct stoa_wire_state {
    const char *peer;
    const char *state;      /* the state's plain JSON text, state_len bytes */
    size_t state_len;
} stoa_wire_state_t;
stoa_msg_t *stoa_wire_presence_text(const char *room, const stoa_wire_state_t *st);
stoa_msg_t *stoa_wire_presence_batch_text(const char *room, const stoa_wire_state_t *peers, size_t n);
/* stoa_wire_ephemeral from data already encoded (data_len bytes of JSON
 * text as stoa_json_encode writes it, borrowed), byte for byte the same.
 * room and from are plain strings. */
stoa_msg_t *stoa_wire_ephemeral_text(const char *room, const char *from, json_object *user, const char *data,
                                     size_t data_len);

/* Encode obj (borrowed) as a message. */
stoa_msg_t *stoa_wire_encode(json_object *obj);

#endif
