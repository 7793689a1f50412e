/*
 * stoa-bench: the one load generator of the benchmarks. It drives Stoa,
 * nginx+nchan, a Node `ws` fan-out server and the ceiling program
 * (contrib/bench/ceiling.c) with the same clients, measures end-to-end
 * latency itself (every message carries its CLOCK_MONOTONIC send time and a
 * per-room sequence) and reports the server's CPU and memory beside its own.
 *
 * Design: --threads N independent workers (default 1), each with its own
 * epoll loop, timerfd tick (1 ms), rooms and connections; a room's
 * subscribers and publishers all live in one worker. The main thread only
 * coordinates the phases (connect, run, drain, stop) and samples /proc.
 * Sockets are nonblocking, epoll is level-triggered, parsers are
 * incremental and work in place in a per-worker read buffer; a connection
 * keeps only the bytes of a frame, line or body that straddles two reads
 * (its buffers grow to their high-water mark and stay: no malloc per
 * message). Every buffer is bounded.
 *
 * A run: connect everything (paced by --connect-rate) and wait until each
 * connection is ready (joined) or failed; publish on a fixed schedule from
 * then on (each room's slots at k / rate, rooms offset from each other);
 * measure the messages whose slot falls in [warm-up end, warm-up end +
 * duration); stop publishing; wait until the subscribers have everything (or
 * nothing more came for 1 s, at most 10 s); report. Server CPU, generator
 * CPU and steal are sampled at the warm-up's end and after that drain.
 * Latency is from the actual send (a publisher that falls behind its
 * schedule does not add its own delay; "unsent" counts what it never sent).
 *
 * Against stoa every connection heartbeats its room every 20 s (stoa evicts
 * a peer silent for heartbeat_timeout_s, 75 s): WebSocket in band, long-poll
 * between two polls, SSE over a few extra HTTP connections per worker (not
 * counted anywhere).
 *
 * JSON fields beyond those of the brief: pubs_ready, unsent, duplicates
 * (per-subscriber window of 512 sequences), resyncs (stoa), reconnects
 * (keep-alive connections the server ended between requests: long-poll and
 * HTTP publishers connect again), threads, and for presence an object
 * presence {peers, sent_per_s_per_peer, recv_per_s_per_peer,
 * expected_recv_per_s_per_peer}. Unknown values are null.
 *
 * Only loopback targets are accepted.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "bench_common.h"

/* ---- limits ------------------------------------------------------------ */

#define MAX_TOTAL_SUBS 200000u     /* rooms x subs */
#define MAX_TOTAL_PUBS 10000u      /* rooms x pubs */
#define MAX_PRESENCE_PEERS 20000u  /* rooms x subs in the presence scenario */
#define MAX_ROOMS 100000u
#define MAX_DURATION_S 600u
#define MAX_WARMUP_S 120u
#define MAX_RATE 1000000.0         /* messages per second per room */
#define MAX_TOTAL_RATE 2000000.0   /* rooms x rate */
#define MAX_SIZE 60000u            /* payload bytes (stoa: max_message_bytes 65536) */
#define MAX_THREADS 64u
#define MAX_SERVER_PIDS 8u
#ifndef CONNS_PER_SOURCE_ADDR
#define CONNS_PER_SOURCE_ADDR 20000u /* loopback source address per this many connections */
#endif

#define RAW_SZ 65536u                /* one recv */
#define HEAD_MAX 16384u              /* an HTTP response head */
#define FRAME_MAX ((1u << 20) + 16u) /* an incoming WebSocket frame or message, an SSE line */
#define BODY_MAX (4u << 20)          /* an HTTP response body (long-poll answers) */
#define OUT_MAX (8u << 20)           /* pending output of one connection */
#define OUT_SOFT (256u << 10)        /* publishers skip a connection with this much pending */
#define MSG_MAX (MAX_SIZE + 1024u)   /* an outgoing message */
#define REQ_MAX (MSG_MAX + 2048u)    /* an outgoing HTTP request or WebSocket frame */
#define MAX_EVENTS 512
#define CONNECT_STALL_S 15ull        /* give up connecting after this long without progress */
#define CONNECT_MAX_S 600ull         /* or after this long in all */
#define TICK_NS 1000000ull      /* while connecting and publishing */
#define SLOW_TICK_NS 20000000ull /* otherwise */
#define NS_PER_S 1000000000ull
#define ERRORS_LOGGED 10u            /* per worker, on stderr */
#define WIN_BITS 512u                /* duplicate detection window, per subscriber */
#define HB_PERIOD_S 20u              /* stoa: a heartbeat per room this often (heartbeat_timeout_s is 75) */
#define MAX_AUX 8u                   /* heartbeat connections per worker, for stoa SSE sessions */
#define SSE_PER_AUX 2000u            /* SSE sessions per heartbeat connection */


/* ---- options ----------------------------------------------------------- */

enum target { TG_STOA, TG_NCHAN, TG_NODEWS, TG_CEILING };
enum scenario { SC_FANOUT, SC_PRESENCE, SC_IDLE };
enum transport { TR_WS, TR_SSE, TR_LONGPOLL };
enum pubmode { PM_WS, PM_HTTP };

static const char *const target_names[] = {"stoa", "nchan", "nodews", "ceiling", NULL};
static const char *const scenario_names[] = {"fanout", "presence", "idle", NULL};
static const char *const transport_names[] = {"ws", "sse", "longpoll", NULL};
static const char *const pubmode_names[] = {"ws", "http", NULL};

struct options {
    enum target target;
    enum scenario scenario;
    enum transport transport;
    enum pubmode publisher;
    char host[64];
    char host_header[80];
    struct sockaddr_storage addr, pub_addr; /* pub_addr: --pub-port, else addr */
    socklen_t addrlen;
    unsigned port, pub_port;
    char pub_host_header[80];
    unsigned rooms, subs, pubs;
    double rate;
    unsigned size;
    unsigned duration, warmup;
    pid_t server_pids[MAX_SERVER_PIDS];
    unsigned nserver_pids;
    char api_key[256];
    unsigned connect_rate;
    unsigned threads;
    bool json;
    bool observe;           /* stoa: subscribers join with "observe": true */
};

static struct options g_opt;

/* ---- phases (set by the main thread, read by the workers) -------------- */

enum phase { PH_CONNECT, PH_RUN, PH_DRAIN, PH_STOP };
static _Atomic int g_phase = PH_CONNECT;
/* Written once by the main thread before it stores PH_RUN (release). */
static uint64_t g_run_start, g_warm_end, g_pub_end;

/* ---- small helpers ----------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / NS_PER_S), .tv_nsec = (long)(t % NS_PER_S)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void sleep_ms(unsigned ms)
{
    sleep_until(now_ns() + (uint64_t)ms * 1000000ull);
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint32_t xorshift32(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* Parses the decimal digits at p (at most end); 0 digits: returns false. */
static bool parse_u64(const char *p, const char *end, uint64_t *out, const char **after)
{
    uint64_t v = 0;
    const char *q = p;
    while (q < end && *q >= '0' && *q <= '9' && q - p < 20)
        v = v * 10 + (uint64_t)(*q++ - '0');
    if (q == p)
        return false;
    *out = v;
    if (after)
        *after = q;
    return true;
}

/* The unsigned number after `key` (such as "\"last_seq\":") in p[0, n). */
static bool find_u64(const char *p, size_t n, const char *key, uint64_t *out)
{
    size_t kl = strlen(key);
    const char *q = memmem(p, n, key, kl);
    if (!q)
        return false;
    q += kl;
    while (q < p + n && *q == ' ')
        q++;
    return parse_u64(q, p + n, out, NULL);
}

static size_t count_occurrences(const char *p, size_t n, const char *needle)
{
    size_t k = 0, nl = strlen(needle);
    const char *end = p + n;
    const char *q;
    while ((q = memmem(p, (size_t)(end - p), needle, nl))) {
        k++;
        p = q + nl;
    }
    return k;
}

/* ---- latency histogram: 1 us buckets under 1024 us, then 128 per octave - */

#define H_LIN 1024u
#define H_SUB 128u
#define H_OCT 34u
#define H_N (H_LIN + H_OCT * H_SUB)

struct hist {
    uint64_t n, max_ns;
    uint64_t counts[H_N];
};

static unsigned hist_index(uint64_t us)
{
    if (us < H_LIN)
        return (unsigned)us;
    unsigned e = 63u - (unsigned)__builtin_clzll(us); /* >= 10 */
    unsigned oct = e - 10u;
    if (oct >= H_OCT)
        return H_N - 1u;
    return H_LIN + oct * H_SUB + (unsigned)((us >> (e - 7u)) & (H_SUB - 1u));
}

/* The middle of bucket i, in microseconds. */
static double hist_value_us(unsigned i)
{
    if (i < H_LIN)
        return (double)i + 0.5;
    unsigned oct = (i - H_LIN) / H_SUB, sub = (i - H_LIN) % H_SUB;
    unsigned e = oct + 10u;
    double width = (double)(1ull << (e - 7u));
    return (double)(H_SUB + sub) * width + width / 2.0;
}

static void hist_add(struct hist *h, uint64_t ns)
{
    h->counts[hist_index(ns / 1000u)]++;
    h->n++;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

static void hist_merge(struct hist *dst, const struct hist *src)
{
    for (unsigned i = 0; i < H_N; i++)
        dst->counts[i] += src->counts[i];
    dst->n += src->n;
    if (src->max_ns > dst->max_ns)
        dst->max_ns = src->max_ns;
}

static double hist_percentile_ms(const struct hist *h, double q)
{
    if (!h->n)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < H_N; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            double v = hist_value_us(i) / 1000.0;
            double mx = (double)h->max_ns / 1e6;
            return v < mx ? v : mx;
        }
    }
    return (double)h->max_ns / 1e6;
}

/* ---- duplicate detection: a window of the last WIN_BITS sequences ------ */

struct seqwin {
    uint64_t hi;
    uint64_t bits[WIN_BITS / 64u];
};

/* True when s was seen already (a duplicate). Too old to tell: counted as new. */
static bool seqwin_seen(struct seqwin *sw, uint64_t s)
{
    if (s > sw->hi) {
        if (s - sw->hi >= WIN_BITS) {
            memset(sw->bits, 0, sizeof sw->bits);
        } else {
            for (uint64_t i = sw->hi + 1; i < s; i++)
                sw->bits[(i % WIN_BITS) / 64u] &= ~(1ull << (i % 64u));
        }
        sw->hi = s;
        sw->bits[(s % WIN_BITS) / 64u] |= 1ull << (s % 64u);
        return false;
    }
    if (sw->hi - s >= WIN_BITS)
        return false;
    uint64_t bit = 1ull << (s % 64u);
    uint64_t *word = &sw->bits[(s % WIN_BITS) / 64u];
    if (*word & bit)
        return true;
    *word |= bit;
    return false;
}

/* ---- connections, rooms, workers --------------------------------------- */

enum role { R_SUB, R_PUB, R_PEER, R_AUX };
static const char *const role_names[] = {"subscriber", "publisher", "peer", "heartbeat connection"};

enum step {
    S_IDLE,       /* not started */
    S_CONNECTING, /* nonblocking connect in progress */
    S_WS_UPGRADE, /* upgrade request sent */
    S_WS_OPEN,    /* WebSocket frames */
    S_H_CREATE,   /* stoa: POST /v1/sessions sent */
    S_H_JOIN,     /* stoa: POST /v1/sessions/{id}/messages (join) sent */
    S_H_BEAT,     /* stoa long-poll: POST .../messages (heartbeat) sent between two polls */
    S_SSE,        /* event stream requested or flowing */
    S_POLL,       /* a long-poll is held */
    S_PUB_IDLE,   /* HTTP publisher, no request in flight */
    S_PUB_BUSY,   /* HTTP publisher, a request in flight */
    S_AUX_IDLE,   /* heartbeat connection (stoa SSE sessions), no request in flight */
    S_AUX_BUSY,   /* heartbeat connection, a request in flight */
    S_CLOSED,
};

