/* bus.c - the cross-instance bus over PostgreSQL LISTEN/NOTIFY (see bus.h).
 *
 * Threads: the bus thread owns the connection, the inbound queue and the
 * table of other instances. Other threads touch only the outbound queue
 * (qlock, through bus_emit under the hub lock, and bus_kick after it) and
 * read the status (slock). The bus thread never holds qlock or slock while
 * calling the hub, so the lock order hub -> qlock is the only one.
 */
#include "stoa/bus.h"
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
    json_object *events;   /* NULL until fetched when in the table */
    long long row;         /* stoa_bus_payloads id, 0 when inline */
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
    char *batch;            /* the payload being built or sent */
    size_t batchcap;
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
        pthread_mutex_unlock(&bus->qlock);
        return;
    }
    it = stoa_xmalloc(sizeof *it + len + 1);
    it->next = NULL;
    it->len = len;
    memcpy(it->text, text, len);
    it->text[len] = '\0';
    if (bus->qtail)
        bus->qtail->next = it;
    else
        bus->qhead = it;
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
    wake(ud);
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

static void clear_inbound(stoa_bus_t *bus)
{
    while (bus->ihead) {
        inbound_t *in = bus->ihead;
        bus->ihead = in->next;
        json_object_put(in->events);
        free(in);
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

/* Pack queued events into one payload and send it (or, with nothing
 * queued, a heartbeat when one is due). Returns true when a statement was
 * sent. */
static bool send_batch(stoa_bus_t *bus, int64_t now)
{
    char head[64], seqtext[24];
    size_t hlen, len;
    qitem_t *take = NULL, *last = NULL, *it;
    bool overflow, big = false;
    size_t dropped;

    pthread_mutex_lock(&bus->qlock);
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

    hlen = (size_t)snprintf(head, sizeof head, "{\"o\":\"%s\",\"s\":%" PRIu64 ",\"e\":[", bus->instance,
                            bus->seq + 1);
    pthread_mutex_lock(&bus->qlock);
    len = hlen + 2;
    if (bus->qhead && len + bus->qhead->len > STOA_BUS_PAYLOAD_MAX) {
        take = last = bus->qhead;   /* too large for NOTIFY: alone, through the table */
        big = true;
        len += take->len;
    } else {
        for (it = bus->qhead; it && len + it->len + 1 <= STOA_BUS_PAYLOAD_MAX; it = it->next) {
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

    if (!take && now - bus->last_sent_ms < bus->cfg->bus_heartbeat_ms)
        return false;
    batch_reserve(bus, len + 1);
    memcpy(bus->batch, head, hlen);
    len = hlen;
    for (it = take; it; it = it->next) {
        if (it != take)
            bus->batch[len++] = ',';
        memcpy(bus->batch + len, it->text, it->len);
        len += it->len;
    }
    bus->batch[len++] = ']';
    bus->batch[len++] = '}';
    bus->batch[len] = '\0';
    free_items(take);
    bus->seq++;
    bus->last_sent_ms = now;
    if (big) {
        const char *values[3] = {bus->instance, bus->batch, seqtext};
        int lengths[3] = {0, (int)len, 0}, formats[3] = {0, 1, 0};
        const unsigned types[3] = {25, 17, 25};   /* text, bytea, text */
        snprintf(seqtext, sizeof seqtext, "%" PRIu64, bus->seq);
        return send_query(bus, Q_BIG, BIG_SQL, 3, values, lengths, formats, types, 0);
    } else {
        const char *values[1] = {bus->batch};
        return send_query(bus, Q_NOTIFY, NOTIFY_SQL, 1, values, NULL, NULL, NULL, 0);
    }
}

static bool send_fetch(stoa_bus_t *bus)
{
    char id[24];
    const char *values[1] = {id};
    snprintf(id, sizeof id, "%lld", bus->ihead->row);
    return send_query(bus, Q_FETCH, FETCH_SQL, 1, values, NULL, NULL, NULL, 1);
}

/* ---- inbound ---- */

static json_object *parse(const char *text, size_t len)
{
    json_tokener *tok = json_tokener_new_ex(STOA_PROTO_MAX_DEPTH + 8);
    json_object *o;
    if (!tok)
        return NULL;
    o = json_tokener_parse_ex(tok, text, (int)len);
    if (json_tokener_get_error(tok) != json_tokener_success || json_tokener_get_parse_end(tok) != len) {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

/* A notification: queue it (own echoes and garbage are dropped). */
static void heard(stoa_bus_t *bus, const char *text, int64_t now)
{
    json_object *o = parse(text, strlen(text)), *v;
    const char *origin;
    inbound_t *in;
    origin_t *or;

    if (!o || !json_object_object_get_ex(o, "o", &v) || !json_object_is_type(v, json_type_string))
        goto bad;
    origin = json_object_get_string(v);
    if (strcmp(origin, bus->instance) == 0) {
        json_object_put(o);
        return;
    }
    if (strlen(origin) != STOA_BUS_INSTANCE_LEN || !json_object_object_get_ex(o, "s", &v))
        goto bad;
    in = stoa_xcalloc(1, sizeof *in);
    memcpy(in->origin, origin, STOA_BUS_INSTANCE_LEN + 1);
    in->seq = (uint64_t)json_object_get_int64(v);
    if (json_object_object_get_ex(o, "x", &v)) {
        in->row = json_object_get_int64(v);
    } else if (json_object_object_get_ex(o, "e", &v) && json_object_is_type(v, json_type_array)) {
        in->events = json_object_get(v);
    } else {
        free(in);
        goto bad;
    }
    json_object_put(o);
    or = origin_get(bus, in->origin, true);
    or->heard_ms = now;
    if (bus->itail)
        bus->itail->next = in;
    else
        bus->ihead = in;
    bus->itail = in;
    return;
bad:
    STOA_WARN("bus: ignored a malformed notification (%zu bytes)", strlen(text));
    json_object_put(o);
}

static bool has_event(json_object *events, const char *type)
{
    for (size_t i = 0; i < json_object_array_length(events); i++) {
        json_object *t;
        if (json_object_object_get_ex(json_object_array_get_idx(events, i), "t", &t) &&
            strcmp(json_object_get_string(t), type) == 0)
            return true;
    }
    return false;
}

/* Apply queued payloads in order, up to one still waiting for its row. */
static void apply_inbound(stoa_bus_t *bus, int64_t now)
{
    while (bus->ihead && bus->ihead->events) {
        inbound_t *in = bus->ihead;
        origin_t *o = origin_get(bus, in->origin, true);
        bool snap = has_event(in->events, "snap"), bye = has_event(in->events, "bye");

        bus->ihead = in->next;
        if (!bus->ihead)
            bus->itail = NULL;
        if (o->known && in->seq <= o->last_seq) {
            json_object_put(in->events);   /* seen already */
            free(in);
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
        if (stoa_hub_remote_apply(bus->hub, o->id, in->events, &fwd))
            ask_sync(bus, o, now);
        for (size_t i = 0; fwd && i < json_object_array_length(fwd); i++)
            stoa_hub_forwarded(bus->hub, json_object_array_get_idx(fwd, i));
        json_object_put(fwd);
        free(in);
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
        } else if (kind == Q_FETCH && bus->ihead && !bus->ihead->events) {
            inbound_t *in = bus->ihead;
            if (PQntuples(res) == 1) {
                json_object *o = parse(PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0)), *e;
                if (o && json_object_object_get_ex(o, "e", &e) && json_object_is_type(e, json_type_array))
                    in->events = json_object_get(e);
                json_object_put(o);
            }
            if (!in->events) {
                /* Deleted already (older than bus_payload_keep_s) or
                 * unreadable: treat it as missed. */
                origin_t *or = origin_get(bus, in->origin, true);
                STOA_WARN("bus: payload row %lld of instance %s is gone; asking for a snapshot", in->row, in->origin);
                in->events = json_object_new_array();
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
        if (kind == Q_FETCH && bus->ihead && !bus->ihead->events) {
            bus->ihead->events = json_object_new_array();
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
    if (PQsetnonblocking(c, 1) != 0) {
        snprintf(err, errlen, "cannot make the connection non-blocking");
        return false;
    }
    bus->db = db;
    bus->conn = c;
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
    if (bus->ihead && !bus->ihead->events) {
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
        heard(bus, n->extra, now);
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
