/* hub.c - rooms, memberships, presence, relay, sessions and their
 * numbered buffers.
 *
 * Locking: one mutex (hub->lock) guards every room, membership, session
 * buffer and json-c object reachable from the hub. Public functions take
 * it with hub_lock() and release it with hub_unlock(), which also delivers
 * the wakeups collected meanwhile, after the mutex is released.
 */
#include "hub_internal.h"
#include "stoa/jsontext.h"
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


static void dirty_unlist(stoa_hub_t *hub, room_t *room);

static const char *const reason_names[] = {"leave", "disconnect", "timeout", "kicked"};

const char *stoa_left_reason_name(stoa_left_reason_t reason)
{
    return (unsigned)reason < STOA_ARRAY_LEN(reason_names) ? reason_names[reason] : "disconnect";
}

/* ---- locking and wakeups ---- */

void hub_lock(stoa_hub_t *hub)
{
    pthread_mutex_lock(&hub->lock);
}

/* Run the wakeups collected under the lock (after it): those for a
 * transport that takes batches go to it in one call per transport (a
 * sharded one is several), with the list's session references, in the
 * order they were collected; the others one by one. */
static void deliver_wakes(wake_t *wakes, size_t n)
{
    stoa_wake_t *batch = NULL;
    for (size_t i = 0; i < n; i++) {
        const stoa_transport_ops_t *ops = wakes[i].ops;
        void *transport = wakes[i].transport;
        size_t k = 0;
        if (!ops)
            continue;   /* went with an earlier batch */
        if (!ops->wake_batch) {
            ops->wake(transport, wakes[i].sess, wakes[i].conn);
            stoa_session_unref(wakes[i].sess);
            continue;
        }
        if (!batch)
            batch = stoa_xmalloc(n * sizeof *batch);
        for (size_t j = i; j < n; j++) {
            if (wakes[j].ops != ops || wakes[j].transport != transport)
                continue;
            batch[k++] = (stoa_wake_t){wakes[j].sess, wakes[j].conn};
            wakes[j].ops = NULL;
        }
        ops->wake_batch(transport, batch, k);   /* the references pass to it */
    }
    free(batch);
}

void hub_unlock(stoa_hub_t *hub)
{
    wake_t *wakes = hub->wakes;
    size_t n = hub->nwakes;
    bool kick = hub->bus_kick;

    if (!n && !kick) {   /* nothing collected (every read of a session's queue) */
        pthread_mutex_unlock(&hub->lock);
        return;
    }
    hub->bus_kick = false;
    hub->wakes = NULL;
    hub->nwakes = hub->capwakes = 0;
    for (size_t i = 0; i < n; i++)
        wakes[i].sess->wake_queued = false;
    pthread_mutex_unlock(&hub->lock);
    if (kick)
        hub->bus_ops->kick(hub->bus);   /* bus_ops is fixed while serving */
    deliver_wakes(wakes, n);
    free(wakes);
}

void hub_add_wake(stoa_hub_t *hub, const stoa_transport_ops_t *ops, void *transport, void *conn,
                     stoa_session_t *s)
{
    if (hub->nwakes == hub->capwakes) {
        hub->capwakes = hub->capwakes ? hub->capwakes * 2 : 16;
        hub->wakes = stoa_xrealloc(hub->wakes, hub->capwakes * sizeof *hub->wakes);
    }
    hub->wakes[hub->nwakes++] = (wake_t){ops, transport, conn, stoa_session_ref(s)};
}

/* Wake the attached transport once per locked section. */
static void schedule_wake(stoa_session_t *s)
{
    if (s->wake_queued || !s->ops)
        return;
    s->wake_queued = true;
    hub_add_wake(s->hub, s->ops, s->transport, s->conn, s);
}

/* ---- the numbered buffer ---- */

static entry_t *entry_at(stoa_session_t *s, size_t i)
{
    return &s->ring[(s->head + i) & (s->cap - 1)];   /* cap is a power of two */
}

/* The last seq no longer buffered: the client must have everything up to
 * it, or get a resync. */
static uint64_t floor_seq(stoa_session_t *s)
{
    return s->len ? entry_at(s, 0)->seq - 1 : s->next_seq - 1;
}

static void drop_oldest(stoa_session_t *s)
{
    entry_t *e = entry_at(s, 0);
    s->bytes -= stoa_msg_len(e->msg);
    stoa_msg_unref(e->msg);
    s->head = (s->head + 1) & (s->cap - 1);
    s->len--;
}

/* Keep the buffer within its limits, never dropping seqs >= keep_from. */
/* Keep the buffer within its limits. Never dropped: seqs >= keep_from, a
 * resync block its reader has not finished (it may be longer than the
 * limits when the session is in many rooms), and the newest message for
 * the count and size limits (a single large one must still go out). */
static void trim(stoa_session_t *s, int64_t now, uint64_t keep_from)
{
    const stoa_config_t *cfg = s->hub->cfg;
    int64_t max_age = (int64_t)cfg->session_buffer_age_s * 1000;
    while (s->len > 0) {
        entry_t *e = entry_at(s, 0);
        bool over = s->len > 1 && (s->len > (size_t)cfg->session_buffer_msgs ||
                                   s->bytes > (size_t)cfg->session_buffer_bytes);
        if (e->seq >= keep_from || (e->seq >= s->resync_from && s->cursor < s->resync_to))
            break;
        if (!over && now - e->at_ms <= max_age)
            break;
        drop_oldest(s);
    }
}

/* Number msg into the buffer, the reference for it already taken. */
static uint64_t append_ref(stoa_session_t *s, stoa_msg_t *msg, int64_t now)
{
    entry_t *e;
    if (s->len == s->cap) {
        /* From one entry: an idle session keeps only its last reply. */
        size_t ncap = s->cap ? s->cap * 2 : 1;
        entry_t *nr = stoa_xmalloc(ncap * sizeof *nr);
        for (size_t i = 0; i < s->len; i++)
            nr[i] = *entry_at(s, i);
        free(s->ring);
        s->ring = nr;
        s->cap = ncap;
        s->head = 0;
    }
    e = entry_at(s, s->len);
    e->seq = s->next_seq++;
    e->msg = msg;
    e->at_ms = now;
    s->len++;
    s->bytes += stoa_msg_len(msg);
    return e->seq;
}

/* Number a reference to msg (the caller keeps its own) into the buffer. */
static uint64_t append(stoa_session_t *s, stoa_msg_t *msg, int64_t now)
{
    return append_ref(s, stoa_msg_ref(msg), now);
}

/* trim() after one append, skipping the walk when nothing can be over:
 * within the count and size limits, and the oldest entry not too old. */
