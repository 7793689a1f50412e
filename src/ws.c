/* ws.c - WebSocket transport over libwebsockets.
 *
 * Threads: the service thread (ws->thread) owns the lws context and every
 * connection. Other threads only push onto ws->adopt_q / ws->wake_q under
 * ws->mu and call lws_cancel_service(); the service thread drains both in
 * LWS_CALLBACK_EVENT_WAIT_CANCELLED.
 */
#include "stoa/ws.h"
#include "stoa/access.h"
#include "stoa/log.h"
#include "stoa/proto.h"
#include "stoa/util.h"
#include "stoa/wire.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

_Static_assert(LWS_PRE <= STOA_MSG_HEADROOM, "message headroom must fit the WebSocket frame header");

typedef struct conn {
    stoa_ws_t *ws;
    struct lws *wsi;
    stoa_session_t *sess;     /* our reference; NULL before auth or after close */
    char *rx;                 /* reassembly of a fragmented message */
    size_t rxlen, rxcap;
    bool rx_too_big, rx_binary;
    stoa_msg_t *last_words;   /* sent before closing when there is no session */
    int close_code;
    bool going_away;          /* shutting down: send a notice, then close 1001 */
    struct conn *prev, *next; /* ws->conns, for shutdown */
} conn_t;

struct stoa_ws {
    const stoa_config_t *cfg;
    stoa_hub_t *hub;
    const stoa_auth_t *auth;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    lws_retry_bo_t retry;
    pthread_t thread;
    atomic_bool stop;
    atomic_int nconn;
    conn_t *conns;            /* established connections (service thread only) */
    pthread_mutex_t mu;       /* guards the two queues */
    int *adopt_q;
    size_t nadopt, capadopt;
    stoa_session_t **wake_q;
    size_t nwake, capwake;
};

static void ws_wake(void *transport, stoa_session_t *sess);

static const stoa_transport_ops_t ws_ops = {
    .name = "websocket",
    .wake = ws_wake,
};

/* Any thread: queue the session and wake the service thread. */
static void ws_wake(void *transport, stoa_session_t *sess)
{
    stoa_ws_t *ws = transport;
    pthread_mutex_lock(&ws->mu);
    if (ws->nwake == ws->capwake) {
        ws->capwake = ws->capwake ? ws->capwake * 2 : 64;
        ws->wake_q = stoa_xrealloc(ws->wake_q, ws->capwake * sizeof *ws->wake_q);
    }
    ws->wake_q[ws->nwake++] = stoa_session_ref(sess);
    pthread_mutex_unlock(&ws->mu);
    /* Once stopping, the context is being destroyed on this very thread
     * (stoa_ws_free); the queue is then dropped there. */
    if (!atomic_load(&ws->stop))
        lws_cancel_service(ws->ctx);
}

void stoa_ws_adopt(stoa_ws_t *ws, int fd)
{
    pthread_mutex_lock(&ws->mu);
    if (ws->nadopt == ws->capadopt) {
        ws->capadopt = ws->capadopt ? ws->capadopt * 2 : 64;
        ws->adopt_q = stoa_xrealloc(ws->adopt_q, ws->capadopt * sizeof *ws->adopt_q);
    }
    ws->adopt_q[ws->nadopt++] = fd;
    pthread_mutex_unlock(&ws->mu);
    lws_cancel_service(ws->ctx);
}

int stoa_ws_connections(stoa_ws_t *ws)
{
    return atomic_load(&ws->nconn);
}

