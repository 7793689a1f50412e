/* ws.c - WebSocket transport over libwebsockets.
 *
 * Threads: ws_threads shards, each a service thread that owns its libev
 * loop, its lws context and every connection dealt to it. Other threads
 * only push onto a shard's adopt_q / wake_q under its mu and call
 * lws_cancel_service() on its context; the shard's thread drains both in
 * LWS_CALLBACK_EVENT_WAIT_CANCELLED.
 */
#include "stoa/ws.h"
#include "stoa/access.h"
#include "stoa/log.h"
#include "stoa/proto.h"
#include "stoa/util.h"
#include "stoa/wire.h"

#include <errno.h>
#include <ev.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Wakes one drain takes at most before the loop runs again (reads a
 * publisher's next message, serves other connections): a 10,000-member
 * fan-out goes out over ten rounds instead of holding the thread 40 ms.
 * A message published meanwhile joins the connections not yet sent to,
 * which then get both in one write. */
#define DRAIN_CHUNK 1024
/* Messages of a session's backlog sent at once at most (one write). */
#define WRITE_BURST 32
/* A backlog's frames are copied into one buffer of this size per shard
 * and sent with one write. */
#define COALESCE_BYTES 65536

typedef struct conn {
    struct shard *sh;         /* its service thread; NULL while free (in the shard's pool) */
    union {
        struct lws *wsi;      /* while in use */
        struct conn *next_free;   /* while free */
    };
    stoa_session_t *sess;     /* our reference; NULL before auth or after close */
    char *rx;                 /* reassembly of a fragmented message */
    size_t rxlen, rxcap;
    stoa_msg_t *hello;        /* the welcome, sent before the session's messages */
    stoa_msg_t *last_words;   /* sent before closing when there is no session */
    int64_t last_rx_ms;       /* the last data or pong from the client */
    int close_code;
    int fd;                   /* the socket, lws's (send_frame writes to it) */
    bool rx_too_big, rx_binary;
    bool peer_closed;         /* the client sent a close frame: it is leaving */
    bool going_away;          /* shutting down: send a notice, then close 1001 */
    bool ping_due, ping_sent; /* keepalive (sweep() below) */
    bool in_batch, rewake;    /* in sh->out; woken again meanwhile (drain_queues) */
} conn_t;

/* A shard's connections live in slabs that stay until the shard ends
 * (a free one goes back on the shard's free list, for the next
 * connection), so a wake still queued for a connection closed meanwhile
 * points at a conn_t: a free one is skipped, and one taken by a newer
 * connection only makes that one look at its own session, which a wake
 * always is, a hint to look. At most max_connections of them, 96 bytes
 * each, stay allocated after a peak. */
#define CONN_SLAB 256
typedef struct conn_slab {
    struct conn_slab *next;
    conn_t conns[CONN_SLAB];
} conn_slab_t;

/* A message taken for a woken connection, sent once every woken
 * connection has its own (drain_queues). */
typedef struct taken {
    conn_t *conn;
    stoa_msg_t *msg;          /* a reference */
} taken_t;

/* A wakeup handed over from another thread. */
typedef struct pending_wake {
    stoa_session_t *sess;     /* a reference */
    conn_t *conn;             /* may be closed meanwhile (see conn_slab_t) */
} pending_wake_t;

/* One service thread with its own libev loop and lws context (Debian's
 * libwebsockets is built for one service thread per context). Sockets are
 * dealt to the shards in turn, so one room's fan-out is written by every
 * shard's thread at once. */
typedef struct shard {
    stoa_ws_t *ws;
    struct ev_loop *loop;     /* libev (epoll): lws runs on it, this thread runs it */
    struct lws_context *ctx;
    struct lws_vhost *vh;
    lws_sorted_usec_list_t sweep;   /* the keepalive sweep's timer */
    unsigned char *wbuf;      /* COALESCE_BYTES: a backlog's frames (this thread) */
    pthread_t thread;
    bool started;
    conn_slab_t *slabs;       /* every connection (this shard's thread only) */
    conn_t *free_conns;
    size_t nconns;            /* established, of this shard */
    taken_t *out;             /* drain_queues' sends (this thread) */
    size_t nout, capout;
    size_t opened_since_trim; /* connections established since sweep's last stoa_heap_trim */
    pending_wake_t *chunk;    /* DRAIN_CHUNK: the wakes a drain took (this thread) */
    pthread_mutex_t mu;       /* guards the two queues */
    int *adopt_q;
    size_t nadopt, capadopt;
    /* wake_q[wake_head .. nwake) wait; the array keeps its size (at most
     * the wakes waiting at once) and is reused from the start once empty. */
    pending_wake_t *wake_q;
    size_t wake_head, nwake, capwake;
} shard_t;