static void trim_after_append(stoa_session_t *s, int64_t now)
{
    const stoa_config_t *cfg = s->hub->cfg;
    if (s->len <= (size_t)cfg->session_buffer_msgs && s->bytes <= (size_t)cfg->session_buffer_bytes &&
        now - entry_at(s, 0)->at_ms <= (int64_t)cfg->session_buffer_age_s * 1000)
        return;
    trim(s, now, UINT64_MAX);
}

/* hub_enqueue with the reference taken and the clock read by the caller. */
static void enqueue_ref(stoa_session_t *s, stoa_msg_t *msg, int64_t now)
{
    append_ref(s, msg, now);
    trim_after_append(s, now);
    schedule_wake(s);
}

void hub_enqueue(stoa_session_t *s, stoa_msg_t *msg)
{
    if (!s->open || s->origin)
        return;
    enqueue_ref(s, stoa_msg_ref(msg), stoa_now_ms());
}

/* Queue and drop the caller's reference. */
static void enqueue_owned(stoa_session_t *s, stoa_msg_t *msg)
{
    hub_enqueue(s, msg);
    stoa_msg_unref(msg);
}

void hub_drop_buffer(stoa_session_t *s)
{
    while (s->len > 0)
        drop_oldest(s);
    free(s->ring);
    s->ring = NULL;
    s->cap = s->head = 0;
}

/* ---- rooms ---- */

/* Whether hub_broadcast(room, except, ...) would reach anyone: a local,
 * open member other than except (the members of other instances hear of
 * it from the bus). */
static bool has_local_recipient(room_t *room, stoa_session_t *except)
{
    for (membership_t *m = room->members; m; m = m->room_next)
        if (m->sess != except && m->sess->open && !m->sess->origin)
            return true;
    return false;
}

/* Ask for the buffer entries an append to s reads and writes: the oldest
 * (trim_after_append reads its age) and the one after the newest. */
static void prefetch_buffer(const stoa_session_t *s)
{
    if (s->ring) {
        __builtin_prefetch(&s->ring[s->head], 0);
        __builtin_prefetch(&s->ring[(s->head + s->len) & (s->cap - 1)], 1);
    }
}

/* Queue msg (one of the references hub_broadcast took) for s, unless s
 * is the sender or not reachable here. Returns whether it did. */
static bool broadcast_to(stoa_session_t *s, stoa_session_t *except, stoa_msg_t *msg, int64_t now)
{
    if (s == except || !s->open || s->origin)
        return false;
    enqueue_ref(s, msg, now);
    return true;
}

void hub_broadcast(room_t *room, stoa_session_t *except, stoa_msg_t *msg)
{
    enum { AHEAD = 16, SMALL = 64 };
    unsigned bound = room->npeers + room->nobservers, used = 0, n = 0;
    stoa_session_t **fan;
    stoa_hub_t *hub;
    int64_t now;
    if (!bound)
        return;
    now = stoa_now_ms();
    /* Every recipient's reference at once (the caller's keeps msg alive
     * meanwhile), then the unused ones given back: two atomic operations
     * per fan-out instead of one per recipient. */
    stoa_msg_ref_n(msg, bound);
    if (bound <= SMALL) {
        for (membership_t *m = room->members; m; m = m->room_next)
            used += broadcast_to(m->sess, except, msg, now);
        stoa_msg_unref_n(msg, bound - used);   /* never the last: the caller holds one */
        return;
    }
    /* A big room: its members' sessions first, into an array. Their
     * sessions and buffers are far apart in memory, and from an array
     * they can be asked for well before they are needed (the sessions
     * AHEAD on, the buffers of those half as far on, whose sessions are
     * here by then). */
    hub = room->members->sess->hub;
    if (hub->capfan < bound) {
        hub->capfan = bound;
        hub->fan = stoa_xrealloc(hub->fan, bound * sizeof *hub->fan);
    }
    fan = hub->fan;
    for (membership_t *m = room->members; m; m = m->room_next)
        fan[n++] = m->sess;
    for (unsigned i = 0; i < n; i++) {
        if (i + AHEAD < n) {
            __builtin_prefetch(fan[i + AHEAD], 1);
            __builtin_prefetch((char *)fan[i + AHEAD] + 64, 1);
        }
        if (i + AHEAD / 2 < n)
            prefetch_buffer(fan[i + AHEAD / 2]);
        used += broadcast_to(fan[i], except, msg, now);
    }
    stoa_msg_unref_n(msg, bound - used);
}

static json_object *peer_entry(membership_t *m)
{
    json_object *p = json_object_new_object();
    json_object_object_add(p, "peer", json_object_new_string(m->sess->peer));
    json_object_object_add(p, "user", json_object_get(m->sess->user));
    json_object_object_add(p, "state", json_object_get(m->state));
    return p;
}

json_object *hub_room_peers(room_t *room)
{
    json_object *arr = json_object_new_array();
    for (membership_t *m = room ? room->members : NULL; m; m = m->room_next)
        if (!m->observer)
            json_object_array_add(arr, peer_entry(m));
    return arr;
}

/* ---- membership records ----
 *
 * Memberships come from slabs the hub keeps until it is freed, handed out
 * in address order: a room's members, listed in the order they joined,
 * then lie mostly side by side, and hub_broadcast's walk of a big room
 * reads memory in order instead of missing the cache at every member
 * (malloc'd ones, made between each connection's other allocations, were
 * a cache miss each: 160 ns a member at 10,000). At most as many stay
 * allocated as were members at once. Under ASan a free record is
 * poisoned (but for its free-list link), so a use after free is still
 * caught. */

static membership_t *membership_new(stoa_hub_t *hub)
{
    membership_t *m;
    if (!hub->mfree) {
        membership_slab_t *slab = stoa_xmalloc(sizeof *slab);
        slab->next = hub->mslabs;
        hub->mslabs = slab;
        for (size_t i = MEMBERSHIP_SLAB; i-- > 0;) {   /* the first record on top */
            *(membership_t **)&slab->m[i] = hub->mfree;
            hub->mfree = &slab->m[i];
            STOA_ASAN_POISON((char *)&slab->m[i] + sizeof(membership_t *),
                             sizeof slab->m[i] - sizeof(membership_t *));
        }
    }
    m = hub->mfree;
    hub->mfree = *(membership_t **)m;
    STOA_ASAN_UNPOISON(m, sizeof *m);
    memset(m, 0, sizeof *m);
    return m;
}

static void membership_free(stoa_hub_t *hub, membership_t *m)
{
    *(membership_t **)m = hub->mfree;
    hub->mfree = m;
    STOA_ASAN_POISON((char *)m + sizeof(membership_t *), sizeof *m - sizeof(membership_t *));
}