enum in_phase { IN_HEAD, IN_BODY, IN_WS };
enum sink { SINK_ACCUM, SINK_SSE };
enum chunk_state { CH_SIZE, CH_EXT, CH_DATA, CH_DATA_END, CH_TRAILER, CH_DONE };

/* The HTTP response being read. */
struct resp {
    int status;
    int64_t clen_left; /* -1: no Content-Length */
    bool chunked, close;
    uint8_t ch_state;
    bool ch_line_empty;
    uint64_t ch_rem;
};

/* State of an HTTP subscriber: a stoa session, or nchan's long-poll position. */
struct httpsub {
    char sid[48];
    uint64_t after;
    char etag[96];
    char lastmod[64];
};

struct conn {
    int fd;
    uint8_t role, step, in_phase, sink;
    bool ready;       /* joined / subscribed / able to publish */
    bool counted;     /* ready when the run started: its deliveries count */
    bool join_sent, frag_active, close_sent, out_armed;
    bool inflight_measured; /* HTTP publish in flight counted in "published" */
    bool hb_due;      /* stoa: long-poll: heartbeat before the next poll; SSE: queued for one */
    bool reconnect;   /* connecting again after the server ended a keep-alive connection */
    uint32_t room;    /* index in the worker's rooms */
    uint32_t gidx;    /* global connection number */
    uint32_t peer_no; /* presence: number within its room */
    struct buf in, out, frag;
    struct resp resp;
    struct seqwin win;
    struct httpsub *hs;
    uint64_t pres_sent;
};

struct room {
    uint32_t id;
    uint32_t nready;   /* subscribers (or peers) counted at the run's start */
    uint64_t seq;      /* last sequence number sent */
    uint64_t sent;     /* messages sent since the run started (= schedule slots used) */
    uint64_t measured_from; /* first sequence number of the measured window; 0: not yet */
    double phase;      /* rooms' schedules are offset by this fraction of a period */
    uint32_t *pubs;    /* its publishers' indices in the worker's conns */
    uint32_t npubs, rr;
};

struct stats {
    uint64_t published, expected, delivered, duplicates, errors, resyncs, reconnects;
    uint64_t unsent; /* messages the schedule wanted sent that the publishers could not take */
    uint64_t sent_total, connected, pubs_ready;
    uint64_t received_other; /* stamped messages outside the window or not counted */
    uint64_t peer_msgs;      /* presence: messages (frames) the peers received during the run */
};

struct worker {
    unsigned id;
    int epfd, tfd;
    const struct options *o;
    struct conn *conns;
    uint32_t nconns, nstarted;
    uint32_t total_conns; /* of all workers */
    struct room *rooms;
    uint32_t nrooms;
    uint64_t connect_t0, tick_ns;
    uint64_t hb_next;  /* next heartbeat sweep */
    uint32_t hb_bucket;
    /* stoa SSE sessions heartbeat over these (POST .../messages), in turn */
    struct conn aux[MAX_AUX];
    uint32_t naux;
    uint32_t *hbq; /* ring of indices of SSE subscribers due a heartbeat */
    uint32_t hbq_head, hbq_len;
    bool run_init;
    uint64_t now; /* time of the last recv */
    uint32_t rng;
    unsigned errors_logged;
    char *raw, *dec, *msg, *req;
    struct stats st;
    struct hist *hist;
    uint64_t ready_count;
    pthread_t th;
    _Atomic uint64_t live_ready, live_delivered, live_expected, live_errors, live_failed;
};

static bool conn_is_ws(const struct options *o, const struct conn *c)
{
    if (c->role == R_PEER)
        return true;
    if (c->role == R_PUB)
        return o->publisher == PM_WS;
    return o->transport == TR_WS;
}

/* ---- errors -------------------------------------------------------------- */

__attribute__((format(printf, 3, 4)))
static void note_error(struct worker *w, const struct conn *c, const char *fmt, ...)
{
    w->st.errors++;
    if (w->errors_logged >= ERRORS_LOGGED)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "stoa-bench: %s %u (room %u): %s\n", role_names[c->role], c->gidx,
            w->rooms[c->room].id, msg);
    if (++w->errors_logged == ERRORS_LOGGED)
        fprintf(stderr, "stoa-bench: (worker %u: further errors are counted, not shown)\n", w->id);
}

static void conn_close(struct worker *w, struct conn *c)
{
    if (c->step == S_CLOSED)
        return;
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->step = S_CLOSED;
    if (!c->ready && c->role != R_AUX)
        atomic_fetch_add_explicit(&w->live_failed, 1, memory_order_relaxed);
}

/* A connection that failed: counted (unless we are stopping), then closed.
 * Its buffers stay until the worker ends, so that callers up the stack may
 * still look at them. */
__attribute__((format(printf, 3, 4)))
static void conn_fail(struct worker *w, struct conn *c, const char *fmt, ...)
{
    if (c->step == S_CLOSED)
        return;
    if (atomic_load_explicit(&g_phase, memory_order_relaxed) != PH_STOP) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        note_error(w, c, "%s", msg);
    }
    conn_close(w, c);
}

/* ---- sending --------------------------------------------------------- */

static void conn_arm(struct worker *w, struct conn *c, bool want_out)
{
    if (c->out_armed == want_out || c->step == S_CLOSED)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        conn_fail(w, c, "epoll_ctl: %s", strerror(errno));
        return;
    }
    c->out_armed = want_out;
}

static bool conn_send(struct worker *w, struct conn *c, const void *d, size_t n)
{
    if (c->step == S_CLOSED)
        return false;
    size_t off = 0;
    if (buf_size(&c->out) == 0) {
        ssize_t k = send(c->fd, d, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_fail(w, c, "send: %s", strerror(errno));
                return false;
            }
            k = 0;
        }
        off = (size_t)k;
        if (off == n)
            return true;
    }
    if (!buf_append(&c->out, (const char *)d + off, n - off, OUT_MAX)) {
        conn_fail(w, c, "output buffer over %u bytes (server not reading)", OUT_MAX);
        return false;
    }
    conn_arm(w, c, true);
    return true;
}

static void conn_flush(struct worker *w, struct conn *c)
{
    while (buf_size(&c->out)) {
        ssize_t k = send(c->fd, buf_data(&c->out), buf_size(&c->out), MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            conn_fail(w, c, "send: %s", strerror(errno));
            return;
        }
        buf_consume(&c->out, (size_t)k);
    }
    buf_shrink(&c->out);
    conn_arm(w, c, false);
}