struct stoa_ws {
    const stoa_config_t *cfg;
    stoa_hub_t *hub;
    const stoa_auth_t *auth;
    atomic_bool stop;
    atomic_int nconn;         /* established connections, all shards */
    atomic_uint next;         /* the shard the next socket goes to, modulo nshards */
    shard_t *shards;
    int nshards;
};

static void ws_wake(void *transport, stoa_session_t *sess, void *conn);
static void take_all(shard_t *sh, const pending_wake_t *wakes, size_t nwakes);
static void take_for(shard_t *sh, conn_t *c);
static void send_taken(shard_t *sh);
static void ws_wake_batch(void *transport, stoa_wake_t *wakes, size_t n);

static const stoa_transport_ops_t ws_ops = {
    .name = "websocket",
    .wake = ws_wake,
    .wake_batch = ws_wake_batch,
};

/* Any thread: one wake (the hub uses ws_wake_batch; this is the same
 * for one session, which it borrows). */
static void ws_wake(void *transport, stoa_session_t *sess, void *conn)
{
    stoa_wake_t w = {stoa_session_ref(sess), conn};
    ws_wake_batch(transport, &w, 1);
}
/* Any thread: the wakes of one fan-out for this shard, under one lock;
 * the session references pass to the queue. The service thread drains
 * the queue until it is empty once woken (waking itself again between
 * chunks), so only the push that made it non-empty wakes it (one write
 * to lws's pipe per batch, not one per recipient).
 * Once stopping, the context is being destroyed on this very thread
 * (stoa_ws_free); the queue is then dropped there. */
static void ws_wake_batch(void *transport, stoa_wake_t *wakes, size_t n)
{
    shard_t *sh = transport;
    bool first;
    pthread_mutex_lock(&sh->mu);
    first = sh->nwake == sh->wake_head;
    if (sh->nwake + n > sh->capwake && sh->wake_head > 0) {   /* reuse the drained front first */
        memmove(sh->wake_q, sh->wake_q + sh->wake_head, (sh->nwake - sh->wake_head) * sizeof *sh->wake_q);
        sh->nwake -= sh->wake_head;
        sh->wake_head = 0;
    }
    if (sh->nwake + n > sh->capwake) {
        size_t cap = sh->capwake ? sh->capwake * 2 : 64;
        while (cap < sh->nwake + n)
            cap *= 2;
        sh->wake_q = stoa_xrealloc(sh->wake_q, cap * sizeof *sh->wake_q);
        sh->capwake = cap;
    }
    for (size_t i = 0; i < n; i++)
        sh->wake_q[sh->nwake++] = (pending_wake_t){wakes[i].sess, wakes[i].conn};
    pthread_mutex_unlock(&sh->mu);
    if (first && !atomic_load(&sh->ws->stop))
        lws_cancel_service(sh->ctx);
}

void stoa_ws_adopt(stoa_ws_t *ws, int fd)
{
    shard_t *sh = &ws->shards[atomic_fetch_add(&ws->next, 1) % (unsigned)ws->nshards];
    pthread_mutex_lock(&sh->mu);
    if (sh->nadopt == sh->capadopt) {
        sh->capadopt = sh->capadopt ? sh->capadopt * 2 : 64;
        sh->adopt_q = stoa_xrealloc(sh->adopt_q, sh->capadopt * sizeof *sh->adopt_q);
    }
    sh->adopt_q[sh->nadopt++] = fd;
    pthread_mutex_unlock(&sh->mu);
    lws_cancel_service(sh->ctx);
}

int stoa_ws_connections(stoa_ws_t *ws)
{
    return atomic_load(&ws->nconn);
}

/* Shard thread: adopt queued sockets, then send to up to DRAIN_CHUNK
 * woken connections in two passes: first what each will be sent is taken
 * from the hub, then the sends go out back to back (the receivers'
 * wakeups then come close together, as when one frame is written to many
 * sockets). With more waiting, the thread wakes itself to come back after
 * a round of its loop. */
