/* msg.h - an encoded outbound message, shared by reference.
 *
 * A message is encoded once (JSON text) and every recipient holds a
 * reference to the same bytes. The buffer keeps STOA_MSG_HEADROOM free
 * bytes before the text so the WebSocket adapter can frame it in place
 * (libwebsockets writes its header into LWS_PRE bytes before the payload).
 * References are atomic, so any thread may take or drop one.
 */
#ifndef STOA_MSG_H
#define STOA_MSG_H

#include <stddef.h>
#include <stdint.h>

#define STOA_MSG_HEADROOM 32

typedef struct stoa_msg stoa_msg_t;

/* Copy len bytes of text into a new message with one reference, owned by
 * the caller (drop it with stoa_msg_unref). */
stoa_msg_t *stoa_msg_new(const char *text, size_t len);
/* Take one more reference; returns msg. */
stoa_msg_t *stoa_msg_ref(stoa_msg_t *msg);
/* Take n more references at once (one atomic operation for a fan-out to n
 * recipients); returns msg. */
stoa_msg_t *stoa_msg_ref_n(stoa_msg_t *msg, unsigned n);
/* Drop one reference; the last one frees the message. NULL is ignored. */
void stoa_msg_unref(stoa_msg_t *msg);
/* Drop n references at once; the last one frees the message. */
void stoa_msg_unref_n(stoa_msg_t *msg, unsigned n);

/* The text (NUL-terminated) and its length, without headroom. */
const char *stoa_msg_text(const stoa_msg_t *msg);
size_t stoa_msg_len(const stoa_msg_t *msg);
/* The text with STOA_MSG_HEADROOM writable bytes before it, for framing.
 * Only one thread (the WebSocket service thread) may write the headroom. */
unsigned char *stoa_msg_framable(stoa_msg_t *msg);
/* Current number of references (for tests and metrics). */
unsigned stoa_msg_refcount(const stoa_msg_t *msg);

#endif
