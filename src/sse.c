/* sse.c - the Server-Sent Events transport, an adapter over the hub.
 *
 * GET /v1/sessions/{id}/sse streams the session: a `retry:` line (and
 * optional padding), the `welcome` as an event without id, then every
 * numbered message as "id: <seq>" + "data: <json>", and a comment
 * heartbeat when idle. MHD parses and checks the request (stoa_sse_open);
 * the accepted stream then leaves MHD for the stream thread (stream.h),
 * where this file's source produces the events when the hub wakes it or
 * the heartbeat is due.
 */
#include "http_internal.h"
#include "stoa/access.h"
#include "stoa/log.h"
#include "stoa/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const stoa_transport_ops_t stoa_sse_ops = {
    .name = "sse",
    .wake = stoa_http_stream_wake,
};

/* One stream's source, owned by the stream thread after the handoff. */
typedef struct sse {
    stoa_session_t *sess;        /* our reference */
    uint64_t id;                 /* the connection id, also the session's `conn` */
    stoa_msg_t *hello;           /* the welcome, not yet sent */
    int heartbeat_ms, retry_ms, padding;   /* padding: bytes, 0 for none */
    bool prelude_done;
    int64_t last_write_ms;
} sse_t;

static void put(stoa_stream_conn_t *sc, const char *s, size_t n)
{
    stoa_stream_write(sc, s, n);
}

/* One event: an optional id, then the text as data lines (split on line
 * ends, so that any text is framed safely), then a blank line. */
static void add_event(stoa_stream_conn_t *sc, bool numbered, uint64_t seq, const char *text, size_t len)
{
    char idline[40];
    const char *p = text, *end = text + len;
    if (numbered)
        put(sc, idline, (size_t)snprintf(idline, sizeof idline, "id: %llu\n", (unsigned long long)seq));
    do {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        put(sc, "data: ", 6);
        put(sc, p, n);
        put(sc, "\n", 1);
        p = nl ? nl + 1 : end;
    } while (p < end);
    put(sc, "\n", 1);
}

/* Stream thread: what there is now, up to a batch; the heartbeat when
 * nothing was written for heartbeat_ms. When closing (or superseded), what
 * is queued still goes out, then the stream ends. */
static stoa_stream_step_t sse_pump(void *src, stoa_stream_conn_t *sc, int64_t now, bool closing)
{
    sse_t *x = src;
    bool gone = false, full = false;

    if (!x->prelude_done) {
        char line[48];
        x->prelude_done = true;
        put(sc, line, (size_t)snprintf(line, sizeof line, "retry: %d\n\n", x->retry_ms));
        if (x->padding > 0) {
            char spaces[256];
            memset(spaces, ' ', sizeof spaces);
            put(sc, ":", 1);
            for (int left = x->padding; left > 0; left -= (int)sizeof spaces)
                put(sc, spaces, left < (int)sizeof spaces ? (size_t)left : sizeof spaces);
            put(sc, "\n\n", 2);
        }
    }
    if (x->hello) {
        add_event(sc, false, 0, stoa_msg_text(x->hello), stoa_msg_len(x->hello));
        stoa_msg_unref(x->hello);
        x->hello = NULL;
    }
    for (;;) {
        /* Several messages under one hub lock; one at a time near the
         * batch's end, so a pump stays about STOA_STREAM_BATCH bytes. */
        stoa_msg_t *msgs[16];
        uint64_t first = 0;
        size_t n, written = stoa_stream_written(sc);
        if (written >= STOA_STREAM_BATCH && !closing) {
            full = true;
            break;
        }
        n = stoa_session_take(x->sess, STOA_HTTP_CONN(x->id), msgs, written < STOA_STREAM_BATCH / 2 ? 16 : 1,
                              &first, &gone, NULL);
        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++) {
            add_event(sc, true, first + i, stoa_msg_text(msgs[i]), stoa_msg_len(msgs[i]));
            stoa_msg_unref(msgs[i]);
        }
    }
    if (stoa_stream_written(sc) > 0) {
        x->last_write_ms = now;
    } else if (!gone && !closing && now - x->last_write_ms >= x->heartbeat_ms) {
        /* Keeps proxies from cutting an idle stream, and finds a dead
         * client: a write to it fails and the stream is dropped. */
        put(sc, ": hb\n\n", 6);
        x->last_write_ms = now;
    }
    if (gone || closing)
        return STOA_STREAM_END;   /* superseded, the session ended, or shutdown */
    stoa_stream_set_deadline(sc, x->last_write_ms + x->heartbeat_ms);
    return full ? STOA_STREAM_MORE : STOA_STREAM_IDLE;
}