static void drain_queues(shard_t *sh)
{
    int *fds;
    size_t nfds, n;
    bool more;

    pthread_mutex_lock(&sh->mu);
    fds = sh->adopt_q;
    nfds = sh->nadopt;
    sh->adopt_q = NULL;
    sh->nadopt = sh->capadopt = 0;
    n = sh->nwake - sh->wake_head;
    if (n > DRAIN_CHUNK)
        n = DRAIN_CHUNK;
    if (n)
        memcpy(sh->chunk, sh->wake_q + sh->wake_head, n * sizeof *sh->chunk);
    sh->wake_head += n;
    more = sh->wake_head < sh->nwake;
    if (!more)
        sh->wake_head = sh->nwake = 0;
    pthread_mutex_unlock(&sh->mu);

    for (size_t i = 0; i < nfds; i++)
        if (!lws_adopt_socket_vhost(sh->vh, fds[i]))   /* closes the fd on failure */
            STOA_WARN("websocket: could not adopt a connection");
    take_all(sh, sh->chunk, n);
    for (size_t i = 0; i < n; i++)
        stoa_session_unref(sh->chunk[i].sess);
    send_taken(sh);
    free(fds);
    if (more && !atomic_load(&sh->ws->stop))
        lws_cancel_service(sh->ctx);
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

/* The value of URL argument `name` (given with its '=') copied into out,
 * or NULL when absent or longer than outlen - 1. lws stops searching at
 * the first argument that does not fit its buffer, so search with one
 * large enough for any (a token). */
static const char *url_arg(struct lws *wsi, const char *name, char *out, size_t outlen)
{
    static __thread char scratch[STOA_TOKEN_MAX + 64];
    const char *v = lws_get_urlarg_by_name(wsi, name, scratch, (int)sizeof scratch);
    if (!v || strlen(v) >= outlen)
        return NULL;
    memcpy(out, v, strlen(v) + 1);
    return out;
}

/* Shard thread: a zeroed connection from the pool (see conn_slab_t). */
static conn_t *conn_new(shard_t *sh)
{
    conn_t *c;
    if (!sh->free_conns) {
        conn_slab_t *s = stoa_xcalloc(1, sizeof *s);
        s->next = sh->slabs;
        sh->slabs = s;
        for (size_t i = CONN_SLAB; i-- > 0;) {
            s->conns[i].next_free = sh->free_conns;
            sh->free_conns = &s->conns[i];
        }
    }
    c = sh->free_conns;
    sh->free_conns = c->next_free;
    memset(c, 0, sizeof *c);
    return c;
}

/* The next connection in use after the iterator's position, or NULL. */
typedef struct conn_iter {
    conn_slab_t *slab;
    size_t i;
} conn_iter_t;

static conn_t *conn_next(conn_iter_t *it)
{
    for (; it->slab; it->slab = it->slab->next, it->i = 0)
        while (it->i < CONN_SLAB) {
            conn_t *c = &it->slab->conns[it->i++];
            if (c->sh)
                return c;
        }
    return NULL;
}

static void on_established(shard_t *sh, struct lws *wsi)
{
    stoa_ws_t *ws = sh->ws;
    char *qbuf = stoa_xmalloc(STOA_TOKEN_MAX + 16), *cookie_buf = stoa_xmalloc(STOA_TOKEN_MAX + 1);
    char *authz = header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION), *cookie = header(wsi, WSI_TOKEN_HTTP_COOKIE);
    char sid_buf[STOA_SESSION_ID_LEN + 16], seq_buf[40];
    const char *qtoken = url_arg(wsi, "token=", qbuf, STOA_TOKEN_MAX + 16);
    const char *sid = url_arg(wsi, "session=", sid_buf, sizeof sid_buf);
    const char *last_seq = url_arg(wsi, "last_seq=", seq_buf, sizeof seq_buf);
    const char *token;
    stoa_err_t code;
    char why[256];

    conn_t *c = conn_new(sh);
    c->sh = sh;
    c->wsi = wsi;
    c->fd = lws_get_socket_fd(wsi);
    c->last_rx_ms = stoa_now_ms();
    lws_set_opaque_user_data(wsi, c);
    sh->nconns++;
    sh->opened_since_trim++;
    if (atomic_fetch_add(&ws->nconn, 1) >= ws->cfg->max_connections) {
        close_with(c, STOA_ERR_SERVER_FULL, "too many connections; try again later", STOA_WS_CLOSE_TRY_LATER);
        goto out;
    }
    token = stoa_access_token(qtoken, authz, cookie, ws->cfg->token_cookie, cookie_buf, STOA_TOKEN_MAX + 1);
    code = stoa_access_connect(ws->hub, ws->auth, ws->cfg, token, sid, last_seq, &ws_ops, sh, c, &c->sess,
                               &c->hello, why, sizeof why);
    if (code) {
        STOA_INFO("websocket: refused: %s", why);
        close_with(c, code, why,
                   code == STOA_ERR_AUTH_FAILED ? STOA_WS_CLOSE_AUTH_FAILED
                   : code == STOA_ERR_SESSION_NOT_FOUND ? STOA_WS_CLOSE_SESSION_NOT_FOUND
                                                        : STOA_WS_CLOSE_POLICY);
        goto out;
    }
    lws_callback_on_writable(wsi);
out:
    free(qbuf);
    free(cookie_buf);
    free(authz);
    free(cookie);
}

