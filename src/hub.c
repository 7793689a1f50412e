/* hub.c - rooms, memberships, presence, relay and per-session queues.
 *
 * Locking: one mutex (hub->lock) guards every room, membership, session
 * queue and json-c object reachable from the hub. Public functions take
 * it with hub_lock() and release it with hub_unlock(), which also delivers
 * the wakeups collected meanwhile, after the mutex is released.
 */
#include "stoa/hub.h"
#include "stoa/log.h"
#include "stoa/presence.h"
#include "stoa/ratelimit.h"
#include "stoa/room.h"
#include "stoa/util.h"
#include "stoa/wire.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#define PEER_ID_LEN 12

typedef struct room room_t;
typedef struct membership membership_t;

struct membership {
    room_t *room;
    stoa_session_t *sess;
    json_object *state;          /* always an object */
    int64_t last_seen_ms;
    UT_hash_handle hh_room;      /* in room->members, keyed by sess->peer */
    UT_hash_handle hh_sess;      /* in sess->rooms, keyed by room->name */
};

struct room {
    char *name;
    membership_t *members;
    UT_hash_handle hh;
};

struct stoa_session {
    atomic_uint refs;
    stoa_hub_t *hub;
    char peer[PEER_ID_LEN + 1];
    /* Everything below is guarded by hub->lock. */
    stoa_identity_t *ident;
    json_object *user;           /* {"id","name","color","anonymous"} */
    const stoa_transport_ops_t *ops;
    void *transport;
    void *conn;
    bool open;
    bool overflowed;
    bool wake_queued;
    stoa_session_t *wake_next;
    stoa_msg_t **queue;          /* ring of outbound messages */
    size_t qcap, qhead, qlen, qbytes;
    membership_t *rooms;
    stoa_bucket_t presence_bucket, ephemeral_bucket, join_bucket;
    UT_hash_handle hh;           /* in hub->sessions, keyed by peer */
};

struct stoa_hub {
    pthread_mutex_t lock;
    const stoa_config_t *cfg;
    room_t *rooms;
    stoa_session_t *sessions;
    stoa_session_t *wake_head;   /* sessions to wake once the lock is released */
    json_object *limits;
};

static const char *const reason_names[] = {"leave", "disconnect", "timeout"};

const char *stoa_left_reason_name(stoa_left_reason_t reason)
{
    return (unsigned)reason < STOA_ARRAY_LEN(reason_names) ? reason_names[reason] : "disconnect";
}

/* ---- locking and wakeups ---- */

static void hub_lock(stoa_hub_t *hub)
{
    pthread_mutex_lock(&hub->lock);
}

static void hub_unlock(stoa_hub_t *hub)
{
    stoa_session_t *list = hub->wake_head, *next;
    struct wake { const stoa_transport_ops_t *ops; void *transport; stoa_session_t *sess; };
    struct wake stack_buf[64], *wakes = stack_buf;
    size_t n = 0, cap = STOA_ARRAY_LEN(stack_buf);

    hub->wake_head = NULL;
    for (stoa_session_t *s = list; s; s = next) {
        next = s->wake_next;
        s->wake_next = NULL;
        s->wake_queued = false;
        if (!s->ops) {
            stoa_session_unref(s);   /* closed meanwhile: only drop the wake list's reference */
            continue;
        }
        if (n == cap) {
            cap *= 2;
            wakes = wakes == stack_buf ? memcpy(stoa_xmalloc(cap * sizeof *wakes), stack_buf, sizeof stack_buf)
                                       : stoa_xrealloc(wakes, cap * sizeof *wakes);
        }
        wakes[n++] = (struct wake){s->ops, s->transport, s};
    }
    pthread_mutex_unlock(&hub->lock);
    for (size_t i = 0; i < n; i++) {
        wakes[i].ops->wake(wakes[i].transport, wakes[i].sess);
        stoa_session_unref(wakes[i].sess);
    }
    if (wakes != stack_buf)
        free(wakes);
}