/* A masked client frame (RFC 6455 5.3). */
static bool ws_send(struct worker *w, struct conn *c, unsigned op, const char *pl, size_t n)
{
    unsigned char *f = (unsigned char *)w->req;
    size_t h = 0;
    if (n + 14 > REQ_MAX)
        return false;
    f[h++] = (unsigned char)(0x80u | op);
    if (n < 126) {
        f[h++] = (unsigned char)(0x80u | n);
    } else if (n < 65536) {
        f[h++] = 0x80u | 126u;
        f[h++] = (unsigned char)(n >> 8);
        f[h++] = (unsigned char)n;
    } else {
        f[h++] = 0x80u | 127u;
        for (int i = 7; i >= 0; i--)
            f[h++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    uint32_t key = xorshift32(&w->rng);
    unsigned char mk[4] = {(unsigned char)key, (unsigned char)(key >> 8), (unsigned char)(key >> 16),
                           (unsigned char)(key >> 24)};
    memcpy(f + h, mk, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        f[h + i] = (unsigned char)pl[i] ^ mk[i & 3u];
    return conn_send(w, c, f, h + n);
}

/* An HTTP/1.1 request; body may be NULL. */
static bool http_send(struct worker *w, struct conn *c, const char *method, const char *path,
                      const char *headers, const char *body, size_t blen)
{
    int k;
    const char *host = c->role == R_PUB ? w->o->pub_host_header : w->o->host_header;
    if (body)
        k = snprintf(w->req, REQ_MAX, "%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %zu\r\n\r\n",
                     method, path, host, headers, blen);
    else
        k = snprintf(w->req, REQ_MAX, "%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", method, path, host, headers);
    if (k < 0 || (size_t)k + blen > REQ_MAX) {
        conn_fail(w, c, "request too large");
        return false;
    }
    if (body) {
        memcpy(w->req + k, body, blen);
        k += (int)blen;
    }
    return conn_send(w, c, w->req, (size_t)k);
}

/* ---- WebSocket handshake ----------------------------------------------- */

static void ws_key(uint32_t gidx, char out[32])
{
    unsigned char raw[16];
    uint64_t a = splitmix64(0x5354u + 2u * (uint64_t)gidx), b = splitmix64(0x4f41u + 2u * (uint64_t)gidx + 1u);
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    EVP_EncodeBlock((unsigned char *)out, raw, 16);
}

static void ws_accept_for(const char *key, char out[32])
{
    ws_accept_key(key, strlen(key), out);
}

static void ws_path(const struct worker *w, const struct conn *c, char *path, size_t cap)
{
    unsigned room = w->rooms[c->room].id;
    switch (w->o->target) {
    case TG_STOA:
        snprintf(path, cap, "/v1/ws");
        break;
    case TG_NCHAN:
        snprintf(path, cap, "/%s/bench_%u", c->role == R_PUB ? "pub" : "sub", room);
        break;
    default:
        snprintf(path, cap, "/");
        break;
    }
}

static void ws_upgrade(struct worker *w, struct conn *c)
{
    char path[64], key[32], hdr[160];
    ws_path(w, c, path, sizeof path);
    ws_key(c->gidx, key);
    snprintf(hdr, sizeof hdr,
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
             "Sec-WebSocket-Version: 13\r\n",
             key);
    c->step = S_WS_UPGRADE;
    http_send(w, c, "GET", path, hdr, NULL, 0);
}

/* ---- the messages we send ----------------------------------------------- */

/* {"t":<ns>,"s":<seq>,"p":"xxx..."} of about `size` bytes, at dst. */
static size_t build_data(char *dst, size_t cap, uint64_t t, uint64_t s, unsigned size)
{
    int k = snprintf(dst, cap, "{\"t\":%" PRIu64 ",\"s\":%" PRIu64 ",\"p\":\"", t, s);
    size_t n = (size_t)k;
    size_t pad = size > n + 2 ? size - n - 2 : 0;
    if (n + pad + 2 > cap)
        pad = cap - n - 2;
    memset(dst + n, 'x', pad);
    n += pad;
    dst[n++] = '"';
    dst[n++] = '}';
    return n;
}

static size_t build_envelope(struct worker *w, const char *prefix, uint64_t t, uint64_t s)
{
    size_t n = (size_t)snprintf(w->msg, MSG_MAX, "%s", prefix);
    n += build_data(w->msg + n, MSG_MAX - n - 1, t, s, w->o->size);
    if (prefix[0])
        w->msg[n++] = '}';
    return n;
}

static bool send_join(struct worker *w, struct conn *c)
{
    char m[96];
    unsigned room = w->rooms[c->room].id;
    int n;
    if (w->o->target == TG_STOA)
        n = snprintf(m, sizeof m, "{\"type\":\"join\",\"room\":\"bench:%u\"%s}", room,
                     w->o->observe && c->role == R_SUB ? ",\"observe\":true" : "");
    else
        n = snprintf(m, sizeof m, "{\"join\":\"bench:%u\"}", room);
    c->join_sent = true;
    return ws_send(w, c, 0x1, m, (size_t)n);
}

/* One message from publisher c of room r, stamped now. It counts when its
 * slot in the schedule (run start + k / rate) falls after the warm-up: the
 * window holds exactly rate x duration messages per room when the publishers
 * keep up. Subscribers tell measured messages by their sequence number. */
static void publish_one(struct worker *w, struct room *r, struct conn *c)
{
    const struct options *o = w->o;
    uint64_t slot = g_run_start + (uint64_t)(((double)r->sent + r->phase) * 1e9 / o->rate);
    bool measured = slot >= g_warm_end && slot < g_pub_end;
    uint64_t s = ++r->seq;
    uint64_t t = now_ns();
    char prefix[96] = "";
    if (measured && !r->measured_from)
        r->measured_from = s;
    r->sent++;
    w->st.sent_total++;
    if (measured) {
        w->st.published++;
        w->st.expected += r->nready;
    }
    if (o->publisher == PM_WS) {
        if (o->target == TG_STOA)
            snprintf(prefix, sizeof prefix, "{\"type\":\"ephemeral\",\"room\":\"bench:%u\",\"data\":", r->id);
        else if (o->target == TG_NODEWS)
            snprintf(prefix, sizeof prefix, "{\"pub\":\"bench:%u\",\"data\":", r->id);
        size_t n = build_envelope(w, prefix, t, s);
        ws_send(w, c, 0x1, w->msg, n);
        return;
    }
    char path[64], hdr[320];
    if (o->target == TG_STOA) {
        snprintf(prefix, sizeof prefix, "{\"data\":");
        snprintf(path, sizeof path, "/v1/rooms/bench:%u/publish", r->id);
        snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\nContent-Type: application/json\r\n", o->api_key);
    } else {
        snprintf(path, sizeof path, "/pub/bench_%u", r->id);
        snprintf(hdr, sizeof hdr, "Content-Type: application/json\r\n");
    }
    size_t n = build_envelope(w, prefix, t, s);
    c->inflight_measured = measured;
    c->step = S_PUB_BUSY;
    http_send(w, c, "POST", path, hdr, w->msg, n);
}

static void send_presence(struct worker *w, struct conn *c)
{
    struct room *r = &w->rooms[c->room];
    uint64_t t = now_ns();
    bool measured = t >= g_warm_end && t < g_pub_end;
    unsigned x = (unsigned)(c->pres_sent * 7u % 1920u), y = (unsigned)(c->peer_no * 13u % 1080u);
    int n = snprintf(w->msg, MSG_MAX,
                     "{\"type\":\"presence\",\"room\":\"bench:%u\",\"state\":{\"t\":%" PRIu64
                     ",\"cursor\":{\"x\":%u,\"y\":%u}}}",
                     r->id, t, x, y);
    c->pres_sent++;
    w->st.sent_total++;
    if (measured) {
        w->st.published++;
        w->st.expected += r->nready > 0 ? r->nready - 1u : 0u;
    }
    ws_send(w, c, 0x1, w->msg, (size_t)n);
}

/* ---- what we receive ------------------------------------------------------ */

static void set_ready(struct worker *w, struct conn *c)
{
    if (c->ready)
        return;
    c->ready = true;
    w->ready_count++;
    atomic_store_explicit(&w->live_ready, w->ready_count, memory_order_relaxed);
}

static void on_stamp(struct worker *w, struct conn *c, uint64_t t, uint64_t s, bool has_s)
{
    uint64_t from = w->rooms[c->room].measured_from;
    bool measured = has_s ? from && s >= from : t >= g_warm_end && t < g_pub_end;
    if (!c->counted || !measured) {
        w->st.received_other++;
        return;
    }
    if (has_s && seqwin_seen(&c->win, s)) {
        w->st.duplicates++;
        return;
    }
    w->st.delivered++;
    hist_add(w->hist, w->now > t ? w->now - t : 0);
}

/* Every {"t":<ns>(,"s":<seq>)? in p[0, n): our messages' stamps. */
static void deliver_stamps(struct worker *w, struct conn *c, const char *p, size_t n)
{
    const char *end = p + n, *q;
    if (c->role == R_PUB)
        return;
    while ((q = memmem(p, (size_t)(end - p), "{\"t\":", 5))) {
        uint64_t t, s = 0;
        const char *a;
        p = q + 5;
        if (!parse_u64(p, end, &t, &a))
            continue;
        p = a;
        bool has_s = (size_t)(end - a) > 5 && memcmp(a, ",\"s\":", 5) == 0 && parse_u64(a + 5, end, &s, &p);
        on_stamp(w, c, t, s, has_s);
    }
}

enum stoa_type { SM_OTHER, SM_WELCOME, SM_ROOM_STATE, SM_RELAYED, SM_ERROR, SM_RESYNC };

static enum stoa_type stoa_type(const char *p, size_t n)
{
    static const char key[] = "\"type\":\"";
    const char *q = memmem(p, n < 64 ? n : 64, key, sizeof key - 1);
    if (!q)
        return SM_OTHER;
    q += sizeof key - 1;
    size_t left = (size_t)(p + n - q);
#define IS(word) (left > sizeof(word) - 1 && memcmp(q, word "\"", sizeof(word)) == 0)
    if (IS("ephemeral") || IS("message") || IS("presence") || IS("presence_batch"))
        return SM_RELAYED;
    if (IS("welcome"))
        return SM_WELCOME;
    if (IS("room_state"))
        return SM_ROOM_STATE;
    if (IS("error"))
        return SM_ERROR;
    if (IS("resync"))
        return SM_RESYNC;
#undef IS
    return SM_OTHER;
}

/* One message from stoa, over WebSocket or SSE. */
static void stoa_message(struct worker *w, struct conn *c, const char *p, size_t n)
{
    switch (stoa_type(p, n)) {
    case SM_WELCOME: /* every WebSocket client of stoa joins its room, publishers too */
        if (c->step == S_WS_OPEN && !c->join_sent)
            send_join(w, c);
        break;
    case SM_ROOM_STATE:
        set_ready(w, c);
        break;
    case SM_RELAYED:
        if (c->role == R_PEER) {
            uint64_t t = now_ns();
            if (t >= g_warm_end && t < g_pub_end)
                w->st.peer_msgs++;   /* one message, however many states it carries */
        }
        deliver_stamps(w, c, p, n);
        break;
    case SM_ERROR:
        note_error(w, c, "server error: %.*s", (int)(n < 300 ? n : 300), p);
        break;
    case SM_RESYNC:
        w->st.resyncs++;
        break;
    default:
        break;
    }
}

/* One application message (a WebSocket message or an SSE data line). */
static void on_app_message(struct worker *w, struct conn *c, const char *p, size_t n)
{
    if (w->o->target == TG_STOA)
        stoa_message(w, c, p, n);
    else
        deliver_stamps(w, c, p, n);
}

/* ---- WebSocket frames -------------------------------------------------- */

struct wsf {
    unsigned op;
    bool fin, masked;
    unsigned hlen;
    uint64_t plen;
    unsigned char key[4];
};

/* The frame header at p: its length, 0 when incomplete, -1 when invalid. */
static int ws_parse_header(const unsigned char *p, size_t n, struct wsf *f)
{
    if (n < 2)
        return 0;
    f->fin = p[0] & 0x80u;
    f->op = p[0] & 0x0fu;
    f->masked = p[1] & 0x80u;
    uint64_t len;
    size_t h;
    if (p[0] & 0x70u)
        return -1; /* no extensions were negotiated */
    if (!ws_frame_len(p, n, &len, &h))
        return 0;
    if (f->masked) {
        if (n < h + 4)
            return 0;
        memcpy(f->key, p + h, 4);
        h += 4;
    }
    if (len > FRAME_MAX)
        return -1;
    f->hlen = h;
    f->plen = len;
    return (int)h;
}

static void ws_frame(struct worker *w, struct conn *c, const struct wsf *f, char *pl)
{
    size_t n = (size_t)f->plen;
    if (f->masked)
        for (size_t i = 0; i < n; i++)
            pl[i] = (char)((unsigned char)pl[i] ^ f->key[i & 3u]);
    switch (f->op) {
    case 0x1:
    case 0x2:
        if (c->frag_active) {
            conn_fail(w, c, "a new message inside a fragmented one");
        } else if (f->fin) {
            on_app_message(w, c, pl, n);
        } else {
            buf_clear(&c->frag);
            c->frag_active = true;
            if (!buf_append(&c->frag, pl, n, FRAME_MAX))
                conn_fail(w, c, "fragmented message over %u bytes", FRAME_MAX);
        }
        break;
    case 0x0:
        if (!c->frag_active) {
            conn_fail(w, c, "continuation frame without a message");
        } else if (!buf_append(&c->frag, pl, n, FRAME_MAX)) {
            conn_fail(w, c, "fragmented message over %u bytes", FRAME_MAX);
        } else if (f->fin) {
            c->frag_active = false;
            on_app_message(w, c, buf_data(&c->frag), buf_size(&c->frag));
            buf_clear(&c->frag);
            buf_shrink(&c->frag);
        }
        break;
    case 0x8: {
        unsigned code = n >= 2 ? ((unsigned)(unsigned char)pl[0] << 8 | (unsigned char)pl[1]) : 1005u;
        if (!c->close_sent) {
            c->close_sent = true;
            ws_send(w, c, 0x8, pl, n >= 2 ? 2 : 0);
        }
        conn_fail(w, c, "server closed the WebSocket (code %u%s%.*s)", code, n > 2 ? ": " : "",
                  (int)(n > 2 ? (n - 2 < 120 ? n - 2 : 120) : 0), pl + 2);
        break;
    }
    case 0x9:
        if (n <= 125)
            ws_send(w, c, 0xA, pl, n);
        break;
    case 0xA:
        break;
    default:
        conn_fail(w, c, "unknown WebSocket opcode %u", f->op);
        break;
    }
}

static size_t input_ws(struct worker *w, struct conn *c, char *p, size_t n)
{
    struct wsf f;
    int h;
    if (buf_size(&c->in) == 0) {
        /* the common case: whole frames in place */
        size_t off = 0;
        while (off < n && c->step != S_CLOSED) {
            h = ws_parse_header((const unsigned char *)p + off, n - off, &f);
            if (h < 0) {
                conn_fail(w, c, "invalid WebSocket frame");
                return n;
            }
            if (h == 0 || f.plen > n - off - (size_t)h)
                break;
            ws_frame(w, c, &f, p + off + h);
            off += (size_t)h + (size_t)f.plen;
        }
        if (off < n && c->step != S_CLOSED && !buf_append(&c->in, p + off, n - off, FRAME_MAX))
            conn_fail(w, c, "frame over %u bytes", FRAME_MAX);
        return n;
    }
    /* a frame straddles two reads: complete it in the carry buffer */
    size_t used = 0;
    h = ws_parse_header((const unsigned char *)buf_data(&c->in), buf_size(&c->in), &f);
    if (h == 0) {
        used = n < 14 ? n : 14;
        if (!buf_append(&c->in, p, used, FRAME_MAX)) {
            conn_fail(w, c, "frame over %u bytes", FRAME_MAX);
            return n;
        }
        h = ws_parse_header((const unsigned char *)buf_data(&c->in), buf_size(&c->in), &f);
        if (h == 0)
            return used;
    }
    if (h < 0) {
        conn_fail(w, c, "invalid WebSocket frame");
        return n;
    }
    size_t total = (size_t)h + (size_t)f.plen;
    if (buf_size(&c->in) < total) {
        size_t take = total - buf_size(&c->in);
        if (take > n - used)
            take = n - used;
        if (!buf_append(&c->in, p + used, take, FRAME_MAX)) {
            conn_fail(w, c, "frame over %u bytes", FRAME_MAX);
            return n;
        }
        used += take;
    }
    if (buf_size(&c->in) > total) { /* the header peek took bytes of the next frame */
        size_t extra = buf_size(&c->in) - total;
        used -= extra;
        c->in.len -= extra;
    }
    if (buf_size(&c->in) < total)
        return used;
    ws_frame(w, c, &f, buf_data(&c->in) + h);
    buf_clear(&c->in);
    buf_shrink(&c->in);
    return used;
}

/* ---- HTTP responses ---------------------------------------------------- */

static bool header_is(const char *line, size_t len, const char *name, const char **val, size_t *vlen)
{
    size_t nl = strlen(name);
    if (len <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return false;
    const char *v = line + nl + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    *val = v;
    *vlen = (size_t)(e - v);
    return true;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

/* Parses a response head (status line and headers, without the blank line). */
static bool parse_head(struct worker *w, struct conn *c, const char *h, size_t n)
{
    struct resp *r = &c->resp;
    memset(r, 0, sizeof *r);
    r->clen_left = -1;
    if (n < 12 || memcmp(h, "HTTP/1.", 7) != 0)
        return false;
    uint64_t status;
    if (!parse_u64(h + 9, h + n, &status, NULL))
        return false;
    r->status = (int)status;
    bool accept_ok = false;
    const char *end = h + n, *line = memchr(h, '\n', n);
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        size_t len = eol ? (size_t)(eol - line) : (size_t)(end - line);
        const char *v;
        size_t vl;
        if (header_is(line, len, "Content-Length", &v, &vl)) {
            uint64_t cl;
            if (!parse_u64(v, v + vl, &cl, NULL))
                return false;
            r->clen_left = (int64_t)cl;
        } else if (header_is(line, len, "Transfer-Encoding", &v, &vl)) {
            r->chunked = memmem(v, vl, "chunked", 7) != NULL;
        } else if (header_is(line, len, "Connection", &v, &vl)) {
            r->close = vl == 5 && strncasecmp(v, "close", 5) == 0;
        } else if (header_is(line, len, "Sec-WebSocket-Accept", &v, &vl)) {
            char key[32], want[32];
            ws_key(c->gidx, key);
            ws_accept_for(key, want);
            accept_ok = vl == strlen(want) && memcmp(v, want, vl) == 0;
        } else if (c->hs && header_is(line, len, "Etag", &v, &vl)) {
            copy_value(c->hs->etag, sizeof c->hs->etag, v, vl);
        } else if (c->hs && header_is(line, len, "Last-Modified", &v, &vl)) {
            copy_value(c->hs->lastmod, sizeof c->hs->lastmod, v, vl);
        }
        line = eol;
    }
    if (r->status == 101 && !accept_ok) {
        conn_fail(w, c, "101 without a valid Sec-WebSocket-Accept");
        return true;
    }
    return true;
}

/* Dechunks p[0, n) into out; returns the bytes of p used. */
static size_t dechunk(struct resp *r, const char *p, size_t n, char *out, size_t *outn, bool *bad)
{
    size_t i = 0, o = 0;
    while (i < n && r->ch_state != CH_DONE) {
        char ch = p[i];
        switch (r->ch_state) {
        case CH_SIZE:
        case CH_EXT:
            i++;
            if (ch == '\n') {
                r->ch_state = r->ch_rem ? CH_DATA : CH_TRAILER;
                r->ch_line_empty = true;
            } else if (r->ch_state == CH_SIZE && ch != '\r') {
                int v = (ch >= '0' && ch <= '9') ? ch - '0'
                        : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                        : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
                if (v < 0)
                    r->ch_state = CH_EXT;
                else if (r->ch_rem > (1ull << 40))
                    *bad = true;
                else
                    r->ch_rem = r->ch_rem * 16u + (uint64_t)v;
            }
            break;
        case CH_DATA: {
            size_t take = n - i;
            if (take > r->ch_rem)
                take = (size_t)r->ch_rem;
            memcpy(out + o, p + i, take);
            o += take;
            i += take;
            r->ch_rem -= take;
            if (!r->ch_rem)
                r->ch_state = CH_DATA_END;
            break;
        }
        case CH_DATA_END:
            i++;
            if (ch == '\n')
                r->ch_state = CH_SIZE;
            break;
        case CH_TRAILER:
            i++;
            if (ch == '\n') {
                if (r->ch_line_empty)
                    r->ch_state = CH_DONE;
                r->ch_line_empty = true;
            } else if (ch != '\r') {
                r->ch_line_empty = false;
            }
            break;
        default:
            break;
        }
        if (*bad)
            break;
    }
    *outn = o;
    return i;
}

/* Each complete line of an event stream; returns the bytes used. */
static size_t sse_lines(struct worker *w, struct conn *c, const char *p, size_t n)
{
    size_t off = 0;
    while (off < n && c->step != S_CLOSED) {
        const char *eol = memchr(p + off, '\n', n - off);
        if (!eol)
            break;
        const char *line = p + off;
        size_t len = (size_t)(eol - line);
        off += len + 1;
        if (len && line[len - 1] == '\r')
            len--;
        if (len >= 5 && memcmp(line, "data:", 5) == 0) {
            line += 5;
            len -= 5;
            if (len && *line == ' ') {
                line++;
                len--;
            }
            on_app_message(w, c, line, len);
        }
    }
    return off;
}

static void sse_feed(struct worker *w, struct conn *c, const char *d, size_t n)
{
    if (buf_size(&c->in) == 0) {
        size_t used = sse_lines(w, c, d, n);
        if (used < n && c->step != S_CLOSED && !buf_append(&c->in, d + used, n - used, FRAME_MAX))
            conn_fail(w, c, "event stream line over %u bytes", FRAME_MAX);
        return;
    }
    if (!buf_append(&c->in, d, n, FRAME_MAX)) {
        conn_fail(w, c, "event stream line over %u bytes", FRAME_MAX);
        return;
    }
    buf_consume(&c->in, sse_lines(w, c, buf_data(&c->in), buf_size(&c->in)));
}

static void send_poll(struct worker *w, struct conn *c);
static void on_response(struct worker *w, struct conn *c, const char *body, size_t n);

static void conn_reconnect(struct worker *w, struct conn *c);

/* Between two requests, a server may end a keep-alive connection (nginx
 * after keepalive_requests, an idle timeout): long-pollers and HTTP
 * publishers connect again and go on; anyone else has failed. */
static bool can_reconnect(const struct conn *c)
{
    return c->step == S_PUB_IDLE || c->step == S_POLL || c->step == S_AUX_IDLE;
}

static void body_done(struct worker *w, struct conn *c)
{
    c->in_phase = IN_HEAD;
    on_response(w, c, buf_data(&c->in), buf_size(&c->in));
    buf_clear(&c->in);
    buf_shrink(&c->in);
    if (c->resp.close && c->step != S_CLOSED) {
        if (can_reconnect(c))
            conn_reconnect(w, c);
        else
            conn_fail(w, c, "the server closed the keep-alive connection");
    }
}

static size_t input_body(struct worker *w, struct conn *c, char *p, size_t n)
{
    struct resp *r = &c->resp;
    const char *d = p;
    size_t used, dn;
    bool done = false, bad = false;
    if (r->chunked) {
        used = dechunk(r, p, n, w->dec, &dn, &bad);
        if (bad) {
            conn_fail(w, c, "bad chunked encoding");
            return n;
        }
        d = w->dec;
        done = r->ch_state == CH_DONE;
    } else if (r->clen_left >= 0) {
        used = n < (uint64_t)r->clen_left ? n : (size_t)r->clen_left;
        dn = used;
        r->clen_left -= (int64_t)used;
        done = r->clen_left == 0;
    } else {
        used = dn = n; /* until the server closes */
    }
    if (dn) {
        if (c->sink == SINK_SSE)
            sse_feed(w, c, d, dn);
        else if (!buf_append(&c->in, d, dn, BODY_MAX))
            conn_fail(w, c, "response body over %u bytes", BODY_MAX);
    }
    if (done && c->step != S_CLOSED)
        body_done(w, c);
    return used;
}

static void on_head(struct worker *w, struct conn *c)
{
    struct resp *r = &c->resp;
    if (c->step == S_WS_UPGRADE && r->status == 101) {
        c->in_phase = IN_WS;
        c->step = S_WS_OPEN;
        if (w->o->target == TG_STOA)
            return; /* join on welcome */
        /* nodews and the ceiling: every client, publishers too, joins first (the
         * ceiling groups connections by their first frame); nchan's URL is the channel */
        if (w->o->target == TG_NODEWS || w->o->target == TG_CEILING)
            send_join(w, c);
        set_ready(w, c);
        return;
    }
    c->in_phase = IN_BODY;
    c->sink = SINK_ACCUM;
    if (c->step == S_SSE && r->status == 200) {
        c->sink = SINK_SSE;
        if (w->o->target != TG_STOA)
            set_ready(w, c);
    }
    if (r->status == 204 || r->status == 304 || (r->status >= 100 && r->status < 200) ||
        (!r->chunked && r->clen_left == 0))
        body_done(w, c);
    else if (!r->chunked && r->clen_left < 0 && c->step != S_SSE && c->step != S_WS_UPGRADE)
        r->close = true; /* a body until close: this connection cannot be reused */
}

static size_t input_head(struct worker *w, struct conn *c, char *p, size_t n)
{
    size_t old = buf_size(&c->in);
    const char *hp;
    size_t hl, used;
    if (old == 0) {
        const char *e = memmem(p, n, "\r\n\r\n", 4);
        if (!e) {
            if (!buf_append(&c->in, p, n, HEAD_MAX))
                conn_fail(w, c, "response head over %u bytes", HEAD_MAX);
            return n;
        }
        hp = p;
        hl = (size_t)(e - p);
        used = hl + 4;
    } else {
        /* a head ends within HEAD_MAX bytes: look no further */
        size_t take = n < HEAD_MAX - old ? n : HEAD_MAX - old;
        if (!take || !buf_append(&c->in, p, take, HEAD_MAX)) {
            conn_fail(w, c, "response head over %u bytes", HEAD_MAX);
            return n;
        }
        size_t from = old > 3 ? old - 3 : 0;
        const char *e = memmem(buf_data(&c->in) + from, buf_size(&c->in) - from, "\r\n\r\n", 4);
        if (!e)
            return take;
        hp = buf_data(&c->in);
        hl = (size_t)(e - hp);
        used = hl + 4 - old;
    }
    if (!parse_head(w, c, hp, hl)) {
        conn_fail(w, c, "malformed response head");
        return n;
    }
    buf_clear(&c->in);
    if (c->step != S_CLOSED)
        on_head(w, c);
    return used;
}

static void conn_input(struct worker *w, struct conn *c, char *p, size_t n)
{
    while (n > 0 && c->step != S_CLOSED) {
        size_t used;
        switch (c->in_phase) {
        case IN_HEAD:
            used = input_head(w, c, p, n);
            break;
        case IN_BODY:
            used = input_body(w, c, p, n);
            break;
        default:
            used = input_ws(w, c, p, n);
            break;
        }
        p += used;
        n -= used;
    }
}

/* ---- HTTP subscribers and publishers ------------------------------------ */

static void send_poll(struct worker *w, struct conn *c)
{
    char path[128], hdr[256] = "";
    unsigned room = w->rooms[c->room].id;
    c->step = S_POLL;
    if (w->o->target == TG_STOA) {
        snprintf(path, sizeof path, "/v1/sessions/%s/poll?after=%" PRIu64, c->hs->sid, c->hs->after);
    } else {
        snprintf(path, sizeof path, "/sub/bench_%u", room);
        if (c->hs->lastmod[0] || c->hs->etag[0])
            snprintf(hdr, sizeof hdr, "If-Modified-Since: %s\r\nIf-None-Match: %s\r\n", c->hs->lastmod,
                     c->hs->etag);
    }
    http_send(w, c, "GET", path, hdr, NULL, 0);
}

static void send_sse(struct worker *w, struct conn *c)
{
    char path[128];
    c->step = S_SSE;
    if (w->o->target == TG_STOA)
        snprintf(path, sizeof path, "/v1/sessions/%s/sse?last_seq=%" PRIu64, c->hs->sid, c->hs->after);
    else
        snprintf(path, sizeof path, "/sub/bench_%u", w->rooms[c->room].id);
    http_send(w, c, "GET", path, "Accept: text/event-stream\r\n", NULL, 0);
}

static bool parse_session(struct conn *c, const char *body, size_t n)
{
    static const char key[] = "\"session\":\"";
    const char *q = memmem(body, n, key, sizeof key - 1);
    if (!q)
        return false;
    q += sizeof key - 1;
    size_t i = 0;
    while (q + i < body + n && q[i] != '"' && i + 1 < sizeof c->hs->sid) {
        char ch = q[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
            return false;
        c->hs->sid[i++] = ch;
    }
    c->hs->sid[i] = '\0';
    uint64_t seq = 0;
    find_u64(body, n, "\"seq\":", &seq);
    c->hs->after = seq;
    return i > 0;
}

static int heartbeat_json(const struct worker *w, const struct conn *c, char *m, size_t cap)
{
    return snprintf(m, cap, "{\"type\":\"heartbeat\",\"room\":\"bench:%u\"}", w->rooms[c->room].id);
}

static void send_http_heartbeat(struct worker *w, struct conn *c)
{
    char m[96], path[96];
    int k = heartbeat_json(w, c, m, sizeof m);
    snprintf(path, sizeof path, "/v1/sessions/%s/messages", c->hs->sid);
    c->hb_due = false;
    c->step = S_H_BEAT;
    http_send(w, c, "POST", path, "Content-Type: application/json\r\n", m, (size_t)k);
}

static void conn_start(struct worker *w, struct conn *c, uint32_t total_conns);

/* Each idle heartbeat connection takes the next SSE session due one; a
 * heartbeat connection that failed is started again. */
static void aux_pump(struct worker *w)
{
    for (uint32_t k = 0; k < w->naux && w->hbq_len; k++) {
        struct conn *a = &w->aux[k];
        if (a->step == S_IDLE || a->step == S_CLOSED) {
            buf_clear(&a->in);
            buf_clear(&a->out);
            a->out_armed = false;
            conn_start(w, a, w->total_conns);
            continue;
        }
        while (a->step == S_AUX_IDLE && w->hbq_len) {
            struct conn *c = &w->conns[w->hbq[w->hbq_head]];
            w->hbq_head = (w->hbq_head + 1) % w->nconns;
            w->hbq_len--;
            c->hb_due = false;
            if (c->step != S_SSE || !c->ready)
                continue;
            char m[96], path[96];
            int n = heartbeat_json(w, c, m, sizeof m);
            snprintf(path, sizeof path, "/v1/sessions/%s/messages", c->hs->sid);
            a->step = S_AUX_BUSY;
            http_send(w, a, "POST", path, "Content-Type: application/json\r\n", m, (size_t)n);
        }
    }
}

/* Stoa evicts a peer silent in a room for heartbeat_timeout_s: once a second,
 * a twentieth of the connections heartbeat: WebSocket at once, long-poll
 * between two polls, SSE (whose connection only reads) over the worker's
 * heartbeat connections. */
static void heartbeat_sweep(struct worker *w, uint64_t now)
{
    if (w->o->target != TG_STOA || now < w->hb_next)
        return;
    w->hb_next = now + NS_PER_S;
    for (uint32_t i = w->hb_bucket++ % HB_PERIOD_S; i < w->nconns; i += HB_PERIOD_S) {
        struct conn *c = &w->conns[i];
        if (!c->ready)
            continue;
        if (c->step == S_WS_OPEN) {
            char m[96];
            int k = heartbeat_json(w, c, m, sizeof m);
            ws_send(w, c, 0x1, m, (size_t)k);
        } else if (c->step == S_POLL) {
            c->hb_due = true;
        } else if (c->step == S_SSE && w->hbq && !c->hb_due) {
            c->hb_due = true; /* queued once at most: the ring holds every connection */
            w->hbq[(w->hbq_head + w->hbq_len++) % w->nconns] = i;
        }
    }
    aux_pump(w);
}

static void stoa_poll_answer(struct worker *w, struct conn *c, const char *body, size_t n)
{
    uint64_t last;
    if (!find_u64(body, n, "\"last_seq\":", &last)) {
        conn_fail(w, c, "poll answer without last_seq: %.*s", (int)(n < 200 ? n : 200), body);
        return;
    }
    c->hs->after = last;
    if (!c->ready && memmem(body, n, "\"type\":\"room_state\"", 19))
        set_ready(w, c);
    w->st.resyncs += count_occurrences(body, n, "\"type\":\"resync\"");
    size_t errs = count_occurrences(body, n, "\"type\":\"error\"");
    if (errs) {
        const char *e = memmem(body, n, "\"type\":\"error\"", 14);
        note_error(w, c, "server error: %.*s", (int)(body + n - e < 200 ? body + n - e : 200), e);
        w->st.errors += errs - 1;
    }
    deliver_stamps(w, c, body, n);
}

static void on_response(struct worker *w, struct conn *c, const char *body, size_t n)
{
    int st = c->resp.status;
    char tmp[128];
    switch (c->step) {
    case S_H_CREATE:
        if (st != 201 || !parse_session(c, body, n)) {
            conn_fail(w, c, "POST /v1/sessions: %d %.*s", st, (int)(n < 200 ? n : 200), body);
            return;
        }
        {
            int k = snprintf(tmp, sizeof tmp, "[{\"type\":\"join\",\"room\":\"bench:%u\"%s}]", w->rooms[c->room].id,
                             w->o->observe && c->role == R_SUB ? ",\"observe\":true" : "");
            char path[96];
            snprintf(path, sizeof path, "/v1/sessions/%s/messages", c->hs->sid);
            c->step = S_H_JOIN;
            http_send(w, c, "POST", path, "Content-Type: application/json\r\n", tmp, (size_t)k);
        }
        return;
    case S_H_JOIN:
        if (st != 200 || !memmem(body, n, "\"accepted\":1", 12)) {
            conn_fail(w, c, "join: %d %.*s", st, (int)(n < 200 ? n : 200), body);
            return;
        }
        if (w->o->transport == TR_SSE)
            send_sse(w, c);
        else
            send_poll(w, c);
        return;
    case S_POLL:
        if (w->o->target == TG_STOA) {
            if (st != 200) {
                conn_fail(w, c, "poll: %d %.*s", st, (int)(n < 200 ? n : 200), body);
                return;
            }
            stoa_poll_answer(w, c, body, n);
        } else if (st == 200) {
            deliver_stamps(w, c, body, n);
        } else if (st != 304 && st != 408) {
            conn_fail(w, c, "poll: %d %.*s", st, (int)(n < 200 ? n : 200), body);
            return;
        }
        if (c->step == S_CLOSED || c->resp.close)
            return; /* body_done connects again, which polls */
        if (c->hb_due) {
            send_http_heartbeat(w, c);
            return;
        }
        send_poll(w, c);
        return;
    case S_H_BEAT:
        if (st != 200)
            note_error(w, c, "heartbeat: %d %.*s", st, (int)(n < 200 ? n : 200), body);
        send_poll(w, c);
        return;
    case S_AUX_BUSY:
        if (st != 200)
            note_error(w, c, "heartbeat: %d %.*s", st, (int)(n < 200 ? n : 200), body);
        c->step = S_AUX_IDLE;
        if (!c->resp.close)
            aux_pump(w); /* else body_done connects again first */
        return;
    case S_PUB_BUSY:
        c->step = S_PUB_IDLE;
        if (st < 200 || st > 299) {
            if (c->inflight_measured) {
                w->st.published--;
                w->st.expected -= w->rooms[c->room].nready;
            }
            note_error(w, c, "publish: %d %.*s", st, (int)(n < 200 ? n : 200), body);
        }
        return;
    case S_SSE:
        conn_fail(w, c, "event stream: %d %.*s", st, (int)(n < 200 ? n : 200), body);
        return;
    default:
        conn_fail(w, c, "unexpected response %d %.*s", st, (int)(n < 200 ? n : 200), body);
        return;
    }
}

/* ---- connection life ---------------------------------------------------- */

static void conn_begin(struct worker *w, struct conn *c)
{
    const struct options *o = w->o;
    c->in_phase = IN_HEAD;
    if (c->role == R_AUX) {
        c->reconnect = false;
        c->step = S_AUX_IDLE;
        aux_pump(w);
    } else if (c->reconnect) {
        c->reconnect = false;
        if (c->role == R_PUB)
            c->step = S_PUB_IDLE;
        else
            send_poll(w, c);
    } else if (conn_is_ws(o, c)) {
        ws_upgrade(w, c);
    } else if (c->role == R_PUB) {
        c->step = S_PUB_IDLE;
        set_ready(w, c);
    } else if (o->target == TG_STOA) {
        c->step = S_H_CREATE;
        http_send(w, c, "POST", "/v1/sessions", "", "", 0);
    } else if (o->transport == TR_SSE) {
        send_sse(w, c);
    } else {
        send_poll(w, c);
        set_ready(w, c);
    }
    if (c->step != S_CLOSED)
        conn_arm(w, c, buf_size(&c->out) > 0);
}

static void conn_start(struct worker *w, struct conn *c, uint32_t total_conns)
{
    const struct options *o = w->o;
    int fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->step = S_CLOSED;
        note_error(w, c, "socket: %s", strerror(errno));
        atomic_fetch_add_explicit(&w->live_failed, 1, memory_order_relaxed);
        return;
    }
    c->fd = fd;
    c->step = S_CONNECTING;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o->addr.ss_family == AF_INET && total_conns > CONNS_PER_SOURCE_ADDR) {
        /* more connections than one source address has ports: spread over 127.0.0.x */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + c->gidx / CONNS_PER_SOURCE_ADDR);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            conn_fail(w, c, "bind: %s", strerror(errno));
            return;
        }
    }
    const struct sockaddr_storage *to = c->role == R_PUB ? &o->pub_addr : &o->addr;
    if (connect(fd, (const struct sockaddr *)to, o->addrlen) < 0 && errno != EINPROGRESS) {
        conn_fail(w, c, "connect: %s", strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        conn_fail(w, c, "epoll_ctl: %s", strerror(errno));
        return;
    }
    c->out_armed = true;
}

static void on_connected(struct worker *w, struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        conn_fail(w, c, "connect: %s", strerror(err));
        return;
    }
    c->out_armed = false; /* was registered for EPOLLOUT only */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        conn_fail(w, c, "epoll_ctl: %s", strerror(errno));
        return;
    }
    conn_begin(w, c);
}