static void on_receive(stoa_ws_t *ws, conn_t *c, struct lws *wsi, const char *in, size_t len)
{
    size_t max = (size_t)ws->cfg->max_message_bytes;
    c->last_rx_ms = stoa_now_ms();
    c->ping_sent = false;
    if (lws_is_first_fragment(wsi)) {
        c->rxlen = 0;
        c->rx_too_big = false;
        c->rx_binary = lws_frame_is_binary(wsi);
        /* The whole message in one piece (most are): handled in place, no
         * copy and no buffer kept for the connection. */
        if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0 && c->sess &&
            !c->rx_binary && len <= max) {
            stoa_proto_handle(c->sess, in, len);
            return;
        }
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
    /* Messages in several pieces are the exception: keep no buffer for
     * them between messages (an idle connection holds none). */
    free(c->rx);
    c->rx = NULL;
    c->rxcap = 0;
    c->rxlen = 0;
}

/* Send msg's frame, which is shared and read-only: a raw write does not
 * touch the bytes before it (lws copies what the socket does not take).
 * Takes msg. */
static int write_msg(struct lws *wsi, stoa_msg_t *msg)
{
    size_t len;
    const unsigned char *frame = stoa_msg_ws_frame(msg, &len);
    int n = lws_write(wsi, (unsigned char *)frame, len, LWS_WRITE_RAW);
    stoa_msg_unref(msg);
    return n < (int)len ? -1 : 0;
}

/* send_taken's write of one message: its frame straight to the socket,
 * without lws (whose write path reads a dozen fields of its connection
 * state, a cache miss or two per recipient in a large room). Only when lws
 * holds no unsent bytes of the connection (take_for checked), so nothing
 * overtakes them; what the socket does not take goes to lws, which keeps
 * it and sends it first. Takes msg. */
static int send_frame(conn_t *c, stoa_msg_t *msg)
{
    size_t len, done = 0;
    const unsigned char *frame = stoa_msg_ws_frame(msg, &len);
    int rc = 0;
    while (done < len) {
        /* syscall(2) rather than send(): send() is a cancellation point,
         * so in a process with threads glibc turns asynchronous
         * cancellation on and off around every call (about 1% of a large
         * room's fan-out in perf). Stoa never cancels a thread. */
        long n = syscall(SYS_sendto, c->fd, frame + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT, NULL, 0);
        if (n > 0) {
            done += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            rc = lws_write(c->wsi, (unsigned char *)frame + done, len - done, LWS_WRITE_RAW) < (int)(len - done)
                     ? -1 : 0;
            break;
        } else {
            rc = -1;   /* a socket error: the caller closes the connection */
            break;
        }
    }
    stoa_msg_unref(msg);
    return rc;
}

static int write_raw(shard_t *sh, struct lws *wsi, size_t used)
{
    return used && lws_write(wsi, sh->wbuf, used, LWS_WRITE_RAW) < (int)used ? -1 : 0;
}

/* A backlog (the reader, or this thread, fell behind): first and up to
 * WRITE_BURST - 1 more of the session's messages, taken under one hub
 * lock, their frames copied into the shard's buffer and sent with one
 * write instead of one each (a message too large for the buffer goes by
 * itself, in order).
 * What the socket does not take at once lws keeps and sends first; once
 * it keeps some, nothing more is written (lws would queue it behind and
 * report only what left of the bytes it held): the messages not yet
 * written are given back to the session (stoa_session_untake) and go out
 * once lws has sent what it holds. Sets *more when messages still wait.
 * Takes first, whose seq is seq. */