/* Remove a membership, tell the room (and, on timeout, the peer itself). */
void hub_remove_membership(stoa_hub_t *hub, membership_t *m, stoa_left_reason_t reason)
{
    room_t *room = m->room;
    stoa_session_t *s = m->sess;
    stoa_msg_t *left = stoa_wire_peer_left(room->name, s->peer, stoa_left_reason_name(reason));

    if (m->observer)
        room->nobservers--;
    else
        room->npeers--;
    DL_DELETE2(room->members, m, room_prev, room_next);
    HASH_DELETE(hh, hub->memberships, m);
    DL_DELETE2(s->rooms, m, sess_prev, sess_next);
    s->nrooms--;
    if (m->dirty)
        room->ndirty--;   /* its pending presence goes with it */
    if (!s->origin && hub->bus_ops) {
        json_object *ev = json_object_new_object();
        json_object_object_add(ev, "t", json_object_new_string("leave"));
        json_object_object_add(ev, "p", json_object_new_string(s->peer));
        json_object_object_add(ev, "room", json_object_new_string(room->name));
        json_object_object_add(ev, "why", json_object_new_string(stoa_left_reason_name(reason)));
        hub_emit(hub, ev);
    }
    if (!m->observer)   /* an observer was never announced */
        hub_broadcast(room, NULL, left);
    if (reason == STOA_LEFT_TIMEOUT || reason == STOA_LEFT_KICKED)
        hub_enqueue(s, left);   /* it did not ask: tell it too */
    stoa_msg_unref(left);
    STOA_DEBUG("peer %s left %s (%s)", s->peer, room->name, stoa_left_reason_name(reason));
    json_object_put(m->state);
    free(m->state_text);
    membership_free(hub, m);
    if (!room->members) {
        dirty_unlist(hub, room);
        HASH_DEL(hub->rooms, room);
        free(room->name);
        free(room);
    }
}

/* s's membership of room, or NULL. */
static membership_t *membership_of(stoa_hub_t *hub, room_t *room, stoa_session_t *s)
{
    membership_key_t key = {room, s};
    membership_t *m = NULL;
    HASH_FIND(hh, hub->memberships, &key, MEMBERSHIP_KEY_LEN, m);
    return m;
}

membership_t *hub_find_membership(stoa_session_t *s, const char *room)
{
    room_t *r;
    HASH_FIND_STR(s->hub->rooms, room, r);
    return r ? membership_of(s->hub, r, s) : NULL;
}

membership_t *hub_add_membership(stoa_hub_t *hub, stoa_session_t *s, const char *room_name, json_object *state,
                                 bool observer)
{
    membership_t *m = membership_new(hub);
    room_t *room;
    stoa_msg_t *joined;

    HASH_FIND_STR(hub->rooms, room_name, room);
    if (!room) {
        room = stoa_xcalloc(1, sizeof *room);
        room->name = stoa_xstrdup(room_name);
        HASH_ADD_KEYPTR(hh, hub->rooms, room->name, strlen(room->name), room);
    }
    m->room = room;
    m->sess = s;
    m->state = state;
    m->observer = observer;
    m->last_seen_ms = stoa_now_ms();
    DL_APPEND2(room->members, m, room_prev, room_next);
    HASH_ADD(hh, hub->memberships, room, MEMBERSHIP_KEY_LEN, m);
    DL_APPEND2(s->rooms, m, sess_prev, sess_next);
    s->nrooms++;
    if (observer) {
        room->nobservers++;
        return m;
    }
    room->npeers++;
    joined = stoa_wire_peer_joined(room->name, s->peer, s->user, m->state);
    hub_broadcast(room, s, joined);
    stoa_msg_unref(joined);
    return m;
}

static void dirty_unlist(stoa_hub_t *hub, room_t *room)
{
    if (!room->dirty_listed)
        return;
    if (room->dirty_prev)
        room->dirty_prev->dirty_next = room->dirty_next;
    else
        hub->dirty_rooms = room->dirty_next;
    if (room->dirty_next)
        room->dirty_next->dirty_prev = room->dirty_prev;
    room->dirty_prev = room->dirty_next = NULL;
    room->dirty_listed = false;
}

/* The hub's scratch text (len bytes, just encoded) becomes m's encoded
 * state, and m's old buffer the scratch. */
static void take_scratch(stoa_hub_t *hub, membership_t *m, size_t len)
{
    char *text = m->state_text;
    size_t cap = m->state_cap;
    m->state_text = hub->scratch;
    m->state_cap = hub->scratch_cap;
    m->state_len = len;
    m->state_text_ok = true;
    hub->scratch = text;
    hub->scratch_cap = cap;
}

/* m's state encoded (once per change): m->state_text, m->state_len. */
static void encode_state(membership_t *m)
{
    if (m->state_text_ok)
        return;
    m->state_len = stoa_json_encode(m->state, &m->state_text, &m->state_cap);
    m->state_text_ok = true;
}

void hub_flush_room(stoa_hub_t *hub, room_t *room, int64_t now)
{
    membership_t *only = NULL;
    stoa_wire_state_t *peers = NULL;
    size_t n = 0;
    stoa_msg_t *msg;

    dirty_unlist(hub, room);
    if (!room->ndirty)
        return;
    /* Each state is encoded once per change (usually already, by
     * stoa_hub_presence) and its text copied into the one message. */
    for (membership_t *m = room->members; m; m = m->room_next) {
        if (!m->dirty)
            continue;
        m->dirty = false;
        encode_state(m);
        if (room->ndirty == 1) {
            only = m;
            break;
        }
        if (!peers)
            peers = stoa_xmalloc(room->ndirty * sizeof *peers);
        peers[n++] = (stoa_wire_state_t){m->sess->peer, m->state_text, m->state_len};
    }
    room->ndirty = 0;
    room->last_flush_ms = now;
    if (only) {   /* one peer changed: the plain message, not sent back to it */
        stoa_wire_state_t one = {only->sess->peer, only->state_text, only->state_len};
        msg = stoa_wire_presence_text(room->name, &one);
        hub_broadcast(room, only->sess, msg);
    } else {      /* several: one message for all (each ignores its own entry) */
        msg = stoa_wire_presence_batch_text(room->name, peers, n);
        hub_broadcast(room, NULL, msg);
        free(peers);
    }
    stoa_msg_unref(msg);
}

void hub_set_state(membership_t *m, json_object *state)
{
    json_object_put(m->state);
    m->state = state;
    m->state_own = false;   /* it may be shared: copied before it is changed */
    m->state_text_ok = false;
    hub_state_changed(m);
}

