/* msg.h - an encoded outbound message, shared by reference.
 *
 * A message is encoded once (JSON text) and every recipient holds a
 * reference to the same bytes. The WebSocket frame header is written
 * once too, in front of the text, so every WebSocket thread sends the same
 * read-only frame. References are atomic, so any thread may take or drop
 * one.
 */
#ifndef STOA_MSG_H
#define STOA_MSG_H

#include <stddef.h>
#include <stdint.h>

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
/* The message as one unmasked, final WebSocket text frame (RFC 6455
 * section 5.2): its header, then the text; *len is set to its length.
 * Read-only and owned by the message. */
const unsigned char *stoa_msg_ws_frame(const stoa_msg_t *msg, size_t *len);
/* Current number of references (for tests and metrics). */
unsigned stoa_msg_refcount(const stoa_msg_t *msg);

#endif
