/* proto.h - client-to-server messages of docs/protocol.md.
 *
 * The one decoder every transport feeds: it parses a JSON text message,
 * checks its fields and calls the hub. Problems are answered by queueing an
 * `error` message on the session; the session stays open.
 */
#ifndef STOA_PROTO_H
#define STOA_PROTO_H

#include <stddef.h>

#include "stoa/hub.h"

/* Maximum nesting depth of a client message. */
#define STOA_PROTO_MAX_DEPTH 32
/* Longest request id (string) echoed back. */
#define STOA_PROTO_MAX_ID 128

/* Handle one client message of len bytes (text need not be NUL-terminated).
 * Returns STOA_OK or the error code that was reported to the client. */
stoa_err_t stoa_proto_handle(stoa_session_t *sess, const char *text, size_t len);

/* The same for a message already parsed (borrowed). With `errors` (a JSON
 * array), problems are appended there as {"code","message","id"?,"room"?}
 * instead of being queued on the session: a REST caller gets them in its
 * answer. */
stoa_err_t stoa_proto_handle_json(stoa_session_t *sess, json_object *msg, json_object *errors);

/* Parse client JSON text with the protocol's strictness and depth limit.
 * Returns a new object owned by the caller, or NULL with the reason. */
json_object *stoa_proto_parse(const char *text, size_t len, char *why, size_t whylen);

/* Report an error to the session (queues an `error` message). */
void stoa_proto_error(stoa_session_t *sess, stoa_err_t code, const char *message, json_object *id,
                      const char *room);

#endif