static void conn_reconnect(struct worker *w, struct conn *c)
{
    close(c->fd);
    c->fd = -1;
    buf_clear(&c->in);
    buf_clear(&c->out);
    c->out_armed = false;
    c->reconnect = true;
    w->st.reconnects++;
    conn_start(w, c, w->total_conns);
}

static void on_eof(struct worker *w, struct conn *c)
{
    if (c->in_phase == IN_HEAD && buf_size(&c->in) == 0 && (c->step == S_PUB_IDLE || c->step == S_AUX_IDLE)) {
        conn_reconnect(w, c); /* an idle keep-alive connection timed out */
        return;
    }
    if (c->in_phase == IN_BODY && c->resp.clen_left < 0 && !c->resp.chunked && c->step != S_SSE) {
        c->resp.close = true; /* a body that ends with the connection: */
        body_done(w, c);      /* connects again, or fails */
        return;
    }
    conn_fail(w, c, "the server closed the connection");
}

static void conn_event(struct worker *w, struct conn *c, uint32_t events)
{
    if (c->step == S_CLOSED)
        return;
    if (c->step == S_CONNECTING) {
        on_connected(w, c);
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t k = recv(c->fd, w->raw, RAW_SZ, 0);
        if (k > 0) {
            w->now = now_ns();
            conn_input(w, c, w->raw, (size_t)k);
        } else if (k == 0) {
            on_eof(w, c);
        } else if (errno != EAGAIN && errno != EINTR) {
            conn_fail(w, c, "recv: %s", strerror(errno));
        }
    }
    if (c->step != S_CLOSED && (events & EPOLLOUT))
        conn_flush(w, c);
}