/* Service thread: adopt queued sockets, ask for writable on woken sessions. */
static void drain_queues(stoa_ws_t *ws)
{
    int *fds;
    stoa_session_t **wakes;
    size_t nfds, nwakes;

    pthread_mutex_lock(&ws->mu);
    fds = ws->adopt_q;
    nfds = ws->nadopt;
    wakes = ws->wake_q;
    nwakes = ws->nwake;
    ws->adopt_q = NULL;
    ws->nadopt = ws->capadopt = 0;
    ws->wake_q = NULL;
    ws->nwake = ws->capwake = 0;
    pthread_mutex_unlock(&ws->mu);

    for (size_t i = 0; i < nfds; i++)
        if (!lws_adopt_socket_vhost(ws->vh, fds[i]))   /* closes the fd on failure */
            STOA_WARN("websocket: could not adopt a connection");
    for (size_t i = 0; i < nwakes; i++) {
        conn_t *c = stoa_session_conn(wakes[i], &ws_ops);
        if (c)
            lws_callback_on_writable(c->wsi);
        stoa_session_unref(wakes[i]);
    }
    free(fds);
    free(wakes);
}

static void close_with(conn_t *c, stoa_err_t code, const char *why, int close_code)
{
    c->last_words = stoa_wire_error(code, why, NULL, NULL);
    c->close_code = close_code;
    lws_callback_on_writable(c->wsi);
}

static char *header(struct lws *wsi, enum lws_token_indexes idx)
{
    int len = lws_hdr_total_length(wsi, idx);
    char *v;
    if (len <= 0 || len > STOA_TOKEN_MAX + 64)
        return NULL;
    v = stoa_xmalloc((size_t)len + 1);
    if (lws_hdr_copy(wsi, v, len + 1, idx) < 0) {
        free(v);
        return NULL;
    }
    return v;
}

static bool origin_ok(stoa_ws_t *ws, struct lws *wsi)
{
    char *origin = header(wsi, WSI_TOKEN_ORIGIN), *host = header(wsi, WSI_TOKEN_HOST);
    bool ok = stoa_access_origin_allowed(ws->cfg, origin, host);
    if (!ok)
        STOA_WARN("websocket: refused Origin %.100s", origin);
    free(origin);
    free(host);
    return ok;
}

static void on_established(stoa_ws_t *ws, conn_t *c, struct lws *wsi)
{
    char *qbuf = stoa_xmalloc(STOA_TOKEN_MAX + 16), *cookie_buf = stoa_xmalloc(STOA_TOKEN_MAX + 1);
    char *authz = header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION), *cookie = header(wsi, WSI_TOKEN_HTTP_COOKIE);
    const char *qtoken = lws_get_urlarg_by_name(wsi, "token=", qbuf, STOA_TOKEN_MAX + 16);
    const char *token;
    stoa_identity_t *ident;
    stoa_err_t code = STOA_OK;
    char why[256];

    memset(c, 0, sizeof *c);
    c->ws = ws;
    c->wsi = wsi;
    c->next = ws->conns;
    if (ws->conns)
        ws->conns->prev = c;
    ws->conns = c;
    if (atomic_fetch_add(&ws->nconn, 1) >= ws->cfg->max_connections) {
        close_with(c, STOA_ERR_SERVER_FULL, "too many connections; try again later", STOA_WS_CLOSE_TRY_LATER);
        goto out;
    }
    token = stoa_access_token(qtoken, authz, cookie, ws->cfg->token_cookie, cookie_buf, STOA_TOKEN_MAX + 1);
    ident = stoa_access_identify(ws->auth, ws->cfg, token, &code, why, sizeof why);
    if (!ident) {
        STOA_INFO("websocket: authentication failed: %s", why);
        close_with(c, code, why, STOA_WS_CLOSE_AUTH_FAILED);
        goto out;
    }
    c->sess = stoa_hub_open(ws->hub, ident, &ws_ops, ws, c);
out:
    free(qbuf);
    free(cookie_buf);
    free(authz);
    free(cookie);
}

