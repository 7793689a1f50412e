/* hub_remote.c - the hub's cross-instance side: what it tells the bus and
 * what it does with what the bus brings (see hub.h, "Many instances as
 * one", and docs/architecture.md for the events).
 *
 * Every function here runs with the hub lock held (taken by the public
 * entry points below), like the rest of the hub.
 */
#include "hub_internal.h"
#include "stoa/jsontext.h"
#include "stoa/log.h"
#include "stoa/proto.h"
#include "stoa/room.h"
#include "stoa/util.h"
#include "stoa/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- what the hub tells the bus ---- */

/* Under the hub lock. The event's text is json-c's, byte for byte (the
 * bus splices parts of it into client messages on the other instances,
 * next to parts json-c wrote), from the shared fast encoder. */
void hub_emit(stoa_hub_t *hub, json_object *ev)
{
    if (hub->bus_ops) {
        size_t len = stoa_json_encode(ev, &hub->emit_buf, &hub->emit_cap);
        hub->bus_ops->emit(hub->bus, hub->emit_buf, len);
        hub->bus_kick = true;
    }
    json_object_put(ev);
}

void hub_emit_ephemeral(stoa_hub_t *hub, const char *peer, const char *room, const char *data, size_t data_len)
{
    static const char T1[] = "{\"t\":\"eph\",\"p\":\"", T2[] = "\",\"room\":\"", T3[] = "\",\"data\":";
    size_t plen = strlen(peer), rlen = strlen(room), len, need;
    char *p;
    if (!hub->bus_ops)
        return;
    len = sizeof T1 - 1 + plen + sizeof T2 - 1 + rlen + sizeof T3 - 1 + data_len + 1;
    need = len + 1;
    if (hub->emit_cap < need) {
        hub->emit_buf = stoa_xrealloc(hub->emit_buf, need);
        hub->emit_cap = need;
    }
#define PUT(src, n) (memcpy(p, (src), (n)), p += (n))
    p = hub->emit_buf;
    PUT(T1, sizeof T1 - 1);
    PUT(peer, plen);
    PUT(T2, sizeof T2 - 1);
    PUT(room, rlen);
    PUT(T3, sizeof T3 - 1);
    PUT(data, data_len);
    *p++ = '}';
    *p = '\0';
#undef PUT
    hub->bus_ops->emit(hub->bus, hub->emit_buf, len);
    hub->bus_kick = true;
}

json_object *hub_session_record(stoa_session_t *s)
{
    json_object *o = json_object_new_object(), *rooms = json_object_new_object();
    const stoa_identity_t *id = s->ident;

    json_object_object_add(o, "t", json_object_new_string("sess"));
    json_object_object_add(o, "p", json_object_new_string(s->peer));
    json_object_object_add(o, "h", json_object_new_string(s->sidh));
    json_object_object_add(o, "g", json_object_new_int64((int64_t)s->gen));
    json_object_object_add(o, "u", json_object_get(s->user));
    json_object_object_add(o, "sub", json_object_new_string(id->sub));
    json_object_object_add(o, "anon", json_object_new_boolean(id->anonymous));
    json_object_object_add(o, "perms", stoa_perms_to_json(id->perms));
    json_object_object_add(o, "exp", json_object_new_int64(id->exp));
    /* room -> state; an observer's membership (no state) is false */
    for (membership_t *m = s->rooms; m; m = m->sess_next)
        json_object_object_add(rooms, m->room->name,
                               m->observer ? json_object_new_boolean(false) : json_object_get(m->state));
    json_object_object_add(o, "rooms", rooms);
    return o;
}

void stoa_hub_set_bus(stoa_hub_t *hub, const stoa_hub_bus_ops_t *ops, void *bus, const char *instance)
{
    hub_lock(hub);
    hub->bus_ops = ops;
    hub->bus = ops ? bus : NULL;
    free(hub->instance);
    hub->instance = ops && instance ? stoa_xstrdup(instance) : NULL;
    hub->bus_kick = false;
    hub_unlock(hub);
}

