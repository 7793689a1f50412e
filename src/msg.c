/* msg.c - refcounted encoded messages. */
#include "stoa/msg.h"
#include "stoa/util.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct stoa_msg {
    atomic_uint refs;
    size_t len;
    unsigned char buf[];   /* STOA_MSG_HEADROOM bytes, then text, then NUL */
};

stoa_msg_t *stoa_msg_new(const char *text, size_t len)
{
    stoa_msg_t *m = stoa_xmalloc(sizeof *m + STOA_MSG_HEADROOM + len + 1);
    atomic_init(&m->refs, 1);
    m->len = len;
    memcpy(m->buf + STOA_MSG_HEADROOM, text, len);
    m->buf[STOA_MSG_HEADROOM + len] = '\0';
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
    return (const char *)msg->buf + STOA_MSG_HEADROOM;
}

size_t stoa_msg_len(const stoa_msg_t *msg)
{
    return msg->len;
}

unsigned char *stoa_msg_framable(stoa_msg_t *msg)
{
    return msg->buf + STOA_MSG_HEADROOM;
}

unsigned stoa_msg_refcount(const stoa_msg_t *msg)
{
    return atomic_load(&msg->refs);
}