/* ---- the worker loop ---------------------------------------------------- */

static void connect_more(struct worker *w, uint64_t now)
{
    double per_worker = (double)w->o->connect_rate / (double)w->o->threads;
    if (!w->connect_t0)
        w->connect_t0 = now;
    uint64_t allowed = (uint64_t)((double)(now - w->connect_t0) / 1e9 * per_worker) + 1u;
    while (w->nstarted < w->nconns && w->nstarted < allowed)
        conn_start(w, &w->conns[w->nstarted++], w->total_conns);
}

/* At the start of the run: who counts. */
static void run_init(struct worker *w)
{
    w->run_init = true;
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (!c->ready || c->step == S_CLOSED)
            continue;
        if (c->role == R_PUB) {
            w->st.pubs_ready++;
            continue;
        }
        c->counted = true;
        w->rooms[c->room].nready++;
        w->st.connected++;
    }
}

static struct conn *pick_publisher(struct worker *w, struct room *r)
{
    for (uint32_t k = 0; k < r->npubs; k++) {
        struct conn *c = &w->conns[r->pubs[(r->rr + k) % r->npubs]];
        if (!c->ready || c->step == S_CLOSED)
            continue;
        if (w->o->publisher == PM_HTTP ? c->step != S_PUB_IDLE : buf_size(&c->out) > OUT_SOFT)
            continue;
        r->rr = (r->rr + k + 1) % r->npubs;
        return c;
    }
    return NULL;
}