static int write_backlog(conn_t *c, struct lws *wsi, stoa_msg_t *first, uint64_t seq, bool *more)
{
    shard_t *sh = c->sh;
    stoa_msg_t *batch[WRITE_BURST];
    size_t n = 1, used = 0, stop;
    uint64_t next_seq = 0;   /* batch[1]'s, then consecutive */
    int rc = 0;

    batch[0] = first;
    n += stoa_session_take(c->sess, c, batch + 1, WRITE_BURST - 1, &next_seq, NULL, more);
    stop = n;   /* batch[stop..] were not written */
    for (size_t i = 0; i < n && rc == 0 && stop == n; i++) {
        size_t need;
        const unsigned char *frame = stoa_msg_ws_frame(batch[i], &need);
        if (need > COALESCE_BYTES - used) {
            rc = write_raw(sh, wsi, used);
            used = 0;
            if (rc == 0 && lws_partial_buffered(wsi)) {
                stop = i;
                break;
            }
        }
        if (need <= COALESCE_BYTES) {
            memcpy(sh->wbuf + used, frame, need);
            used += need;
        } else if ((rc = write_msg(wsi, stoa_msg_ref(batch[i]))) == 0 && lws_partial_buffered(wsi)) {
            stop = i + 1;
        }
    }
    if (rc == 0 && stop == n)
        rc = write_raw(sh, wsi, used);
    if (rc == 0 && stop < n) {
        stoa_session_untake(c->sess, c, stop == 0 ? seq : next_seq + (stop - 1));
        *more = true;
    }
    for (size_t i = 0; i < n; i++)
        stoa_msg_unref(batch[i]);
    return rc;
}

/* Send what the session has now: the next message from its shared buffer
 * when it is the only one, else a backlog batch. Returns 1 when more waits,
 * 0 when not, -1 on a write error; *gone when there was nothing because
 * the session is no longer this connection's. */
static int send_pending(conn_t *c, struct lws *wsi, bool *gone)
{
    bool more = false;
    uint64_t seq = 0;
    stoa_msg_t *msg = stoa_session_next_more(c->sess, c, &seq, gone, &more);
    if (!msg)
        return 0;
    if (!more)
        return write_msg(wsi, msg);
    return write_backlog(c, wsi, msg, seq, &more) < 0 ? -1 : more;
}

/* Returns -1 to close the connection. */
static int on_writable(conn_t *c, struct lws *wsi)
{
    stoa_msg_t *msg;
    bool gone = false;
    int more;
    if (c->last_words) {
        msg = c->last_words;
        c->last_words = NULL;
        write_msg(wsi, msg);
        lws_close_reason(wsi, (enum lws_close_status)c->close_code, NULL, 0);
        return -1;
    }
    if (c->ping_due) {
        unsigned char ping[LWS_PRE + 4] = {0};
        c->ping_due = false;
        c->ping_sent = true;
        memcpy(ping + LWS_PRE, "stoa", 4);   /* lws reports an empty pong to no one */
        if (lws_write(wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 4)
            return -1;
        lws_callback_on_writable(wsi);   /* messages may wait behind it */
        return 0;
    }
    if (!c->sess)
        return 0;
    if (c->hello) {
        msg = c->hello;
        c->hello = NULL;
        if (write_msg(wsi, msg) < 0)
            return -1;
        lws_callback_on_writable(wsi);   /* the session's messages may wait behind it */
        return 0;
    }
    if ((more = send_pending(c, wsi, &gone)) < 0)
        return -1;
    if (gone) {   /* another connection took the session over, or it ended */
        static const char why[] = "SUPERSEDED";
        lws_close_reason(wsi, (enum lws_close_status)STOA_WS_CLOSE_SUPERSEDED, (unsigned char *)why,
                         sizeof why - 1);
        return -1;
    }
    if (!more && c->going_away) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_GOINGAWAY, NULL, 0);
        return -1;
    }
    /* More waiting: be called again. Otherwise the next wake asks. A
     * session closed meanwhile shows as "no more" here but wakes this
     * connection, which then finds it gone. */
    if (more || c->going_away)
        lws_callback_on_writable(wsi);
    return 0;
}

/* Whether c can be sent to from the drain: it has nothing of its own to
 * send first and lws holds no unsent bytes of it. Otherwise its writable
 * callback is asked for, which does it. */
static bool direct_ok(conn_t *c)
{
    if (!c->sess || c->hello || c->last_words || c->ping_due || c->going_away || lws_partial_buffered(c->wsi)) {
        lws_callback_on_writable(c->wsi);
        return false;
    }
    return true;
}