static void emit_snapshot(stoa_hub_t *hub)
{
    json_object *ev = json_object_new_object(), *list = json_object_new_array();
    for (stoa_session_t *s = hub->sessions; s; s = s->hh.next)
        if (!s->origin && s->open)
            json_object_array_add(list, hub_session_record(s));
    json_object_object_add(ev, "t", json_object_new_string("snap"));
    json_object_object_add(ev, "s", list);
    hub_emit(hub, ev);
}

void stoa_hub_bus_snapshot(stoa_hub_t *hub)
{
    hub_lock(hub);
    emit_snapshot(hub);
    hub_unlock(hub);
}

void stoa_hub_bus_sync(stoa_hub_t *hub, const char *to)
{
    json_object *ev = json_object_new_object();
    json_object_object_add(ev, "t", json_object_new_string("sync"));
    json_object_object_add(ev, "to", json_object_new_string(to));
    hub_lock(hub);
    hub_emit(hub, ev);
    hub_unlock(hub);
}

/* ---- what the bus brings ---- */

static const char *str_of(json_object *ev, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(ev, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static json_object *obj_of(json_object *ev, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(ev, key, &v) || !json_object_is_type(v, json_type_object))
        return NULL;
    return v;
}

static stoa_left_reason_t reason_of(const char *name)
{
    for (int r = STOA_LEFT_LEAVE; r <= STOA_LEFT_KICKED; r++)
        if (name && strcmp(name, stoa_left_reason_name((stoa_left_reason_t)r)) == 0)
            return (stoa_left_reason_t)r;
    return STOA_LEFT_DISCONNECT;
}

static stoa_session_t *by_peer(stoa_hub_t *hub, const char *peer)
{
    stoa_session_t *s = NULL;
    if (peer)
        HASH_FIND_STR(hub->sessions, peer, s);
    return s;
}

/* The remote session origin announced as peer; NULL when unknown here
 * (*missing then says so), or when it belongs to another instance now
 * (it moved: the old instance's late events are ignored). */
static stoa_session_t *remote_of(stoa_hub_t *hub, const char *origin, const char *peer, bool *missing)
{
    stoa_session_t *s = by_peer(hub, peer);
    if (!s) {
        *missing = true;
        return NULL;
    }
    return s->origin && strcmp(s->origin, origin) == 0 ? s : NULL;
}

/* An identity rebuilt from a session record: what a remote session (and
 * one moved here) is allowed. NULL when the record is malformed. */
static stoa_identity_t *record_identity(stoa_hub_t *hub, json_object *rec, json_object *user)
{
    const char *sub = str_of(rec, "sub"), *name = str_of(user, "name"), *color = str_of(user, "color");
    json_object *perms = obj_of(rec, "perms"), *v;
    stoa_identity_t *id;
    char err[128];

    if (!sub || !perms)
        return NULL;
    id = stoa_identity_new(sub, name ? name : sub, color ? color : "#888888");
    /* A token's grants plus the exact ones for its own rooms (user:, group:). */
    id->perms = stoa_perms_from_json_max(perms, (size_t)hub->cfg->max_room_name_bytes,
                                         STOA_PERM_MAX_PATTERNS + STOA_MAX_GROUPS + 1, err, sizeof err);
    if (!id->perms) {
        free(id);
        return NULL;
    }
    id->anonymous = json_object_object_get_ex(rec, "anon", &v) && json_object_get_boolean(v);
    id->exp = json_object_object_get_ex(rec, "exp", &v) ? json_object_get_int64(v) : 0;
    return id;
}

/* Make s's rooms and states those of rooms (a JSON object room -> state,
 * or false for an observer), telling local members of every difference. */
static void set_rooms(stoa_hub_t *hub, stoa_session_t *s, json_object *rooms)
{
    membership_t *m, *tmp;
    DL_FOREACH_SAFE2(s->rooms, m, tmp, sess_next) {
        json_object *want = NULL;
        if (!json_object_object_get_ex(rooms, m->room->name, &want) ||
            m->observer != json_object_is_type(want, json_type_boolean))
            hub_remove_membership(hub, m, STOA_LEFT_LEAVE);   /* gone, or peer <-> observer */
    }
    json_object_object_foreach(rooms, name, state) {
        bool observer = json_object_is_type(state, json_type_boolean);
        if ((!observer && !json_object_is_type(state, json_type_object)) ||
            !stoa_room_valid(name, (size_t)hub->cfg->max_room_name_bytes, NULL))
            continue;
        m = hub_find_membership(s, name);
        if (!m)
            hub_add_membership(hub, s, name,
                               observer ? json_object_get(hub->empty_state) : json_object_get(state), observer);
        else if (!observer && !json_object_equal(m->state, state))
            hub_set_state(m, json_object_get(state));
    }
}

/* A local session another instance has taken over: let its connection go
 * and keep it as that instance's remote session, without telling the
 * rooms anything (the peer has not left). */
static void disown(stoa_hub_t *hub, stoa_session_t *s, const char *origin)
{
    if (s->ops)
        hub_add_wake(hub, s->ops, s->transport, s->conn, s);
    s->ops = NULL;
    s->transport = s->conn = NULL;
    hub_drop_buffer(s);
    HASH_DELETE(hh_id, hub->by_id, s);
    s->origin = stoa_xstrdup(origin);
    STOA_INFO("peer %s moved to instance %s", s->peer, origin);
}

/* A session record from origin: create, update or take over the session. */
static void apply_record(stoa_hub_t *hub, const char *origin, json_object *rec)
{
    const char *peer = str_of(rec, "p"), *sidh = str_of(rec, "h");
    json_object *user = obj_of(rec, "u"), *rooms = obj_of(rec, "rooms"), *g;
    uint64_t gen = json_object_object_get_ex(rec, "g", &g) ? (uint64_t)json_object_get_int64(g) : 0;
    stoa_session_t *s = by_peer(hub, peer);

    if (!peer || strlen(peer) != STOA_PEER_ID_LEN || !sidh || strlen(sidh) != STOA_HUB_SIDH_LEN || !user ||
        !rooms)
        return;
    if (s && gen < s->gen)
        return;   /* stale: it has moved since */
    if (s && !s->origin) {
        if (gen == s->gen)
            return;   /* ours; a record of the same generation is an echo of an old state */
        if (strcmp(s->sidh, sidh) != 0) {
            STOA_WARN("bus: instance %s announces peer %s, a peer id of another session here; ignored", origin,
                      peer);
            return;
        }
        disown(hub, s, origin);
    } else if (s) {
        if (strcmp(s->origin, origin) != 0) {
            free(s->origin);
            s->origin = stoa_xstrdup(origin);
        }
    } else {
        stoa_identity_t *id = record_identity(hub, rec, user);
        if (!id)
            return;
        s = stoa_xcalloc(1, sizeof *s);
        atomic_init(&s->refs, 1);   /* the hub's */
        s->hub = hub;
        memcpy(s->peer, peer, STOA_PEER_ID_LEN + 1);
        memcpy(s->sidh, sidh, STOA_HUB_SIDH_LEN + 1);
        s->ident = id;
        s->user = stoa_json_frozen(json_object_get(user));
        s->open = true;
        s->next_seq = 1;
        s->origin = stoa_xstrdup(origin);
        HASH_ADD_STR(hub->sessions, peer, s);
    }
    s->gen = gen;
    s->mark = hub->snap_epoch;
    set_rooms(hub, s, rooms);
}

static void apply_snapshot(stoa_hub_t *hub, const char *origin, json_object *ev)
{
    json_object *list;
    stoa_session_t *s, *tmp;
    unsigned epoch = ++hub->snap_epoch;

    if (!json_object_object_get_ex(ev, "s", &list) || !json_object_is_type(list, json_type_array))
        return;
    for (size_t i = 0; i < json_object_array_length(list); i++)
        apply_record(hub, origin, json_object_array_get_idx(list, i));
    /* origin's sessions the snapshot does not list are gone */
    HASH_ITER(hh, hub->sessions, s, tmp) {
        if (s->origin && strcmp(s->origin, origin) == 0 && s->mark != epoch) {
            stoa_session_ref(s);
            hub_close_locked(s, STOA_LEFT_DISCONNECT);
            stoa_session_unref(s);
        }
    }
}

static void drop_origin(stoa_hub_t *hub, const char *origin)
{
    stoa_session_t *s, *tmp;
    size_t n = 0;
    HASH_ITER(hh, hub->sessions, s, tmp) {
        if (s->origin && strcmp(s->origin, origin) == 0) {
            stoa_session_ref(s);
            hub_close_locked(s, STOA_LEFT_DISCONNECT);
            stoa_session_unref(s);
            n++;
        }
    }
    if (n)
        STOA_INFO("instance %s is gone: its %zu peer(s) left", origin, n);
}

/* One event; returns true when it shows that events from origin were
 * missed. Forwarded client messages for this instance go on *fwd. */
static bool apply_event(stoa_hub_t *hub, const char *origin, json_object *ev, json_object **fwd)
{
    const char *t = str_of(ev, "t"), *room = str_of(ev, "room"), *to;
    bool missing = false;
    stoa_session_t *s;
    membership_t *m;
    json_object *v;
    stoa_msg_t *msg;
    room_t *r;

    if (!t)
        return false;
    if (strcmp(t, "sess") == 0) {
        hub->snap_epoch++;
        apply_record(hub, origin, ev);
    } else if (strcmp(t, "snap") == 0) {
        apply_snapshot(hub, origin, ev);
    } else if (strcmp(t, "join") == 0 || strcmp(t, "pres") == 0) {
        json_object *state = obj_of(ev, "state");
        bool observer = json_object_object_get_ex(ev, "obs", &v) && json_object_get_boolean(v);
        if (!room || !state || !(s = remote_of(hub, origin, str_of(ev, "p"), &missing)))
            return missing;
        if (!stoa_room_valid(room, (size_t)hub->cfg->max_room_name_bytes, NULL))
            return false;
        if ((m = hub_find_membership(s, room))) {
            if (!m->observer)
                hub_set_state(m, json_object_get(state));
        } else {
            hub_add_membership(hub, s, room, observer ? json_object_get(hub->empty_state) : json_object_get(state),
                               observer);
        }
    } else if (strcmp(t, "leave") == 0) {
        if (!room || !(s = remote_of(hub, origin, str_of(ev, "p"), &missing)))
            return missing;
        if ((m = hub_find_membership(s, room)))
            hub_remove_membership(hub, m, reason_of(str_of(ev, "why")));
    } else if (strcmp(t, "close") == 0) {
        if (!(s = remote_of(hub, origin, str_of(ev, "p"), &missing)))
            return false;   /* a close of what we never knew changes nothing */
        stoa_session_ref(s);
        hub_close_locked(s, STOA_LEFT_DISCONNECT);
        stoa_session_unref(s);
    } else if (strcmp(t, "eph") == 0) {
        if (!room || !json_object_object_get_ex(ev, "data", &v) ||
            !(s = remote_of(hub, origin, str_of(ev, "p"), &missing)))
            return missing;
        if (!(m = hub_find_membership(s, room)))
            return true;   /* it joined in an event we missed */
        if (m->room->ndirty)
            hub_flush_room(hub, m->room, stoa_now_ms());
        msg = stoa_wire_ephemeral(room, s->peer, s->user, v);
        hub_broadcast(m->room, s, msg);
        stoa_msg_unref(msg);
    } else if (strcmp(t, "pub") == 0) {
        if (!room || !json_object_object_get_ex(ev, "data", &v))
            return false;
        HASH_FIND_STR(hub->rooms, room, r);
        if (r) {
            if (r->ndirty)
                hub_flush_room(hub, r, stoa_now_ms());
            msg = stoa_wire_server_message(room, v);
            hub_broadcast(r, NULL, msg);
            stoa_msg_unref(msg);
        }
    } else if (strcmp(t, "notice") == 0) {
        const char *level = str_of(ev, "level"), *text = str_of(ev, "message");
        if (!level || !text)
            return false;
        msg = stoa_wire_notice(level, text);
        for (s = hub->sessions; s; s = s->hh.next)
            hub_enqueue(s, msg);
        stoa_msg_unref(msg);
    } else if (strcmp(t, "kick") == 0) {
        to = str_of(ev, "to");
        if (!room || !to || !hub->instance || strcmp(to, hub->instance) != 0)
            return false;
        s = by_peer(hub, str_of(ev, "p"));
        if (s && !s->origin && (m = hub_find_membership(s, room)))
            hub_remove_membership(hub, m, STOA_LEFT_KICKED);
    } else if (strcmp(t, "sync") == 0) {
        to = str_of(ev, "to");
        if (to && (strcmp(to, "*") == 0 || (hub->instance && strcmp(to, hub->instance) == 0)))
            emit_snapshot(hub);
    } else if (strcmp(t, "bye") == 0) {
        drop_origin(hub, origin);
    } else if (strcmp(t, "fwd") == 0) {
        to = str_of(ev, "to");
        if (to && hub->instance && strcmp(to, hub->instance) == 0) {
            if (!*fwd)
                *fwd = json_object_new_array();
            json_object_array_add(*fwd, json_object_get(ev));
        }
    }
    return false;
}

/* A publish left as text by the bus: as the "pub" case of apply_event,
 * with the client message spliced as apply_eph_text does. */
static void apply_pub_text(stoa_hub_t *hub, const stoa_hub_bus_event_t *ev)
{
    static const char T1[] = "{\"type\":\"message\",\"room\":\"", T2[] = "\",\"data\":";
    char roombuf[512], textbuf[8192], *room = roombuf, *text = textbuf, *p;
    size_t len;
    stoa_msg_t *msg;
    room_t *r;

    if (ev->room_len >= sizeof roombuf)
        room = stoa_xmalloc(ev->room_len + 1);
    memcpy(room, ev->room, ev->room_len);
    room[ev->room_len] = '\0';
    HASH_FIND_STR(hub->rooms, room, r);
    if (room != roombuf)
        free(room);
    if (!r)
        return;
    if (r->ndirty)
        hub_flush_room(hub, r, stoa_now_ms());
    len = sizeof T1 - 1 + ev->room_len + sizeof T2 - 1 + ev->data_len + 1;
    if (len > sizeof textbuf)
        text = stoa_xmalloc(len);
    p = text;
    memcpy(p, T1, sizeof T1 - 1);
    p += sizeof T1 - 1;
    memcpy(p, ev->room, ev->room_len);
    p += ev->room_len;
    memcpy(p, T2, sizeof T2 - 1);
    p += sizeof T2 - 1;
    memcpy(p, ev->data, ev->data_len);
    p += ev->data_len;
    *p++ = '}';
    msg = stoa_msg_new(text, (size_t)(p - text));
    if (text != textbuf)
        free(text);
    hub_broadcast(r, NULL, msg);
    stoa_msg_unref(msg);
}

/* An ephemeral message left as text by the bus (ev->obj NULL): as the
 * "eph" case of apply_event, with the client message spliced from the
 * texts (stoa_wire_ephemeral_text) instead of built as a json-c tree and
 * encoded. */
static bool apply_eph_text(stoa_hub_t *hub, const char *origin, const stoa_hub_bus_event_t *ev)
{
    char peer[STOA_PEER_ID_LEN + 1], roombuf[512], *room = roombuf;
    bool missing = false;
    stoa_session_t *s;
    membership_t *m;
    stoa_msg_t *msg;

    memcpy(peer, ev->peer, STOA_PEER_ID_LEN);
    peer[STOA_PEER_ID_LEN] = '\0';
    if (!(s = remote_of(hub, origin, peer, &missing)))
        return missing;
    if (ev->room_len >= sizeof roombuf)
        room = stoa_xmalloc(ev->room_len + 1);
    memcpy(room, ev->room, ev->room_len);
    room[ev->room_len] = '\0';
    m = hub_find_membership(s, room);
    if (room != roombuf)
        free(room);
    if (!m)
        return true;   /* it joined in an event we missed */
    if (m->room->ndirty)
        hub_flush_room(hub, m->room, stoa_now_ms());
    msg = stoa_wire_ephemeral_text(m->room->name, s->peer, s->user, ev->data, ev->data_len);
    hub_broadcast(m->room, s, msg);
    stoa_msg_unref(msg);
    return false;
}

bool stoa_hub_remote_apply_events(stoa_hub_t *hub, const char *origin, stoa_hub_bus_event_t *events, size_t n,
                                  json_object **forwarded)
{
    bool missed = false;
    *forwarded = NULL;
    hub_lock(hub);
    for (size_t i = 0; i < n; i++) {
        if (events[i].obj)
            missed |= apply_event(hub, origin, events[i].obj, forwarded);
        else if (events[i].peer)
            missed |= apply_eph_text(hub, origin, &events[i]);
        else
            apply_pub_text(hub, &events[i]);
    }
    /* Released under the lock, as in stoa_hub_remote_apply. */
    for (size_t i = 0; i < n; i++) {
        json_object_put(events[i].obj);
        events[i].obj = NULL;
    }
    hub_unlock(hub);
    return missed;
}

bool stoa_hub_remote_apply(stoa_hub_t *hub, const char *origin, json_object *events, json_object **forwarded)
{
    bool missed = false;
    *forwarded = NULL;
    hub_lock(hub);
    if (json_object_is_type(events, json_type_array))
        for (size_t i = 0; i < json_object_array_length(events); i++)
            missed |= apply_event(hub, origin, json_object_array_get_idx(events, i), forwarded);
    /* Released under the lock: the hub now shares objects from this tree,
     * and json-c reference counts are not atomic. (What *forwarded holds
     * is shared with nothing in the hub.) */
    json_object_put(events);
    hub_unlock(hub);
    return missed;
}

void stoa_hub_remote_drop(stoa_hub_t *hub, const char *origin)
{
    hub_lock(hub);
    drop_origin(hub, origin);
    hub_unlock(hub);
}

/* The remote session whose id digests to sidh, or NULL. */
static stoa_session_t *remote_by_sidh(stoa_hub_t *hub, const char *sidh)
{
    for (stoa_session_t *s = hub->sessions; s; s = s->hh.next)
        if (s->origin && strcmp(s->sidh, sidh) == 0)
            return s;
    return NULL;
}

bool stoa_hub_forward(stoa_hub_t *hub, const char *session_id, json_object *msgs, bool end)
{
    char sidh[STOA_HUB_SIDH_LEN + 1];
    stoa_session_t *s;
    json_object *ev;

    if (!session_id || strlen(session_id) != STOA_SESSION_ID_LEN)
        return false;
    stoa_digest_hex(session_id, STOA_SESSION_ID_LEN, sidh, STOA_HUB_SIDH_LEN);
    hub_lock(hub);
    s = hub->bus_ops ? remote_by_sidh(hub, sidh) : NULL;
    if (s) {
        ev = json_object_new_object();
        json_object_object_add(ev, "t", json_object_new_string("fwd"));
        json_object_object_add(ev, "to", json_object_new_string(s->origin));
        json_object_object_add(ev, "p", json_object_new_string(s->peer));
        json_object_object_add(ev, "h", json_object_new_string(sidh));
        if (end)
            json_object_object_add(ev, "end", json_object_new_boolean(true));
        else
            json_object_object_add(ev, "m", json_object_get(msgs));
        hub_emit(hub, ev);
    }
    hub_unlock(hub);
    return s != NULL;
}

void stoa_hub_forwarded(stoa_hub_t *hub, json_object *fwd)
{
    const char *peer = str_of(fwd, "p"), *sidh = str_of(fwd, "h");
    stoa_session_t *s;
    json_object *m, *end;

    hub_lock(hub);
    s = by_peer(hub, peer);
    if (s && (s->origin || !sidh || strcmp(s->sidh, sidh) != 0))
        s = NULL;   /* moved again, or not the session the sender meant */
    if (s)
        stoa_session_ref(s);
    hub_unlock(hub);
    if (!s)
        return;
    if (json_object_object_get_ex(fwd, "end", &end) && json_object_get_boolean(end)) {
        stoa_hub_close(s, STOA_LEFT_LEAVE);
    } else if (json_object_object_get_ex(fwd, "m", &m)) {
        if (json_object_is_type(m, json_type_array))
            for (size_t i = 0; i < json_object_array_length(m); i++)
                stoa_proto_handle_json(s, json_object_array_get_idx(m, i), NULL);
        else
            stoa_proto_handle_json(s, m, NULL);
    }
    stoa_session_unref(s);
}

char *stoa_hub_remote_session_json(stoa_hub_t *hub, const char *session_id)
{
    char sidh[STOA_HUB_SIDH_LEN + 1], *text = NULL;
    stoa_session_t *s;

    if (!session_id || strlen(session_id) != STOA_SESSION_ID_LEN)
        return NULL;
    stoa_digest_hex(session_id, STOA_SESSION_ID_LEN, sidh, STOA_HUB_SIDH_LEN);
    hub_lock(hub);
    if ((s = remote_by_sidh(hub, sidh))) {
        json_object *o = json_object_new_object(), *rooms = json_object_new_array();
        json_object_object_add(o, "session", json_object_new_string(session_id));
        json_object_object_add(o, "peer", json_object_new_string(s->peer));
        json_object_object_add(o, "user", json_object_get(s->user));
        json_object_object_add(o, "transport", NULL);
        json_object_object_add(o, "instance", json_object_new_string(s->origin));
        for (membership_t *m = s->rooms; m; m = m->sess_next)
            json_object_array_add(rooms, json_object_new_string(m->room->name));
        json_object_object_add(o, "rooms", rooms);
        text = stoa_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    }
    hub_unlock(hub);
    return text;
}

bool stoa_hub_remote_sub(stoa_hub_t *hub, const char *session_id, char *sub, size_t sublen)
{
    char sidh[STOA_HUB_SIDH_LEN + 1];
    stoa_session_t *s;

    if (!session_id || strlen(session_id) != STOA_SESSION_ID_LEN)
        return false;
    stoa_digest_hex(session_id, STOA_SESSION_ID_LEN, sidh, STOA_HUB_SIDH_LEN);
    hub_lock(hub);
    s = remote_by_sidh(hub, sidh);
    if (s && sub)
        snprintf(sub, sublen, "%s", s->ident->sub);
    hub_unlock(hub);
    return s != NULL;
}

stoa_session_t *stoa_hub_adopt(stoa_hub_t *hub, const char *session_id, bool has_last_seq, uint64_t last_seq)
{
    char sidh[STOA_HUB_SIDH_LEN + 1];
    const stoa_config_t *cfg = hub->cfg;
    stoa_session_t *s;
    int64_t now = stoa_now_ms();

    if (!session_id || strlen(session_id) != STOA_SESSION_ID_LEN)
        return NULL;
    stoa_digest_hex(session_id, STOA_SESSION_ID_LEN, sidh, STOA_HUB_SIDH_LEN);
    hub_lock(hub);
    s = remote_by_sidh(hub, sidh);
    if (!s || !hub->bus_ops) {
        hub_unlock(hub);
        return NULL;
    }
    STOA_INFO("peer %s moved here from instance %s", s->peer, s->origin);
    free(s->origin);
    s->origin = NULL;
    s->gen++;
    memcpy(s->id, session_id, STOA_SESSION_ID_LEN + 1);
    HASH_ADD(hh_id, hub->by_id, id, STOA_SESSION_ID_LEN, s);
    stoa_bucket_init(&s->presence_bucket, cfg->presence_burst, now);
    stoa_bucket_init(&s->ephemeral_bucket, cfg->ephemeral_burst, now);
    stoa_bucket_init(&s->join_bucket, cfg->join_burst, now);
    /* Numbering continues where the client stands; nothing it missed is
     * here to replay, so it gets a resync and its rooms' state. */
    s->next_seq = has_last_seq && last_seq < UINT64_MAX ? last_seq + 1 : 1;
    s->cursor = s->next_seq - 1;
    s->detached_at_ms = now;
    for (membership_t *m = s->rooms; m; m = m->sess_next)
        m->last_seen_ms = now;
    hub_resync(s, "moved");
    hub_emit(hub, hub_session_record(s));   /* the old instance lets go; the others follow */
    stoa_session_ref(s);                   /* the caller's; the hub already holds one */
    hub_unlock(hub);
    return s;
}
