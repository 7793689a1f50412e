/* longpoll.c - the long-poll transport, an adapter over the hub.
 *
 * GET /v1/sessions/{id}/poll?after=N answers at once with the messages
 * after seq N, or is held until one arrives, poll_timeout_ms passes,
 * another connection takes the session, or shutdown; then answers with
 * what there is. Each answer is one complete JSON document, so a proxy
 * that buffers whole responses passes it unharmed:
 *   {"first_seq": F, "last_seq": L, "messages": [ ... ]}
 * MHD parses and checks the request and answers at once when it can; a
 * poll to hold leaves MHD for the stream thread (stream.h), which answers
 * it and gives a keep-alive socket back to MHD for the next request.
 * Between polls the session is detached and its grace period runs.
 */
#include "http_internal.h"
#include "stoa/access.h"
#include "stoa/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const stoa_transport_ops_t stoa_longpoll_ops = {
    .name = "longpoll",
    .wake = stoa_http_stream_wake,
};

/* One poll. Made on MHD's thread; a held one is owned by the stream
 * thread after the handoff. */
typedef struct lpoll {
    stoa_session_t *sess;        /* our reference */
    uint64_t id;                 /* the connection id, also the session's `conn` */
    int64_t deadline_ms;
    size_t max_bytes;            /* poll_max_bytes */
    bool keep_alive;
    char *origin;                /* allowed Origin for CORS (held polls), or NULL */
} lpoll_t;

typedef enum { ANSWER_NONE, ANSWER_OK, ANSWER_GONE } answer_t;

/* The answer if there is one: with messages, or with force (deadline,
 * shutdown) even without; ANSWER_GONE when another connection took the
 * session (or it ended). *doc receives the JSON document (owned by the
 * caller). The session is detached once there is an answer: the next poll
 * may come before this one is written, and must not be seen as taking the
 * session over. */
static answer_t compose(lpoll_t *p, bool force, char **doc, size_t *doclen)
{
    size_t len = 0, cap = 256, count = 0, hl;
    char *body = stoa_xmalloc(cap), head[96];
    uint64_t first = 0, last = 0;
    bool gone = false;

    /* Messages are copied in as encoded once for every recipient, taken
     * several under one hub lock; those past max_bytes are given back. */
    while (len < p->max_bytes) {
        stoa_msg_t *msgs[16];
        uint64_t from = 0;
        size_t n = stoa_session_take(p->sess, STOA_HTTP_CONN(p->id), msgs, 16, &from, &gone, NULL), i;
        if (n == 0)
            break;
        for (i = 0; i < n && len < p->max_bytes; i++) {
            size_t mlen = stoa_msg_len(msgs[i]);
            if (len + mlen + 2 > cap) {
                cap = (len + mlen + 2) * 2;
                body = stoa_xrealloc(body, cap);
            }
            if (count++)
                body[len++] = ',';
            memcpy(body + len, stoa_msg_text(msgs[i]), mlen);
            len += mlen;
            if (!first)
                first = from + i;
            last = from + i;
        }
        if (i < n)
            stoa_session_untake(p->sess, STOA_HTTP_CONN(p->id), from + i);
        for (size_t k = 0; k < n; k++)
            stoa_msg_unref(msgs[k]);
    }
    if (count == 0 && gone) {
        free(body);
        return ANSWER_GONE;
    }
    if (count == 0 && !force) {
        free(body);
        return ANSWER_NONE;
    }
    if (count == 0) {
        last = stoa_session_delivered(p->sess);
        first = last + 1;
    }
    hl = (size_t)snprintf(head, sizeof head, "{\"first_seq\":%llu,\"last_seq\":%llu,\"messages\":[",
                          (unsigned long long)first, (unsigned long long)last);
    *doc = stoa_xmalloc(hl + len + 3);
    memcpy(*doc, head, hl);
    memcpy(*doc + hl, body, len);
    memcpy(*doc + hl + len, "]}", 3);
    *doclen = hl + len + 2;
    free(body);
    stoa_hub_detach(p->sess, STOA_HTTP_CONN(p->id), false);
    return ANSWER_OK;
}

#define GONE_MESSAGE "another connection took this session over (or it ended)"

/* Stream thread: answer once there is something, at the deadline, or at
 * shutdown. */