/* What take_for does with the message it took for c. */
static void took(shard_t *sh, conn_t *c, stoa_msg_t *msg, uint64_t seq, bool gone, bool more)
{
    if (!msg) {
        if (gone)   /* the writable callback closes it */
            lws_callback_on_writable(c->wsi);
        return;
    }
    if (more) {
        if (write_backlog(c, c->wsi, msg, seq, &more) < 0)
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        else if (more)
            lws_callback_on_writable(c->wsi);
        return;
    }
    if (sh->nout == sh->capout) {
        sh->capout = sh->capout ? sh->capout * 2 : 256;
        sh->out = stoa_xrealloc(sh->out, sh->capout * sizeof *sh->out);
    }
    sh->out[sh->nout++] = (taken_t){c, msg};
    c->in_batch = true;
}

/* Shard thread, on a wake: send without asking lws for a writable
 * callback (which costs a round of the event loop and two changes of the
 * descriptor's epoll events per message). Only when the connection has
 * nothing of its own to send first and lws holds no unsent bytes of it;
 * otherwise, and to close, the callback does it. The usual case, one new
 * message, is taken now and kept in sh->out for send_taken; a backlog goes
 * at once. A connection woken again while in sh->out is woken once more
 * after its send. */
static void take_for(shard_t *sh, conn_t *c)
{
    bool gone = false, more = false;
    uint64_t seq = 0;
    stoa_msg_t *msg;
    if (c->in_batch) {
        c->rewake = true;
        return;
    }
    if (!direct_ok(c))
        return;
    msg = stoa_session_next_more(c->sess, c, &seq, &gone, &more);
    took(sh, c, msg, seq, gone, more);
}

/* take_for for every connection of a drain's wakes, their messages taken
 * TAKE_CHUNK connections to a hub lock (stoa_session_next_each; the chunk
 * bounds both the array and how long the lock is held). A connection
 * woken twice is taken for once: the take comes after both wakes. */
#define TAKE_CHUNK 256
static void take_all(shard_t *sh, const pending_wake_t *wakes, size_t nwakes)
{
    enum { AHEAD = 8 };
    stoa_session_next_req_t reqs[TAKE_CHUNK];
    size_t i = 0;
    while (i < nwakes) {
        size_t n = 0;
        for (; i < nwakes && n < TAKE_CHUNK; i++) {
            conn_t *c = wakes[i].conn;
            if (i + AHEAD < nwakes)   /* the connection records are far apart */
                __builtin_prefetch(wakes[i + AHEAD].conn, 1);
            if (!c->sh || c->in_batch || !direct_ok(c))
                continue;   /* closed since (see conn_slab_t), woken twice, or the callback's */
            c->in_batch = true;
            reqs[n++] = (stoa_session_next_req_t){.sess = c->sess, .conn = c};
        }
        stoa_session_next_each(reqs, n);
        for (size_t k = 0; k < n; k++) {
            conn_t *c = reqs[k].conn;
            c->in_batch = false;
            took(sh, c, reqs[k].msg, reqs[k].seq, reqs[k].gone, reqs[k].more);
        }
    }
}

/* Shard thread: the sends take_for kept, in order. */
static void send_taken(shard_t *sh)
{
    for (size_t i = 0; i < sh->nout; i++) {
        conn_t *c = sh->out[i].conn;
        c->in_batch = false;
        if (send_frame(c, sh->out[i].msg) < 0)
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        else if (c->rewake)
            take_for(sh, c);
        c->rewake = false;
    }
    sh->nout = 0;
}