static void schedule_wake(stoa_session_t *s)
{
    if (s->wake_queued || !s->ops)
        return;
    s->wake_queued = true;
    stoa_session_ref(s);
    s->wake_next = s->hub->wake_head;
    s->hub->wake_head = s;
}

/* ---- per-session queue ---- */

/* Queue a reference to msg (the caller keeps its own). */
static void enqueue(stoa_session_t *s, stoa_msg_t *msg)
{
    const stoa_config_t *cfg = s->hub->cfg;
    size_t len = stoa_msg_len(msg);
    if (!s->open || s->overflowed)
        return;
    if (s->qlen >= (size_t)cfg->max_queue_msgs || s->qbytes + len > (size_t)cfg->max_queue_bytes) {
        s->overflowed = true;
        STOA_WARN("peer %s: outbound queue full (%zu messages, %zu bytes): dropping it as too slow",
                  s->peer, s->qlen, s->qbytes);
        schedule_wake(s);
        return;
    }
    if (s->qlen == s->qcap) {
        size_t ncap = s->qcap ? s->qcap * 2 : 16;
        stoa_msg_t **nq = stoa_xmalloc(ncap * sizeof *nq);
        for (size_t i = 0; i < s->qlen; i++)
            nq[i] = s->queue[(s->qhead + i) % s->qcap];
        free(s->queue);
        s->queue = nq;
        s->qcap = ncap;
        s->qhead = 0;
    }
    s->queue[(s->qhead + s->qlen) % s->qcap] = stoa_msg_ref(msg);
    s->qlen++;
    s->qbytes += len;
    schedule_wake(s);
}

/* Queue and drop the caller's reference. */
static void enqueue_owned(stoa_session_t *s, stoa_msg_t *msg)
{
    enqueue(s, msg);
    stoa_msg_unref(msg);
}

static void drop_queue(stoa_session_t *s)
{
    for (size_t i = 0; i < s->qlen; i++)
        stoa_msg_unref(s->queue[(s->qhead + i) % s->qcap]);
    free(s->queue);
    s->queue = NULL;
    s->qcap = s->qlen = s->qhead = s->qbytes = 0;
}

/* ---- rooms ---- */

static void broadcast(room_t *room, stoa_session_t *except, stoa_msg_t *msg)
{
    for (membership_t *m = room->members; m; m = m->hh_room.next)
        if (m->sess != except)
            enqueue(m->sess, msg);
}

static json_object *peer_entry(membership_t *m)
{
    json_object *p = json_object_new_object();
    json_object_object_add(p, "peer", json_object_new_string(m->sess->peer));
    json_object_object_add(p, "user", json_object_get(m->sess->user));
    json_object_object_add(p, "state", json_object_get(m->state));
    return p;
}

static json_object *room_peers(room_t *room)
{
    json_object *arr = json_object_new_array();
    for (membership_t *m = room ? room->members : NULL; m; m = m->hh_room.next)
        json_object_array_add(arr, peer_entry(m));
    return arr;
}

/* Remove a membership, tell the room (and, on timeout, the peer itself). */
static void remove_membership(stoa_hub_t *hub, membership_t *m, stoa_left_reason_t reason)
{
    room_t *room = m->room;
    stoa_session_t *s = m->sess;
    stoa_msg_t *left = stoa_wire_peer_left(room->name, s->peer, stoa_left_reason_name(reason));

    HASH_DELETE(hh_room, room->members, m);
    HASH_DELETE(hh_sess, s->rooms, m);
    broadcast(room, NULL, left);
    if (reason == STOA_LEFT_TIMEOUT)
        enqueue(s, left);
    stoa_msg_unref(left);
    STOA_DEBUG("peer %s left %s (%s)", s->peer, room->name, stoa_left_reason_name(reason));
    json_object_put(m->state);
    free(m);
    if (!room->members) {
        HASH_DEL(hub->rooms, room);
        free(room->name);
        free(room);
    }
}

