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

/* Report an error to the session (queues an `error` message). */
void stoa_proto_error(stoa_session_t *sess, stoa_err_t code, const char *message, json_object *id,
                      const char *room);

#endif