static void publish_due(struct worker *w, uint64_t now)
{
    if (w->o->rate <= 0)
        return;
    double elapsed = (double)(now - g_run_start) / 1e9;
    for (uint32_t i = 0; i < w->nrooms; i++) {
        struct room *r = &w->rooms[i];
        double x = elapsed * w->o->rate - r->phase;
        uint64_t due = x < 0 ? 0u : (uint64_t)x + 1u;
        while (r->sent < due) {
            struct conn *c = pick_publisher(w, r);
            if (!c)
                break;
            publish_one(w, r, c);
        }
    }
}

static void presence_due(struct worker *w, uint64_t now)
{
    if (w->o->rate <= 0)
        return;
    double elapsed = (double)(now - g_run_start) / 1e9;
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (!c->counted || c->step == S_CLOSED)
            continue;
        /* peers of a room are spread evenly over the period */
        double offset = (double)c->peer_no / (double)(w->o->subs ? w->o->subs : 1u);
        uint64_t due = (uint64_t)(elapsed * w->o->rate + offset) + 1u;
        while (c->pres_sent < due && buf_size(&c->out) <= OUT_SOFT && c->step != S_CLOSED)
            send_presence(w, c);
    }
}

/* 1 ms while connecting and publishing; slower while nothing is scheduled. */
static void set_tick(struct worker *w, uint64_t ns)
{
    if (w->tick_ns == ns)
        return;
    struct itimerspec its = {.it_interval = {0, (long)ns}, .it_value = {0, (long)ns}};
    if (timerfd_settime(w->tfd, 0, &its, NULL) == 0)
        w->tick_ns = ns;
}

static void on_tick(struct worker *w)
{
    uint64_t expirations;
    if (read(w->tfd, &expirations, sizeof expirations) < 0) {
        /* nothing: level-triggered, we come back */
    }
    uint64_t now = now_ns();
    int ph = atomic_load_explicit(&g_phase, memory_order_acquire);
    set_tick(w, ph == PH_CONNECT || (ph == PH_RUN && w->o->scenario != SC_IDLE) ? TICK_NS : SLOW_TICK_NS);
    if (!w->hb_next)
        w->hb_next = now + NS_PER_S;
    heartbeat_sweep(w, now);
    if (ph == PH_CONNECT) {
        connect_more(w, now);
    } else if (ph == PH_RUN || ph == PH_DRAIN) {
        if (!w->run_init)
            run_init(w);
        /* fanout: every slot before the end is sent, even if its tick comes late */
        if (w->o->scenario == SC_FANOUT)
            publish_due(w, now < g_pub_end ? now : g_pub_end - 1u);
        else if (w->o->scenario == SC_PRESENCE && ph == PH_RUN && now < g_pub_end)
            presence_due(w, now);
    }
    atomic_store_explicit(&w->live_delivered, w->st.delivered, memory_order_relaxed);
    atomic_store_explicit(&w->live_expected, w->st.expected, memory_order_relaxed);
    atomic_store_explicit(&w->live_errors, w->st.errors, memory_order_relaxed);
}

/* Slots of the schedule before the end of publishing that no publisher took
 * (HTTP publishers with a request in flight, WebSocket ones backed up). */
static void count_unsent(struct worker *w)
{
    if (!w->run_init || w->o->scenario != SC_FANOUT || w->o->rate <= 0)
        return;
    for (uint32_t i = 0; i < w->nrooms; i++) {
        const struct room *r = &w->rooms[i];
        double x = (double)(g_pub_end - g_run_start) / 1e9 * w->o->rate - r->phase;
        uint64_t due = x <= 0 ? 0u : (uint64_t)x;
        if (x > 0 && (double)due < x)
            due++; /* the slots at times before the end: ceil(x) */
        if (due > r->sent)
            w->st.unsent += due - r->sent;
    }
}

/* Closes a connection at the end of the run (a WebSocket with a close
 * frame, which ends a stoa session at once) and frees its buffers. */
static void conn_release(struct worker *w, struct conn *c)
{
    if (c->step == S_WS_OPEN && !c->close_sent) {
        const char code[2] = {0x03, (char)0xe8}; /* 1000 */
        c->close_sent = true;
        ws_send(w, c, 0x8, code, 2);
    }
    if (c->step != S_CLOSED && c->step != S_IDLE) {
        close(c->fd);
        c->step = S_CLOSED;
    }
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->frag);
    free(c->hs);
    c->hs = NULL;
}

static void worker_close_all(struct worker *w)
{
    count_unsent(w);
    for (uint32_t i = 0; i < w->nconns; i++)
        conn_release(w, &w->conns[i]);
    for (uint32_t k = 0; k < w->naux; k++)
        conn_release(w, &w->aux[k]);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[MAX_EVENTS];
    while (atomic_load_explicit(&g_phase, memory_order_acquire) != PH_STOP) {
        int n = epoll_wait(w->epfd, evs, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "stoa-bench: epoll_wait: %s\n", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                on_tick(w);
            else
                conn_event(w, evs[i].data.ptr, evs[i].events);
        }
    }
    worker_close_all(w);
    return NULL;
}

/* ---- setup ---------------------------------------------------------------- */

static void die(const char *msg)
{
    fprintf(stderr, "stoa-bench: %s\n", msg);
    exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        die("out of memory");
    return p;
}

static void worker_init(struct worker *w, unsigned id, const struct options *o)
{
    w->id = id;
    w->o = o;
    w->rng = (uint32_t)splitmix64(id + 1u) | 1u;
    w->raw = xcalloc(1, RAW_SZ);
    w->dec = xcalloc(1, RAW_SZ);
    w->msg = xcalloc(1, MSG_MAX);
    w->req = xcalloc(1, REQ_MAX);
    w->hist = xcalloc(1, sizeof *w->hist);

    /* rooms id, id + threads, ... belong to this worker */
    for (unsigned r = id; r < o->rooms; r += o->threads)
        w->nrooms++;
    unsigned pubs = o->scenario == SC_FANOUT ? o->pubs : 0u;
    w->rooms = xcalloc(w->nrooms, sizeof *w->rooms);
    w->nconns = w->nrooms * (o->subs + pubs);
    w->total_conns = o->rooms * (o->subs + pubs);
    w->conns = xcalloc(w->nconns, sizeof *w->conns);

    /* subscribers of every room first, then the publishers */
    uint32_t k = 0;
    for (uint32_t i = 0; i < w->nrooms; i++) {
        struct room *r = &w->rooms[i];
        r->id = id + i * o->threads;
        r->phase = (double)r->id / (double)o->rooms;
        for (unsigned s = 0; s < o->subs; s++, k++) {
            struct conn *c = &w->conns[k];
            c->role = o->scenario == SC_PRESENCE ? R_PEER : R_SUB;
            c->room = i;
            c->peer_no = s;
        }
    }
    for (uint32_t i = 0; i < w->nrooms; i++) {
        struct room *r = &w->rooms[i];
        r->pubs = xcalloc(pubs, sizeof *r->pubs);
        for (unsigned p = 0; p < pubs; p++, k++) {
            w->conns[k].role = R_PUB;
            w->conns[k].room = i;
            r->pubs[r->npubs++] = k;
        }
    }
    bool http_sub = o->scenario != SC_PRESENCE && o->transport != TR_WS;
    for (uint32_t i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        c->fd = -1;
        c->gidx = i * o->threads + id;
        if (http_sub && c->role == R_SUB)
            c->hs = xcalloc(1, sizeof *c->hs);
    }
    if (o->target == TG_STOA && http_sub && o->transport == TR_SSE && w->nconns) {
        uint32_t nsse = w->nrooms * o->subs;
        w->naux = 1u + nsse / SSE_PER_AUX;
        if (w->naux > MAX_AUX)
            w->naux = MAX_AUX;
        w->hbq = xcalloc(w->nconns, sizeof *w->hbq);
        for (uint32_t a = 0; a < w->naux; a++) {
            w->aux[a].fd = -1;
            w->aux[a].role = R_AUX;
            w->aux[a].gidx = w->total_conns + id * MAX_AUX + a;
        }
    }

    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (w->epfd < 0 || w->tfd < 0)
        die("epoll_create1/timerfd_create failed");
    set_tick(w, TICK_NS);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->tfd, &ev) < 0)
        die("epoll_ctl(timerfd) failed");
}

static void worker_free(struct worker *w)
{
    for (uint32_t i = 0; i < w->nrooms; i++)
        free(w->rooms[i].pubs);
    free(w->rooms);
    free(w->conns);
    free(w->hbq);
    free(w->raw);
    free(w->dec);
    free(w->msg);
    free(w->req);
    free(w->hist);
    close(w->epfd);
    close(w->tfd);
}

/* ---- /proc sampling ------------------------------------------------------ */

struct sample {
    double server_cpu_s; /* -1: unknown */
    long server_rss_kb;  /* -1: unknown */
    double gen_cpu_s;
    uint64_t steal, total; /* /proc/stat, all CPUs */
};

static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1.0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -1.0;
    /* after "comm)": field 3 (state) ... field 14 utime, 15 stime */
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1.0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static void proc_steal(uint64_t *steal, uint64_t *total)
{
    unsigned long long v[10] = {0};
    *steal = *total = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return;
    /* guest and guest_nice (8, 9) are already inside user and nice */
    for (int i = 0; i < 8; i++)
        *total += v[i];
    *steal = v[7];
}