static membership_t *find_membership(stoa_session_t *s, const char *room)
{
    membership_t *m = NULL;
    HASH_FIND(hh_sess, s->rooms, room, strlen(room), m);
    return m;
}

/* ---- hub ---- */

stoa_hub_t *stoa_hub_new(const stoa_config_t *cfg)
{
    stoa_hub_t *hub = stoa_xcalloc(1, sizeof *hub);
    pthread_mutex_init(&hub->lock, NULL);
    hub->cfg = cfg;
    hub->limits = json_object_new_object();
    json_object_object_add(hub->limits, "max_message_bytes", json_object_new_int(cfg->max_message_bytes));
    json_object_object_add(hub->limits, "max_state_bytes", json_object_new_int(cfg->max_state_bytes));
    json_object_object_add(hub->limits, "max_rooms_per_conn", json_object_new_int(cfg->max_rooms_per_conn));
    json_object_object_add(hub->limits, "presence_rate", json_object_new_double(cfg->presence_rate));
    json_object_object_add(hub->limits, "ephemeral_per_min", json_object_new_double(cfg->ephemeral_per_min));
    return hub;
}

void stoa_hub_free(stoa_hub_t *hub)
{
    stoa_session_t *s, *tmp;
    if (!hub)
        return;
    /* Detach every transport first: closing one session tells the others,
     * which must not wake transports that are gone. */
    HASH_ITER(hh, hub->sessions, s, tmp)
        s->ops = NULL;
    HASH_ITER(hh, hub->sessions, s, tmp)
        stoa_hub_close(s, STOA_LEFT_DISCONNECT);
    json_object_put(hub->limits);
    pthread_mutex_destroy(&hub->lock);
    free(hub);
}

stoa_session_t *stoa_hub_open(stoa_hub_t *hub, stoa_identity_t *ident, const stoa_transport_ops_t *ops,
                              void *transport, void *conn)
{
    const stoa_config_t *cfg = hub->cfg;
    stoa_session_t *s = stoa_xcalloc(1, sizeof *s), *dup;
    int64_t now = stoa_now_ms();

    atomic_init(&s->refs, 2);   /* the caller's and the hub's */
    s->hub = hub;
    s->ident = ident;
    s->user = stoa_identity_user_json(ident);
    s->ops = ops;
    s->transport = transport;
    s->conn = conn;
    s->open = true;
    stoa_bucket_init(&s->presence_bucket, cfg->presence_rate, cfg->presence_burst, now);
    stoa_bucket_init(&s->ephemeral_bucket, cfg->ephemeral_per_min / 60.0, cfg->ephemeral_burst, now);
    stoa_bucket_init(&s->join_bucket, cfg->join_rate, cfg->join_burst, now);

    hub_lock(hub);
    do {   /* 36^12 ids: a collision is unlikely, but cheap to rule out */
        stoa_random_id(s->peer, PEER_ID_LEN);
        HASH_FIND_STR(hub->sessions, s->peer, dup);
    } while (dup);
    HASH_ADD_STR(hub->sessions, peer, s);
    enqueue_owned(s, stoa_wire_welcome(s->peer, s->user, cfg->heartbeat_interval_s, cfg->heartbeat_timeout_s,
                                       hub->limits));
    hub_unlock(hub);
    STOA_DEBUG("peer %s opened over %s (user %s)", s->peer, ops ? ops->name : "-", ident->sub);
    return s;
}

void stoa_hub_close(stoa_session_t *s, stoa_left_reason_t reason)
{
    stoa_hub_t *hub = s->hub;
    membership_t *m, *tmp;

    hub_lock(hub);
    if (!s->open) {
        hub_unlock(hub);
        return;
    }
    HASH_ITER(hh_sess, s->rooms, m, tmp)
        remove_membership(hub, m, reason);
    s->open = false;
    s->ops = NULL;
    s->transport = NULL;
    s->conn = NULL;
    drop_queue(s);
    HASH_DEL(hub->sessions, s);
    hub_unlock(hub);
    STOA_DEBUG("peer %s closed (%s)", s->peer, stoa_left_reason_name(reason));
    stoa_session_unref(s);   /* the hub's reference */
}