static void on_receive(stoa_ws_t *ws, conn_t *c, struct lws *wsi, const char *in, size_t len)
{
    size_t max = (size_t)ws->cfg->max_message_bytes;
    if (lws_is_first_fragment(wsi)) {
        c->rxlen = 0;
        c->rx_too_big = false;
        c->rx_binary = lws_frame_is_binary(wsi);
    }
    if (!c->rx_too_big && c->rxlen + len > max) {
        c->rx_too_big = true;
    } else if (!c->rx_too_big) {
        if (c->rxlen + len > c->rxcap) {
            c->rxcap = c->rxlen + len < 1024 ? 1024 : c->rxlen + len;
            c->rx = stoa_xrealloc(c->rx, c->rxcap);
        }
        memcpy(c->rx + c->rxlen, in, len);
        c->rxlen += len;
    }
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0 || !c->sess)
        return;
    if (c->rx_too_big) {
        char why[96];
        snprintf(why, sizeof why, "message larger than %zu bytes", max);
        stoa_proto_error(c->sess, STOA_ERR_MESSAGE_TOO_LARGE, why, NULL, NULL);
    } else if (c->rx_binary) {
        stoa_proto_error(c->sess, STOA_ERR_BAD_MESSAGE, "binary frames are not accepted; send JSON text", NULL, NULL);
    } else {
        stoa_proto_handle(c->sess, c->rx, c->rxlen);
    }
    if (c->rxcap > 16384) {   /* do not keep a large buffer around */
        free(c->rx);
        c->rx = NULL;
        c->rxcap = 0;
    }
    c->rxlen = 0;
}

static int write_msg(struct lws *wsi, stoa_msg_t *msg)
{
    size_t len = stoa_msg_len(msg);
    int n = lws_write(wsi, stoa_msg_framable(msg), len, LWS_WRITE_TEXT);
    stoa_msg_unref(msg);
    return n < (int)len ? -1 : 0;
}

/* Returns -1 to close the connection. */
static int on_writable(conn_t *c, struct lws *wsi)
{
    stoa_msg_t *msg;
    if (c->last_words) {
        msg = c->last_words;
        c->last_words = NULL;
        write_msg(wsi, msg);
        lws_close_reason(wsi, (enum lws_close_status)c->close_code, NULL, 0);
        return -1;
    }
    if (!c->sess)
        return 0;
    if (stoa_session_close_reason(c->sess) == STOA_ERR_SLOW_CONSUMER) {
        static const char why[] = "SLOW_CONSUMER";
        lws_close_reason(wsi, (enum lws_close_status)STOA_WS_CLOSE_SLOW_CONSUMER, (unsigned char *)why,
                         sizeof why - 1);
        return -1;
    }
    msg = stoa_session_pop(c->sess);
    if (!msg) {
        if (c->going_away) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_GOINGAWAY, NULL, 0);
            return -1;
        }
        return 0;
    }
    if (write_msg(wsi, msg) < 0)
        return -1;
    lws_callback_on_writable(wsi);   /* maybe more: the next call finds out */
    return 0;
}

