/* longpoll.c - the long-poll transport, an adapter over the hub.
 *
 * GET /v1/sessions/{id}/poll?after=N answers at once with the messages
 * after seq N, or parks (park.h) until one arrives, poll_timeout_ms
 * passes, another connection takes the session, or shutdown; then answers
 * with what there is. Each answer is one complete JSON document, so a
 * proxy that buffers whole responses passes it unharmed:
 *   {"first_seq": F, "last_seq": L, "messages": [ ... ]}
 * Between polls the session is detached and its grace period runs.
 */
#include "http_internal.h"
#include "stoa/access.h"
#include "stoa/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const stoa_transport_ops_t stoa_longpoll_ops = {
    .name = "longpoll",
    .wake = stoa_http_park_wake,
};

typedef struct lpoll {
    stoa_session_t *sess;        /* our reference */
    stoa_parked_t *parked;       /* also the session's `conn` */
    int64_t deadline_ms;
} lpoll_t;

static void lpoll_done(stoa_http_t *h, void *stream)
{
    lpoll_t *p = stream;
    stoa_hub_detach(p->sess, p->parked, false);
    stoa_session_unref(p->sess);
    stoa_park_remove(h->park, p->parked);
    free(p);
}

/* Answer with what is there (maybe nothing), or park. */
static enum MHD_Result answer_or_park(call_t *c, lpoll_t *p)
{
    stoa_http_t *h = c->http;
    for (;;) {
        size_t len = 0, cap = 256, max = (size_t)h->cfg->poll_max_bytes, count = 0;
        char *body = stoa_xmalloc(cap), head[96];
        uint64_t first = 0, last = 0, seq;
        bool gone = false;
        stoa_msg_t *msg;
        enum MHD_Result ret;

        /* Messages are copied in as encoded once for every recipient. */
        while (len < max && (msg = stoa_session_next(p->sess, p->parked, &seq, &gone))) {
            size_t n = stoa_msg_len(msg);
            if (len + n + 2 > cap) {
                cap = (len + n + 2) * 2;
                body = stoa_xrealloc(body, cap);
            }
            if (count++)
                body[len++] = ',';
            memcpy(body + len, stoa_msg_text(msg), n);
            len += n;
            if (!first)
                first = seq;
            last = seq;
            stoa_msg_unref(msg);
        }
        if (count == 0 && gone) {
            free(body);
            return STOA_HTTP_ERROR(c, STOA_ERR_SUPERSEDED,
                                   "another connection took this session over (or it ended)");
        }
        if (count > 0 || stoa_now_ms() >= p->deadline_ms || stoa_park_closing(h->park)) {
            char *doc;
            size_t hl;
            if (count == 0) {
                last = stoa_session_delivered(p->sess);
                first = last + 1;
            }
            hl = (size_t)snprintf(head, sizeof head, "{\"first_seq\":%llu,\"last_seq\":%llu,\"messages\":[",
                                  (unsigned long long)first, (unsigned long long)last);
            doc = stoa_xmalloc(hl + len + 3);
            memcpy(doc, head, hl);
            memcpy(doc + hl, body, len);
            memcpy(doc + hl + len, "]}", 3);
            free(body);
            /* Detach now: the next poll may come before this request is
             * completed, and must not be seen as taking the session over. */
            stoa_hub_detach(p->sess, p->parked, false);
            ret = stoa_http_send_text(c, MHD_HTTP_OK, "application/json", doc, hl + len + 2, NULL, NULL);
            free(doc);
            return ret;
        }
        free(body);
        if (stoa_park_suspend(h->park, p->parked, p->deadline_ms))
            return MHD_YES;   /* MHD calls this handler again once resumed */
    }
}

enum MHD_Result stoa_longpoll_poll(call_t *c)
{
    stoa_http_t *h = c->http;
    char cookie_buf[STOA_TOKEN_MAX + 1], why[256];
    lpoll_t *p = c->req->stream;
    stoa_msg_t *welcome = NULL;
    stoa_err_t code;

    if (!p) {
        const char *token = stoa_http_token(c, cookie_buf, sizeof cookie_buf);
        const char *after = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "after");
        p = stoa_xcalloc(1, sizeof *p);
        p->parked = stoa_park_add(h->park, c->conn);
        code = stoa_access_connect(h->hub, h->auth, h->cfg, token, c->arg, after, &stoa_longpoll_ops, h->park,
                                   p->parked, &p->sess, &welcome, why, sizeof why);
        stoa_msg_unref(welcome);   /* a poll answers with numbered messages only */
        if (code) {
            stoa_park_remove(h->park, p->parked);
            free(p);
            return STOA_HTTP_ERROR(c, code, "%s", why);
        }
        p->deadline_ms = stoa_now_ms() + h->cfg->poll_timeout_ms;
        c->req->stream = p;
        c->req->done = lpoll_done;
    }
    return answer_or_park(c, p);
}