static void take_sample(const struct options *o, struct sample *s)
{
    s->server_cpu_s = o->nserver_pids ? 0.0 : -1.0;
    s->server_rss_kb = o->nserver_pids ? 0 : -1;
    for (unsigned i = 0; i < o->nserver_pids; i++) {
        double cpu = proc_cpu_s(o->server_pids[i]);
        long rss = proc_rss_kb(o->server_pids[i]);
        if (cpu < 0 || rss < 0) {
            fprintf(stderr, "stoa-bench: cannot read /proc/%d (the server is gone?)\n", (int)o->server_pids[i]);
            s->server_cpu_s = -1.0;
            s->server_rss_kb = -1;
            break;
        }
        s->server_cpu_s += cpu;
        s->server_rss_kb += rss;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->gen_cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                   (double)ru.ru_stime.tv_usec / 1e6;
    proc_steal(&s->steal, &s->total);
}

/* ---- command line -------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: stoa-bench --target stoa|nchan|nodews|ceiling --host 127.0.0.1 --port P\n"
          "                  --scenario fanout|presence|idle [options]\n"
          "\n"
          "  --transport ws|sse|longpoll  subscribers' transport (default ws; sse and longpoll:\n"
          "                               stoa and nchan only)\n"
          "  --publisher ws|http          publishers' transport (default ws; http: stoa and nchan)\n"
          "  --rooms R                    rooms (default 1)\n"
          "  --subs S                     subscribers per room (presence: peers per room; default 10)\n"
          "  --pubs P                     publishers per room (default 1)\n"
          "  --rate M                     messages per second per room, all its publishers together\n"
          "                               (presence: updates per second per peer; default 10)\n"
          "  --size B                     message payload bytes, about (default 100)\n"
          "  --duration SEC               measured time (default 10; idle: time held)\n"
          "  --warmup SEC                 unmeasured time before it (default 2)\n"
          "  --server-pid PID[,PID...]    the server's processes: CPU (/proc/PID/stat) and RSS\n"
          "                               (/proc/PID/status) are summed over them\n"
          "  --api-key K                  stoa HTTP publish (Authorization: Bearer K)\n"
          "  --pub-port P                 publishers connect to port P instead (another instance of\n"
          "                               the same server on the same host)\n"
          "  --connect-rate N             new connections per second while connecting (default 2000)\n"
          "  --observe                    stoa: subscribers join as observers (\"observe\": true: not\n"
          "                               announced to the room, so joining N costs N, not N^2)\n"
          "  --threads N                  independent event loops, rooms spread over them (default 1)\n"
          "  --json                       print one JSON object on stdout (else a summary)\n"
          "  --help                       this text\n"
          "\n"
          "Rooms are bench:<r> (stoa, nodews, ceiling) and channels bench_<r> (nchan). Every message\n"
          "carries {\"t\":<CLOCK_MONOTONIC ns>,\"s\":<per-room sequence>,\"p\":\"x...\"}; only messages\n"
          "sent after the warm-up count. Loopback targets only.\n",
          f);
}

static int parse_enum(const char *arg, const char *const *names, const char *opt)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(arg, names[i]) == 0)
            return i;
    fprintf(stderr, "stoa-bench: %s: unknown value '%s' (one of:", opt, arg);
    for (int i = 0; names[i]; i++)
        fprintf(stderr, " %s", names[i]);
    fprintf(stderr, ")\n");
    exit(2);
}

static unsigned long parse_num(const char *arg, unsigned long min, unsigned long max, const char *opt)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-' || v < min || v > max) {
        fprintf(stderr, "stoa-bench: %s: expected an integer from %lu to %lu, got '%s'\n", opt, min, max, arg);
        exit(2);
    }
    return v;
}

static void parse_pids(struct options *o, const char *arg)
{
    char copy[256];
    snprintf(copy, sizeof copy, "%s", arg);
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->nserver_pids == MAX_SERVER_PIDS) {
            fprintf(stderr, "stoa-bench: --server-pid: at most %u processes\n", MAX_SERVER_PIDS);
            exit(2);
        }
        o->server_pids[o->nserver_pids++] = (pid_t)parse_num(t, 1, 4194304, "--server-pid");
    }
}

static void resolve_host(struct options *o)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)&o->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&o->addr;
    memset(&o->addr, 0, sizeof o->addr);
    if (inet_pton(AF_INET, o->host, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127) {
            fprintf(stderr, "stoa-bench: --host %s is not a loopback address (127.0.0.0/8 or ::1)\n", o->host);
            exit(2);
        }
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)o->port);
        o->addrlen = sizeof *a4;
        snprintf(o->host_header, sizeof o->host_header, "%s:%u", o->host, o->port);
    } else if (inet_pton(AF_INET6, o->host, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) {
            fprintf(stderr, "stoa-bench: --host %s is not a loopback address (127.0.0.0/8 or ::1)\n", o->host);
            exit(2);
        }
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)o->port);
        o->addrlen = sizeof *a6;
        snprintf(o->host_header, sizeof o->host_header, "[%s]:%u", o->host, o->port);
    } else {
        fprintf(stderr, "stoa-bench: --host must be a numeric loopback address, got '%s'\n", o->host);
        exit(2);
    }
}

/* Publishers connect to --pub-port when given (another instance), else to --port. */
static void resolve_pub(struct options *o)
{
    o->pub_addr = o->addr;
    snprintf(o->pub_host_header, sizeof o->pub_host_header, "%s", o->host_header);
    if (!o->pub_port)
        return;
    if (o->addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&o->pub_addr)->sin_port = htons((uint16_t)o->pub_port);
    else
        ((struct sockaddr_in6 *)&o->pub_addr)->sin6_port = htons((uint16_t)o->pub_port);
    snprintf(o->pub_host_header, sizeof o->pub_host_header, o->addr.ss_family == AF_INET ? "%s:%u" : "[%s]:%u",
             o->host, o->pub_port);
}

static void bad_combination(const char *msg)
{
    fprintf(stderr, "stoa-bench: %s\n", msg);
    exit(2);
}

static void validate(struct options *o, bool have_target, bool have_scenario)
{
    if (!have_target || !have_scenario || !o->port || !o->host[0])
        bad_combination("--target, --scenario, --host and --port are required (--help)");
    resolve_host(o);
    resolve_pub(o);
    uint64_t subs = (uint64_t)o->rooms * o->subs;
    if (subs > MAX_TOTAL_SUBS)
        bad_combination("rooms x subs is over 200000");
    if (o->scenario == SC_FANOUT && (uint64_t)o->rooms * o->pubs > MAX_TOTAL_PUBS)
        bad_combination("rooms x pubs is over 10000");
    if (o->scenario == SC_FANOUT && o->pubs == 0)
        bad_combination("fanout needs --pubs 1 or more");
    if (o->rate < 0 || o->rate > MAX_RATE || (double)o->rooms * o->rate > MAX_TOTAL_RATE)
        bad_combination("--rate: at most 1000000 per room and 2000000 in all (rooms x rate)");
    if (o->target != TG_STOA && o->target != TG_NCHAN && o->transport != TR_WS)
        bad_combination("--transport sse and longpoll are for stoa and nchan only");
    if (o->target != TG_STOA && o->target != TG_NCHAN && o->publisher != PM_WS)
        bad_combination("--publisher http is for stoa and nchan only");
    if (o->scenario == SC_PRESENCE) {
        if (o->target != TG_STOA)
            bad_combination("the presence scenario is for stoa only");
        if (o->transport != TR_WS)
            bad_combination("the presence scenario runs over WebSocket only");
        if (subs > MAX_PRESENCE_PEERS)
            bad_combination("presence: rooms x subs is over 20000");
        if (o->rate > 1000)
            bad_combination("presence: --rate is per peer, at most 1000");
    }
    if (o->target == TG_STOA && o->publisher == PM_HTTP && o->scenario == SC_FANOUT && !o->api_key[0])
        bad_combination("stoa with --publisher http needs --api-key");
    if (o->scenario == SC_IDLE && !o->nserver_pids)
        fprintf(stderr, "stoa-bench: warning: idle without --server-pid measures no memory\n");
    if (o->threads > o->rooms)
        o->threads = o->rooms;
}

static void parse_args(int argc, char **argv, struct options *o)
{
    enum { O_TARGET = 256, O_HOST, O_PORT, O_SCENARIO, O_TRANSPORT, O_PUBLISHER, O_ROOMS, O_SUBS, O_PUBS,
           O_RATE, O_SIZE, O_DURATION, O_WARMUP, O_PID, O_KEY, O_CRATE, O_THREADS, O_JSON, O_HELP, O_PUB_PORT, O_OBSERVE };
    static const struct option longopts[] = {
        {"target", required_argument, NULL, O_TARGET},       {"host", required_argument, NULL, O_HOST},
        {"port", required_argument, NULL, O_PORT},           {"scenario", required_argument, NULL, O_SCENARIO},
        {"transport", required_argument, NULL, O_TRANSPORT}, {"publisher", required_argument, NULL, O_PUBLISHER},
        {"rooms", required_argument, NULL, O_ROOMS},         {"subs", required_argument, NULL, O_SUBS},
        {"pubs", required_argument, NULL, O_PUBS},           {"rate", required_argument, NULL, O_RATE},
        {"size", required_argument, NULL, O_SIZE},           {"duration", required_argument, NULL, O_DURATION},
        {"warmup", required_argument, NULL, O_WARMUP},       {"server-pid", required_argument, NULL, O_PID},
        {"api-key", required_argument, NULL, O_KEY},         {"connect-rate", required_argument, NULL, O_CRATE},
        {"threads", required_argument, NULL, O_THREADS},     {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, O_HELP},                 {"pub-port", required_argument, NULL, O_PUB_PORT},
        {"observe", no_argument, NULL, O_OBSERVE},
        {NULL, 0, NULL, 0}};
    bool have_target = false, have_scenario = false;
    memset(o, 0, sizeof *o);
    o->rooms = 1;
    o->subs = 10;
    o->pubs = 1;
    o->rate = 10;
    o->size = 100;
    o->duration = 10;
    o->warmup = 2;
    o->connect_rate = 2000;
    o->threads = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case O_TARGET:
            o->target = (enum target)parse_enum(optarg, target_names, "--target");
            have_target = true;
            break;
        case O_HOST:
            if (strlen(optarg) >= sizeof o->host)
                bad_combination("--host: too long");
            snprintf(o->host, sizeof o->host, "%s", optarg);
            break;
        case O_PORT:
            o->port = (unsigned)parse_num(optarg, 1, 65535, "--port");
            break;
        case O_PUB_PORT:
            o->pub_port = (unsigned)parse_num(optarg, 1, 65535, "--pub-port");
            break;
        case O_SCENARIO:
            o->scenario = (enum scenario)parse_enum(optarg, scenario_names, "--scenario");
            have_scenario = true;
            break;
        case O_TRANSPORT:
            o->transport = (enum transport)parse_enum(optarg, transport_names, "--transport");
            break;
        case O_PUBLISHER:
            o->publisher = (enum pubmode)parse_enum(optarg, pubmode_names, "--publisher");
            break;
        case O_ROOMS:
            o->rooms = (unsigned)parse_num(optarg, 1, MAX_ROOMS, "--rooms");
            break;
        case O_SUBS:
            o->subs = (unsigned)parse_num(optarg, 1, MAX_TOTAL_SUBS, "--subs");
            break;
        case O_PUBS:
            o->pubs = (unsigned)parse_num(optarg, 0, MAX_TOTAL_PUBS, "--pubs");
            break;
        case O_RATE: {
            char *end;
            errno = 0;
            o->rate = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(o->rate >= 0) || o->rate > MAX_RATE)
                bad_combination("--rate: expected a number from 0 to 1000000");
            break;
        }
        case O_SIZE:
            o->size = (unsigned)parse_num(optarg, 1, MAX_SIZE, "--size");
            break;
        case O_DURATION:
            o->duration = (unsigned)parse_num(optarg, 1, MAX_DURATION_S, "--duration");
            break;
        case O_WARMUP:
            o->warmup = (unsigned)parse_num(optarg, 0, MAX_WARMUP_S, "--warmup");
            break;
        case O_PID:
            parse_pids(o, optarg);
            break;
        case O_KEY:
            if (strlen(optarg) >= sizeof o->api_key)
                bad_combination("--api-key: too long");
            snprintf(o->api_key, sizeof o->api_key, "%s", optarg);
            break;
        case O_CRATE:
            o->connect_rate = (unsigned)parse_num(optarg, 1, 100000, "--connect-rate");
            break;
        case O_THREADS:
            o->threads = (unsigned)parse_num(optarg, 1, MAX_THREADS, "--threads");
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_OBSERVE:
            o->observe = true;
            break;
        case O_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "stoa-bench: unexpected argument '%s'\n", argv[optind]);
        exit(2);
    }
    validate(o, have_target, have_scenario);
}

static void raise_nofile(uint64_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur >= need)
        return;
    rl.rlim_cur = need;
    if (rl.rlim_max < need)
        rl.rlim_max = need; /* works as root, up to fs.nr_open */
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < need) {
            fprintf(stderr, "stoa-bench: need %" PRIu64 " file descriptors, the limit is %llu (ulimit -n)\n", need,
                    (unsigned long long)rl.rlim_cur);
            exit(1);
        }
    }
}

/* ---- the run ------------------------------------------------------------- */

struct results {
    struct stats st;
    struct hist *hist;
    struct sample before, a, b;
    double measured_s;
    uint64_t total_conns, total_subs;
};

static uint64_t sum_live(struct worker *ws, unsigned n, size_t field)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < n; i++)
        s += atomic_load_explicit((_Atomic uint64_t *)((char *)&ws[i] + field), memory_order_relaxed);
    return s;
}

#define LIVE(ws, n, f) sum_live(ws, n, offsetof(struct worker, f))

/* Until every connection is ready or failed; gives up after CONNECT_STALL_S
 * without progress (once all were started) or CONNECT_MAX_S in all. */