static void on_closed(stoa_ws_t *ws, conn_t *c)
{
    if (!c->ws)
        return;   /* never established */
    if (c->prev)
        c->prev->next = c->next;
    else
        ws->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->sess) {
        stoa_hub_close(c->sess, STOA_LEFT_DISCONNECT);
        stoa_session_unref(c->sess);
        c->sess = NULL;
    }
    stoa_msg_unref(c->last_words);
    c->last_words = NULL;
    free(c->rx);
    c->rx = NULL;
    c->ws = NULL;
    atomic_fetch_sub(&ws->nconn, 1);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    stoa_ws_t *ws = lws_context_user(lws_get_context(wsi));
    conn_t *c = user;

    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_queues(ws);
        break;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return origin_ok(ws, wsi) ? 0 : 1;
    case LWS_CALLBACK_ESTABLISHED:
        on_established(ws, c, wsi);
        break;
    case LWS_CALLBACK_RECEIVE:
        on_receive(ws, c, wsi, in, len);
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writable(c, wsi);
    case LWS_CALLBACK_CLOSED:
        on_closed(ws, c);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    /* First: a client that names no subprotocol is bound to protocols[0]. */
    {"stoa.v1", callback, sizeof(conn_t), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void lws_logger(int level, const char *line)
{
    size_t len = strlen(line);
    while (len > 0 && line[len - 1] == '\n')
        len--;
    stoa_log(level == LLL_ERR ? STOA_LOG_ERROR : STOA_LOG_DEBUG, "lws: %.*s", (int)len, line);
}

/* Service thread, on stop: tell every peer, close with 1001, and keep
 * serving until they are gone or shutdown_timeout_ms passes. */
static void say_goodbye(stoa_ws_t *ws)
{
    int64_t deadline = stoa_now_ms() + ws->cfg->shutdown_timeout_ms;
    for (conn_t *c = ws->conns; c; c = c->next) {
        if (c->sess) {
            /* The notice goes out in turn, after what was queued before it. */
            stoa_hub_send(c->sess, stoa_wire_notice("warn", "the server is shutting down"));
            c->going_away = true;
        }
        lws_callback_on_writable(c->wsi);
    }
    /* A negative timeout makes lws_service poll without waiting, so the
     * deadline holds even when no event comes. */
    while (ws->conns && stoa_now_ms() < deadline) {
        if (lws_service(ws->ctx, -1) < 0)
            break;
        usleep(2000);
    }
}

static void *service_main(void *arg)
{
    stoa_ws_t *ws = arg;
    while (!atomic_load(&ws->stop))
        if (lws_service(ws->ctx, 0) < 0)
            break;
    say_goodbye(ws);
    return NULL;
}

stoa_ws_t *stoa_ws_new(const stoa_config_t *cfg, stoa_hub_t *hub, const stoa_auth_t *auth, char *err,
                       size_t errlen)
{
    stoa_ws_t *ws = stoa_xcalloc(1, sizeof *ws);
    struct lws_context_creation_info info;
    struct lws_context_creation_info vinfo;

    ws->cfg = cfg;
    ws->hub = hub;
    ws->auth = auth;
    pthread_mutex_init(&ws->mu, NULL);
    ws->retry.secs_since_valid_ping = (uint16_t)cfg->ws_ping_interval_s;
    ws->retry.secs_since_valid_hangup = (uint16_t)cfg->ws_idle_timeout_s;
    lws_set_log_level(LLL_ERR | (stoa_log_parse_level(cfg->log_level) >= STOA_LOG_DEBUG ? LLL_WARN : 0),
                      lws_logger);

    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    info.user = ws;
    ws->ctx = lws_create_context(&info);
    if (!ws->ctx) {
        snprintf(err, errlen, "libwebsockets: cannot create a context");
        goto fail;
    }
    memset(&vinfo, 0, sizeof vinfo);
    vinfo.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    vinfo.vhost_name = "stoa";
    vinfo.protocols = protocols;
    vinfo.retry_and_idle_policy = &ws->retry;
    ws->vh = lws_create_vhost(ws->ctx, &vinfo);
    if (!ws->vh) {
        snprintf(err, errlen, "libwebsockets: cannot create a vhost");
        goto fail;
    }
    if (pthread_create(&ws->thread, NULL, service_main, ws) != 0) {
        snprintf(err, errlen, "cannot start the WebSocket thread");
        goto fail;
    }
    return ws;
fail:
    if (ws->ctx)
        lws_context_destroy(ws->ctx);
    pthread_mutex_destroy(&ws->mu);
    free(ws);
    return NULL;
}

void stoa_ws_free(stoa_ws_t *ws)
{
    if (!ws)
        return;
    atomic_store(&ws->stop, true);
    lws_cancel_service(ws->ctx);
    pthread_join(ws->thread, NULL);
    /* The service thread is gone: this thread may now use the context.
     * Destroying it closes every connection through LWS_CALLBACK_CLOSED. */
    lws_context_destroy(ws->ctx);
    for (size_t i = 0; i < ws->nadopt; i++)
        close(ws->adopt_q[i]);
    for (size_t i = 0; i < ws->nwake; i++)
        stoa_session_unref(ws->wake_q[i]);
    free(ws->adopt_q);
    free(ws->wake_q);
    pthread_mutex_destroy(&ws->mu);
    free(ws);
}