void hub_state_changed(membership_t *m)
{
    stoa_hub_t *hub = m->sess->hub;
    room_t *room = m->room;
    int tick = hub->cfg->presence_tick_ms;
    int64_t now;

    if (!m->dirty) {
        m->dirty = true;
        room->ndirty++;
    }
    if (tick <= 0) {
        hub_flush_room(hub, room, 0);
        return;
    }
    now = stoa_now_ms();
    if (now - room->last_flush_ms >= tick) {
        hub_flush_room(hub, room, now);   /* a quiet room: at once */
    } else if (!room->dirty_listed) {   /* a busy one: at the next tick */
        room->dirty_next = hub->dirty_rooms;
        room->dirty_prev = NULL;
        if (hub->dirty_rooms)
            hub->dirty_rooms->dirty_prev = room;
        hub->dirty_rooms = room;
        room->dirty_listed = true;
    }
}

void stoa_hub_flush_presence(stoa_hub_t *hub, int64_t now_ms)
{
    int tick = hub->cfg->presence_tick_ms;
    room_t *room, *next;
    hub_lock(hub);
    for (room = hub->dirty_rooms; room; room = next) {
        next = room->dirty_next;
        if (now_ms - room->last_flush_ms >= tick)
            hub_flush_room(hub, room, now_ms);
    }
    hub_unlock(hub);
}

/* The client missed messages that are gone: tell it, then give it the
 * whole state of each of its rooms. Delivery resumes at the resync. */
void hub_resync(stoa_session_t *s, const char *reason)
{
    int64_t now = stoa_now_ms();
    json_object *o = json_object_new_object(), *rooms = json_object_new_array();
    uint64_t first = s->next_seq;
    stoa_msg_t *msg;

    for (membership_t *m = s->rooms; m; m = m->sess_next)
        json_object_array_add(rooms, json_object_new_string(m->room->name));
    json_object_object_add(o, "type", json_object_new_string("resync"));
    json_object_object_add(o, "seq", json_object_new_int64((int64_t)first));
    json_object_object_add(o, "reason", json_object_new_string(reason));
    json_object_object_add(o, "rooms", rooms);
    msg = stoa_wire_encode(o);
    json_object_put(o);
    append(s, msg, now);
    stoa_msg_unref(msg);
    for (membership_t *m = s->rooms; m; m = m->sess_next) {
        json_object *peers = hub_room_peers(m->room);
        msg = stoa_wire_room_state(m->room->name, peers, NULL);
        json_object_put(peers);
        append(s, msg, now);
        stoa_msg_unref(msg);
    }
    s->cursor = first - 1;
    s->resync_from = first;
    s->resync_to = s->next_seq - 1;
    trim(s, now, first);
    STOA_INFO("peer %s: resync (%s) at seq %llu", s->peer, reason, (unsigned long long)first);
}

static stoa_msg_t *welcome(stoa_session_t *s, bool resumed)
{
    const stoa_config_t *cfg = s->hub->cfg;
    return stoa_wire_welcome(s->peer, s->id, s->user, s->cursor, resumed, cfg->heartbeat_interval_s,
                             cfg->heartbeat_timeout_s, s->hub->limits);
}

static void attach_locked(stoa_session_t *s, const stoa_transport_ops_t *ops, void *transport, void *conn)
{
    if (s->ops && s->conn != conn)
        hub_add_wake(s->hub, s->ops, s->transport, s->conn, s);   /* the superseded connection finds out */
    s->ops = ops;
    s->transport = transport;
    s->conn = conn;
    s->detached_at_ms = ops ? 0 : stoa_now_ms();
    s->wake_queued = false;
    if (ops && s->cursor + 1 < s->next_seq)
        schedule_wake(s);
}

void hub_close_locked(stoa_session_t *s, stoa_left_reason_t reason)
{
    stoa_hub_t *hub = s->hub;
    membership_t *m, *tmp;
    if (!s->open)
        return;
    DL_FOREACH_SAFE2(s->rooms, m, tmp, sess_next)
        hub_remove_membership(hub, m, reason);
    if (!s->origin && hub->bus_ops) {
        json_object *ev = json_object_new_object();
        json_object_object_add(ev, "t", json_object_new_string("close"));
        json_object_object_add(ev, "p", json_object_new_string(s->peer));
        hub_emit(hub, ev);
    }
    if (s->ops)
        hub_add_wake(hub, s->ops, s->transport, s->conn, s);   /* its connection finds the session gone */
    s->open = false;
    s->ops = NULL;
    s->transport = NULL;
    s->conn = NULL;
    hub_drop_buffer(s);
    HASH_DEL(hub->sessions, s);
    if (!s->origin)
        HASH_DELETE(hh_id, hub->by_id, s);
    STOA_DEBUG("peer %s closed (%s)", s->peer, stoa_left_reason_name(reason));
    stoa_session_unref(s);   /* the hub's reference; the caller still holds one */
}

/* ---- hub ---- */

stoa_hub_t *stoa_hub_new(const stoa_config_t *cfg)
{
    stoa_hub_t *hub = stoa_xcalloc(1, sizeof *hub);
    pthread_mutex_init(&hub->lock, NULL);
    hub->cfg = cfg;
    hub->limits = json_object_new_object();
    hub->empty_state = json_object_new_object();
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
    hub_lock(hub);
    hub->bus_ops = NULL;   /* the bus is stopped first: tell it nothing more */
    hub->bus = NULL;
    /* Detach every transport first: closing one session tells the others,
     * which must not wake transports that are gone. */
    HASH_ITER(hh, hub->sessions, s, tmp)
        s->ops = NULL;
    HASH_ITER(hh, hub->sessions, s, tmp) {
        stoa_session_ref(s);
        hub_close_locked(s, STOA_LEFT_DISCONNECT);
        stoa_session_unref(s);
    }
    hub_unlock(hub);
    json_object_put(hub->limits);
    json_object_put(hub->empty_state);
    HASH_CLEAR(hh, hub->memberships);   /* empty by now: every membership went with its session */
    while (hub->mslabs) {
        membership_slab_t *next = hub->mslabs->next;
        STOA_ASAN_UNPOISON(hub->mslabs, sizeof *hub->mslabs);
        free(hub->mslabs);
        hub->mslabs = next;
    }
    free(hub->scratch);
    free(hub->fan);
    free(hub->emit_buf);
    free(hub->instance);
    pthread_mutex_destroy(&hub->lock);
    free(hub);
}

