/* bus.c - the cross-instance bus over PostgreSQL LISTEN/NOTIFY (see bus.h).
 *
 * Threads: the bus thread owns the connection, the inbound queue and the
 * table of other instances. Other threads touch only the outbound queue
 * (qlock, through bus_emit under the hub lock, and bus_kick after it) and
 * read the status (slock). The bus thread never holds qlock or slock while
 * calling the hub, so the lock order hub -> qlock is the only one.
 */
#include "stoa/bus.h"
#include "stoa/jsontext.h"
#include "stoa/log.h"
#include "stoa/proto.h"
#include "stoa/util.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uthash.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define QUERY_TIMEOUT_MS 10000
#define HOUSEKEEPING_MS 10000
#define STOP_DRAIN_MS 1000
/* How long to wait for a snapshot asked of an instance before asking again. */
#define SYNC_RETRY_MS 2000

typedef struct qitem {
    struct qitem *next;
    size_t len;
    char text[];
} qitem_t;

/* A payload heard from another instance, waiting to be applied. */
typedef struct inbound {
    struct inbound *next;
    char origin[STOA_BUS_INSTANCE_LEN + 1];
    uint64_t seq;
    long long row;         /* stoa_bus_payloads id, 0 when inline */
    bool ready;            /* events known (false until fetched when in the table) */
    bool snap, bye;        /* it holds a "snap", a "bye" */
    char *text;            /* the payload text, which the events point into */
    stoa_hub_bus_event_t *ev;
    size_t nev, capev;
} inbound_t;

/* Another instance. */
typedef struct origin {
    char id[STOA_BUS_INSTANCE_LEN + 1];
    uint64_t last_seq;
    int64_t heard_ms;
    int64_t sync_asked_ms;  /* 0: not waiting for its snapshot */
    bool known;             /* last_seq means something */
    UT_hash_handle hh;
} origin_t;

typedef enum { Q_NONE, Q_NOTIFY, Q_BIG, Q_FETCH, Q_TOUCH, Q_CLEAN } query_t;

struct stoa_bus {
    const stoa_config_t *cfg;
    stoa_hub_t *hub;
    char instance[STOA_BUS_INSTANCE_LEN + 1];
    pthread_t thread;
    int wakefd;
    atomic_bool stopping;
    atomic_bool connected;
    /* outbound queue (qlock) */
    pthread_mutex_t qlock;
    qitem_t *qhead, *qtail;
    size_t qbytes;
    size_t dropped;         /* events dropped since the last snapshot */
    bool overflow;          /* a snapshot must replace what was dropped */
    /* status (slock): the table of other instances */
    pthread_mutex_t slock;
    origin_t *origins;
    /* bus thread only */
    stoa_db_t *db;          /* NULL while disconnected */
    PGconn *conn;
    query_t inflight;
    int64_t inflight_since;
    uint64_t seq;           /* last seq sent */
    int64_t last_sent_ms, last_touch_ms, last_clean_ms, next_connect_ms;
    int backoff;
    inbound_t *ihead, *itail;
    char *batch;            /* the payloads being built or sent, each NUL-terminated */
    size_t batchcap;
    char **notify_sql;      /* [k]: the statement sending k payloads, made when first needed */
    int backend_pid;        /* of the connection: notifications from it are our own */
    json_tokener *tok;      /* for the events that are parsed */
    atomic_bool kick_needed;   /* an event went into an empty queue (or one was dropped) */
};

static const stoa_hub_bus_ops_t bus_ops;

/* ---- the outbound queue (any thread) ---- */

static void free_items(qitem_t *q)
{
    while (q) {
        qitem_t *next = q->next;
        free(q);
        q = next;
    }
}

static void bus_emit(void *ud, const char *text, size_t len)
{
    stoa_bus_t *bus = ud;
    qitem_t *it;
    pthread_mutex_lock(&bus->qlock);
    /* A lone event is taken whatever its size (a snapshot of many sessions
     * may exceed the bound: refusing it would only make another). */
    if (!atomic_load(&bus->connected) || (bus->qhead && bus->qbytes + len > (size_t)bus->cfg->bus_queue_bytes)) {
        /* Nothing queued can go out in order now: keep none of it, and
         * send a snapshot when possible. */
        for (it = bus->qhead; it; it = it->next)
            bus->dropped++;
        free_items(bus->qhead);
        bus->qhead = bus->qtail = NULL;
        bus->qbytes = 0;
        bus->dropped++;
        bus->overflow = true;
        atomic_store(&bus->kick_needed, true);
        pthread_mutex_unlock(&bus->qlock);
        return;
    }
    it = stoa_xmalloc(sizeof *it + len + 1);
    it->next = NULL;
    it->len = len;
    memcpy(it->text, text, len);
    it->text[len] = '\0';
    if (bus->qtail) {
        bus->qtail->next = it;
    } else {
        /* The thread takes from a non-empty queue whenever no statement is
         * in flight, and looks again when one finishes: only an event
         * into an empty queue needs to wake it (one eventfd write per
         * batch rather than per event). */
        bus->qhead = it;
        atomic_store(&bus->kick_needed, true);
    }
    bus->qtail = it;
    bus->qbytes += len;
    pthread_mutex_unlock(&bus->qlock);
}

static void wake(stoa_bus_t *bus)
{
    uint64_t one = 1;
    if (write(bus->wakefd, &one, sizeof one) < 0) {
        /* EAGAIN: the counter is already non-zero, the thread will wake */
    }
}

