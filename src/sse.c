/* sse.c - the Server-Sent Events transport, an adapter over the hub.
 *
 * GET /v1/sessions/{id}/sse streams the session: a `retry:` line (and
 * optional padding), the `welcome` as an event without id, then every
 * numbered message as "id: <seq>" + "data: <json>", and a comment
 * heartbeat when idle. The stream is an MHD content reader on MHD's
 * thread; with nothing to send it parks (park.h) until the hub wakes it,
 * the heartbeat is due, or shutdown.
 */
#include "http_internal.h"
#include "stoa/access.h"
#include "stoa/log.h"
#include "stoa/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const stoa_transport_ops_t stoa_sse_ops = {
    .name = "sse",
    .wake = stoa_http_park_wake,
};

typedef struct sse {
    stoa_http_t *http;
    stoa_session_t *sess;        /* our reference */
    stoa_parked_t *parked;       /* also the session's `conn` */
    stoa_msg_t *hello;           /* the welcome, not yet sent */
    bool pad, prelude_done, ended;
    char *out;                   /* bytes prepared for MHD */
    size_t outlen, outpos, outcap;
    int64_t last_write_ms;
} sse_t;

static void out_reserve(sse_t *x, size_t more)
{
    if (x->outpos == x->outlen)
        x->outpos = x->outlen = 0;
    if (x->outlen + more > x->outcap) {
        x->outcap = x->outlen + more + 256;
        x->out = stoa_xrealloc(x->out, x->outcap);
    }
}

static void out_add(sse_t *x, const char *s, size_t n)
{
    out_reserve(x, n);
    memcpy(x->out + x->outlen, s, n);
    x->outlen += n;
}

/* One event: an optional id, then the text as data lines (split on line
 * ends, so that any text is framed safely), then a blank line. */
static void add_event(sse_t *x, bool numbered, uint64_t seq, const char *text, size_t len)
{
    char idline[40];
    const char *p = text, *end = text + len;
    if (numbered)
        out_add(x, idline, (size_t)snprintf(idline, sizeof idline, "id: %llu\n", (unsigned long long)seq));
    do {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        out_add(x, "data: ", 6);
        out_add(x, p, n);
        out_add(x, "\n", 1);
        p = nl ? nl + 1 : end;
    } while (p < end);
    out_add(x, "\n", 1);
}

/* Prepare the next piece of the stream; false when there is none now. */
static bool fill(sse_t *x)
{
    const stoa_config_t *cfg = x->http->cfg;
    uint64_t seq;
    bool gone;
    stoa_msg_t *msg;

    if (!x->prelude_done) {
        char line[48];
        x->prelude_done = true;
        out_add(x, line, (size_t)snprintf(line, sizeof line, "retry: %d\n\n", cfg->sse_retry_ms));
        if (x->pad && cfg->sse_padding_bytes > 0) {
            out_reserve(x, (size_t)cfg->sse_padding_bytes + 3);
            x->out[x->outlen++] = ':';
            memset(x->out + x->outlen, ' ', (size_t)cfg->sse_padding_bytes);
            x->outlen += (size_t)cfg->sse_padding_bytes;
            out_add(x, "\n\n", 2);
        }
        return true;
    }
    if (x->hello) {
        add_event(x, false, 0, stoa_msg_text(x->hello), stoa_msg_len(x->hello));
        stoa_msg_unref(x->hello);
        x->hello = NULL;
        return true;
    }
    msg = stoa_session_next(x->sess, x->parked, &seq, &gone);
    if (!msg) {
        if (gone)
            x->ended = true;   /* superseded, or the session ended */
        return false;
    }
    add_event(x, true, seq, stoa_msg_text(msg), stoa_msg_len(msg));
    stoa_msg_unref(msg);
    return true;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    sse_t *x = cls;
    stoa_park_t *park = x->http->park;
    int64_t heartbeat_ms = (int64_t)x->http->cfg->sse_heartbeat_s * 1000;

    for (;;) {
        size_t n = 0;
        int64_t now;
        while (n < max) {
            size_t avail = x->outlen - x->outpos, take = avail < max - n ? avail : max - n;
            if (take > 0) {
                memcpy(buf + n, x->out + x->outpos, take);
                x->outpos += take;
                n += take;
                continue;
            }
            if (x->ended || !fill(x))   /* when closing, what is queued still goes out */
                break;
        }
        now = stoa_now_ms();
        if (n > 0) {
            x->last_write_ms = now;
            return (ssize_t)n;
        }
        if (x->ended || stoa_park_closing(park))
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (now - x->last_write_ms >= heartbeat_ms) {
            /* Keeps proxies from cutting an idle stream, and finds a dead
             * client: a write to it fails and MHD closes the connection. */
            out_add(x, ": hb\n\n", 6);
            continue;
        }
        if (stoa_park_suspend(park, x->parked, x->last_write_ms + heartbeat_ms))
            return 0;   /* parked: MHD calls again once resumed */
        /* a wake came meanwhile: look again */
    }
}

static void sse_free(void *cls)
{
    sse_t *x = cls;
    /* The client is gone (or the stream ended): the session waits for a
     * resume, unless another connection already took it. */
    stoa_hub_detach(x->sess, x->parked, false);
    stoa_session_unref(x->sess);
    stoa_park_remove(x->http->park, x->parked);
    stoa_msg_unref(x->hello);
    free(x->out);
    free(x);
}

enum MHD_Result stoa_sse_open(call_t *c)
{
    stoa_http_t *h = c->http;
    char cookie_buf[STOA_TOKEN_MAX + 1], why[256];
    const char *token = stoa_http_token(c, cookie_buf, sizeof cookie_buf);
    /* EventSource sends Last-Event-ID when it reconnects by itself; proxies
     * may drop it, so the query may carry the position too. The header is
     * newer when both are there. */
    const char *last = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "Last-Event-ID");
    const char *pad = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "pad");
    struct MHD_Response *r;
    enum MHD_Result ret;
    stoa_err_t code;
    sse_t *x;

    if (!last || !last[0])
        last = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "last_seq");
    x = stoa_xcalloc(1, sizeof *x);
    x->http = h;
    x->pad = pad && strcmp(pad, "1") == 0;
    x->parked = stoa_park_add(h->park, c->conn);
    code = stoa_access_connect(h->hub, h->auth, h->cfg, token, c->arg, last, &stoa_sse_ops, h->park, x->parked,
                               &x->sess, &x->hello, why, sizeof why);
    if (code) {
        stoa_park_remove(h->park, x->parked);
        free(x);
        return STOA_HTTP_ERROR(c, code, "%s", why);
    }
    x->last_write_ms = stoa_now_ms();
    /* A small block: each stream holds one, and messages are small. */
    /* The block is MHD's per-stream write buffer: small, since sse_read
     * carries any longer event over to the next call. */
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, sse_read, x, sse_free);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache, no-store, no-transform");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    stoa_http_cors(c, r);
    ret = MHD_queue_response(c->conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);   /* MHD holds it; sse_free runs when it is done */
    return ret;
}