static void wait_connected(struct worker *ws, unsigned n, uint64_t total)
{
    uint64_t start = now_ns(), last_report = start, last_progress = start, last_ready = 0;
    uint64_t all_started = start + (total / g_opt.connect_rate + 1u) * NS_PER_S;
    for (;;) {
        uint64_t ready = LIVE(ws, n, live_ready), failed = LIVE(ws, n, live_failed), t = now_ns();
        if (ready + failed >= total)
            break;
        if (ready != last_ready) {
            last_ready = ready;
            last_progress = t;
        }
        if ((t > all_started && t - last_progress > CONNECT_STALL_S * NS_PER_S) ||
            t - start > CONNECT_MAX_S * NS_PER_S) {
            fprintf(stderr, "stoa-bench: %" PRIu64 " of %" PRIu64 " connections ready, %" PRIu64
                    " failed, no progress: going on\n", ready, total, failed);
            break;
        }
        if (!g_opt.json && now_ns() - last_report > 5 * NS_PER_S) {
            fprintf(stderr, "stoa-bench: %" PRIu64 "/%" PRIu64 " connections ready\n", ready, total);
            last_report = now_ns();
        }
        sleep_ms(20);
    }
}

static void wait_drained(struct worker *ws, unsigned n)
{
    uint64_t start = now_ns(), last_change = start, last = LIVE(ws, n, live_delivered);
    for (;;) {
        sleep_ms(50);
        uint64_t d = LIVE(ws, n, live_delivered), e = LIVE(ws, n, live_expected);
        uint64_t t = now_ns();
        if (d != last) {
            last = d;
            last_change = t;
        }
        if (d >= e || t - last_change > NS_PER_S || t - start > 10 * NS_PER_S)
            break;
    }
}

/* Stops the workers (they close their connections) and adds up their counts. */
static void stop_and_merge(struct worker *ws, unsigned n, struct results *res)
{
    atomic_store_explicit(&g_phase, PH_STOP, memory_order_release);
    for (unsigned i = 0; i < n; i++)
        pthread_join(ws[i].th, NULL);
    res->hist = xcalloc(1, sizeof *res->hist);
    for (unsigned i = 0; i < n; i++) {
        const struct stats *s = &ws[i].st;
        res->st.published += s->published;
        res->st.expected += s->expected;
        res->st.delivered += s->delivered;
        res->st.duplicates += s->duplicates;
        res->st.errors += s->errors;
        res->st.resyncs += s->resyncs;
        res->st.peer_msgs += s->peer_msgs;
        res->st.reconnects += s->reconnects;
        res->st.unsent += s->unsent;
        res->st.sent_total += s->sent_total;
        res->st.connected += s->connected;
        res->st.pubs_ready += s->pubs_ready;
        res->st.received_other += s->received_other;
        hist_merge(res->hist, ws[i].hist);
    }
}

static void run(struct worker *ws, unsigned n, struct results *res)
{
    const struct options *o = &g_opt;
    take_sample(o, &res->before);
    for (unsigned i = 0; i < n; i++)
        if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i]) != 0)
            die("pthread_create failed");
    wait_connected(ws, n, res->total_conns);
    res->measured_s = (double)o->duration;
    if (LIVE(ws, n, live_ready) == 0) {
        fprintf(stderr, "stoa-bench: no connection is ready: nothing to measure\n");
        res->a = res->b = res->before;
        stop_and_merge(ws, n, res);
        return;
    }

    uint64_t t0 = now_ns();
    g_run_start = t0;
    g_warm_end = t0 + (uint64_t)o->warmup * NS_PER_S;
    g_pub_end = g_warm_end + (uint64_t)o->duration * NS_PER_S;
    atomic_store_explicit(&g_phase, PH_RUN, memory_order_release);
    sleep_until(g_warm_end);
    take_sample(o, &res->a);
    sleep_until(g_pub_end);
    if (o->scenario != SC_IDLE) {
        atomic_store_explicit(&g_phase, PH_DRAIN, memory_order_release);
        wait_drained(ws, n);
    }
    take_sample(o, &res->b);
    stop_and_merge(ws, n, res);
}

/* ---- output --------------------------------------------------------------- */

static void print_num_or_null(const char *key, double v, int decimals, bool known)
{
    if (known)
        printf("\"%s\":%.*f,", key, decimals, v);
    else
        printf("\"%s\":null,", key);
}

static void report(const struct results *res)
{
    const struct options *o = &g_opt;
    const struct stats *s = &res->st;
    uint64_t total_pubs = o->scenario == SC_FANOUT ? (uint64_t)o->rooms * o->pubs : 0u;
    if (s->connected < res->total_subs)
        fprintf(stderr, "stoa-bench: warning: only %" PRIu64 " of %" PRIu64 " subscribers joined before the run\n",
                s->connected, res->total_subs);
    if (s->unsent)
        fprintf(stderr, "stoa-bench: warning: the publishers fell behind: %" PRIu64 " scheduled messages not sent"
                " (more --pubs?)\n", s->unsent);
    if (s->pubs_ready < total_pubs)
        fprintf(stderr, "stoa-bench: warning: only %" PRIu64 " of %" PRIu64 " publishers ready before the run\n",
                s->pubs_ready, total_pubs);
    bool srv = res->a.server_cpu_s >= 0 && res->b.server_cpu_s >= 0;
    double server_cpu = srv ? res->b.server_cpu_s - res->a.server_cpu_s : 0.0;
    double gen_cpu = res->b.gen_cpu_s - res->a.gen_cpu_s;
    double loss = s->expected ? 1.0 - (double)s->delivered / (double)s->expected : 0.0;
    double per_s = (double)s->delivered / res->measured_s;
    uint64_t dtot = res->b.total - res->a.total, dsteal = res->b.steal - res->a.steal;
    double steal = dtot ? 100.0 * (double)dsteal / (double)dtot : 0.0;
    bool rss = res->before.server_rss_kb >= 0 && res->b.server_rss_kb >= 0;
    bool mem = rss && o->scenario == SC_IDLE && s->connected;
    double mem_per_conn =
        mem ? (double)(res->b.server_rss_kb - res->before.server_rss_kb) * 1024.0 / (double)s->connected : 0.0;
    double us_per = srv && s->delivered ? server_cpu * 1e6 / (double)s->delivered : 0.0;
    double p50 = hist_percentile_ms(res->hist, 0.50), p95 = hist_percentile_ms(res->hist, 0.95);
    double p99 = hist_percentile_ms(res->hist, 0.99), mx = (double)res->hist->max_ns / 1e6;
    double peers_recv = s->connected ? per_s / (double)s->connected : 0.0;
    double peers_exp = s->connected ? (double)s->expected / res->measured_s / (double)s->connected : 0.0;

    if (!o->json) {
        printf("stoa-bench: %s %s, subscribers over %s, publishers over %s\n", target_names[o->target],
               scenario_names[o->scenario], transport_names[o->transport], pubmode_names[o->publisher]);
        printf("  rooms %u x subs %u, pubs %u, rate %g/s, size %u B, %u s (+%u s warm-up)\n", o->rooms, o->subs,
               o->scenario == SC_FANOUT ? o->pubs : 0u, o->rate, o->size, o->duration, o->warmup);
        printf("  connected %" PRIu64 " of %" PRIu64 " subscribers, errors %" PRIu64 ", resyncs %" PRIu64
               ", reconnects %" PRIu64 "\n",
               s->connected, res->total_subs, s->errors, s->resyncs, s->reconnects);
        if (o->scenario != SC_IDLE) {
            printf("  published %" PRIu64 ", expected %" PRIu64 ", delivered %" PRIu64 " (%.0f/s), loss %.4f%%, "
                   "duplicates %" PRIu64 "\n",
                   s->published, s->expected, s->delivered, per_s, loss * 100.0, s->duplicates);
            printf("  latency ms: p50 %.3f  p95 %.3f  p99 %.3f  max %.3f\n", p50, p95, p99, mx);
        }
        if (o->scenario == SC_PRESENCE)
            printf("  presence per peer: received %.1f/s of %.1f/s sent to it\n", peers_recv, peers_exp);
        if (srv)
            printf("  server CPU %.3f s (%.3f us per delivery)\n", server_cpu, us_per);
        printf("  generator CPU %.3f s, steal %.2f%%\n", gen_cpu, steal);
        if (rss)
            printf("  server RSS %ld kB -> %ld kB%s", res->before.server_rss_kb, res->b.server_rss_kb,
                   mem ? "" : "\n");
        if (mem)
            printf(" (%.0f bytes per connection)\n", mem_per_conn);
        return;
    }
    printf("{\"target\":\"%s\",\"scenario\":\"%s\",\"transport\":\"%s\",\"publisher\":\"%s\",", target_names[o->target],
           scenario_names[o->scenario], transport_names[o->transport], pubmode_names[o->publisher]);
    printf("\"rooms\":%u,\"subs\":%u,\"pubs\":%u,\"rate\":%g,\"size\":%u,\"duration_s\":%u,", o->rooms, o->subs,
           o->scenario == SC_FANOUT ? o->pubs : 0u, o->rate, o->size, o->duration);
    printf("\"connected\":%" PRIu64 ",\"pubs_ready\":%" PRIu64 ",\"unsent\":%" PRIu64 ",\"published\":%" PRIu64 ",\"expected\":%" PRIu64 ",\"delivered\":%" PRIu64 ",",
           s->connected, s->pubs_ready, s->unsent, s->published, s->expected, s->delivered);
    print_num_or_null("loss", loss, 6, s->expected > 0); /* nothing expected: no loss to speak of */
    printf("\"delivered_per_s\":%.1f,", per_s);
    if (res->hist->n)
        printf("\"lat_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},", p50, p95, p99, mx);
    else
        printf("\"lat_ms\":{\"p50\":null,\"p95\":null,\"p99\":null,\"max\":null},");
    print_num_or_null("server_cpu_s", server_cpu, 3, srv);
    print_num_or_null("server_us_per_delivery", us_per, 3, srv && s->delivered);
    printf("\"gen_cpu_s\":%.3f,\"steal_pct\":%.3f,", gen_cpu, steal);
    print_num_or_null("server_rss_kb_before", (double)res->before.server_rss_kb, 0, rss);
    print_num_or_null("server_rss_kb_after", (double)res->b.server_rss_kb, 0, rss);
    print_num_or_null("mem_per_conn_bytes", mem_per_conn, 0, mem);
    printf("\"errors\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"resyncs\":%" PRIu64 ",\"reconnects\":%" PRIu64
           ",\"threads\":%u",
           s->errors, s->duplicates, s->resyncs, s->reconnects, o->threads);
    if (o->scenario == SC_PRESENCE)
        printf(",\"presence\":{\"peers\":%" PRIu64 ",\"sent_per_s_per_peer\":%g,\"recv_per_s_per_peer\":%.1f,"
               "\"expected_recv_per_s_per_peer\":%.1f,\"msgs_per_s_per_peer\":%.1f}",
               s->connected, o->rate, peers_recv, peers_exp,
               s->connected ? (double)s->peer_msgs / res->measured_s / (double)s->connected : 0.0);
    printf("}\n");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv, &g_opt);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct results res;
    memset(&res, 0, sizeof res);
    res.total_subs = (uint64_t)g_opt.rooms * g_opt.subs;
    res.total_conns = res.total_subs + (g_opt.scenario == SC_FANOUT ? (uint64_t)g_opt.rooms * g_opt.pubs : 0u);
    raise_nofile(res.total_conns + 64u);

    struct worker *ws = xcalloc(g_opt.threads, sizeof *ws);
    for (unsigned i = 0; i < g_opt.threads; i++)
        worker_init(&ws[i], i, &g_opt);
    run(ws, g_opt.threads, &res);
    report(&res);
    int rc = res.st.connected ? 0 : 1;
    for (unsigned i = 0; i < g_opt.threads; i++)
        worker_free(&ws[i]);
    free(ws);
    free(res.hist);
    return rc;
}