static void on_closed(conn_t *c)
{
    shard_t *sh = c ? c->sh : NULL;
    if (!sh)
        return;   /* never established */
    lws_set_opaque_user_data(c->wsi, NULL);
    if (c->sess) {
        /* A client that said goodbye (close frame) ends its session; one
         * that vanished may come back within session_grace_ms. */
        stoa_hub_detach(c->sess, c, c->peer_closed);
        stoa_session_unref(c->sess);
        c->sess = NULL;
    }
    stoa_msg_unref(c->hello);
    stoa_msg_unref(c->last_words);
    c->hello = c->last_words = NULL;
    free(c->rx);
    c->rx = NULL;
    c->sh = NULL;
    c->next_free = sh->free_conns;
    sh->free_conns = c;
    sh->nconns--;
    atomic_fetch_sub(&sh->ws->nconn, 1);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    shard_t *sh = lws_context_user(lws_get_context(wsi));
    conn_t *c = lws_get_opaque_user_data(wsi);   /* NULL until established */
    (void)user;

    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_queues(sh);
        if (atomic_load(&sh->ws->stop))
            ev_break(sh->loop, EVBREAK_ALL);   /* service_main goes on to say_goodbye */
        break;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return origin_ok(sh->ws, wsi) ? 0 : 1;
    case LWS_CALLBACK_ESTABLISHED:
        on_established(sh, wsi);
        break;
    case LWS_CALLBACK_RECEIVE:
        if (c)
            on_receive(sh->ws, c, wsi, in, len);
        break;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (c)
            c->peer_closed = true;
        break;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (c) {
            c->last_rx_ms = stoa_now_ms();
            c->ping_sent = false;
        }
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return c ? on_writable(c, wsi) : 0;
    case LWS_CALLBACK_CLOSED:
        on_closed(c);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    /* First: a client that names no subprotocol is bound to protocols[0]. */
    /* No per-session data: a connection is a conn_t from the shard's pool
     * (lws's opaque user data). rx_buffer_size: lws gives each connection
     * a receive buffer this large (default 4 KiB) and reads at most that
     * much per recv(): 256 bytes take a usual client message (a cursor, a
     * 100-byte ephemeral) in one read, 128 would take two; callback()
     * reassembles larger ones. */
    /* tx_packet_size: lws sends at most this much per send() (without it,
     * rx_buffer_size + 20: a 30 KB message would take 110 rounds). */
    {"stoa.v1", callback, 0, 256, 0, NULL, 1 << 20},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void lws_logger(int level, const char *line)
{
    size_t len = strlen(line);
    while (len > 0 && line[len - 1] == '\n')
        len--;
    stoa_log(level == LLL_ERR ? STOA_LOG_ERROR : STOA_LOG_DEBUG, "lws: %.*s", (int)len, line);
}

/* Service thread, on stop: send what is queued (the server's shutdown
 * notice last), close with 1001, and keep serving until they are gone or
 * shutdown_timeout_ms passes. */
static void say_goodbye(shard_t *sh)
{
    int64_t deadline = stoa_now_ms() + sh->ws->cfg->shutdown_timeout_ms;
    conn_iter_t it = {sh->slabs, 0};
    for (conn_t *c; (c = conn_next(&it));) {
        c->going_away = true;
        lws_callback_on_writable(c->wsi);
    }
    /* One round without waiting at a time, so the deadline holds even
     * when no event comes. */
    while (sh->nconns && stoa_now_ms() < deadline) {
        ev_run(sh->loop, EVRUN_NOWAIT);
        usleep(2000);
    }
}

/* Keepalive, once a second over every connection (service thread): ping
 * one silent for ws_ping_interval_s, close one silent (pongs included)
 * for ws_idle_timeout_s. lws's own per-connection validity timers keep a
 * sorted list that every received message reorders, which costs O(n) per
 * message with tens of thousands of connections; one sweep costs O(n) a
 * second. */
static void sweep(lws_sorted_usec_list_t *sul)
{
    shard_t *sh = lws_container_of(sul, shard_t, sweep);
    int64_t now = stoa_now_ms(), ping = (int64_t)sh->ws->cfg->ws_ping_interval_s * 1000,
            idle = (int64_t)sh->ws->cfg->ws_idle_timeout_s * 1000;
    conn_iter_t it = {sh->slabs, 0};
    for (conn_t *c; (c = conn_next(&it));) {
        int64_t quiet = now - c->last_rx_ms;
        if (quiet >= idle) {
            STOA_DEBUG("websocket: closing a connection silent for %lld ms", (long long)quiet);
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        } else if (quiet >= ping && !c->ping_sent && !c->ping_due) {
            c->ping_due = true;
            lws_callback_on_writable(c->wsi);
        }
    }
    /* Each handshake's buffers (lws's header table, the request's
     * strings) are freed between the connection's long-lived allocations. */
    if (sh->opened_since_trim && stoa_heap_trim())
        sh->opened_since_trim = 0;
    if (!atomic_load(&sh->ws->stop))
        lws_sul_schedule(sh->ctx, 0, &sh->sweep, sweep, LWS_US_PER_SEC);
}

static void *service_main(void *arg)
{
    shard_t *sh = arg;
    lws_sul_schedule(sh->ctx, 0, &sh->sweep, sweep, LWS_US_PER_SEC);
    /* Until stoa_ws_free: its lws_cancel_service ends up in callback(),
     * which breaks the loop once ws->stop is set. */
    ev_run(sh->loop, 0);
    say_goodbye(sh);
    return NULL;
}

static bool shard_init(stoa_ws_t *ws, shard_t *sh, char *err, size_t errlen)
{
    struct lws_context_creation_info info;
    struct lws_context_creation_info vinfo;
    void *foreign[1];

    sh->ws = ws;
    pthread_mutex_init(&sh->mu, NULL);
    sh->wbuf = stoa_xmalloc(COALESCE_BYTES);
    sh->chunk = stoa_xmalloc(DRAIN_CHUNK * sizeof *sh->chunk);
    /* lws on its own polls every descriptor with poll() on each round:
     * with thousands of connections that costs more than the writes (see
     * docs/benchmarks.md). On libev's epoll backend a round costs only the
     * descriptors that are ready. The loop is ours ("foreign" to lws): the
     * shard's thread runs it, lws installs no signal handlers on it. */
    sh->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    if (!sh->loop) {
        snprintf(err, errlen, "libev: cannot create an epoll event loop");
        return false;
    }
    foreign[0] = sh->loop;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_LIBEV;
    info.foreign_loops = foreign;
    info.user = sh;
    sh->ctx = lws_create_context(&info);
    if (!sh->ctx) {
        snprintf(err, errlen, "libwebsockets: cannot create a context");
        return false;
    }
    memset(&vinfo, 0, sizeof vinfo);
    vinfo.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    vinfo.vhost_name = "stoa";
    vinfo.protocols = protocols;
    sh->vh = lws_create_vhost(sh->ctx, &vinfo);
    if (!sh->vh) {
        snprintf(err, errlen, "libwebsockets: cannot create a vhost");
        return false;
    }
    return true;
}

/* After its thread has stopped (or never started). Destroying the context
 * closes its connections through LWS_CALLBACK_CLOSED. */
static void shard_destroy(shard_t *sh)
{
    if (!sh->ws)
        return;   /* never initialised */
    if (sh->ctx)
        lws_context_destroy(sh->ctx);
    if (sh->loop)
        ev_loop_destroy(sh->loop);
    for (size_t i = 0; i < sh->nadopt; i++)
        close(sh->adopt_q[i]);
    for (size_t i = sh->wake_head; i < sh->nwake; i++)
        stoa_session_unref(sh->wake_q[i].sess);
    free(sh->adopt_q);
    free(sh->wake_q);
    free(sh->chunk);
    free(sh->wbuf);
    free(sh->out);
    while (sh->slabs) {
        conn_slab_t *next = sh->slabs->next;
        free(sh->slabs);
        sh->slabs = next;
    }
    pthread_mutex_destroy(&sh->mu);
}

/* Stop every started shard thread, then destroy every shard. */
static void shards_stop(stoa_ws_t *ws)
{
    atomic_store(&ws->stop, true);
    for (int i = 0; i < ws->nshards; i++)
        if (ws->shards[i].started)
            lws_cancel_service(ws->shards[i].ctx);
    for (int i = 0; i < ws->nshards; i++)
        if (ws->shards[i].started)
            pthread_join(ws->shards[i].thread, NULL);
    /* The threads are gone: this thread may now use the contexts. */
    for (int i = 0; i < ws->nshards; i++)
        shard_destroy(&ws->shards[i]);
    free(ws->shards);
}

int stoa_ws_threads(const stoa_config_t *cfg)
{
    long cpus;
    if (cfg->ws_threads > 0)
        return cfg->ws_threads;
    cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus < 1 ? 1 : cpus > 16 ? 16 : (int)cpus;
}

stoa_ws_t *stoa_ws_new(const stoa_config_t *cfg, stoa_hub_t *hub, const stoa_auth_t *auth, char *err,
                       size_t errlen)
{
    stoa_ws_t *ws = stoa_xcalloc(1, sizeof *ws);

    ws->cfg = cfg;
    ws->hub = hub;
    ws->auth = auth;
    lws_set_log_level(LLL_ERR | (stoa_log_parse_level(cfg->log_level) >= STOA_LOG_DEBUG ? LLL_WARN : 0),
                      lws_logger);
    ws->nshards = stoa_ws_threads(cfg);
    ws->shards = stoa_xcalloc((size_t)ws->nshards, sizeof *ws->shards);
    for (int i = 0; i < ws->nshards; i++)
        if (!shard_init(ws, &ws->shards[i], err, errlen))
            goto fail;
    for (int i = 0; i < ws->nshards; i++) {
        if (pthread_create(&ws->shards[i].thread, NULL, service_main, &ws->shards[i]) != 0) {
            snprintf(err, errlen, "cannot start a WebSocket thread");
            goto fail;
        }
        ws->shards[i].started = true;
    }
    return ws;
fail:
    shards_stop(ws);
    free(ws);
    return NULL;
}

void stoa_ws_free(stoa_ws_t *ws)
{
    if (!ws)
        return;
    shards_stop(ws);
    free(ws);
}
