/* msg.c - refcounted encoded messages. */
#include "stoa/msg.h"
#include "stoa/util.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The longest WebSocket frame header (RFC 6455 section 5.2). */
#define WS_HEADER_MAX 10

struct stoa_msg {
    atomic_uint refs;
    unsigned char ws_header;   /* length of the frame header ending at the text */
    size_t len;
    unsigned char buf[];       /* WS_HEADER_MAX bytes, the text, NUL */
};

/* Write the header of one unmasked, final text frame of len bytes so that
 * it ends at end; returns its length. */
static unsigned char ws_header(unsigned char *end, size_t len)
{
    unsigned char h = len < 126 ? 2 : len <= 0xffff ? 4 : 10;
    unsigned char *p = end - h;
    p[0] = 0x81;   /* FIN, text */
    if (h == 2) {
        p[1] = (unsigned char)len;
    } else if (h == 4) {
        p[1] = 126;
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)len;
    } else {
        p[1] = 127;
        for (int i = 0; i < 8; i++)
            p[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    return h;
}

stoa_msg_t *stoa_msg_new(const char *text, size_t len)
{
    stoa_msg_t *m = stoa_xmalloc(sizeof *m + WS_HEADER_MAX + len + 1);
    atomic_init(&m->refs, 1);
    m->len = len;
    m->ws_header = ws_header(m->buf + WS_HEADER_MAX, len);
    memcpy(m->buf + WS_HEADER_MAX, text, len);
    m->buf[WS_HEADER_MAX + len] = '\0';
    return m;
}

stoa_msg_t *stoa_msg_ref_n(stoa_msg_t *msg, unsigned n)
{
    if (n)
        atomic_fetch_add_explicit(&msg->refs, n, memory_order_relaxed);
    return msg;
}

stoa_msg_t *stoa_msg_ref(stoa_msg_t *msg)
{
    atomic_fetch_add_explicit(&msg->refs, 1, memory_order_relaxed);
    return msg;
}

void stoa_msg_unref(stoa_msg_t *msg)
{
    if (msg && atomic_fetch_sub_explicit(&msg->refs, 1, memory_order_acq_rel) == 1)
        free(msg);
}

void stoa_msg_unref_n(stoa_msg_t *msg, unsigned n)
{
    if (msg && n && atomic_fetch_sub_explicit(&msg->refs, n, memory_order_acq_rel) == n)
        free(msg);
}

const char *stoa_msg_text(const stoa_msg_t *msg)
{
    return (const char *)msg->buf + WS_HEADER_MAX;
}

size_t stoa_msg_len(const stoa_msg_t *msg)
{
    return msg->len;
}

const unsigned char *stoa_msg_ws_frame(const stoa_msg_t *msg, size_t *len)
{
    *len = msg->ws_header + msg->len;
    return msg->buf + WS_HEADER_MAX - msg->ws_header;
}

unsigned stoa_msg_refcount(const stoa_msg_t *msg)
{
    return atomic_load(&msg->refs);
}