stoa_session_t *stoa_session_ref(stoa_session_t *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void stoa_session_unref(stoa_session_t *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* Last reference: the session is closed (the hub held one until then),
     * so nothing else can reach these fields. */
    drop_queue(s);
    json_object_put(s->user);
    stoa_identity_free(s->ident);
    free(s);
}

const char *stoa_session_peer(const stoa_session_t *s)
{
    return s->peer;
}

stoa_hub_t *stoa_session_hub(const stoa_session_t *s)
{
    return s->hub;
}

void stoa_hub_send(stoa_session_t *s, stoa_msg_t *msg)
{
    hub_lock(s->hub);
    enqueue_owned(s, msg);
    hub_unlock(s->hub);
}

stoa_msg_t *stoa_session_pop(stoa_session_t *s)
{
    stoa_msg_t *msg = NULL;
    pthread_mutex_lock(&s->hub->lock);
    if (s->qlen > 0) {
        msg = s->queue[s->qhead];
        s->qhead = (s->qhead + 1) % s->qcap;
        s->qlen--;
        s->qbytes -= stoa_msg_len(msg);
    }
    pthread_mutex_unlock(&s->hub->lock);
    return msg;
}

stoa_err_t stoa_session_close_reason(stoa_session_t *s)
{
    stoa_err_t r;
    pthread_mutex_lock(&s->hub->lock);
    r = s->overflowed ? STOA_ERR_SLOW_CONSUMER : STOA_OK;
    pthread_mutex_unlock(&s->hub->lock);
    return r;
}

void *stoa_session_conn(stoa_session_t *s, const stoa_transport_ops_t *ops)
{
    void *t = NULL;
    pthread_mutex_lock(&s->hub->lock);
    if (s->open && s->ops == ops)
        t = s->conn;
    pthread_mutex_unlock(&s->hub->lock);
    return t;
}

/* ---- operations ---- */

#define FAIL(code, ...) do { snprintf(why, whylen, __VA_ARGS__); err = (code); goto out; } while (0)

static void ack(stoa_session_t *s, json_object *id)
{
    if (id)
        enqueue_owned(s, stoa_wire_ack(id));
}

/* Check an initial state a client supplied: an object within the size limit. */
static stoa_err_t check_state(const stoa_config_t *cfg, json_object *state, char *why, size_t whylen)
{
    size_t size;
    if (!json_object_is_type(state, json_type_object)) {
        snprintf(why, whylen, "state must be a JSON object");
        return STOA_ERR_BAD_MESSAGE;
    }
    size = stoa_presence_size(state);
    if (size > (size_t)cfg->max_state_bytes) {
        snprintf(why, whylen, "presence state is %zu bytes; the limit is %d", size, cfg->max_state_bytes);
        return STOA_ERR_STATE_TOO_LARGE;
    }
    return STOA_OK;
}

stoa_err_t stoa_hub_join(stoa_session_t *s, const char *room_name, json_object *state, json_object *id,
                         char *why, size_t whylen)
{
    stoa_hub_t *hub = s->hub;
    const stoa_config_t *cfg = hub->cfg;
    const char *reason;
    stoa_err_t err = STOA_OK;
    room_t *room;
    membership_t *m;
    json_object *peers;
    stoa_msg_t *joined;

    if (!stoa_room_valid(room_name, (size_t)cfg->max_room_name_bytes, &reason)) {
        snprintf(why, whylen, "%s", reason);
        return STOA_ERR_BAD_ROOM;
    }
    if (state && !json_object_is_type(state, json_type_null)) {
        err = check_state(cfg, state, why, whylen);
        if (err)
            return err;
    } else {
        state = NULL;
    }
    hub_lock(hub);
    if (!s->open)   /* a closed session must not become a member again */
        FAIL(STOA_ERR_PERMISSION_DENIED, "the session is closed");
    if (!(stoa_perms_rights(s->ident->perms, room_name) & STOA_RIGHT_READ))
        FAIL(STOA_ERR_PERMISSION_DENIED, "no read permission on %s", room_name);
    if (find_membership(s, room_name))
        FAIL(STOA_ERR_ALREADY_JOINED, "already in %s", room_name);
    if (HASH_CNT(hh_sess, s->rooms) >= (unsigned)cfg->max_rooms_per_conn)
        FAIL(STOA_ERR_TOO_MANY_ROOMS, "already in %d rooms, the limit", cfg->max_rooms_per_conn);
    HASH_FIND_STR(hub->rooms, room_name, room);
    if (room && HASH_CNT(hh_room, room->members) >= (unsigned)cfg->max_peers_per_room)
        FAIL(STOA_ERR_ROOM_FULL, "%s holds %d peers, the limit", room_name, cfg->max_peers_per_room);
    if (!stoa_bucket_take(&s->join_bucket, stoa_now_ms()))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g joins and leaves a second", cfg->join_rate);
    if (!room) {
        room = stoa_xcalloc(1, sizeof *room);
        room->name = stoa_xstrdup(room_name);
        HASH_ADD_KEYPTR(hh, hub->rooms, room->name, strlen(room->name), room);
    }
    m = stoa_xcalloc(1, sizeof *m);
    m->room = room;
    m->sess = s;
    m->state = state ? stoa_presence_merge(NULL, state) : json_object_new_object();
    m->last_seen_ms = stoa_now_ms();
    HASH_ADD_KEYPTR(hh_room, room->members, s->peer, strlen(s->peer), m);
    HASH_ADD_KEYPTR(hh_sess, s->rooms, room->name, strlen(room->name), m);

    peers = room_peers(room);
    enqueue_owned(s, stoa_wire_room_state(room->name, peers, id));
    json_object_put(peers);
    joined = stoa_wire_peer_joined(room->name, s->peer, s->user, m->state);
    broadcast(room, s, joined);
    stoa_msg_unref(joined);
    STOA_DEBUG("peer %s joined %s", s->peer, room->name);
out:
    hub_unlock(hub);
    return err;
}

/* Find the caller's membership of room_name, or fail with NOT_IN_ROOM / BAD_ROOM. */
static stoa_err_t member_of(stoa_session_t *s, const char *room_name, membership_t **out, char *why,
                            size_t whylen)
{
    *out = find_membership(s, room_name);
    if (*out)
        return STOA_OK;
    if (!stoa_room_valid(room_name, (size_t)s->hub->cfg->max_room_name_bytes, NULL)) {
        snprintf(why, whylen, "not a valid room name");
        return STOA_ERR_BAD_ROOM;
    }
    snprintf(why, whylen, "not in %s; join it first", room_name);
    return STOA_ERR_NOT_IN_ROOM;
}

stoa_err_t stoa_hub_leave(stoa_session_t *s, const char *room_name, json_object *id, char *why, size_t whylen)
{
    stoa_hub_t *hub = s->hub;
    membership_t *m;
    stoa_err_t err;

    hub_lock(hub);
    err = member_of(s, room_name, &m, why, whylen);
    if (err)
        goto out;
    if (!stoa_bucket_take(&s->join_bucket, stoa_now_ms()))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g joins and leaves a second", hub->cfg->join_rate);
    remove_membership(hub, m, STOA_LEFT_LEAVE);
    ack(s, id);
out:
    hub_unlock(hub);
    return err;
}

stoa_err_t stoa_hub_presence(stoa_session_t *s, const char *room_name, json_object *patch, json_object *id,
                             char *why, size_t whylen)
{
    stoa_hub_t *hub = s->hub;
    const stoa_config_t *cfg = hub->cfg;
    membership_t *m;
    json_object *next = NULL;
    stoa_msg_t *msg;
    stoa_err_t err;
    size_t size;

    if (!json_object_is_type(patch, json_type_object)) {
        snprintf(why, whylen, "state must be a JSON object (a merge-patch of your state)");
        return STOA_ERR_BAD_MESSAGE;
    }
    hub_lock(hub);
    err = member_of(s, room_name, &m, why, whylen);
    if (err)
        goto out;
    m->last_seen_ms = stoa_now_ms();
    if (!stoa_bucket_take(&s->presence_bucket, m->last_seen_ms))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g presence updates a second", cfg->presence_rate);
    next = stoa_presence_merge(m->state, patch);
    size = stoa_presence_size(next);
    if (size > (size_t)cfg->max_state_bytes)
        FAIL(STOA_ERR_STATE_TOO_LARGE, "presence state would be %zu bytes; the limit is %d", size,
             cfg->max_state_bytes);
    json_object_put(m->state);
    m->state = next;
    next = NULL;
    msg = stoa_wire_presence(m->room->name, s->peer, m->state);
    broadcast(m->room, s, msg);
    stoa_msg_unref(msg);
    ack(s, id);
out:
    json_object_put(next);
    hub_unlock(hub);
    return err;
}

stoa_err_t stoa_hub_heartbeat(stoa_session_t *s, const char *room_name, json_object *id, char *why, size_t whylen)
{
    membership_t *m;
    stoa_err_t err;
    hub_lock(s->hub);
    err = member_of(s, room_name, &m, why, whylen);
    if (!err) {
        m->last_seen_ms = stoa_now_ms();
        ack(s, id);
    }
    hub_unlock(s->hub);
    return err;
}

stoa_err_t stoa_hub_ephemeral(stoa_session_t *s, const char *room_name, json_object *data, json_object *id,
                              char *why, size_t whylen)
{
    stoa_hub_t *hub = s->hub;
    membership_t *m;
    stoa_msg_t *msg;
    stoa_err_t err;

    hub_lock(hub);
    err = member_of(s, room_name, &m, why, whylen);
    if (err)
        goto out;
    m->last_seen_ms = stoa_now_ms();
    if (!stoa_bucket_take(&s->ephemeral_bucket, m->last_seen_ms))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g ephemeral messages a minute", hub->cfg->ephemeral_per_min);
    msg = stoa_wire_ephemeral(m->room->name, s->peer, s->user, data);
    broadcast(m->room, s, msg);
    stoa_msg_unref(msg);
    ack(s, id);
out:
    hub_unlock(hub);
    return err;
}

void stoa_hub_tick(stoa_hub_t *hub, int64_t now_ms)
{
    int64_t limit = (int64_t)hub->cfg->heartbeat_timeout_s * 1000;
    room_t *room, *rtmp;
    membership_t *m, *mtmp;

    hub_lock(hub);
    HASH_ITER(hh, hub->rooms, room, rtmp) {
        HASH_ITER(hh_room, room->members, m, mtmp) {
            if (now_ms - m->last_seen_ms > limit) {
                STOA_INFO("peer %s evicted from %s after %lld ms without a heartbeat", m->sess->peer,
                          room->name, (long long)(now_ms - m->last_seen_ms));
                /* Frees room with its last member; HASH_ITER has already
                 * read the next pointers, so both loops stay valid. */
                remove_membership(hub, m, STOA_LEFT_TIMEOUT);
            }
        }
    }
    hub_unlock(hub);
}

char *stoa_hub_room_json(stoa_hub_t *hub, const char *room_name)
{
    json_object *o = json_object_new_object(), *peers;
    room_t *room;
    char *text;
    hub_lock(hub);
    HASH_FIND_STR(hub->rooms, room_name, room);
    peers = room_peers(room);
    json_object_object_add(o, "room", json_object_new_string(room_name));
    json_object_object_add(o, "peers", peers);
    text = stoa_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    hub_unlock(hub);
    return text;
}

void stoa_hub_stats(stoa_hub_t *hub, size_t *sessions, size_t *rooms)
{
    hub_lock(hub);
    *sessions = HASH_COUNT(hub->sessions);
    *rooms = HASH_COUNT(hub->rooms);
    hub_unlock(hub);
}