stoa_session_t *stoa_hub_open(stoa_hub_t *hub, stoa_identity_t *ident, const stoa_transport_ops_t *ops,
                              void *transport, void *conn, stoa_msg_t **welcome_out)
{
    const stoa_config_t *cfg = hub->cfg;
    stoa_session_t *s = stoa_xcalloc(1, sizeof *s), *dup;
    int64_t now = stoa_now_ms();

    atomic_init(&s->refs, 2);   /* the caller's and the hub's */
    s->hub = hub;
    s->ident = ident;
    s->user = stoa_json_frozen(stoa_identity_user_json(ident));   /* ~150 bytes instead of ~1 KB */
    s->open = true;
    s->next_seq = 1;
    stoa_bucket_init(&s->presence_bucket, cfg->presence_burst, now);
    stoa_bucket_init(&s->ephemeral_bucket, cfg->ephemeral_burst, now);
    stoa_bucket_init(&s->join_bucket, cfg->join_burst, now);
    stoa_random_id(s->id, STOA_SESSION_ID_LEN);   /* 165 bits: a bearer secret */
    stoa_digest_hex(s->id, STOA_SESSION_ID_LEN, s->sidh, STOA_HUB_SIDH_LEN);

    hub_lock(hub);
    do {   /* 36^12 ids: a collision is unlikely, but cheap to rule out */
        stoa_random_id(s->peer, STOA_PEER_ID_LEN);
        HASH_FIND_STR(hub->sessions, s->peer, dup);
    } while (dup);
    HASH_ADD_STR(hub->sessions, peer, s);
    HASH_ADD(hh_id, hub->by_id, id, STOA_SESSION_ID_LEN, s);
    attach_locked(s, ops, transport, conn);
    if (welcome_out)
        *welcome_out = welcome(s, false);
    hub_emit(hub, hub_session_record(s));
    hub_unlock(hub);
    STOA_DEBUG("peer %s opened over %s (user %s)", s->peer, ops ? ops->name : "nothing yet", ident->sub);
    /* The identity's own rooms (user:{sub}, group:{id}): joined like any
     * other, so their room_state comes first on the session. */
    for (size_t i = 0; i < ident->nauto_rooms; i++) {
        char why[256];
        stoa_err_t err = stoa_hub_join(s, ident->auto_rooms[i], NULL, NULL, why, sizeof why);
        if (err)
            stoa_hub_send(s, stoa_wire_error(err, why, NULL, ident->auto_rooms[i]));
    }
    return s;
}

stoa_session_t *stoa_hub_find(stoa_hub_t *hub, const char *session_id)
{
    stoa_session_t *s = NULL;
    if (!session_id || strlen(session_id) != STOA_SESSION_ID_LEN)
        return NULL;
    hub_lock(hub);
    HASH_FIND(hh_id, hub->by_id, session_id, STOA_SESSION_ID_LEN, s);
    if (s)
        stoa_session_ref(s);
    hub_unlock(hub);
    return s;
}

stoa_err_t stoa_hub_attach(stoa_session_t *s, const stoa_transport_ops_t *ops, void *transport, void *conn,
                           bool has_last_seq, uint64_t last_seq, stoa_msg_t **welcome_out)
{
    stoa_hub_t *hub = s->hub;
    hub_lock(hub);
    if (!s->open || s->origin) {
        hub_unlock(hub);
        return STOA_ERR_SESSION_NOT_FOUND;
    }
    if (has_last_seq) {
        if (last_seq > s->cursor)
            hub_resync(s, "unknown_seq");      /* the client claims what it was never sent */
        else if (last_seq < floor_seq(s))
            hub_resync(s, "gap");              /* what it missed is no longer buffered */
        else {
            s->cursor = last_seq;
            while (s->len > 0 && entry_at(s, 0)->seq <= last_seq)
                drop_oldest(s);            /* it has those */
        }
    } else if (s->cursor < floor_seq(s)) {
        /* The buffer overflowed while detached: resync now, so that the
         * welcome's seq is the one before the next message. */
        hub_resync(s, "gap");
    }
    attach_locked(s, ops, transport, conn);
    if (welcome_out)
        *welcome_out = welcome(s, true);
    hub_unlock(hub);
    STOA_DEBUG("peer %s attached over %s after seq %llu", s->peer, ops->name, (unsigned long long)s->cursor);
    return STOA_OK;
}

void stoa_hub_detach(stoa_session_t *s, void *conn, bool end)
{
    stoa_hub_t *hub = s->hub;
    hub_lock(hub);
    if (s->open && s->conn == conn && s->ops) {
        /* The detaching connection needs no wakeup: forget it first. */
        s->ops = NULL;
        s->transport = s->conn = NULL;
        if (end)
            hub_close_locked(s, STOA_LEFT_DISCONNECT);
        else
            attach_locked(s, NULL, NULL, NULL);
    }
    hub_unlock(hub);
}

void stoa_hub_close(stoa_session_t *s, stoa_left_reason_t reason)
{
    hub_lock(s->hub);
    hub_close_locked(s, reason);
    hub_unlock(s->hub);
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
    hub_drop_buffer(s);
    free(s->origin);
    json_object_put(s->user);
    stoa_identity_free(s->ident);
    free(s);
}

const char *stoa_session_peer(const stoa_session_t *s)
{
    return s->peer;
}

const char *stoa_session_id(const stoa_session_t *s)
{
    return s->id;
}