static void bus_kick(void *ud)
{
    stoa_bus_t *bus = ud;
    if (atomic_exchange(&bus->kick_needed, false))
        wake(bus);
}

static const stoa_hub_bus_ops_t bus_ops = {.emit = bus_emit, .kick = bus_kick};

/* ---- helpers (bus thread) ---- */

static void printable(const char *s, char *out, size_t outlen)
{
    size_t i;
    for (i = 0; s[i] && i + 1 < outlen; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : ' ';
    while (i > 0 && out[i - 1] == ' ')
        i--;
    out[i] = '\0';
}

static origin_t *origin_get(stoa_bus_t *bus, const char *id, bool create)
{
    origin_t *o;
    HASH_FIND_STR(bus->origins, id, o);
    if (!o && create) {
        o = stoa_xcalloc(1, sizeof *o);
        snprintf(o->id, sizeof o->id, "%s", id);
        pthread_mutex_lock(&bus->slock);
        HASH_ADD_STR(bus->origins, id, o);
        pthread_mutex_unlock(&bus->slock);
        STOA_INFO("bus: instance %s joined", id);
    }
    return o;
}

static void origin_forget(stoa_bus_t *bus, origin_t *o)
{
    pthread_mutex_lock(&bus->slock);
    HASH_DEL(bus->origins, o);
    pthread_mutex_unlock(&bus->slock);
    free(o);
}

static void ask_sync(stoa_bus_t *bus, origin_t *o, int64_t now)
{
    if (o->sync_asked_ms && now - o->sync_asked_ms < SYNC_RETRY_MS)
        return;
    o->sync_asked_ms = now;
    stoa_hub_bus_sync(bus->hub, o->id);
}

/* Free a payload not (or no longer) handed to the hub. */
static void free_inbound(inbound_t *in)
{
    for (size_t i = 0; i < in->nev; i++)
        json_object_put(in->ev[i].obj);
    free(in->ev);
    free(in->text);
    free(in);
}

static void clear_inbound(stoa_bus_t *bus)
{
    while (bus->ihead) {
        inbound_t *in = bus->ihead;
        bus->ihead = in->next;
        free_inbound(in);
    }
    bus->itail = NULL;
}

static void disconnect(stoa_bus_t *bus, const char *why)
{
    qitem_t *q;
    if (!bus->db)
        return;
    STOA_WARN("bus: %s; local rooms keep working, reconnecting", why);
    stoa_db_close(bus->db);
    bus->db = NULL;
    bus->conn = NULL;
    bus->inflight = Q_NONE;
    clear_inbound(bus);
    pthread_mutex_lock(&bus->qlock);
    atomic_store(&bus->connected, false);
    q = bus->qhead;
    bus->qhead = bus->qtail = NULL;
    bus->qbytes = 0;
    bus->overflow = true;
    pthread_mutex_unlock(&bus->qlock);
    free_items(q);
    bus->backoff = BACKOFF_MIN_MS;
    bus->next_connect_ms = stoa_now_ms() + (int64_t)stoa_random_below((uint32_t)bus->backoff + 1);
}

/* ---- statements ---- */

static bool send_query(stoa_bus_t *bus, query_t kind, const char *sql, int n, const char *const *values,
                       const int *lengths, const int *formats, const unsigned *types, int result_format)
{
    if (!PQsendQueryParams(bus->conn, sql, n, types, values, lengths, formats, result_format)) {
        char msg[256];
        printable(PQerrorMessage(bus->conn), msg, sizeof msg);
        disconnect(bus, msg);
        return false;
    }
    bus->inflight = kind;
    bus->inflight_since = stoa_now_ms();
    return true;
}

/* The statement sending k payloads, prepared on each connection: no parse
 * or plan per statement. */
#define NOTIFY_STMT "stoa_bus_notify_%d"

static const char NOTIFY_SQL[] = "SELECT pg_notify('" STOA_BUS_CHANNEL "', $1)";
static const char BIG_SQL[] =
    "WITH p AS (INSERT INTO stoa_bus_payloads (origin, payload) VALUES ($1, $2) RETURNING id) "
    "SELECT pg_notify('" STOA_BUS_CHANNEL "', '{\"o\":\"' || $1 || '\",\"s\":' || $3 || ',\"x\":' || p.id || '}') "
    "FROM p";
static const char FETCH_SQL[] = "SELECT payload FROM stoa_bus_payloads WHERE id = $1";
static const char TOUCH_SQL[] = "UPDATE stoa_instances SET last_seen = now() WHERE id = $1";
static const char CLEAN_SQL[] =
    "WITH gone AS (DELETE FROM stoa_instances WHERE last_seen < now() - interval '1 day') "
    "DELETE FROM stoa_bus_payloads WHERE created_at < now() - make_interval(secs => $1)";
static const char REGISTER_SQL[] =
    "INSERT INTO stoa_instances (id, info) VALUES ($1, $2::jsonb) "
    "ON CONFLICT (id) DO UPDATE SET last_seen = now(), info = EXCLUDED.info";

static void batch_reserve(stoa_bus_t *bus, size_t need)
{
    if (need > bus->batchcap) {
        bus->batchcap = need * 2;
        bus->batch = stoa_xrealloc(bus->batch, bus->batchcap);
    }
}

/* bus_notify_batch, within the range config.c allows. */
static int max_payloads(const stoa_bus_t *bus)
{
    int n = bus->cfg->bus_notify_batch;
    return n < 1 ? 1 : n > 64 ? 64 : n;
}

/* SELECT pg_notify('stoa_bus', $1), ..., pg_notify('stoa_bus', $k): k
 * payloads in one statement, so in one transaction, queued in that order
 * (a target list is evaluated left to right). */
static const char *notify_sql(stoa_bus_t *bus, int k)
{
    if (!bus->notify_sql)
        bus->notify_sql = stoa_xcalloc(64 + 1, sizeof *bus->notify_sql);
    if (!bus->notify_sql[k]) {
        size_t cap = 16 + (size_t)k * 40, len;
        char *sql = stoa_xmalloc(cap);
        len = (size_t)snprintf(sql, cap, "SELECT ");
        for (int i = 1; i <= k; i++)
            len += (size_t)snprintf(sql + len, cap - len, "%spg_notify('" STOA_BUS_CHANNEL "', $%d)", i > 1 ? ", " : "",
                                    i);
        bus->notify_sql[k] = sql;
    }
    return bus->notify_sql[k];
}

/* Write {"o":"<instance>","s":<seq>,"e":[ at out (room for 64 bytes);
 * returns its length. */
static size_t payload_head(const stoa_bus_t *bus, uint64_t seq, char *out)
{
    static const char O[] = "{\"o\":\"", S[] = "\",\"s\":", E[] = ",\"e\":[";
    char digits[24], *d = digits + sizeof digits;
    size_t n = 0;
    do {
        *--d = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq);
    memcpy(out, O, sizeof O - 1);
    n += sizeof O - 1;
    memcpy(out + n, bus->instance, STOA_BUS_INSTANCE_LEN);
    n += STOA_BUS_INSTANCE_LEN;
    memcpy(out + n, S, sizeof S - 1);
    n += sizeof S - 1;
    memcpy(out + n, d, (size_t)(digits + sizeof digits - d));
    n += (size_t)(digits + sizeof digits - d);
    memcpy(out + n, E, sizeof E - 1);
    return n + sizeof E - 1;
}

/* The split of queued events into payloads: whether an event of len bytes
 * starts a new payload after one of *cur bytes (head: a payload's header
 * and closing bytes at most). Updates *cur. */
static bool starts_payload(size_t *cur, size_t len, size_t head)
{
    if (*cur && *cur + 1 + len <= STOA_BUS_PAYLOAD_MAX) {
        *cur += 1 + len;
        return false;
    }
    *cur = head + len;
    return true;
}

/* Pack queued events into payloads (up to bus_notify_batch of them, one
 * statement) and send them; or an event too large for a payload alone,
 * through the table; or, with nothing queued, a heartbeat when one is due.
 * Returns true when a statement was sent. */
static bool send_batch(stoa_bus_t *bus, int64_t now)
{
    char head[64], seqtext[24];
    size_t hmax, len, cur = 0;
    qitem_t *take = NULL, *last = NULL, *it;
    bool overflow, big = false;
    size_t dropped;
    int npay = 0, maxpay = max_payloads(bus);

    pthread_mutex_lock(&bus->qlock);
    if (!bus->qhead && !bus->overflow && now - bus->last_sent_ms < bus->cfg->bus_heartbeat_ms) {
        pthread_mutex_unlock(&bus->qlock);
        return false;   /* nothing to say (the usual case when idle) */
    }
    overflow = bus->overflow;
    dropped = bus->dropped;
    bus->overflow = false;
    bus->dropped = 0;
    pthread_mutex_unlock(&bus->qlock);
    if (overflow) {
        if (dropped)
            STOA_WARN("bus: %zu event(s) could not be sent in order; sending a full snapshot instead", dropped);
        stoa_hub_bus_snapshot(bus->hub);   /* appends to the queue */
    }

    /* The longest header of this batch (its last seq has the most digits),
     * plus "]}": every payload's split is decided with it. */
    hmax = payload_head(bus, bus->seq + (uint64_t)maxpay, head) + 2;
    pthread_mutex_lock(&bus->qlock);
    len = 0;
    if (bus->qhead && hmax + bus->qhead->len > STOA_BUS_PAYLOAD_MAX) {
        take = last = bus->qhead;   /* too large for NOTIFY: alone, through the table */
        big = true;
        npay = 1;
        len = hmax + take->len;
    } else {
        for (it = bus->qhead; it && hmax + it->len <= STOA_BUS_PAYLOAD_MAX; it = it->next) {
            if (starts_payload(&cur, it->len, hmax) && ++npay > maxpay) {
                npay = maxpay;
                break;
            }
            len += it->len + 1;
            last = it;
        }
        if (last)
            take = bus->qhead;
    }
    if (take) {
        bus->qhead = last->next;
        if (!bus->qhead)
            bus->qtail = NULL;
        last->next = NULL;
        for (it = take; it; it = it->next)
            bus->qbytes -= it->len;
    }
    pthread_mutex_unlock(&bus->qlock);

    if (!take) {
        if (now - bus->last_sent_ms < bus->cfg->bus_heartbeat_ms)
            return false;
        npay = 1;   /* the heartbeat: an empty payload */
    }
    {
        const char *values[64];   /* bus_notify_batch is at most 64 */
        char *p;
        size_t at = 0;
        int k = 0;

        batch_reserve(bus, len + (size_t)npay * (hmax + 1) + 1);
        p = bus->batch;
        cur = 0;
#define OPEN_PAYLOAD()                                                                                        \
    do {                                                                                                      \
        values[k++] = p + at;                                                                                 \
        at += payload_head(bus, bus->seq + (uint64_t)k, p + at);                                             \
    } while (0)
#define CLOSE_PAYLOAD()                                                                                       \
    do {                                                                                                      \
        p[at++] = ']';                                                                                        \
        p[at++] = '}';                                                                                        \
        p[at++] = '\0';                                                                                       \
    } while (0)
        for (it = take; it; it = it->next) {
            if (starts_payload(&cur, it->len, hmax)) {
                if (k > 0)
                    CLOSE_PAYLOAD();
                OPEN_PAYLOAD();
            } else {
                p[at++] = ',';
            }
            memcpy(p + at, it->text, it->len);
            at += it->len;
        }
        if (k == 0)
            OPEN_PAYLOAD();   /* the heartbeat */
        CLOSE_PAYLOAD();
#undef OPEN_PAYLOAD
#undef CLOSE_PAYLOAD
        free_items(take);
        if (k != npay) {   /* cannot happen: both passes split alike */
            STOA_ERROR("bus: %d payload(s) packed, %d counted", k, npay);
        }
        bus->seq += (uint64_t)k;
        bus->last_sent_ms = now;
        if (big) {
            const char *bv[3] = {bus->instance, values[0], seqtext};
            int lengths[3] = {0, (int)strlen(values[0]), 0}, formats[3] = {0, 1, 0};
            const unsigned types[3] = {25, 17, 25};   /* text, bytea, text */
            snprintf(seqtext, sizeof seqtext, "%" PRIu64, bus->seq);
            return send_query(bus, Q_BIG, BIG_SQL, 3, bv, lengths, formats, types, 0);
        }
        {
            char name[32];
            snprintf(name, sizeof name, NOTIFY_STMT, k);
            if (!PQsendQueryPrepared(bus->conn, name, k, values, NULL, NULL, 0)) {
                char msg[256];
                printable(PQerrorMessage(bus->conn), msg, sizeof msg);
                disconnect(bus, msg);
                return false;
            }
            bus->inflight = Q_NOTIFY;
            bus->inflight_since = stoa_now_ms();
            return true;
        }
    }
}

static bool send_fetch(stoa_bus_t *bus)
{
    char id[24];
    const char *values[1] = {id};
    snprintf(id, sizeof id, "%lld", bus->ihead->row);
    return send_query(bus, Q_FETCH, FETCH_SQL, 1, values, NULL, NULL, NULL, 1);
}

/* ---- inbound ----
 *
 * A payload is split without building a json-c tree for it: its envelope
 * and events are scanned (and checked to be well-formed JSON), each
 * ephemeral message in the form the hub emits ({"t":"eph","p":...,
 * "room":...,"data":...}) is handed to the hub as text, and only the other
 * events are parsed. */

#define MAX_DEPTH (STOA_PROTO_MAX_DEPTH + 8)

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Whether the STOA_BUS_INSTANCE_LEN bytes at p are letters and digits. */
static bool plain_id(const char *p)
{
    for (int i = 0; i < STOA_BUS_INSTANCE_LEN; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') || is_digit(p[i])))
            return false;
    return true;
}

/* Whether p starts with the literal lit (a string constant). */
#define LIT(p, end, lit) ((size_t)((end) - (p)) >= sizeof(lit) - 1 && memcmp((p), (lit), sizeof(lit) - 1) == 0)

/* The tail both text forms share, at p just inside the room's quotes:
 * <room>","data":<value>} with a room name that needs no escaping. Fills
 * ev's room and data; returns the end of the event, or NULL. */
static const char *room_data(const char *p, const char *end, stoa_hub_bus_event_t *ev)
{
    static const char P[] = ",\"data\":";
    const char *q;
    ev->room = p;
    for (; p < end && *p != '"'; p++)
        if (*p == '\\' || (unsigned char)*p < 0x20)
            return NULL;
    if (p >= end)
        return NULL;
    ev->room_len = (size_t)(p - ev->room);
    p++;
    if (!LIT(p, end, P))
        return NULL;
    p += sizeof P - 1;
    q = stoa_json_skip(p, end, MAX_DEPTH);
    if (!q || q >= end || *q != '}')
        return NULL;
    ev->obj = NULL;
    ev->data = p;
    ev->data_len = (size_t)(q - p);
    return q + 1;
}

/* An ephemeral message at p in the form the hub emits,
 * {"t":"eph","p":"<peer>","room":"<room>","data":<value>}, with a room
 * name that needs no escaping: fills ev and returns the end of the event;
 * NULL otherwise (the event is then parsed). */
static const char *eph_text(const char *p, const char *end, stoa_hub_bus_event_t *ev)
{
    static const char P1[] = "{\"t\":\"eph\",\"p\":\"", P2[] = "\",\"room\":\"";
    if (!LIT(p, end, P1))
        return NULL;
    p += sizeof P1 - 1;
    if (end - p < STOA_BUS_INSTANCE_LEN)
        return NULL;
    if (!plain_id(p))   /* a peer id: made like an instance id */
        return NULL;
    ev->peer = p;
    p += STOA_BUS_INSTANCE_LEN;
    if (!LIT(p, end, P2))
        return NULL;
    p += sizeof P2 - 1;
    return room_data(p, end, ev);
}

/* A publish at p in the form the hub emits,
 * {"t":"pub","room":"<room>","data":<value>}, as eph_text does. */
static const char *pub_text(const char *p, const char *end, stoa_hub_bus_event_t *ev)
{
    static const char P1[] = "{\"t\":\"pub\",\"room\":\"";
    if (!LIT(p, end, P1))
        return NULL;
    p += sizeof P1 - 1;
    ev->peer = NULL;
    return room_data(p, end, ev);
}

static json_object *parse(stoa_bus_t *bus, const char *text, size_t len)
{
    json_object *o;
    json_tokener_reset(bus->tok);
    o = json_tokener_parse_ex(bus->tok, text, (int)len);
    if (json_tokener_get_error(bus->tok) != json_tokener_success || json_tokener_get_parse_end(bus->tok) != len) {
        json_object_put(o);
        o = NULL;
    }
    return o;
}

static void add_event(inbound_t *in, const stoa_hub_bus_event_t *ev)
{
    if (in->nev == in->capev) {
        in->capev = in->capev ? in->capev * 2 : 64;
        in->ev = stoa_xrealloc(in->ev, in->capev * sizeof *in->ev);
    }
    in->ev[in->nev++] = *ev;
    if (ev->obj) {
        json_object *t;
        if (json_object_object_get_ex(ev->obj, "t", &t) && json_object_is_type(t, json_type_string)) {
            const char *type = json_object_get_string(t);
            in->snap |= strcmp(type, "snap") == 0;
            in->bye |= strcmp(type, "bye") == 0;
        }
    }
}

/* The events of a JSON array's contents [p, end) (after "[", up to "]"). */
static bool split_events(stoa_bus_t *bus, inbound_t *in, const char *p, const char *end)
{
    while (p < end) {
        stoa_hub_bus_event_t ev = {0};
        const char *q = eph_text(p, end, &ev);
        if (!q)
            q = pub_text(p, end, &ev);
        if (!q) {
            if (!(q = stoa_json_skip(p, end, MAX_DEPTH)) || !(ev.obj = parse(bus, p, (size_t)(q - p))))
                return false;
            if (!json_object_is_type(ev.obj, json_type_object)) {
                json_object_put(ev.obj);
                return false;
            }
        }
        add_event(in, &ev);
        p = stoa_json_ws(q, end);
        if (p < end && *p++ != ',')
            return false;
        if (p == end && p[-1] == ',')
            return false;
    }
    return true;
}

/* A payload {"o":"<instance>","s":<seq>,"e":[...]} or {"o","s","x":<row>}
 * in text (owned by in): fills in. The form every instance writes is
 * scanned; anything else is parsed with json-c. */
static bool decode(stoa_bus_t *bus, inbound_t *in, const char *text, size_t len)
{
    static const char O[] = "{\"o\":\"", S[] = "\",\"s\":", E[] = ",\"e\":[", X[] = ",\"x\":";
    const char *p = text, *end = text + len, *q;
    json_object *o, *v, *e;

    if (LIT(p, end, O) && len > sizeof O - 1 + STOA_BUS_INSTANCE_LEN && plain_id(p + sizeof O - 1)) {
        p += sizeof O - 1;
        memcpy(in->origin, p, STOA_BUS_INSTANCE_LEN);
        in->origin[STOA_BUS_INSTANCE_LEN] = '\0';
        p += STOA_BUS_INSTANCE_LEN;
        if (LIT(p, end, S) && (q = stoa_json_digits(p + sizeof S - 1, end)) && q - p < (ptrdiff_t)(sizeof S - 1 + 20)) {
            in->seq = strtoull(p + sizeof S - 1, NULL, 10);
            p = q;
            if (LIT(p, end, E) && len >= 2 && end[-2] == ']' && end[-1] == '}' && p + sizeof E - 1 <= end - 2) {
                in->ready = true;
                if (split_events(bus, in, p + sizeof E - 1, end - 2))
                    return true;
                /* Not as expected after all: start again with json-c. */
                for (size_t i = 0; i < in->nev; i++)
                    json_object_put(in->ev[i].obj);
                in->nev = 0;
                in->ready = in->snap = in->bye = false;
            }
            if (LIT(p, end, X) && (q = stoa_json_digits(p + sizeof X - 1, end)) && q == end - 1 && *q == '}') {
                in->row = strtoll(p + sizeof X - 1, NULL, 10);
                return in->row > 0;
            }
        }
    }
    /* not in the usual form: parse it all */
    in->origin[0] = '\0';
    in->seq = 0;
    in->row = 0;
    if (!(o = parse(bus, text, len)) || !json_object_object_get_ex(o, "o", &v) ||
        !json_object_is_type(v, json_type_string) || strlen(json_object_get_string(v)) != STOA_BUS_INSTANCE_LEN) {
        json_object_put(o);
        return false;
    }
    memcpy(in->origin, json_object_get_string(v), STOA_BUS_INSTANCE_LEN + 1);
    if (!json_object_object_get_ex(o, "s", &v)) {
        json_object_put(o);
        return false;
    }
    in->seq = (uint64_t)json_object_get_int64(v);
    if (json_object_object_get_ex(o, "x", &v)) {
        in->row = json_object_get_int64(v);
    } else if (json_object_object_get_ex(o, "e", &e) && json_object_is_type(e, json_type_array)) {
        in->ready = true;
        for (size_t i = 0; i < json_object_array_length(e); i++) {
            stoa_hub_bus_event_t ev = {0};
            ev.obj = json_object_array_get_idx(e, i);
            if (!json_object_is_type(ev.obj, json_type_object))
                continue;
            ev.obj = json_object_get(ev.obj);
            add_event(in, &ev);
        }
    } else {
        json_object_put(o);
        return false;
    }
    /* Nothing else holds this tree yet: dropping it leaves the events
     * owned by in alone. */
    json_object_put(o);
    return true;
}

/* A notification: queue it (own echoes and garbage are dropped). */
static void heard(stoa_bus_t *bus, const PGnotify *n, int64_t now)
{
    size_t len;
    inbound_t *in;
    origin_t *or;

    if (n->be_pid == bus->backend_pid)
        return;   /* our own: nothing to read */
    len = strlen(n->extra);
    in = stoa_xcalloc(1, sizeof *in);
    in->text = stoa_xmalloc(len + 1);
    memcpy(in->text, n->extra, len + 1);
    if (!decode(bus, in, in->text, len)) {
        STOA_WARN("bus: ignored a malformed notification (%zu bytes)", len);
        free_inbound(in);
        return;
    }
    if (strcmp(in->origin, bus->instance) == 0) {
        free_inbound(in);
        return;
    }
    or = origin_get(bus, in->origin, true);
    or->heard_ms = now;
    if (bus->itail)
        bus->itail->next = in;
    else
        bus->ihead = in;
    bus->itail = in;
}

/* Apply queued payloads in order, up to one still waiting for its row. */
static void apply_inbound(stoa_bus_t *bus, int64_t now)
{
    while (bus->ihead && bus->ihead->ready) {
        inbound_t *in = bus->ihead;
        origin_t *o = origin_get(bus, in->origin, true);
        bool snap = in->snap, bye = in->bye;

        bus->ihead = in->next;
        if (!bus->ihead)
            bus->itail = NULL;
        if (o->known && in->seq <= o->last_seq) {
            free_inbound(in);   /* seen already */
            continue;
        }
        if (!snap && (!o->known || in->seq != o->last_seq + 1)) {
            if (o->known)
                STOA_INFO("bus: missed payloads %" PRIu64 "..%" PRIu64 " of instance %s; asking for a snapshot",
                          o->last_seq + 1, in->seq - 1, o->id);
            ask_sync(bus, o, now);
        }
        o->known = true;
        o->last_seq = in->seq;
        if (snap)
            o->sync_asked_ms = 0;
        json_object *fwd;
        if (stoa_hub_remote_apply_events(bus->hub, o->id, in->ev, in->nev, &fwd))
            ask_sync(bus, o, now);
        for (size_t i = 0; fwd && i < json_object_array_length(fwd); i++)
            stoa_hub_forwarded(bus->hub, json_object_array_get_idx(fwd, i));
        json_object_put(fwd);
        in->nev = 0;   /* the hub dropped their references */
        free_inbound(in);
        if (bye) {
            STOA_INFO("bus: instance %s stopped", o->id);
            origin_forget(bus, o);
        }
    }
}

/* ---- results ---- */

static void finish_query(stoa_bus_t *bus, int64_t now)
{
    query_t kind = bus->inflight;
    PGresult *res;
    bool ok = true;
    char msg[256] = "";

    while ((res = PQgetResult(bus->conn))) {
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            ok = false;
            printable(PQresultErrorMessage(res), msg, sizeof msg);
        } else if (kind == Q_FETCH && bus->ihead && !bus->ihead->ready) {
            inbound_t *in = bus->ihead, row = {0};
            bool ok_row = false;
            if (PQntuples(res) == 1) {
                size_t len = (size_t)PQgetlength(res, 0, 0);
                row.text = stoa_xmalloc(len + 1);
                memcpy(row.text, PQgetvalue(res, 0, 0), len);
                row.text[len] = '\0';
                ok_row = decode(bus, &row, row.text, len) && row.ready;
            }
            if (ok_row) {
                free(in->text);
                in->text = row.text;
                in->ev = row.ev;
                in->nev = row.nev;
                in->capev = row.capev;
                in->snap = row.snap;
                in->bye = row.bye;
                in->ready = true;
            } else {
                /* Deleted already (older than bus_payload_keep_s) or
                 * unreadable: treat it as missed. */
                origin_t *or = origin_get(bus, in->origin, true);
                for (size_t i = 0; i < row.nev; i++)
                    json_object_put(row.ev[i].obj);
                free(row.ev);
                free(row.text);
                STOA_WARN("bus: payload row %lld of instance %s is gone; asking for a snapshot", in->row, in->origin);
                in->ready = true;
                ask_sync(bus, or, now);
            }
        }
        PQclear(res);
    }
    bus->inflight = Q_NONE;
    if (PQstatus(bus->conn) == CONNECTION_BAD) {
        disconnect(bus, "lost the database connection");
        return;
    }
    if (!ok) {
        /* A payload that failed to go out is lost: the others see the seq
         * gap and ask for a snapshot. */
        STOA_WARN("bus: a statement failed: %s", msg);
        if (kind == Q_FETCH && bus->ihead && !bus->ihead->ready) {
            bus->ihead->ready = true;   /* with no events */
            ask_sync(bus, origin_get(bus, bus->ihead->origin, true), now);
        }
    }
}

/* ---- connection ---- */

/* Whether a blocking statement succeeded (res is cleared); its error in err. */
static bool command_ok(PGresult *res, char *err, size_t errlen)
{
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        printable(PQresultErrorMessage(res), err, errlen);
    PQclear(res);
    return ok;
}

static bool setup(stoa_bus_t *bus, stoa_db_t *db, char *err, size_t errlen)
{
    PGconn *c = stoa_db_pgconn(db);
    char info[256], host[128] = "";
    const char *values[2] = {bus->instance, info};

    gethostname(host, sizeof host - 1);
    for (char *p = host; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '_';
    snprintf(info, sizeof info, "{\"version\":\"%s\",\"host\":\"%s\",\"listen\":\"%s\",\"pid\":%ld}", STOA_VERSION,
             host, bus->cfg->listen, (long)getpid());
    if (!command_ok(PQexec(c, "LISTEN " STOA_BUS_CHANNEL), err, errlen) ||
        !command_ok(PQexecParams(c, REGISTER_SQL, 2, NULL, values, NULL, NULL, 0), err, errlen))
        return false;
    for (int k = 1; k <= max_payloads(bus); k++) {
        char name[32];
        snprintf(name, sizeof name, NOTIFY_STMT, k);
        if (!command_ok(PQprepare(c, name, notify_sql(bus, k), k, NULL), err, errlen))
            return false;
    }
    if (PQsetnonblocking(c, 1) != 0) {
        snprintf(err, errlen, "cannot make the connection non-blocking");
        return false;
    }
    bus->db = db;
    bus->conn = c;
    bus->backend_pid = PQbackendPID(c);
    bus->inflight = Q_NONE;
    atomic_store(&bus->connected, true);
    return true;
}

static void try_connect(stoa_bus_t *bus, int64_t now)
{
    char err[512];
    stoa_db_t *db = stoa_db_connect_as(bus->cfg->database_url, "stoa-bus", err, sizeof err);
    if (db && setup(bus, db, err, sizeof err)) {
        STOA_INFO("bus: connected again as instance %s; exchanging snapshots", bus->instance);
        bus->backoff = BACKOFF_MIN_MS;
        /* Tell the others who is here, and ask them the same. */
        pthread_mutex_lock(&bus->qlock);
        bus->overflow = true;
        pthread_mutex_unlock(&bus->qlock);
        stoa_hub_bus_sync(bus->hub, "*");
        return;
    }
    stoa_db_close(db);
    STOA_DEBUG("bus: %s; retrying", err);
    /* full jitter: anywhere in [0, backoff] */
    bus->next_connect_ms = now + (int64_t)stoa_random_below((uint32_t)bus->backoff + 1);
    bus->backoff = bus->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : bus->backoff * 2;
}

/* ---- the loop ---- */

static void check_dead(stoa_bus_t *bus, int64_t now)
{
    origin_t *o, *tmp;
    HASH_ITER(hh, bus->origins, o, tmp) {
        if (now - o->heard_ms > bus->cfg->bus_dead_ms) {
            STOA_WARN("bus: instance %s silent for %lld ms: taking it as dead", o->id, (long long)(now - o->heard_ms));
            stoa_hub_remote_drop(bus->hub, o->id);
            origin_forget(bus, o);
        }
    }
}

/* Start the next statement when none is in flight. */
static void next_statement(stoa_bus_t *bus, int64_t now)
{
    char keep[24];
    const char *values[1];
    if (!bus->conn || bus->inflight != Q_NONE)
        return;
    if (bus->ihead && !bus->ihead->ready) {
        send_fetch(bus);
        return;
    }
    if (send_batch(bus, now))
        return;
    if (!bus->conn)
        return;
    if (now - bus->last_touch_ms >= bus->cfg->bus_heartbeat_ms * 5) {
        values[0] = bus->instance;
        bus->last_touch_ms = now;
        send_query(bus, Q_TOUCH, TOUCH_SQL, 1, values, NULL, NULL, NULL, 0);
    } else if (now - bus->last_clean_ms >= HOUSEKEEPING_MS) {
        snprintf(keep, sizeof keep, "%d", bus->cfg->bus_payload_keep_s);
        values[0] = keep;
        bus->last_clean_ms = now;
        send_query(bus, Q_CLEAN, CLEAN_SQL, 1, values, NULL, NULL, NULL, 0);
    }
}

static void service(stoa_bus_t *bus, int64_t now)
{
    PGnotify *n;
    if (!PQconsumeInput(bus->conn)) {
        disconnect(bus, "lost the database connection");
        return;
    }
    if (bus->inflight != Q_NONE && !PQisBusy(bus->conn))
        finish_query(bus, now);
    if (!bus->conn)
        return;
    while ((n = PQnotifies(bus->conn))) {
        heard(bus, n, now);
        PQfreemem(n);
    }
    apply_inbound(bus, now);
}

static void *run(void *arg)
{
    stoa_bus_t *bus = arg;
    int64_t stop_deadline = 0;

    for (;;) {
        int64_t now = stoa_now_ms();
        struct pollfd p[2] = {{.fd = bus->wakefd, .events = POLLIN}, {.fd = -1}};
        int timeout = 250, nfds = 1;
        uint64_t count;

        if (atomic_load(&bus->stopping)) {
            bool empty;
            if (!stop_deadline)
                stop_deadline = now + STOP_DRAIN_MS;
            pthread_mutex_lock(&bus->qlock);
            empty = !bus->qhead;
            pthread_mutex_unlock(&bus->qlock);
            if (!bus->conn || now >= stop_deadline || (empty && bus->inflight == Q_NONE))
                break;
        }
        if (!bus->conn && now >= bus->next_connect_ms)
            try_connect(bus, now);
        if (bus->conn) {
            service(bus, now);
            next_statement(bus, now);
        }
        if (bus->conn && bus->inflight != Q_NONE && now - bus->inflight_since > QUERY_TIMEOUT_MS)
            disconnect(bus, "a statement took over 10 s");
        if (bus->conn) {
            int f = PQflush(bus->conn);
            if (f < 0) {
                disconnect(bus, "lost the database connection");
            } else {
                p[1].fd = PQsocket(bus->conn);
                p[1].events = POLLIN | (f == 1 ? POLLOUT : 0);
                nfds = 2;
            }
        }
        check_dead(bus, now);
        if (!bus->conn && bus->next_connect_ms - now < timeout)
            timeout = bus->next_connect_ms > now ? (int)(bus->next_connect_ms - now) : 0;
        if (bus->conn && bus->inflight == Q_NONE) {
            int64_t hb = bus->last_sent_ms + bus->cfg->bus_heartbeat_ms - now;
            if (hb < timeout)
                timeout = hb > 0 ? (int)hb : 0;
        }
        if (poll(p, (nfds_t)nfds, timeout) < 0 && errno != EINTR)
            STOA_WARN("bus: poll: %s", strerror(errno));
        if (p[0].revents & POLLIN) {
            if (read(bus->wakefd, &count, sizeof count) < 0) {
                /* EAGAIN: nothing to read */
            }
        }
    }
    /* Say goodbye so the others drop this instance's peers at once. */
    if (bus->conn && bus->inflight == Q_NONE) {
        char bye[96];
        const char *values[1] = {bye};
        PGresult *res;
        snprintf(bye, sizeof bye, "{\"o\":\"%s\",\"s\":%" PRIu64 ",\"e\":[{\"t\":\"bye\"}]}", bus->instance,
                 bus->seq + 1);
        PQsetnonblocking(bus->conn, 0);
        res = PQexecParams(bus->conn, NOTIFY_SQL, 1, NULL, values, NULL, NULL, 0);
        PQclear(res);
    }
    return NULL;
}

/* ---- public ---- */

stoa_bus_t *stoa_bus_start(const stoa_config_t *cfg, stoa_hub_t *hub, stoa_db_t *db, char *err, size_t errlen)
{
    stoa_bus_t *bus = stoa_xcalloc(1, sizeof *bus);
    char why[256];
    int rc;

    bus->cfg = cfg;
    bus->hub = hub;
    stoa_random_id(bus->instance, STOA_BUS_INSTANCE_LEN);
    atomic_init(&bus->stopping, false);
    atomic_init(&bus->connected, false);
    pthread_mutex_init(&bus->qlock, NULL);
    pthread_mutex_init(&bus->slock, NULL);
    bus->backoff = BACKOFF_MIN_MS;
    atomic_init(&bus->kick_needed, false);
    bus->tok = json_tokener_new_ex(MAX_DEPTH);
    if ((bus->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        snprintf(err, errlen, "bus: eventfd: %s", strerror(errno));
        goto fail;
    }
    if (!setup(bus, db, why, sizeof why)) {
        snprintf(err, errlen, "bus: cannot LISTEN or register the instance: %s", why);
        goto fail;
    }
    db = NULL;   /* the bus's now */
    stoa_hub_set_bus(hub, &bus_ops, bus, bus->instance);
    stoa_hub_bus_sync(hub, "*");   /* everyone's sessions, please */
    if ((rc = pthread_create(&bus->thread, NULL, run, bus)) != 0) {
        snprintf(err, errlen, "bus: cannot start its thread: %s", strerror(rc));
        stoa_hub_set_bus(hub, NULL, NULL, NULL);
        goto fail;
    }
    STOA_INFO("bus: instance %s listening on channel %s", bus->instance, STOA_BUS_CHANNEL);
    return bus;
fail:
    stoa_db_close(db);
    stoa_db_close(bus->db);
    if (bus->wakefd >= 0)
        close(bus->wakefd);
    pthread_mutex_destroy(&bus->qlock);
    pthread_mutex_destroy(&bus->slock);
    json_tokener_free(bus->tok);
    free(bus);
    return NULL;
}

void stoa_bus_stop(stoa_bus_t *bus)
{
    origin_t *o, *tmp;
    if (!bus)
        return;
    stoa_hub_set_bus(bus->hub, NULL, NULL, NULL);
    atomic_store(&bus->stopping, true);
    wake(bus);
    pthread_join(bus->thread, NULL);
    stoa_db_close(bus->db);
    close(bus->wakefd);
    free_items(bus->qhead);
    clear_inbound(bus);
    HASH_ITER(hh, bus->origins, o, tmp) {
        HASH_DEL(bus->origins, o);
        free(o);
    }
    free(bus->batch);
    if (bus->notify_sql)
        for (int k = 0; k <= 64; k++)
            free(bus->notify_sql[k]);
    free(bus->notify_sql);
    json_tokener_free(bus->tok);
    pthread_mutex_destroy(&bus->qlock);
    pthread_mutex_destroy(&bus->slock);
    free(bus);
}

bool stoa_bus_connected(stoa_bus_t *bus)
{
    return atomic_load(&bus->connected);
}

const char *stoa_bus_instance(const stoa_bus_t *bus)
{
    return bus->instance;
}

json_object *stoa_bus_status(stoa_bus_t *bus)
{
    json_object *o = json_object_new_object(), *list = json_object_new_array();
    json_object_object_add(o, "instance", json_object_new_string(bus->instance));
    json_object_object_add(o, "connected", json_object_new_boolean(atomic_load(&bus->connected)));
    pthread_mutex_lock(&bus->slock);
    for (origin_t *or = bus->origins; or; or = or->hh.next)
        json_object_array_add(list, json_object_new_string(or->id));
    pthread_mutex_unlock(&bus->slock);
    json_object_object_add(o, "instances", list);
    return o;
}