/* Stream thread: the client is gone or the stream ended. The session waits
 * for a resume, unless another connection already took it. */
static void sse_free(void *src)
{
    sse_t *x = src;
    stoa_hub_detach(x->sess, STOA_HTTP_CONN(x->id), false);
    stoa_session_unref(x->sess);
    stoa_msg_unref(x->hello);
    free(x);
}

static const stoa_stream_source_ops_t sse_source = {.pump = sse_pump, .free = sse_free};

enum MHD_Result stoa_sse_open(call_t *c)
{
    stoa_http_t *h = c->http;
    char cookie_buf[STOA_TOKEN_MAX + 1], why[256], *head;
    const char *token = stoa_http_token(c, cookie_buf, sizeof cookie_buf);
    /* EventSource sends Last-Event-ID when it reconnects by itself; proxies
     * may drop it, so the query may carry the position too. The header is
     * newer when both are there. */
    const char *last = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "Last-Event-ID");
    const char *pad = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "pad");
    bool keep_alive = stoa_http_keep_alive(c);
    size_t head_len;
    stoa_err_t code;
    sse_t *x;
    int fd;

    if (!last || !last[0])
        last = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "last_seq");
    if (!stoa_stream_reserve(h->stream))
        return STOA_HTTP_ERROR(c, STOA_ERR_SERVER_FULL, "%d streams and polls are open", h->cfg->max_connections);
    x = stoa_xcalloc(1, sizeof *x);
    x->id = stoa_stream_new_id(h->stream);
    x->heartbeat_ms = h->cfg->sse_heartbeat_s * 1000;
    x->retry_ms = h->cfg->sse_retry_ms;
    x->padding = pad && strcmp(pad, "1") == 0 ? h->cfg->sse_padding_bytes : 0;
    code = stoa_access_connect(h->hub, h->auth, h->cfg, token, c->arg, last, &stoa_sse_ops, h->stream,
                               STOA_HTTP_CONN(x->id), &x->sess, &x->hello, why, sizeof why);
    if (code) {
        stoa_stream_unreserve(h->stream);
        free(x);
        return STOA_HTTP_ERROR(c, code, "%s", why);
    }
    fd = stoa_http_take_socket(c);
    if (fd < 0) {
        int e = errno;
        stoa_stream_unreserve(h->stream);
        sse_free(x);
        return STOA_HTTP_ERROR(c, STOA_ERR_SERVER_FULL, "cannot take the connection over: %s", strerror(e));
    }
    x->last_write_ms = stoa_now_ms();
    /* HTTP/1.1: chunked, so that the connection can serve another request
     * after the stream ends; HTTP/1.0: the body ends with the connection. */
    head = stoa_http_head(MHD_HTTP_OK, "text/event-stream; charset=utf-8", "no-cache, no-store, no-transform",
                          c->origin, "X-Accel-Buffering: no\r\n", -1, keep_alive, keep_alive, &head_len);
    stoa_stream_add(h->stream, fd, x->id, head, head_len, keep_alive, keep_alive, &sse_source, x);
    free(head);
    return MHD_NO;   /* MHD lets go of the connection; the stream thread has it */
}