static stoa_stream_step_t lpoll_pump(void *src, stoa_stream_conn_t *sc, int64_t now, bool closing)
{
    lpoll_t *p = src;
    char *doc = NULL, *head;
    size_t doclen = 0, hl;
    unsigned status = MHD_HTTP_OK;
    answer_t a = compose(p, closing || now >= p->deadline_ms, &doc, &doclen);

    if (a == ANSWER_NONE) {
        stoa_stream_set_deadline(sc, p->deadline_ms);
        return STOA_STREAM_IDLE;
    }
    if (a == ANSWER_GONE) {
        status = stoa_err_http_status(STOA_ERR_SUPERSEDED);
        doc = stoa_http_error_body(STOA_ERR_SUPERSEDED, GONE_MESSAGE, &doclen);
    }
    head = stoa_http_head(status, "application/json", "no-store", p->origin, NULL, (int64_t)doclen, false,
                          p->keep_alive, &hl);
    stoa_stream_write(sc, head, hl);
    stoa_stream_write(sc, doc, doclen);
    free(head);
    free(doc);
    return STOA_STREAM_END;
}

static void lpoll_free(void *src)
{
    lpoll_t *p = src;
    stoa_hub_detach(p->sess, STOA_HTTP_CONN(p->id), false);
    stoa_session_unref(p->sess);
    free(p->origin);
    free(p);
}

static const stoa_stream_source_ops_t lpoll_source = {.pump = lpoll_pump, .free = lpoll_free};

enum MHD_Result stoa_longpoll_poll(call_t *c)
{
    stoa_http_t *h = c->http;
    char cookie_buf[STOA_TOKEN_MAX + 1], why[256], *doc = NULL;
    const char *token = stoa_http_token(c, cookie_buf, sizeof cookie_buf);
    const char *after = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "after");
    stoa_msg_t *welcome = NULL;
    enum MHD_Result ret;
    size_t doclen = 0;
    stoa_err_t code;
    lpoll_t *p;
    answer_t a;
    int fd;

    if (!stoa_stream_reserve(h->stream))
        return STOA_HTTP_ERROR(c, STOA_ERR_SERVER_FULL, "%d streams and polls are open", h->cfg->max_connections);
    p = stoa_xcalloc(1, sizeof *p);
    p->id = stoa_stream_new_id(h->stream);
    p->max_bytes = (size_t)h->cfg->poll_max_bytes;
    code = stoa_access_connect(h->hub, h->auth, h->cfg, token, c->arg, after, &stoa_longpoll_ops, h->stream,
                               STOA_HTTP_CONN(p->id), &p->sess, &welcome, why, sizeof why);
    stoa_msg_unref(welcome);   /* a poll answers with numbered messages only */
    if (code) {
        stoa_stream_unreserve(h->stream);
        free(p);
        return STOA_HTTP_ERROR(c, code, "%s", why);
    }
    p->deadline_ms = stoa_now_ms() + h->cfg->poll_timeout_ms;
    /* Answer at once when there is something (or the server is closing:
     * the stream thread would only answer at once too). */
    a = compose(p, false, &doc, &doclen);
    fd = a == ANSWER_NONE ? stoa_http_take_socket(c) : -1;
    if (a == ANSWER_NONE && fd < 0) {
        int e = errno;
        lpoll_free(p);
        stoa_stream_unreserve(h->stream);
        return STOA_HTTP_ERROR(c, STOA_ERR_SERVER_FULL, "cannot hold the poll: %s", strerror(e));
    }
    if (a != ANSWER_NONE) {
        lpoll_free(p);
        stoa_stream_unreserve(h->stream);
        if (a == ANSWER_GONE)
            return STOA_HTTP_ERROR(c, STOA_ERR_SUPERSEDED, GONE_MESSAGE);
        ret = stoa_http_send_text(c, MHD_HTTP_OK, "application/json", doc, doclen, NULL, NULL);
        free(doc);
        return ret;
    }
    /* Hold it: from here the stream thread has the socket. */
    p->keep_alive = stoa_http_keep_alive(c);
    p->origin = c->origin ? stoa_xstrdup(c->origin) : NULL;
    stoa_stream_add(h->stream, fd, p->id, NULL, 0, false, p->keep_alive, &lpoll_source, p);
    return MHD_NO;   /* MHD lets go of the connection */
}