const char *stoa_session_sub(const stoa_session_t *s)
{
    return s->ident->sub;
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

stoa_msg_t *stoa_session_next(stoa_session_t *s, void *conn, uint64_t *seq, bool *gone)
{
    return stoa_session_next_more(s, conn, seq, gone, NULL);
}

/* Up to max messages after the cursor into out[], under the lock. */
static size_t take_locked(stoa_session_t *s, void *conn, stoa_msg_t **out, size_t max, uint64_t *first_seq,
                          bool *gone, bool *more)
{
    bool attached = s->open && s->ops && s->conn == conn;
    size_t n = 0;
    if (gone)
        *gone = !attached;
    if (attached) {
        if (s->cursor < floor_seq(s))
            hub_resync(s, "gap");   /* this connection fell behind the buffer */
        if (s->cursor + 1 < s->next_seq && max > 0) {
            size_t i = (size_t)(s->cursor + 1 - entry_at(s, 0)->seq);
            if (first_seq)
                *first_seq = s->cursor + 1;
            for (; n < max && i < s->len; n++, i++)
                out[n] = stoa_msg_ref(entry_at(s, i)->msg);
            s->cursor += n;
        }
    }
    if (more)
        *more = attached && s->cursor + 1 < s->next_seq;
    return n;
}

stoa_msg_t *stoa_session_next_more(stoa_session_t *s, void *conn, uint64_t *seq, bool *gone, bool *more)
{
    stoa_msg_t *msg = NULL;
    hub_lock(s->hub);
    take_locked(s, conn, &msg, 1, seq, gone, more);
    hub_unlock(s->hub);
    return msg;
}

void stoa_session_next_each(stoa_session_next_req_t *t, size_t n)
{
    enum { AHEAD = 8 };
    if (!n)
        return;
    hub_lock(t[0].sess->hub);
    for (size_t i = 0; i < n; i++) {
        /* Sessions AHEAD on fetched, and the head of the buffer of those
         * half as far on (their session is here by then). */
        if (i + AHEAD < n) {
            __builtin_prefetch(t[i + AHEAD].sess, 1);
            __builtin_prefetch((char *)t[i + AHEAD].sess + 64, 1);
        }
        if (i + AHEAD / 2 < n && t[i + AHEAD / 2].sess->ring)
            __builtin_prefetch(entry_at(t[i + AHEAD / 2].sess, 0));
        t[i].msg = NULL;
        take_locked(t[i].sess, t[i].conn, &t[i].msg, 1, &t[i].seq, &t[i].gone, &t[i].more);
    }
    hub_unlock(t[0].sess->hub);
}

size_t stoa_session_take(stoa_session_t *s, void *conn, stoa_msg_t **out, size_t max, uint64_t *first_seq,
                         bool *gone, bool *more)
{
    size_t n;
    hub_lock(s->hub);
    n = take_locked(s, conn, out, max, first_seq, gone, more);
    hub_unlock(s->hub);
    return n;
}

void stoa_session_untake(stoa_session_t *s, void *conn, uint64_t seq)
{
    hub_lock(s->hub);
    if (s->open && s->ops && s->conn == conn && seq >= 1 && seq <= s->cursor)
        s->cursor = seq - 1;   /* if the buffer has dropped them since, the next take resyncs */
    hub_unlock(s->hub);
}

uint64_t stoa_session_delivered(stoa_session_t *s)
{
    uint64_t c;
    hub_lock(s->hub);
    c = s->cursor;
    hub_unlock(s->hub);
    return c;
}

void stoa_session_ack(stoa_session_t *s, uint64_t seq)
{
    hub_lock(s->hub);
    if (seq > s->cursor)
        seq = s->cursor;
    while (s->len > 0 && entry_at(s, 0)->seq <= seq)
        drop_oldest(s);
    hub_unlock(s->hub);
}

void *stoa_session_conn(stoa_session_t *s, const stoa_transport_ops_t *ops)
{
    void *t = NULL;
    hub_lock(s->hub);
    if (s->open && s->ops == ops)
        t = s->conn;
    hub_unlock(s->hub);
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
    return stoa_hub_join_ex(s, room_name, state, false, id, why, whylen);
}

stoa_err_t stoa_hub_join_ex(stoa_session_t *s, const char *room_name, json_object *state, bool observe,
                            json_object *id, char *why, size_t whylen)
{
    stoa_hub_t *hub = s->hub;
    const stoa_config_t *cfg = hub->cfg;
    const char *reason;
    stoa_err_t err = STOA_OK;
    room_t *room;
    membership_t *m;
    json_object *peers, *ev;

    if (!stoa_room_valid(room_name, (size_t)cfg->max_room_name_bytes, &reason)) {
        snprintf(why, whylen, "%s", reason);
        return STOA_ERR_BAD_ROOM;
    }
    if (observe && state && !json_object_is_type(state, json_type_null)) {
        snprintf(why, whylen, "an observer has no presence state: join without \"observe\" to have one");
        return STOA_ERR_BAD_MESSAGE;
    }
    if (state && !json_object_is_type(state, json_type_null)) {
        err = check_state(cfg, state, why, whylen);
        if (err)
            return err;
    } else {
        state = NULL;
    }
    hub_lock(hub);
    if (!s->open || s->origin)   /* a closed (or moved) session must not become a member again */
        FAIL(STOA_ERR_SESSION_NOT_FOUND, "the session ended or moved to another instance");
    if (!(stoa_perms_rights(s->ident->perms, room_name) & STOA_RIGHT_READ))
        FAIL(STOA_ERR_PERMISSION_DENIED, "no read permission on %s", room_name);
    if (hub_find_membership(s, room_name))
        FAIL(STOA_ERR_ALREADY_JOINED, "already in %s", room_name);
    if (s->nrooms >= (unsigned)cfg->max_rooms_per_conn)
        FAIL(STOA_ERR_TOO_MANY_ROOMS, "already in %d rooms, the limit", cfg->max_rooms_per_conn);
    HASH_FIND_STR(hub->rooms, room_name, room);
    if (room && !observe && room->npeers >= (unsigned)cfg->max_peers_per_room)
        FAIL(STOA_ERR_ROOM_FULL, "%s holds %d peers, the limit", room_name, cfg->max_peers_per_room);
    if (room && observe && room->nobservers >= (unsigned)cfg->max_observers_per_room)
        FAIL(STOA_ERR_ROOM_FULL, "%s holds %d observers, the limit", room_name, cfg->max_observers_per_room);
    if (!stoa_bucket_take(&s->join_bucket, hub->cfg->join_rate, hub->cfg->join_burst, stoa_now_ms()))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g joins and leaves a second", cfg->join_rate);
    m = hub_add_membership(hub, s, room_name,
                           state ? stoa_presence_merge(NULL, state) : json_object_get(hub->empty_state), observe);
    m->state_own = state != NULL;   /* a copy of its own, merged into in place from now on */
    room = m->room;
    peers = hub_room_peers(room);
    enqueue_owned(s, stoa_wire_room_state(room->name, peers, id));
    json_object_put(peers);
    if (hub->bus_ops) {   /* other instances hear of it */
        ev = json_object_new_object();
        json_object_object_add(ev, "t", json_object_new_string("join"));
        json_object_object_add(ev, "p", json_object_new_string(s->peer));
        json_object_object_add(ev, "room", json_object_new_string(room->name));
        json_object_object_add(ev, "state", json_object_get(m->state));
        if (observe)
            json_object_object_add(ev, "obs", json_object_new_boolean(true));
        hub_emit(hub, ev);
    }
    STOA_DEBUG("peer %s joined %s%s", s->peer, room->name, observe ? " as an observer" : "");
out:
    hub_unlock(hub);
    return err;
}

/* Find the caller's membership of room_name, or fail with NOT_IN_ROOM / BAD_ROOM. */
static stoa_err_t member_of(stoa_session_t *s, const char *room_name, membership_t **out, char *why,
                            size_t whylen)
{
    if (!s->open || s->origin) {   /* ended, or moved to another instance: its old connection is late */
        *out = NULL;
        snprintf(why, whylen, "the session ended or moved to another instance");
        return STOA_ERR_SESSION_NOT_FOUND;
    }
    *out = hub_find_membership(s, room_name);
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
    if (!stoa_bucket_take(&s->join_bucket, hub->cfg->join_rate, hub->cfg->join_burst, stoa_now_ms()))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g joins and leaves a second", hub->cfg->join_rate);
    hub_remove_membership(hub, m, STOA_LEFT_LEAVE);
    ack(s, id);
out:
    hub_unlock(hub);
    return err;
}

/* Undo an in-place merge that went over the size limit: the state again
 * as its text before (m->state_text, still valid) says. */
static void restore_state(membership_t *m)
{
    struct json_tokener *tok = json_tokener_new_ex(JSON_TOKENER_DEFAULT_DEPTH * 4);
    json_object *old = tok ? json_tokener_parse_ex(tok, m->state_text, (int)m->state_len) : NULL;
    if (tok)
        json_tokener_free(tok);
    json_object_put(m->state);
    if (!json_object_is_type(old, json_type_object)) {   /* cannot happen: it was encoded from an object */
        json_object_put(old);
        old = json_object_new_object();
        m->state_text_ok = false;
    }
    m->state = old;
}

stoa_err_t stoa_hub_presence(stoa_session_t *s, const char *room_name, json_object *patch, json_object *id,
                             char *why, size_t whylen)
{
    stoa_hub_t *hub = s->hub;
    const stoa_config_t *cfg = hub->cfg;
    membership_t *m;
    json_object *next = NULL, *ev;
    stoa_err_t err;
    size_t size = 0;

    if (!json_object_is_type(patch, json_type_object)) {
        snprintf(why, whylen, "state must be a JSON object (a merge-patch of your state)");
        return STOA_ERR_BAD_MESSAGE;
    }
    hub_lock(hub);
    err = member_of(s, room_name, &m, why, whylen);
    if (err)
        goto out;
    if (m->observer)
        FAIL(STOA_ERR_BAD_MESSAGE, "an observer has no presence: join %s without \"observe\" to have one", room_name);
    m->last_seen_ms = stoa_now_ms();
    if (!stoa_bucket_take(&s->presence_bucket, hub->cfg->presence_rate, hub->cfg->presence_burst,
                          m->last_seen_ms))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g presence updates a second", cfg->presence_rate);
    if (!m->state_own) {
        /* A shared state (none yet, or one from the bus): merged into a
         * copy, which is then this membership's own. */
        next = stoa_presence_merge(m->state, patch);
        size = stoa_json_encode(next, &hub->scratch, &hub->scratch_cap);
        if (size > (size_t)cfg->max_state_bytes)
            FAIL(STOA_ERR_STATE_TOO_LARGE, "presence state would be %zu bytes; the limit is %d", size,
                 cfg->max_state_bytes);
        json_object_put(m->state);
        m->state = next;
        next = NULL;
        m->state_own = true;
    } else {
        /* Its own state: merged in place (no copy of the rest of it) and
         * encoded once, for the limit and for the presence messages. The
         * text of the state before is kept until the new one is known to
         * fit: over the limit, the state is restored from it. */
        encode_state(m);
        stoa_presence_merge_inplace(&m->state, patch);
        size = stoa_json_encode(m->state, &hub->scratch, &hub->scratch_cap);
        if (size > (size_t)cfg->max_state_bytes) {
            restore_state(m);
            FAIL(STOA_ERR_STATE_TOO_LARGE, "presence state would be %zu bytes; the limit is %d", size,
                 cfg->max_state_bytes);
        }
    }
    take_scratch(hub, m, size);
    hub_state_changed(m);
    if (hub->bus_ops) {   /* other instances hear of it */
        ev = json_object_new_object();
        json_object_object_add(ev, "t", json_object_new_string("pres"));
        json_object_object_add(ev, "p", json_object_new_string(s->peer));
        json_object_object_add(ev, "room", json_object_new_string(room_name));
        json_object_object_add(ev, "state", json_object_get(m->state));
        hub_emit(hub, ev);
    }
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

stoa_err_t stoa_hub_ephemeral_text(stoa_session_t *s, const char *room_name, const char *data, size_t data_len,
                                   json_object *id, char *why, size_t whylen)
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
    if (!stoa_bucket_take(&s->ephemeral_bucket, hub->cfg->ephemeral_per_min / 60.0,
                          hub->cfg->ephemeral_burst, m->last_seen_ms))
        FAIL(STOA_ERR_RATE_LIMITED, "more than %g ephemeral messages a minute", hub->cfg->ephemeral_per_min);
    if (m->room->ndirty)   /* presence sent before it goes out before it */
        hub_flush_room(hub, m->room, stoa_now_ms());
    if (has_local_recipient(m->room, s)) {   /* else no one here reads it: not encoded */
        msg = stoa_wire_ephemeral_text(m->room->name, s->peer, s->user, data, data_len);
        hub_broadcast(m->room, s, msg);
        stoa_msg_unref(msg);
    }
    hub_emit_ephemeral(hub, s->peer, m->room->name, data, data_len);   /* other instances hear of it */
    ack(s, id);
out:
    hub_unlock(hub);
    return err;
}

stoa_err_t stoa_hub_ephemeral(stoa_session_t *s, const char *room_name, json_object *data, json_object *id,
                              char *why, size_t whylen)
{
    char *text = NULL;
    size_t cap = 0, len = stoa_json_encode(data, &text, &cap);
    stoa_err_t err = stoa_hub_ephemeral_text(s, room_name, text, len, id, why, whylen);
    free(text);
    return err;
}

void stoa_hub_tick(stoa_hub_t *hub, int64_t now_ms)
{
    const stoa_config_t *cfg = hub->cfg;
    int64_t limit = (int64_t)cfg->heartbeat_timeout_s * 1000;
    room_t *room, *rtmp;
    membership_t *m, *mtmp;
    stoa_session_t *s, *stmp;

    hub_lock(hub);
    HASH_ITER(hh, hub->rooms, room, rtmp) {
        DL_FOREACH_SAFE2(room->members, m, mtmp, room_next) {
            if (!m->sess->origin && now_ms - m->last_seen_ms > limit) {
                STOA_INFO("peer %s evicted from %s after %lld ms without a heartbeat", m->sess->peer,
                          room->name, (long long)(now_ms - m->last_seen_ms));
                /* Frees room with its last member; both loops have
                 * already read their next pointers, so they stay valid. */
                hub_remove_membership(hub, m, STOA_LEFT_TIMEOUT);
            }
        }
    }
    HASH_ITER(hh, hub->sessions, s, stmp) {
        if (s->origin)
            continue;   /* its own instance looks after it */
        if (!s->ops && now_ms - s->detached_at_ms > cfg->session_grace_ms) {
            STOA_INFO("peer %s: no connection for %lld ms: closing its session", s->peer,
                      (long long)(now_ms - s->detached_at_ms));
            hub_close_locked(s, STOA_LEFT_DISCONNECT);
        } else {
            trim(s, now_ms, UINT64_MAX);
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
    peers = hub_room_peers(room);
    json_object_object_add(o, "room", json_object_new_string(room_name));
    json_object_object_add(o, "peers", peers);
    text = stoa_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    hub_unlock(hub);
    return text;
}

stoa_err_t stoa_hub_publish(stoa_hub_t *hub, const char *room_name, json_object *data, size_t *delivered, char *why,
                            size_t whylen)
{
    const char *reason;
    room_t *room;
    stoa_msg_t *msg;
    json_object *ev;
    if (!stoa_room_valid(room_name, (size_t)hub->cfg->max_room_name_bytes, &reason)) {
        snprintf(why, whylen, "%s", reason);
        return STOA_ERR_BAD_ROOM;
    }
    hub_lock(hub);
    *delivered = 0;
    HASH_FIND_STR(hub->rooms, room_name, room);
    if (room) {
        if (room->ndirty)
            hub_flush_room(hub, room, stoa_now_ms());
        msg = stoa_wire_server_message(room_name, data);
        hub_broadcast(room, NULL, msg);
        stoa_msg_unref(msg);
        *delivered = room->npeers + room->nobservers;
    }
    if (hub->bus_ops) {   /* other instances hear of it */
        ev = json_object_new_object();   /* every instance delivers to its own members */
        json_object_object_add(ev, "t", json_object_new_string("pub"));
        json_object_object_add(ev, "room", json_object_new_string(room_name));
        json_object_object_add(ev, "data", json_object_get(data));
        hub_emit(hub, ev);
    }
    hub_unlock(hub);
    return STOA_OK;
}

stoa_err_t stoa_hub_kick(stoa_hub_t *hub, const char *room_name, const char *peer, char *why, size_t whylen)
{
    room_t *room;
    membership_t *m = NULL;
    hub_lock(hub);
    HASH_FIND_STR(hub->rooms, room_name, room);
    if (room) {
        stoa_session_t *s;
        HASH_FIND_STR(hub->sessions, peer, s);
        m = s ? membership_of(hub, room, s) : NULL;
    }
    if (m && m->sess->origin) {   /* connected elsewhere: its instance removes it */
        json_object *ev = json_object_new_object();
        json_object_object_add(ev, "t", json_object_new_string("kick"));
        json_object_object_add(ev, "to", json_object_new_string(m->sess->origin));
        json_object_object_add(ev, "p", json_object_new_string(peer));
        json_object_object_add(ev, "room", json_object_new_string(room_name));
        hub_emit(hub, ev);
    } else if (m) {
        hub_remove_membership(hub, m, STOA_LEFT_KICKED);
    }
    hub_unlock(hub);
    if (!m) {
        snprintf(why, whylen, "peer %.40s is not in %.200s", peer, room_name);
        return STOA_ERR_NOT_FOUND;
    }
    return STOA_OK;
}

json_object *stoa_hub_rooms(stoa_hub_t *hub)
{
    json_object *arr = json_object_new_array();
    hub_lock(hub);
    for (room_t *r = hub->rooms; r; r = r->hh.next) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "room", json_object_new_string(r->name));
        json_object_object_add(o, "peers", json_object_new_int64((int64_t)r->npeers));
        json_object_object_add(o, "observers", json_object_new_int64((int64_t)r->nobservers));
        json_object_array_add(arr, o);
    }
    hub_unlock(hub);
    return arr;
}

void stoa_hub_notice(stoa_hub_t *hub, const char *level, const char *message, bool everywhere)
{
    stoa_msg_t *msg;
    json_object *ev;
    hub_lock(hub);
    msg = stoa_wire_notice(level, message);
    for (stoa_session_t *s = hub->sessions; s; s = s->hh.next)
        hub_enqueue(s, msg);
    stoa_msg_unref(msg);
    ev = json_object_new_object();
    json_object_object_add(ev, "t", json_object_new_string("notice"));
    json_object_object_add(ev, "level", json_object_new_string(level));
    json_object_object_add(ev, "message", json_object_new_string(message));
    if (everywhere)
        hub_emit(hub, ev);
    else
        json_object_put(ev);
    hub_unlock(hub);
}

char *stoa_hub_session_json(stoa_session_t *s)
{
    json_object *o = json_object_new_object(), *rooms = json_object_new_array();
    char *text;
    hub_lock(s->hub);
    json_object_object_add(o, "session", json_object_new_string(s->id));
    json_object_object_add(o, "peer", json_object_new_string(s->peer));
    json_object_object_add(o, "user", json_object_get(s->user));
    json_object_object_add(o, "transport", s->ops ? json_object_new_string(s->ops->name) : NULL);
    for (membership_t *m = s->rooms; m; m = m->sess_next)
        json_object_array_add(rooms, json_object_new_string(m->room->name));
    json_object_object_add(o, "rooms", rooms);
    json_object_object_add(o, "seq", json_object_new_int64((int64_t)(s->next_seq - 1)));
    json_object_object_add(o, "delivered", json_object_new_int64((int64_t)s->cursor));
    json_object_object_add(o, "buffered", json_object_new_int64((int64_t)s->len));
    if (s->hub->instance)
        json_object_object_add(o, "instance", json_object_new_string(s->hub->instance));
    text = stoa_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    hub_unlock(s->hub);
    return text;
}

json_object *stoa_hub_transport_counts(stoa_hub_t *hub)
{
    json_object *o = json_object_new_object();
    hub_lock(hub);
    for (stoa_session_t *s = hub->sessions; s; s = s->hh.next) {
        const char *name = s->ops ? s->ops->name : "none";
        if (s->origin)
            continue;
        json_object *n = NULL;
        int64_t count = json_object_object_get_ex(o, name, &n) ? json_object_get_int64(n) : 0;
        json_object_object_add(o, name, json_object_new_int64(count + 1));
    }
    hub_unlock(hub);
    return o;
}

void stoa_hub_stats(stoa_hub_t *hub, size_t *sessions, size_t *rooms)
{
    hub_lock(hub);
    *sessions = 0;
    for (stoa_session_t *s = hub->sessions; s; s = s->hh.next)
        *sessions += !s->origin;
    *rooms = HASH_COUNT(hub->rooms);
    hub_unlock(hub);
}
