/* check_hub.c - unit tests of hub.c, driven through its public API with a
 * fake transport whose wake function counts calls. */
#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/hub.h"
#include "stoa/names.h"
#include "stoa/perm.h"
#include "stoa/presence.h"
#include "stoa/util.h"
#include "stoa/wire.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_PEERS 8
/* Past heartbeat_timeout_s (75 s by default), but well within
 * session_buffer_age_s (1800 s), so eviction notices stay buffered. */
#define AFTER_TIMEOUT_MS (80LL * 1000)

#include "peer_fixture.h"   /* peer_t, the fake transport, the queue readers */

/* A second transport, with the same wake function. */
static const stoa_transport_ops_t other_ops = {.name = "other", .wake = fake_wake};

/* ---- fixture ---- */

static char why[256];

static void setup(void)
{
    fixture_hub_setup();
    peers_reset();
    why[0] = '\0';
}

static void teardown(void)
{
    peers_close();
    stoa_hub_free(hub);
    stoa_config_free(cfg);
}

static stoa_identity_t *make_ident(const char *sub, const char *rights)
{
    return fixture_ident(sub, rights, "#e6194b");
}

/* ---- reading the queue ---- */

static void drain_all(void)
{
    for (int i = 0; i < npeers; i++)
        if (peers[i].s)
            drain(&peers[i]);
}

/* Check a welcome message (and drop it). */
static void check_welcome(peer_t *p, stoa_msg_t *m)
{
    json_object *o;
    ck_assert_msg(m != NULL, "%s: no welcome", p->name);
    o = parse_msg(m);
    stoa_msg_unref(m);
    ck_assert_str_eq(str_field(o, "type"), "welcome");
    ck_assert_str_eq(str_field(o, "peer"), stoa_session_peer(p->s));
    ck_assert_str_eq(str_field(o, "session"), stoa_session_id(p->s));
    ck_assert_int_eq(int_field(o, "seq"), 0);
    ck_assert(!json_object_get_boolean(obj_field(o, "resumed", json_type_boolean)));
    json_object_put(o);
}

static peer_t *open_ident(const char *name, stoa_identity_t *ident)
{
    peer_t *p = new_peer(name);
    stoa_msg_t *w = NULL;
    p->s = stoa_hub_open(hub, ident, &fake_ops, p, p, &w);
    ck_assert_ptr_nonnull(p->s);
    check_welcome(p, w);
    expect_empty(p);   /* the welcome is not queued */
    return p;
}

static peer_t *open_peer(const char *name, const char *rights)
{
    return open_ident(name, make_ident(name, rights));
}

static void join_ok(peer_t *p, const char *room, const char *state_json)
{
    json_object *state = state_json ? json_tokener_parse(state_json) : NULL;
    stoa_err_t err = stoa_hub_join(p->s, room, state, NULL, why, sizeof why);
    ck_assert_msg(err == STOA_OK, "%s join %s: %s (%s)", p->name, room, stoa_err_name(err), why);
    json_object_put(state);
}

static void expect_peer_left(json_object *o, const char *room, const char *peer, const char *reason)
{
    ck_assert_str_eq(str_field(o, "type"), "peer_left");
    ck_assert_str_eq(str_field(o, "room"), room);
    ck_assert_str_eq(str_field(o, "peer"), peer);
    ck_assert_str_eq(str_field(o, "reason"), reason);
}

/* p's next message is a peer_left for who from room, for reason. */
static void expect_left(peer_t *p, const char *room, peer_t *who, const char *reason)
{
    json_object *o = expect_msg(p, "peer_left");
    expect_peer_left(o, room, peer_id(who), reason);
    json_object_put(o);
}

/* The hub holds nsessions sessions and nrooms rooms. */
static void expect_stats(size_t nsessions, size_t nrooms)
{
    size_t sessions, rooms;
    stoa_hub_stats(hub, &sessions, &rooms);
    ck_assert_uint_eq(sessions, nsessions);
    ck_assert_uint_eq(rooms, nrooms);
}

/* Readers ada, bob and cy join doc:1 (ada with a_state), queues drained. */
/* Readers ada and bob join doc:1, queues drained. */
static void two_in_doc1(peer_t **a, peer_t **b)
{
    *a = open_peer("ada", "{\"*\":\"r\"}");
    *b = open_peer("bob", "{\"*\":\"r\"}");
    join_ok(*a, "doc:1", NULL);
    join_ok(*b, "doc:1", NULL);
    drain_all();
}

/* p's next message is a presence whose state has n. */
static void expect_presence_n(peer_t *p, int64_t n)
{
    json_object *o = expect_msg(p, "presence");
    ck_assert_int_eq(int_field(obj_field(o, "state", json_type_object), "n"), n);
    json_object_put(o);
}

static void three_in_doc1(peer_t **a, peer_t **b, peer_t **c, const char *a_state)
{
    *a = open_peer("ada", "{\"*\":\"r\"}");
    *b = open_peer("bob", "{\"*\":\"r\"}");
    *c = open_peer("cy", "{\"*\":\"r\"}");
    join_ok(*a, "doc:1", a_state);
    join_ok(*b, "doc:1", NULL);
    join_ok(*c, "doc:1", NULL);
    drain_all();
}

/* ---- tests ---- */

START_TEST(test_welcome)
{
    peer_t *p = new_peer("ada");
    stoa_msg_t *m = NULL;
    json_object *o, *user, *limits;
    const char *id, *sid;
    p->s = stoa_hub_open(hub, make_ident("ada", "{\"*\":\"r\"}"), &fake_ops, p, p, &m);
    ck_assert_ptr_nonnull(p->s);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(stoa_msg_refcount(m), 1);   /* the caller's alone: not queued */
    o = parse_msg(m);
    stoa_msg_unref(m);
    ck_assert_str_eq(str_field(o, "type"), "welcome");
    id = stoa_session_peer(p->s);
    ck_assert_str_eq(str_field(o, "peer"), id);
    ck_assert_uint_eq(strlen(id), 12);
    ck_assert_uint_eq(strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789"), 12);
    sid = stoa_session_id(p->s);
    ck_assert_uint_eq(strlen(sid), STOA_SESSION_ID_LEN);
    ck_assert_uint_eq(strspn(sid, "abcdefghijklmnopqrstuvwxyz0123456789"), STOA_SESSION_ID_LEN);
    ck_assert_str_eq(str_field(o, "session"), sid);
    ck_assert_str_ne(sid, id);
    ck_assert_int_eq(int_field(o, "seq"), 0);
    ck_assert(!json_object_get_boolean(obj_field(o, "resumed", json_type_boolean)));
    user = obj_field(o, "user", json_type_object);
    ck_assert_str_eq(str_field(user, "id"), "ada");
    ck_assert_str_eq(str_field(user, "name"), "ada");
    ck_assert_str_eq(str_field(user, "color"), "#e6194b");
    ck_assert(!json_object_get_boolean(obj_field(user, "anonymous", json_type_boolean)));
    ck_assert_int_eq(int_field(o, "heartbeat_interval"), 30);
    ck_assert_int_eq(int_field(o, "heartbeat_timeout"), 75);
    limits = obj_field(o, "limits", json_type_object);
    ck_assert_int_eq(int_field(limits, "max_state_bytes"), 2048);
    ck_assert_int_eq(int_field(limits, "max_message_bytes"), 65536);
    ck_assert_int_eq(int_field(limits, "max_rooms_per_conn"), 32);
    json_object_put(o);
    expect_empty(p);   /* the welcome is not in the numbered queue */

    ck_assert_ptr_eq(stoa_session_conn(p->s, &fake_ops), p);
    ck_assert_ptr_null(stoa_session_conn(p->s, &other_ops));
    ck_assert_ptr_eq(stoa_session_hub(p->s), hub);
    ck_assert_str_eq(stoa_session_sub(p->s), "ada");

    /* The first queued message is seq 1, and wakes the transport. */
    join_ok(p, "doc:1", NULL);
    ck_assert_int_ge(p->wakes, 1);
    ck_assert_ptr_eq(p->woken, p->s);
    ck_assert_ptr_eq(p->woken_conn, p);
    json_object_put(expect_msg(p, "room_state"));
    ck_assert_uint_eq(p->seq, 1);
}
END_TEST

START_TEST(test_peer_ids_unique)
{
    peer_t *a = open_peer("a", "{}"), *b = open_peer("b", "{}"), *c = open_peer("c", "{}");
    ck_assert_str_ne(peer_id(a), peer_id(b));
    ck_assert_str_ne(peer_id(a), peer_id(c));
    ck_assert_str_ne(peer_id(b), peer_id(c));
}
END_TEST

START_TEST(test_three_sessions)
{
    peer_t *a = open_peer("ada", "{\"doc:*\":\"rw\"}");
    peer_t *b = open_peer("bob", "{\"doc:1\":\"r\"}");
    peer_t *c = open_peer("cy", "{\"*\":\"r\"}");
    json_object *st = json_tokener_parse("{\"cursor\":{\"line\":3,\"ch\":14}}");
    json_object *id1 = json_object_new_int(1), *o, *arr, *e, *user;
    int a_wakes;

    /* A joins an empty room: room_state lists only A, with the request id. */
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:1", st, id1, why, sizeof why), STOA_OK);
    o = expect_msg(a, "room_state");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_int_eq(int_field(o, "id"), 1);
    arr = obj_field(o, "peers", json_type_array);
    ck_assert_uint_eq(json_object_array_length(arr), 1);
    e = json_object_array_get_idx(arr, 0);
    ck_assert_str_eq(str_field(e, "peer"), peer_id(a));
    ck_assert_str_eq(str_field(obj_field(e, "user", json_type_object), "id"), "ada");
    ck_assert(json_object_equal(obj_field(e, "state", json_type_object), st));
    json_object_put(o);
    expect_empty(a);

    /* B joins: B gets room_state [A, B] (join order, no id), A gets peer_joined. */
    a_wakes = a->wakes;
    join_ok(b, "doc:1", NULL);
    o = expect_msg(b, "room_state");
    ck_assert(!has_field(o, "id"));
    arr = obj_field(o, "peers", json_type_array);
    ck_assert_uint_eq(json_object_array_length(arr), 2);
    ck_assert_str_eq(str_field(json_object_array_get_idx(arr, 0), "peer"), peer_id(a));
    ck_assert_str_eq(str_field(json_object_array_get_idx(arr, 1), "peer"), peer_id(b));
    ck_assert(json_object_equal(obj_field(json_object_array_get_idx(arr, 0), "state", json_type_object), st));
    ck_assert_int_eq(json_object_object_length(obj_field(json_object_array_get_idx(arr, 1), "state",
                                                         json_type_object)), 0);
    json_object_put(o);
    o = expect_msg(a, "peer_joined");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_str_eq(str_field(o, "peer"), peer_id(b));
    user = obj_field(o, "user", json_type_object);
    ck_assert_str_eq(str_field(user, "id"), "bob");
    ck_assert_str_eq(str_field(user, "name"), "bob");
    ck_assert_str_eq(str_field(user, "color"), "#e6194b");
    ck_assert_int_eq(json_object_object_length(obj_field(o, "state", json_type_object)), 0);
    json_object_put(o);
    ck_assert_int_gt(a->wakes, a_wakes);
    expect_empty(a);
    expect_empty(b);

    /* C joins with a state: A and B both hear of it, with the state. */
    join_ok(c, "doc:1", "{\"name\":\"Cy\"}");
    o = expect_msg(c, "room_state");
    ck_assert_uint_eq(json_object_array_length(obj_field(o, "peers", json_type_array)), 3);
    json_object_put(o);
    for (int i = 0; i < 2; i++) {
        o = expect_msg(i ? b : a, "peer_joined");
        ck_assert_str_eq(str_field(o, "peer"), peer_id(c));
        ck_assert_str_eq(str_field(obj_field(o, "state", json_type_object), "name"), "Cy");
        json_object_put(o);
    }

    expect_stats(3, 1);

    json_object_put(st);
    json_object_put(id1);
}
END_TEST

START_TEST(test_presence_relay)
{
    peer_t *a, *b, *c;
    json_object *patch, *id = json_object_new_string("p1"), *o, *want;
    three_in_doc1(&a, &b, &c, "{\"cursor\":{\"line\":3,\"ch\":14},\"sel\":[1,2]}");

    patch = json_tokener_parse("{\"cursor\":{\"line\":4},\"sel\":null}");
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, id, why, sizeof why), STOA_OK);
    /* The sender gets an ack with its id, not its own presence. */
    o = expect_msg(a, "ack");
    ck_assert_str_eq(str_field(o, "id"), "p1");
    json_object_put(o);
    expect_empty(a);
    /* The others get the whole merged state, not the patch. */
    want = json_tokener_parse("{\"cursor\":{\"line\":4,\"ch\":14}}");
    for (int i = 0; i < 2; i++) {
        peer_t *p = i ? c : b;
        o = expect_msg(p, "presence");
        ck_assert_str_eq(str_field(o, "room"), "doc:1");
        ck_assert_str_eq(str_field(o, "peer"), peer_id(a));
        ck_assert(json_object_equal(obj_field(o, "state", json_type_object), want));
        ck_assert(!has_field(o, "id"));
        json_object_put(o);
        expect_empty(p);
    }

    /* Without an id there is no ack. */
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    expect_empty(a);
    drain_all();

    /* A non-object patch is refused. */
    json_object_put(patch);
    patch = json_object_new_string("x");
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", NULL, NULL, why, sizeof why), STOA_ERR_BAD_MESSAGE);
    expect_empty(b);

    json_object_put(patch);
    json_object_put(want);
    json_object_put(id);
}
END_TEST

START_TEST(test_ephemeral_relay)
{
    peer_t *a, *b, *c;
    json_object *data = json_tokener_parse("{\"kind\":\"reaction\",\"emoji\":\"x\"}");
    json_object *id = json_object_new_int(3), *o;
    three_in_doc1(&a, &b, &c, NULL);

    ck_assert_int_eq(stoa_hub_ephemeral(b->s, "doc:1", data, id, why, sizeof why), STOA_OK);
    o = expect_msg(b, "ack");
    ck_assert_int_eq(int_field(o, "id"), 3);
    json_object_put(o);
    expect_empty(b);   /* no echo of its own ephemeral */
    for (int i = 0; i < 2; i++) {
        peer_t *p = i ? c : a;
        o = expect_msg(p, "ephemeral");
        ck_assert_str_eq(str_field(o, "room"), "doc:1");
        ck_assert_str_eq(str_field(o, "from"), peer_id(b));
        ck_assert_str_eq(str_field(obj_field(o, "user", json_type_object), "id"), "bob");
        ck_assert(json_object_equal(obj_field(o, "data", json_type_object), data));
        ck_assert(!has_field(o, "id"));
        json_object_put(o);
        expect_empty(p);
    }

    /* Any JSON value is relayed as data. */
    json_object_put(data);
    data = json_object_new_int(42);
    ck_assert_int_eq(stoa_hub_ephemeral(b->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    expect_empty(b);
    o = expect_msg(a, "ephemeral");
    ck_assert_int_eq(int_field(o, "data"), 42);
    json_object_put(o);

    json_object_put(data);
    json_object_put(id);
}
END_TEST

START_TEST(test_shared_by_reference)
{
    peer_t *a, *b, *c;
    json_object *data = json_object_new_string("hi"), *patch = json_tokener_parse("{\"x\":1}");
    stoa_msg_t *mb, *mc, *ma;
    three_in_doc1(&a, &b, &c, NULL);

    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    mb = next_msg(b);
    mc = next_msg(c);
    ck_assert_ptr_nonnull(mb);
    ck_assert_ptr_eq(mb, mc);                   /* one encoding, shared */
    /* Two buffered (one per recipient's session) and the two handed out. */
    ck_assert_uint_eq(stoa_msg_refcount(mb), 4);
    stoa_session_ack(b->s, b->seq);
    stoa_session_ack(c->s, c->seq);
    ck_assert_uint_eq(stoa_msg_refcount(mb), 2);   /* acked: only ours are left */
    stoa_msg_unref(mb);
    stoa_msg_unref(mc);

    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    mb = next_msg(b);
    mc = next_msg(c);
    ck_assert_ptr_nonnull(mb);
    ck_assert_ptr_eq(mb, mc);
    stoa_msg_unref(mb);
    stoa_msg_unref(mc);

    /* peer_left on leave reaches the two others as one message. */
    ck_assert_int_eq(stoa_hub_leave(c->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    ma = next_msg(a);
    mb = next_msg(b);
    ck_assert_ptr_nonnull(ma);
    ck_assert_ptr_eq(ma, mb);
    stoa_msg_unref(ma);
    stoa_msg_unref(mb);
    expect_empty(c);

    json_object_put(data);
    json_object_put(patch);
}
END_TEST

START_TEST(test_leave_and_close)
{
    peer_t *a, *b, *c;
    json_object *id = json_object_new_string("bye"), *o;
    three_in_doc1(&a, &b, &c, NULL);

    ck_assert_int_eq(stoa_hub_leave(c->s, "doc:1", id, why, sizeof why), STOA_OK);
    o = expect_msg(c, "ack");
    ck_assert_str_eq(str_field(o, "id"), "bye");
    json_object_put(o);
    expect_empty(c);
    for (int i = 0; i < 2; i++) {
        o = expect_msg(i ? b : a, "peer_left");
        expect_peer_left(o, "doc:1", peer_id(c), "leave");
        json_object_put(o);
    }
    /* Leaving again: not in the room any more. */
    ck_assert_int_eq(stoa_hub_leave(c->s, "doc:1", NULL, why, sizeof why), STOA_ERR_NOT_IN_ROOM);

    /* B's connection goes: A hears "disconnect". */
    stoa_hub_close(b->s, STOA_LEFT_DISCONNECT);
    expect_left(a, "doc:1", b, "disconnect");
    expect_empty(a);
    /* B's own reference stays valid: nothing to read (its connection is
     * gone), detached, idempotent close. */
    expect_gone(b);
    ck_assert_ptr_null(stoa_session_conn(b->s, &fake_ops));
    stoa_hub_close(b->s, STOA_LEFT_DISCONNECT);
    expect_empty(a);
    expect_stats(2, 1);

    /* Messages to a closed session are not queued. */
    stoa_hub_send(b->s, stoa_wire_notice("info", "too late"));
    expect_gone(b);

    /* The last one out: the room goes away. */
    stoa_hub_close(a->s, STOA_LEFT_DISCONNECT);
    expect_stats(1, 0);
    json_object_put(id);
}
END_TEST

START_TEST(test_close_drops_queue)
{
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}"), *b = open_peer("bob", "{\"*\":\"r\"}");
    stoa_msg_t *note = stoa_wire_notice("info", "unread");
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    /* A has an undelivered peer_joined (and this notice) when it closes:
     * they are dropped, the buffer's references with them. */
    stoa_hub_send(a->s, stoa_msg_ref(note));
    ck_assert_uint_eq(stoa_msg_refcount(note), 2);
    stoa_hub_close(a->s, STOA_LEFT_DISCONNECT);
    ck_assert_uint_eq(stoa_msg_refcount(note), 1);
    stoa_msg_unref(note);
    expect_gone(a);
    json_object_put(expect_msg(b, "room_state"));
    expect_left(b, "doc:1", a, "disconnect");
    expect_empty(b);
}
END_TEST

START_TEST(test_close_with_undrained_recipients)
{
    /* Messages shared between queues survive one recipient closing. */
    peer_t *a, *b, *c;
    json_object *data = json_object_new_string("payload"), *o;
    three_in_doc1(&a, &b, &c, NULL);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    stoa_hub_close(b->s, STOA_LEFT_DISCONNECT);
    o = expect_msg(c, "ephemeral");
    ck_assert_str_eq(str_field(o, "data"), "payload");
    json_object_put(o);
    expect_left(c, "doc:1", b, "disconnect");
    json_object_put(data);
}
END_TEST

START_TEST(test_permission_denied)
{
    peer_t *a = open_peer("ada", "{\"doc:1\":\"r\",\"doc:secret\":\"\"}");
    peer_t *b = open_peer("bob", "{\"*\":\"r\"}");
    json_object *id = json_object_new_int(7);
    why[0] = '\0';
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:2", NULL, id, why, sizeof why), STOA_ERR_PERMISSION_DENIED);
    ck_assert_ptr_nonnull(strstr(why, "doc:2"));
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:secret", NULL, id, why, sizeof why), STOA_ERR_PERMISSION_DENIED);
    expect_empty(a);   /* the hub queues nothing; the caller reports */
    /* The sidecar of a readable room is open to it. */
    join_ok(a, "eph:doc:1", NULL);
    join_ok(a, "doc:1", NULL);
    /* A refused join leaves no trace in the room. */
    join_ok(b, "doc:2", NULL);
    {
        char *text = stoa_hub_room_json(hub, "doc:2");
        json_object *o = json_tokener_parse(text);
        ck_assert_uint_eq(json_object_array_length(obj_field(o, "peers", json_type_array)), 1);
        json_object_put(o);
        free(text);
    }
    json_object_put(id);
}
END_TEST

START_TEST(test_bad_room)
{
    peer_t *a = open_peer("ada", "{\"*\":\"rw\"}");
    json_object *empty = json_object_new_object();
    ck_assert_int_eq(stoa_hub_join(a->s, "nocolon", NULL, NULL, why, sizeof why), STOA_ERR_BAD_ROOM);
    ck_assert_str_ne(why, "");
    ck_assert_int_eq(stoa_hub_join(a->s, "eph:eph:doc:1", NULL, NULL, why, sizeof why), STOA_ERR_BAD_ROOM);
    ck_assert_int_eq(stoa_hub_presence(a->s, "Bad Room", empty, NULL, why, sizeof why), STOA_ERR_BAD_ROOM);
    ck_assert_int_eq(stoa_hub_heartbeat(a->s, "x", NULL, why, sizeof why), STOA_ERR_BAD_ROOM);
    ck_assert_int_eq(stoa_hub_leave(a->s, "doc:", NULL, why, sizeof why), STOA_ERR_BAD_ROOM);
    set("max_room_name_bytes", "8");
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:123456", NULL, NULL, why, sizeof why), STOA_ERR_BAD_ROOM);
    expect_empty(a);
    json_object_put(empty);
}
END_TEST

START_TEST(test_already_joined)
{
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}");
    join_ok(a, "doc:1", NULL);
    drain(a);
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:1", NULL, NULL, why, sizeof why), STOA_ERR_ALREADY_JOINED);
    expect_empty(a);
}
END_TEST

START_TEST(test_bad_initial_state)
{
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}");
    json_object *arr = json_object_new_array(), *null_state = NULL, *o;
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:1", arr, NULL, why, sizeof why), STOA_ERR_BAD_MESSAGE);
    expect_empty(a);
    /* null is no state: {} */
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:1", null_state, NULL, why, sizeof why), STOA_OK);
    o = expect_msg(a, "room_state");
    ck_assert_int_eq(json_object_object_length(obj_field(json_object_array_get_idx(obj_field(o, "peers",
                                                                                         json_type_array), 0),
                                                         "state", json_type_object)), 0);
    json_object_put(o);
    json_object_put(arr);
}
END_TEST

START_TEST(test_too_many_rooms)
{
    peer_t *a;
    set("max_rooms_per_conn", "2");
    a = open_peer("ada", "{\"*\":\"r\"}");
    join_ok(a, "doc:1", NULL);
    join_ok(a, "doc:2", NULL);
    drain(a);
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:3", NULL, NULL, why, sizeof why), STOA_ERR_TOO_MANY_ROOMS);
    expect_empty(a);
    ck_assert_int_eq(stoa_hub_leave(a->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    join_ok(a, "doc:3", NULL);
}
END_TEST

START_TEST(test_room_full)
{
    peer_t *a, *b, *c;
    set("max_peers_per_room", "2");
    a = open_peer("ada", "{\"*\":\"r\"}");
    b = open_peer("bob", "{\"*\":\"r\"}");
    c = open_peer("cy", "{\"*\":\"r\"}");
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    drain_all();
    ck_assert_int_eq(stoa_hub_join(c->s, "doc:1", NULL, NULL, why, sizeof why), STOA_ERR_ROOM_FULL);
    expect_empty(a);
    expect_empty(b);
    expect_empty(c);
    join_ok(c, "doc:2", NULL);   /* other rooms are fine */
    ck_assert_int_eq(stoa_hub_leave(b->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    join_ok(c, "doc:1", NULL);
}
END_TEST

START_TEST(test_state_too_large)
{
    peer_t *a, *b;
    char big[200];
    json_object *o, *patch;
    char *text;
    set("max_state_bytes", "64");
    a = open_peer("ada", "{\"*\":\"r\"}");
    b = open_peer("bob", "{\"*\":\"r\"}");
    snprintf(big, sizeof big, "{\"s\":\"%070d\"}", 0);
    patch = json_tokener_parse(big);
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_ERR_STATE_TOO_LARGE);
    ck_assert_str_ne(why, "");
    ck_assert_int_eq(stoa_hub_heartbeat(a->s, "doc:1", NULL, why, sizeof why), STOA_ERR_NOT_IN_ROOM);

    join_ok(a, "doc:1", "{\"n\":1}");
    join_ok(b, "doc:1", NULL);
    drain_all();
    /* A patch that would make the state too large changes nothing. */
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_ERR_STATE_TOO_LARGE);
    expect_empty(b);
    expect_empty(a);
    text = stoa_hub_room_json(hub, "doc:1");
    o = json_tokener_parse(text);
    {
        json_object *p0 = json_object_array_get_idx(obj_field(o, "peers", json_type_array), 0);
        json_object *want = json_tokener_parse("{\"n\":1}");
        ck_assert(json_object_equal(obj_field(p0, "state", json_type_object), want));
        json_object_put(want);
    }
    json_object_put(o);
    free(text);
    json_object_put(patch);

    /* Up to the limit is fine: {"s":"..."} of exactly 64 bytes. */
    snprintf(big, sizeof big, "{\"n\":null,\"s\":\"%056d\"}", 0);
    patch = json_tokener_parse(big);
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    o = expect_msg(b, "presence");
    ck_assert_uint_eq(strlen(json_object_to_json_string_ext(obj_field(o, "state", json_type_object),
                                                            JSON_C_TO_STRING_PLAIN)), 64);
    json_object_put(o);
    json_object_put(patch);
}
END_TEST

START_TEST(test_presence_rate_limited)
{
    peer_t *a, *b;
    json_object *patch = json_tokener_parse("{\"x\":1}");
    set("presence_burst", "3");
    set("presence_rate", "0.1");
    two_in_doc1(&a, &b);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    why[0] = '\0';
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_ERR_RATE_LIMITED);
    ck_assert_str_ne(why, "");
    for (int i = 0; i < 3; i++)
        json_object_put(expect_msg(b, "presence"));
    expect_empty(b);   /* the refused update was dropped */
    /* B has its own bucket. */
    ck_assert_int_eq(stoa_hub_presence(b->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    json_object_put(patch);
}
END_TEST

START_TEST(test_ephemeral_rate_limited)
{
    peer_t *a, *b;
    json_object *data = json_object_new_int(1);
    set("ephemeral_burst", "2");
    set("ephemeral_per_min", "1");
    two_in_doc1(&a, &b);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_ERR_RATE_LIMITED);
    json_object_put(expect_msg(b, "ephemeral"));
    json_object_put(expect_msg(b, "ephemeral"));
    expect_empty(b);
    json_object_put(data);
}
END_TEST

START_TEST(test_join_rate_limited)
{
    peer_t *a;
    set("join_burst", "3");
    set("join_rate", "0.1");
    a = open_peer("ada", "{\"*\":\"r\"}");
    join_ok(a, "doc:1", NULL);
    join_ok(a, "doc:2", NULL);
    ck_assert_int_eq(stoa_hub_leave(a->s, "doc:2", NULL, why, sizeof why), STOA_OK);   /* leaves count */
    ck_assert_int_eq(stoa_hub_join(a->s, "doc:3", NULL, NULL, why, sizeof why), STOA_ERR_RATE_LIMITED);
    ck_assert_int_eq(stoa_hub_leave(a->s, "doc:1", NULL, why, sizeof why), STOA_ERR_RATE_LIMITED);
}
END_TEST

START_TEST(test_not_in_room)
{
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}"), *b = open_peer("bob", "{\"*\":\"r\"}");
    json_object *patch = json_object_new_object(), *data = json_object_new_int(1), *id = json_object_new_int(5);
    join_ok(b, "doc:1", NULL);
    drain_all();
    /* A never joined doc:1 (which exists) nor doc:2 (which does not). */
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, id, why, sizeof why), STOA_ERR_NOT_IN_ROOM);
    ck_assert_ptr_nonnull(strstr(why, "doc:1"));
    ck_assert_int_eq(stoa_hub_heartbeat(a->s, "doc:1", id, why, sizeof why), STOA_ERR_NOT_IN_ROOM);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, id, why, sizeof why), STOA_ERR_NOT_IN_ROOM);
    ck_assert_int_eq(stoa_hub_leave(a->s, "doc:2", id, why, sizeof why), STOA_ERR_NOT_IN_ROOM);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:2", data, NULL, why, sizeof why), STOA_ERR_NOT_IN_ROOM);
    expect_empty(a);   /* no ack for a refused message */
    expect_empty(b);   /* nothing relayed */
    json_object_put(patch);
    json_object_put(data);
    json_object_put(id);
}
END_TEST

START_TEST(test_heartbeat_ack)
{
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}"), *b = open_peer("bob", "{\"*\":\"r\"}");
    json_object *id = json_object_new_string("hb"), *o;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    drain_all();
    ck_assert_int_eq(stoa_hub_heartbeat(a->s, "doc:1", id, why, sizeof why), STOA_OK);
    o = expect_msg(a, "ack");
    ck_assert_str_eq(str_field(o, "id"), "hb");
    json_object_put(o);
    ck_assert_int_eq(stoa_hub_heartbeat(a->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    expect_empty(a);
    expect_empty(b);   /* heartbeats are not relayed */
    json_object_put(id);
}
END_TEST

/* Collect every peer_left in p's queue; check there is one about p itself
 * in room with reason timeout, and that every one says timeout. */
static void expect_evicted(peer_t *p, const char *room)
{
    stoa_msg_t *m;
    bool self = false;
    while ((m = next_msg(p))) {
        json_object *o = parse_msg(m);
        stoa_msg_unref(m);
        ck_assert_str_eq(str_field(o, "type"), "peer_left");
        ck_assert_str_eq(str_field(o, "reason"), "timeout");
        if (strcmp(str_field(o, "peer"), peer_id(p)) == 0 && strcmp(str_field(o, "room"), room) == 0)
            self = true;
        json_object_put(o);
    }
    ck_assert_msg(self, "%s got no peer_left about itself in %s", p->name, room);
}

START_TEST(test_eviction)
{
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}"), *b = open_peer("bob", "{\"*\":\"r\"}");
    int a_wakes, b_wakes;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    join_ok(a, "doc:2", NULL);
    drain_all();

    /* Nobody is silent yet. */
    stoa_hub_tick(hub, stoa_now_ms());
    expect_empty(a);
    expect_empty(b);

    a_wakes = a->wakes;
    b_wakes = b->wakes;
    stoa_hub_tick(hub, stoa_now_ms() + AFTER_TIMEOUT_MS);
    ck_assert_int_gt(a->wakes, a_wakes);
    ck_assert_int_gt(b->wakes, b_wakes);
    {
        /* A was in two rooms: it hears about itself in both. */
        stoa_msg_t *m;
        bool doc1 = false, doc2 = false;
        while ((m = next_msg(a))) {
            json_object *o = parse_msg(m);
            stoa_msg_unref(m);
            ck_assert_str_eq(str_field(o, "type"), "peer_left");
            ck_assert_str_eq(str_field(o, "reason"), "timeout");
            if (strcmp(str_field(o, "peer"), peer_id(a)) == 0) {
                if (strcmp(str_field(o, "room"), "doc:1") == 0)
                    doc1 = true;
                if (strcmp(str_field(o, "room"), "doc:2") == 0)
                    doc2 = true;
            }
            json_object_put(o);
        }
        ck_assert(doc1 && doc2);
    }
    expect_evicted(b, "doc:1");
    expect_stats(2, 0);   /* evicted from rooms, still connected */
    ck_assert_int_eq(stoa_hub_heartbeat(a->s, "doc:1", NULL, why, sizeof why), STOA_ERR_NOT_IN_ROOM);
    join_ok(a, "doc:1", NULL);   /* and may join again */
}
END_TEST

START_TEST(test_heartbeat_postpones_eviction)
{
    peer_t *a, *b;
    int64_t t_joined, t_beat;
    json_object *o;
    char *text;
    set("heartbeat_interval_s", "1");
    set("heartbeat_timeout_s", "2");
    a = open_peer("ada", "{\"*\":\"r\"}");
    b = open_peer("bob", "{\"*\":\"r\"}");
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    t_joined = stoa_now_ms();
    drain_all();
    usleep(50 * 1000);
    t_beat = stoa_now_ms();
    ck_assert_int_gt(t_beat, t_joined + 1);
    ck_assert_int_eq(stoa_hub_heartbeat(b->s, "doc:1", NULL, why, sizeof why), STOA_OK);

    /* 2 s after B's heartbeat: A (silent since joining) is over the limit,
     * B is not. */
    stoa_hub_tick(hub, t_beat + 2000);
    expect_left(a, "doc:1", a, "timeout");
    expect_empty(a);
    expect_left(b, "doc:1", a, "timeout");
    expect_empty(b);
    text = stoa_hub_room_json(hub, "doc:1");
    o = json_tokener_parse(text);
    ck_assert_uint_eq(json_object_array_length(obj_field(o, "peers", json_type_array)), 1);
    ck_assert_str_eq(str_field(json_object_array_get_idx(obj_field(o, "peers", json_type_array), 0), "peer"),
                     peer_id(b));
    json_object_put(o);
    free(text);
}
END_TEST

/* The next message must be a resync with this reason, numbered with its
 * own "seq", listing nrooms rooms; returns its seq (now p's). */
static uint64_t expect_resync(peer_t *p, const char *reason, size_t nrooms)
{
    uint64_t seq = 0;
    bool gone = true;
    stoa_msg_t *m = stoa_session_next(p->s, p, &seq, &gone);
    json_object *o;
    ck_assert(!gone);
    ck_assert_msg(m != NULL, "%s: nothing, expected a resync", p->name);
    o = parse_msg(m);
    stoa_msg_unref(m);
    ck_assert_msg(strcmp(str_field(o, "type"), "resync") == 0, "%s: expected resync, got %s", p->name,
                  json_object_to_json_string(o));
    ck_assert_int_eq(int_field(o, "seq"), (int64_t)seq);
    ck_assert_uint_gt(seq, p->seq);
    ck_assert_str_eq(str_field(o, "reason"), reason);
    ck_assert_uint_eq(json_object_array_length(obj_field(o, "rooms", json_type_array)), nrooms);
    json_object_put(o);
    p->seq = seq;
    return seq;
}

static void presence_n(peer_t *p, const char *room, int n)
{
    char text[64];
    json_object *patch;
    snprintf(text, sizeof text, "{\"n\":%d}", n);
    patch = json_tokener_parse(text);
    ck_assert_int_eq(stoa_hub_presence(p->s, room, patch, NULL, why, sizeof why), STOA_OK);
    json_object_put(patch);
}

START_TEST(test_buffer_limit_msgs)
{
    peer_t *a, *b;
    json_object *o, *arr;
    uint64_t before, r;
    stoa_session_t *found;
    set("presence_burst", "100");
    set("session_buffer_msgs", "8");
    two_in_doc1(&a, &b);

    /* 8 unread: at the limit, all delivered in order. */
    for (int i = 1; i <= 8; i++)
        presence_n(a, "doc:1", i);
    for (int i = 1; i <= 8; i++)
        expect_presence_n(b, i);
    expect_empty(b);

    /* 9 unread: the oldest is dropped; B gets a resync after the 9, then
     * the room's whole state, and is not disconnected. */
    before = b->seq;
    for (int i = 9; i <= 17; i++)
        presence_n(a, "doc:1", i);
    r = expect_resync(b, "gap", 1);
    ck_assert_uint_eq(r, before + 10);
    o = expect_msg(b, "room_state");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert(!has_field(o, "id"));
    arr = obj_field(o, "peers", json_type_array);
    ck_assert_uint_eq(json_object_array_length(arr), 2);
    ck_assert_str_eq(str_field(json_object_array_get_idx(arr, 0), "peer"), peer_id(a));
    ck_assert_int_eq(int_field(obj_field(json_object_array_get_idx(arr, 0), "state", json_type_object), "n"),
                     17);
    json_object_put(o);
    expect_empty(b);
    expect_empty(a);   /* the sender is unaffected; nobody left */
    found = stoa_hub_find(hub, stoa_session_id(b->s));
    ck_assert_ptr_eq(found, b->s);
    stoa_session_unref(found);

    /* Delivery goes on after the resync. */
    presence_n(a, "doc:1", 18);
    expect_presence_n(b, 18);
    expect_empty(b);
}
END_TEST

START_TEST(test_buffer_limit_bytes)
{
    peer_t *a, *b;
    char *big = malloc(40001);
    json_object *data, *o;
    memset(big, 'z', 40000);
    big[40000] = '\0';
    data = json_object_new_string(big);
    set("session_buffer_bytes", "65536");
    two_in_doc1(&a, &b);
    /* One 40 kB message read before the next: always within the limit. */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
        o = expect_msg(b, "ephemeral");
        ck_assert_uint_eq(strlen(str_field(o, "data")), 40000);
        json_object_put(o);
    }
    expect_empty(b);
    /* Two unread are over it: the first is dropped and B resyncs. */
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    expect_resync(b, "gap", 1);
    o = expect_msg(b, "room_state");
    ck_assert_uint_eq(json_object_array_length(obj_field(o, "peers", json_type_array)), 2);
    json_object_put(o);
    expect_empty(b);
    expect_stats(2, 1);
    json_object_put(data);
    free(big);
}
END_TEST

START_TEST(test_reading_keeps_up)
{
    /* A consumer that keeps up never resyncs, however many messages pass. */
    peer_t *a, *b;
    set("presence_burst", "1000");
    set("session_buffer_msgs", "8");
    two_in_doc1(&a, &b);
    for (int i = 0; i < 100; i++) {
        presence_n(a, "doc:1", i);
        if (i % 5 == 4)
            for (int j = i - 4; j <= i; j++)
                expect_presence_n(b, j);   /* not a resync */
    }
    expect_empty(b);
}
END_TEST

START_TEST(test_room_json)
{
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}"), *b = open_peer("bob", "{\"*\":\"r\"}");
    char *text;
    json_object *o, *arr, *e, *user, *want;
    join_ok(a, "doc:1", "{\"cursor\":{\"line\":3}}");
    join_ok(b, "doc:1", NULL);

    text = stoa_hub_room_json(hub, "doc:1");
    o = json_tokener_parse(text);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    arr = obj_field(o, "peers", json_type_array);
    ck_assert_uint_eq(json_object_array_length(arr), 2);
    e = json_object_array_get_idx(arr, 0);
    ck_assert_str_eq(str_field(e, "peer"), peer_id(a));
    user = obj_field(e, "user", json_type_object);
    ck_assert_str_eq(str_field(user, "id"), "ada");
    ck_assert_str_eq(str_field(user, "name"), "ada");
    ck_assert_str_eq(str_field(user, "color"), "#e6194b");
    obj_field(user, "anonymous", json_type_boolean);
    want = json_tokener_parse("{\"cursor\":{\"line\":3}}");
    ck_assert(json_object_equal(obj_field(e, "state", json_type_object), want));
    json_object_put(want);
    e = json_object_array_get_idx(arr, 1);
    ck_assert_str_eq(str_field(e, "peer"), peer_id(b));
    ck_assert_int_eq(json_object_object_length(obj_field(e, "state", json_type_object)), 0);
    json_object_put(o);
    free(text);

    text = stoa_hub_room_json(hub, "doc:nobody");
    ck_assert_str_eq(text, "{\"room\":\"doc:nobody\",\"peers\":[]}");
    free(text);
}
END_TEST

START_TEST(test_hub_send)
{
    peer_t *a = open_peer("ada", "{}"), *b = open_peer("bob", "{}");
    stoa_msg_t *m = stoa_wire_notice("info", "hello"), *got;
    int wakes = a->wakes;
    stoa_msg_ref(m);
    stoa_hub_send(a->s, m);   /* takes one reference */
    ck_assert_int_gt(a->wakes, wakes);
    ck_assert_uint_eq(stoa_msg_refcount(m), 2);   /* ours + the buffer's */
    got = next_msg(a);
    ck_assert_ptr_eq(got, m);
    ck_assert_uint_eq(a->seq, 1);
    ck_assert_uint_eq(stoa_msg_refcount(m), 3);   /* + the one handed out */
    stoa_msg_unref(got);
    stoa_session_ack(a->s, a->seq);
    ck_assert_uint_eq(stoa_msg_refcount(m), 1);
    stoa_msg_unref(m);
    expect_empty(a);
    expect_empty(b);
}
END_TEST

START_TEST(test_anonymous_identity_session)
{
    char dir[] = "/tmp/stoa-hub-XXXXXX", err[256];
    stoa_auth_t *auth;
    peer_t *p;
    json_object *o;
    stoa_msg_t *m = NULL;
    ck_assert_ptr_nonnull(mkdtemp(dir));
    set("jwt_secret", "0123456789abcdef0123456789abcdef-test");
    set("data_dir", dir);
    set("anonymous_rights", "{\"doc:*\":\"r\"}");
    auth = stoa_auth_new(cfg, err, sizeof err);
    ck_assert_msg(auth != NULL, "%s", err);

    p = new_peer("anon");
    p->s = stoa_hub_open(hub, stoa_auth_anonymous(auth), &fake_ops, p, p, &m);
    stoa_auth_free(auth);
    ck_assert_ptr_nonnull(m);
    o = parse_msg(m);
    stoa_msg_unref(m);
    {
        json_object *user = obj_field(o, "user", json_type_object);
        ck_assert(json_object_get_boolean(obj_field(user, "anonymous", json_type_boolean)));
        ck_assert(strncmp(str_field(user, "id"), "anon-", 5) == 0);
        ck_assert_ptr_nonnull(strchr(str_field(user, "name"), ' '));
    }
    json_object_put(o);
    join_ok(p, "doc:1", NULL);
    ck_assert_int_eq(stoa_hub_join(p->s, "record:1", NULL, NULL, why, sizeof why), STOA_ERR_PERMISSION_DENIED);
    rmdir(dir);
}
END_TEST

START_TEST(test_left_reason_names)
{
    ck_assert_str_eq(stoa_left_reason_name(STOA_LEFT_LEAVE), "leave");
    ck_assert_str_eq(stoa_left_reason_name(STOA_LEFT_DISCONNECT), "disconnect");
    ck_assert_str_eq(stoa_left_reason_name(STOA_LEFT_TIMEOUT), "timeout");
    ck_assert_str_eq(stoa_left_reason_name((stoa_left_reason_t)99), "disconnect");
}
END_TEST

START_TEST(test_join_after_close)
{
    /* A transport may still hold its reference (and feed a message) after
     * the hub closed the session: that must not put a dead peer in a room. */
    peer_t *a = open_peer("ada", "{\"*\":\"r\"}"), *b = open_peer("bob", "{\"*\":\"r\"}");
    json_object *o, *patch = json_tokener_parse("{\"x\":1}");
    stoa_hub_close(a->s, STOA_LEFT_DISCONNECT);
    ck_assert_int_ne(stoa_hub_join(a->s, "doc:1", NULL, NULL, why, sizeof why), STOA_OK);
    stoa_session_unref(a->s);   /* the transport lets go: the session is freed */
    a->s = NULL;
    join_ok(b, "doc:1", NULL);
    o = expect_msg(b, "room_state");
    ck_assert_uint_eq(json_object_array_length(obj_field(o, "peers", json_type_array)), 1);
    json_object_put(o);
    /* A broadcast would touch the freed session if it were still a member. */
    ck_assert_int_eq(stoa_hub_presence(b->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    stoa_hub_tick(hub, stoa_now_ms() + AFTER_TIMEOUT_MS);
    expect_left(b, "doc:1", b, "timeout");
    expect_empty(b);
    json_object_put(patch);
}
END_TEST

START_TEST(test_free_does_not_wake_gone_transports)
{
    /* stoa_hub_free with sessions still open: their transports are gone,
     * so closing them must not call ops->wake on any of them. */
    peer_t *a, *b, *c;
    int wakes;
    three_in_doc1(&a, &b, &c, NULL);
    wakes = a->wakes + b->wakes + c->wakes;
    stoa_hub_free(hub);
    hub = NULL;
    ck_assert_int_eq(a->wakes + b->wakes + c->wakes, wakes);
    /* Our references are still ours to drop. */
    for (int i = 0; i < npeers; i++) {
        stoa_session_unref(peers[i].s);
        peers[i].s = NULL;
    }
}
END_TEST

/* ---- presence coalescing (presence_tick_ms) ---- */

/* The state.n of who's entry in a presence_batch (-1 when absent). */
static int64_t batch_n(json_object *o, peer_t *who)
{
    json_object *list = NULL;
    ck_assert(json_object_object_get_ex(o, "peers", &list));
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *e = json_object_array_get_idx(list, i);
        if (strcmp(str_field(e, "peer"), peer_id(who)) == 0)
            return int_field(obj_field(e, "state", json_type_object), "n");
    }
    return -1;
}

START_TEST(test_presence_coalesced)
{
    peer_t *a, *b, *c;
    int64_t t;
    json_object *o;
    cfg->presence_rate = 1000;
    cfg->presence_burst = 100;
    three_in_doc1(&a, &b, &c, NULL);
    cfg->presence_tick_ms = 1000;   /* long: nothing here depends on timing */

    /* A quiet room relays at once. */
    presence_n(a, "doc:1", 1);
    expect_presence_n(b, 1);
    expect_presence_n(c, 1);
    expect_empty(a);
    /* Within the tick, changes wait and merge: one message with the last. */
    presence_n(a, "doc:1", 2);
    presence_n(a, "doc:1", 3);
    expect_empty(b);
    stoa_hub_flush_presence(hub, stoa_now_ms());   /* the tick is not over */
    expect_empty(b);
    t = stoa_now_ms() + 1000;
    stoa_hub_flush_presence(hub, t);
    expect_presence_n(b, 3);
    expect_presence_n(c, 3);
    expect_empty(b);
    expect_empty(a);

    /* Two peers changed in one tick: one presence_batch for everyone. */
    presence_n(a, "doc:1", 4);
    presence_n(b, "doc:1", 5);
    expect_empty(c);
    stoa_hub_flush_presence(hub, t + 1000);
    for (int i = 0; i < 3; i++) {
        peer_t *p = i == 0 ? a : i == 1 ? b : c;
        o = expect_msg(p, "presence_batch");
        ck_assert_str_eq(str_field(o, "room"), "doc:1");
        ck_assert_int_eq(batch_n(o, a), 4);
        ck_assert_int_eq(batch_n(o, b), 5);
        ck_assert_int_eq(batch_n(o, c), -1);
        json_object_put(o);
        expect_empty(p);
    }

    /* An ephemeral message never overtakes presence sent before it. */
    presence_n(a, "doc:1", 6);
    {
        json_object *data = json_tokener_parse("{\"x\":1}");
        ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
        json_object_put(data);
    }
    expect_presence_n(b, 6);
    json_object_put(expect_msg(b, "ephemeral"));
    drain_all();

    /* A member that leaves with a change pending: the change goes with it. */
    presence_n(b, "doc:1", 7);
    ck_assert_int_eq(stoa_hub_leave(b->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    expect_left(a, "doc:1", b, "leave");
    stoa_hub_flush_presence(hub, t + 5000);
    expect_empty(a);
    presence_n(c, "doc:1", 8);   /* the count stayed right: a single change is a plain presence */
    stoa_hub_flush_presence(hub, t + 10000);
    expect_presence_n(a, 8);

    /* A room freed while on the dirty list (ASan watches). */
    join_ok(a, "doc:2", NULL);
    presence_n(a, "doc:2", 1);
    presence_n(a, "doc:2", 2);
    ck_assert_int_eq(stoa_hub_leave(a->s, "doc:2", NULL, why, sizeof why), STOA_OK);
    stoa_hub_flush_presence(hub, t + 20000);
    drain_all();
}
END_TEST

START_TEST(test_observers)
{
    peer_t *a, *b, *o;
    json_object *msg, *list, *patch, *data;
    two_in_doc1(&a, &b);
    o = open_peer("obs", "{\"*\":\"r\"}");

    /* A state with observe is refused; a plain observer join works. */
    patch = json_tokener_parse("{\"x\":1}");
    ck_assert_int_eq(stoa_hub_join_ex(o->s, "doc:1", patch, true, NULL, why, sizeof why), STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_hub_join_ex(o->s, "doc:1", NULL, true, NULL, why, sizeof why), STOA_OK);
    /* It sees the peers; the peers are not told about it. */
    msg = expect_msg(o, "room_state");
    ck_assert(json_object_object_get_ex(msg, "peers", &list));
    ck_assert_uint_eq(json_object_array_length(list), 2);
    json_object_put(msg);
    expect_empty(a);
    expect_empty(b);
    /* It is not listed, and counted apart. */
    {
        char *text = stoa_hub_room_json(hub, "doc:1");
        ck_assert_ptr_null(strstr(text, peer_id(o)));
        free(text);
        json_object *rooms = stoa_hub_rooms(hub), *r = json_object_array_get_idx(rooms, 0);
        ck_assert_int_eq(int_field(r, "peers"), 2);
        ck_assert_int_eq(int_field(r, "observers"), 1);
        json_object_put(rooms);
    }
    /* It gets the room's presence and ephemeral messages... */
    presence_n(a, "doc:1", 1);
    expect_presence_n(o, 1);
    drain_all();
    /* ...has no presence of its own, may send ephemeral messages. */
    ck_assert_int_eq(stoa_hub_presence(o->s, "doc:1", patch, NULL, why, sizeof why), STOA_ERR_BAD_MESSAGE);
    data = json_tokener_parse("{\"clap\":1}");
    ck_assert_int_eq(stoa_hub_ephemeral(o->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    json_object_put(expect_msg(a, "ephemeral"));
    json_object_put(expect_msg(b, "ephemeral"));
    /* Its leave is silent. */
    ck_assert_int_eq(stoa_hub_leave(o->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    expect_empty(a);
    expect_empty(b);
    /* The observer limit is its own. */
    cfg->max_observers_per_room = 0;
    ck_assert_int_eq(stoa_hub_join_ex(o->s, "doc:1", NULL, true, NULL, why, sizeof why), STOA_ERR_ROOM_FULL);
    json_object_put(patch);
    json_object_put(data);
}
END_TEST

/* ---- batch take (stoa_session_take / stoa_session_untake) ---- */

/* The state.n of a taken presence message (its reference dropped). */
static int64_t taken_n(stoa_msg_t *m)
{
    json_object *o = msg_of_type(m, "taken", "presence");
    int64_t n = int_field(obj_field(o, "state", json_type_object), "n");
    json_object_put(o);
    return n;
}

START_TEST(test_take_batch)
{
    peer_t *a, *b;
    stoa_msg_t *out[8];
    uint64_t first = 0, first2 = 0;
    bool gone = true, more = false;
    size_t n;
    set("presence_burst", "100");
    two_in_doc1(&a, &b);
    for (int i = 1; i <= 5; i++)
        presence_n(a, "doc:1", i);

    /* Three of five under one lock: consecutive seqs after the cursor. */
    n = stoa_session_take(b->s, b, out, 3, &first, &gone, &more);
    ck_assert_uint_eq(n, 3);
    ck_assert(!gone);
    ck_assert(more);
    ck_assert_uint_eq(first, b->seq + 1);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(taken_n(out[i]), (int64_t)i + 1);
    ck_assert_uint_eq(stoa_session_delivered(b->s), first + 2);

    /* Two of them were not sent: given back, they come again, in order. */
    stoa_session_untake(b->s, b, first + 1);
    ck_assert_uint_eq(stoa_session_delivered(b->s), first);
    n = stoa_session_take(b->s, b, out, 8, &first2, &gone, &more);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq(first2, first + 1);
    ck_assert(!more);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(taken_n(out[i]), (int64_t)i + 2);
    b->seq = first2 + 3;
    expect_empty(b);

    /* Nothing waiting; max 0 takes nothing; NULL outputs are allowed. */
    ck_assert_uint_eq(stoa_session_take(b->s, b, out, 8, NULL, &gone, &more), 0);
    ck_assert(!gone);
    ck_assert(!more);
    presence_n(a, "doc:1", 6);
    ck_assert_uint_eq(stoa_session_take(b->s, b, out, 0, NULL, NULL, &more), 0);
    ck_assert(more);
    /* Giving back what was never taken, or as another connection, does nothing. */
    stoa_session_untake(b->s, b, b->seq + 5);
    stoa_session_untake(b->s, a, b->seq);
    stoa_session_untake(b->s, b, 0);
    ck_assert_uint_eq(stoa_session_delivered(b->s), b->seq);
    expect_presence_n(b, 6);

    /* Another connection's take gets nothing and finds itself gone. */
    gone = false;
    ck_assert_uint_eq(stoa_session_take(b->s, a, out, 8, NULL, &gone, &more), 0);
    ck_assert(gone);
    ck_assert(!more);

    /* A closed session: gone, nothing, and untake is a no-op. */
    stoa_hub_close(b->s, STOA_LEFT_LEAVE);
    gone = false;
    ck_assert_uint_eq(stoa_session_take(b->s, b, out, 8, NULL, &gone, &more), 0);
    ck_assert(gone);
    stoa_session_untake(b->s, b, 1);
}
END_TEST

START_TEST(test_untake_after_trim_resyncs)
{
    peer_t *a, *b;
    stoa_msg_t *out[8];
    uint64_t first = 0;
    size_t n;
    set("presence_burst", "100");
    set("session_buffer_msgs", "8");
    two_in_doc1(&a, &b);
    for (int i = 1; i <= 8; i++)
        presence_n(a, "doc:1", i);
    n = stoa_session_take(b->s, b, out, 8, &first, NULL, NULL);
    ck_assert_uint_eq(n, 8);
    for (size_t i = 0; i < n; i++)
        stoa_msg_unref(out[i]);
    /* The buffer moves on past what was taken; giving it back then means
     * the client missed it: a resync, not a silent gap. */
    for (int i = 9; i <= 24; i++)
        presence_n(a, "doc:1", i);
    stoa_session_untake(b->s, b, first);
    b->seq = first - 1;
    expect_resync(b, "gap", 1);
    json_object_put(expect_msg(b, "room_state"));
    expect_empty(b);
}
END_TEST

START_TEST(test_broadcast_references)
{
    peer_t *a, *b, *c;
    stoa_msg_t *m[3];
    json_object *data = json_tokener_parse("{\"x\":1}");
    three_in_doc1(&a, &b, &c, NULL);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    /* One message, one reference per recipient's buffer (not the sender's). */
    m[0] = next_msg(b);
    m[1] = next_msg(c);
    ck_assert_ptr_eq(m[0], m[1]);
    ck_assert_uint_eq(stoa_msg_refcount(m[0]), 4);   /* b's and c's buffers, and our two */
    expect_empty(a);
    stoa_session_ack(b->s, b->seq);
    ck_assert_uint_eq(stoa_msg_refcount(m[0]), 3);
    stoa_msg_unref(m[0]);
    stoa_msg_unref(m[1]);
    /* A closed member gets nothing and holds no reference. */
    stoa_hub_close(c->s, STOA_LEFT_LEAVE);
    drain(a);
    drain(b);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    m[2] = next_msg(b);
    ck_assert_uint_eq(stoa_msg_refcount(m[2]), 2);
    stoa_msg_unref(m[2]);
    json_object_put(data);
}
END_TEST

/* ---- presence merged in place ---- */

/* a's state as b's last presence says (the caller puts it). */
static json_object *relayed_state(peer_t *b)
{
    json_object *o = expect_msg(b, "presence"), *st = json_object_get(obj_field(o, "state", json_type_object));
    json_object_put(o);
    return st;
}

START_TEST(test_presence_inplace_semantics)
{
    static const char *const patches[] = {
        "{\"cursor\":{\"x\":1,\"y\":2}}",               /* a new nested object */
        "{\"cursor\":{\"x\":3}}",                       /* merged into it, y kept */
        "{\"cursor\":{\"y\":null},\"sel\":[1,null,{\"a\":null}]}",   /* a nested delete; arrays as they are */
        "{\"n\":1,\"b\":true,\"s\":\"x\",\"d\":1.5}",   /* scalars added */
        "{\"n\":2,\"b\":false,\"s\":\"yy\",\"d\":2.25}",   /* and overwritten (in place where possible) */
        "{\"n\":\"two\",\"s\":3,\"d\":null}",           /* another type; a delete */
        "{\"n\":18446744073709551615}",                 /* above INT64_MAX */
        "{\"n\":-9223372036854775808,\"b\":null}",
        "{\"cursor\":7}",                               /* an object replaced by a scalar */
        "{\"cursor\":{\"z\":{\"deep\":null,\"k\":1},\"w\":null}}",   /* a scalar by an object: nulls dropped */
        "{\"sel\":{\"a\":1}}",                          /* an array by an object */
        "{\"missing\":null}",                           /* deleting what is not there */
        "{}",
        "{\"cursor\":null,\"sel\":null,\"n\":null,\"s\":null}",   /* back to nothing */
        "{\"e\":{}}",
    };
    peer_t *a, *b;
    json_object *shadow = json_tokener_parse("{\"name\":\"ada\",\"keep\":{\"k\":1}}");
    set("presence_burst", "100");
    three_in_doc1(&a, &b, &(peer_t *){NULL}, "{\"name\":\"ada\",\"keep\":{\"k\":1}}");
    for (size_t i = 0; i < STOA_ARRAY_LEN(patches); i++) {
        json_object *patch = json_tokener_parse(patches[i]), *got, *next;
        char *before = strdup(json_object_to_json_string_ext(patch, JSON_C_TO_STRING_PLAIN));
        ck_assert_ptr_nonnull(patch);
        ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
        next = stoa_presence_merge(shadow, patch);   /* the reference: a merge into a copy */
        json_object_put(shadow);
        shadow = next;
        got = relayed_state(b);
        ck_assert_msg(json_object_equal(got, shadow), "after %s: got %s, want %s", patches[i],
                      json_object_to_json_string_ext(got, JSON_C_TO_STRING_PLAIN),
                      json_object_to_json_string_ext(shadow, JSON_C_TO_STRING_PLAIN));
        /* byte for byte, in the same member order */
        ck_assert_str_eq(json_object_to_json_string_ext(got, JSON_C_TO_STRING_PLAIN),
                         json_object_to_json_string_ext(shadow, JSON_C_TO_STRING_PLAIN));
        /* The patch is unchanged, and the state shares nothing with it:
         * changing the patch afterwards changes no state. */
        ck_assert_str_eq(json_object_to_json_string_ext(patch, JSON_C_TO_STRING_PLAIN), before);
        json_object_object_foreach(patch, key, val) {
            if (json_object_is_type(val, json_type_object))
                json_object_object_add(val, "mutated", json_object_new_int(1));
            else if (json_object_is_type(val, json_type_int))
                json_object_set_int64(val, 424242);
            (void)key;
        }
        free(before);
        json_object_put(patch);
        json_object_put(got);
        expect_empty(b);
    }
    {   /* what a joiner and the REST API see is the same state */
        char *text = stoa_hub_room_json(hub, "doc:1");
        json_object *o = json_tokener_parse(text), *p0;
        p0 = json_object_array_get_idx(obj_field(o, "peers", json_type_array), 0);
        ck_assert(json_object_equal(obj_field(p0, "state", json_type_object), shadow));
        json_object_put(o);
        free(text);
    }
    json_object_put(shadow);
}
END_TEST

/* A patch over the limit leaves an own (in-place merged) state exactly as
 * it was, nested members and member order included; later patches merge
 * into that. */
START_TEST(test_presence_inplace_too_large_restores)
{
    peer_t *a, *b;
    char big[256];
    json_object *patch, *got, *want;
    set("max_state_bytes", "96");
    set("presence_burst", "100");
    two_in_doc1(&a, &b);
    patch = json_tokener_parse("{\"c\":{\"x\":1,\"y\":2},\"n\":5,\"s\":\"abc\",\"d\":0.1}");
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);   /* a copy of its own */
    json_object_put(patch);
    json_object_put(relayed_state(b));
    patch = json_tokener_parse("{\"c\":{\"x\":3},\"n\":6}");
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);   /* in place */
    json_object_put(patch);
    json_object_put(relayed_state(b));

    /* Over the limit through a nested change, with deletes and in-place
     * scalar changes on the way: refused, nothing relayed. */
    snprintf(big, sizeof big, "{\"n\":7,\"s\":null,\"c\":{\"x\":4,\"y\":null,\"pad\":\"%080d\"}}", 0);
    patch = json_tokener_parse(big);
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_ERR_STATE_TOO_LARGE);
    ck_assert_msg(strstr(why, "96") != NULL, "%s", why);
    json_object_put(patch);
    expect_empty(b);

    /* The next change merges into the state as it was before. */
    patch = json_tokener_parse("{\"n\":8}");
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    json_object_put(patch);
    got = relayed_state(b);
    ck_assert_str_eq(json_object_to_json_string_ext(got, JSON_C_TO_STRING_PLAIN),
                     "{\"c\":{\"x\":3,\"y\":2},\"n\":8,\"s\":\"abc\",\"d\":0.1}");
    json_object_put(got);

    /* Exactly at the limit is accepted. */
    want = json_tokener_parse("{\"c\":null,\"n\":null,\"s\":null,\"d\":null}");
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", want, NULL, why, sizeof why), STOA_OK);
    json_object_put(want);
    json_object_put(relayed_state(b));
    snprintf(big, sizeof big, "{\"s\":\"%088d\"}", 0);   /* {"s":"<88>"} = 96 bytes */
    patch = json_tokener_parse(big);
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    json_object_put(patch);
    got = relayed_state(b);
    ck_assert_uint_eq(strlen(json_object_to_json_string_ext(got, JSON_C_TO_STRING_PLAIN)), 96);
    json_object_put(got);
    snprintf(big, sizeof big, "{\"s\":\"%089d\"}", 0);   /* 97 */
    patch = json_tokener_parse(big);
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_ERR_STATE_TOO_LARGE);
    json_object_put(patch);
    expect_empty(b);
}
END_TEST

/* A shared state (none, or one set through hub_set_state by the bus side)
 * is copied before it is changed: another member's state and the hub's
 * empty state stay as they were. */
START_TEST(test_presence_shared_state_copied)
{
    peer_t *a, *b, *c;
    json_object *patch = json_tokener_parse("{\"x\":1}"), *o;
    char *text;
    three_in_doc1(&a, &b, &c, NULL);   /* b and c share the empty state */
    ck_assert_int_eq(stoa_hub_presence(b->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    json_object_put(patch);
    drain_all();
    text = stoa_hub_room_json(hub, "doc:1");
    o = json_tokener_parse(text);
    free(text);
    {
        json_object *arr = obj_field(o, "peers", json_type_array);
        for (size_t i = 0; i < json_object_array_length(arr); i++) {
            json_object *e = json_object_array_get_idx(arr, i);
            const char *st = json_object_to_json_string_ext(obj_field(e, "state", json_type_object),
                                                            JSON_C_TO_STRING_PLAIN);
            ck_assert_str_eq(st, strcmp(str_field(e, "peer"), peer_id(b)) == 0 ? "{\"x\":1}" : "{}");
        }
    }
    json_object_put(o);
    /* A newcomer without a state still starts empty. */
    {
        peer_t *d = open_peer("dee", "{\"*\":\"r\"}");
        join_ok(d, "doc:1", NULL);
        o = expect_msg(d, "room_state");
        json_object_put(o);
        drain_all();
    }
}
END_TEST

/* Coalesced presence: the batch carries each changed peer's latest state,
 * byte for byte as the json-c encoder wrote it before. */
START_TEST(test_presence_batch_bytes)
{
    peer_t *a, *b, *c;
    stoa_msg_t *m;
    json_object *list, *e, *pa, *pb;
    stoa_msg_t *want;
    cfg->presence_rate = 1000;
    cfg->presence_burst = 100;
    three_in_doc1(&a, &b, &c, "{\"name\":\"\\u00e9\\/x\\\"q\",\"t\":1.25}");
    cfg->presence_tick_ms = 1000;
    stoa_hub_flush_presence(hub, stoa_now_ms() + 5000);
    pa = json_tokener_parse("{\"cursor\":{\"x\":1,\"y\":2}}");
    pb = json_tokener_parse("{\"sel\":[1,2,\"\\n\"]}");
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", pa, NULL, why, sizeof why), STOA_OK);   /* at once */
    drain_all();
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", pa, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_presence(b->s, "doc:1", pb, NULL, why, sizeof why), STOA_OK);
    stoa_hub_flush_presence(hub, stoa_now_ms() + 10000);
    m = next_msg(c);
    ck_assert_ptr_nonnull(m);
    /* The same message through the json-c encoder. */
    list = json_object_new_array();
    for (int i = 0; i < 2; i++) {
        json_object *st = i == 0 ? json_tokener_parse("{\"name\":\"\\u00e9\\/x\\\"q\",\"t\":1.25,\"cursor\":{\"x\":1,\"y\":2}}")
                                 : json_tokener_parse("{\"sel\":[1,2,\"\\n\"]}");
        e = json_object_new_object();
        json_object_object_add(e, "peer", json_object_new_string(peer_id(i == 0 ? a : b)));
        json_object_object_add(e, "state", st);
        json_object_array_add(list, e);
    }
    want = stoa_wire_presence_batch("doc:1", list);
    if (strstr(stoa_msg_text(m), peer_id(b)) < strstr(stoa_msg_text(m), peer_id(a))) {   /* member order */
        json_object *x = json_object_get(json_object_array_get_idx(list, 0));
        json_object_array_del_idx(list, 0, 1);
        json_object_array_add(list, x);
        stoa_msg_unref(want);
        want = stoa_wire_presence_batch("doc:1", list);
    }
    ck_assert_str_eq(stoa_msg_text(m), stoa_msg_text(want));
    ck_assert_uint_eq(stoa_msg_len(m), stoa_msg_len(want));
    stoa_msg_unref(m);
    stoa_msg_unref(want);
    json_object_put(list);
    json_object_put(pa);
    json_object_put(pb);
    drain_all();
}
END_TEST

/* ---- wakeups in batches (stoa_transport_ops_t.wake_batch) ---- */

typedef struct batch_tp {
    int calls, wakes;
    void *conns[8];
} batch_tp_t;

static batch_tp_t btp, btp2;

static void batch_wake(void *transport, stoa_wake_t *w, size_t n)
{
    batch_tp_t *t = transport;
    ck_assert(t == &btp || t == &btp2);
    t->calls++;
    for (size_t i = 0; i < n; i++) {
        ck_assert_ptr_nonnull(w[i].sess);
        if (t->wakes < 8)
            t->conns[t->wakes] = w[i].conn;
        t->wakes++;
        stoa_session_unref(w[i].sess);   /* the reference passed to us */
    }
}

static void single_wake_unexpected(void *transport, stoa_session_t *sess, void *conn)
{
    (void)transport;
    (void)sess;
    (void)conn;
    ck_abort_msg("wake called for a transport that takes batches");
}

static const stoa_transport_ops_t batch_ops = {
    .name = "batch", .wake = single_wake_unexpected, .wake_batch = batch_wake};

START_TEST(test_wake_batch)
{
    static const char *const names[] = {"w0", "w1", "w2", "w3"};
    int conns[4];
    stoa_session_t *s[4];
    peer_t *p;
    json_object *data = json_tokener_parse("{\"x\":1}");
    memset(&btp, 0, sizeof btp);
    for (int i = 0; i < 4; i++) {   /* two transports (shards), taken in turn */
        s[i] = stoa_hub_open(hub, fixture_ident(names[i], "{\"*\":\"rw\"}", "#000000"), &batch_ops,
                             i % 2 ? &btp2 : &btp, &conns[i], NULL);
        ck_assert_int_eq(stoa_hub_join(s[i], "doc:b", NULL, NULL, why, sizeof why), STOA_OK);
    }
    p = open_peer("plain", "{\"*\":\"rw\"}");   /* a transport without batches in the same room */
    join_ok(p, "doc:b", NULL);
    drain(p);
    memset(&btp, 0, sizeof btp);
    memset(&btp2, 0, sizeof btp2);
    p->wakes = 0;
    /* One fan-out: the other batch members in one call per transport, in
     * order, the plain peer through its own wake. */
    ck_assert_int_eq(stoa_hub_ephemeral(s[0], "doc:b", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(btp.calls, 1);
    ck_assert_int_eq(btp.wakes, 1);
    ck_assert_ptr_eq(btp.conns[0], &conns[2]);
    ck_assert_int_eq(btp2.calls, 1);
    ck_assert_int_eq(btp2.wakes, 2);
    ck_assert_ptr_eq(btp2.conns[0], &conns[1]);
    ck_assert_ptr_eq(btp2.conns[1], &conns[3]);
    ck_assert_int_eq(p->wakes, 1);
    /* The messages are there for each. */
    for (int i = 1; i < 4; i++) {
        stoa_msg_t *m;
        bool found = false;
        while ((m = stoa_session_next(s[i], &conns[i], NULL, NULL))) {
            found |= strstr(stoa_msg_text(m), "\"type\":\"ephemeral\"") != NULL;
            stoa_msg_unref(m);
        }
        ck_assert(found);
    }
    json_object_put(expect_msg(p, "ephemeral"));
    /* Closing wakes too (its connection finds it gone); the references
     * balance (ASan's leak check). */
    for (int i = 0; i < 4; i++) {
        stoa_hub_close(s[i], STOA_LEFT_DISCONNECT);
        stoa_session_unref(s[i]);
    }
    drain(p);
    json_object_put(data);
}
END_TEST

static Suite *hub_suite(void)
{
    Suite *s = suite_create("hub");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_welcome);
    tcase_add_test(tc, test_presence_coalesced);
    tcase_add_test(tc, test_observers);
    tcase_add_test(tc, test_take_batch);
    tcase_add_test(tc, test_wake_batch);
    tcase_add_test(tc, test_untake_after_trim_resyncs);
    tcase_add_test(tc, test_broadcast_references);
    tcase_add_test(tc, test_presence_inplace_semantics);
    tcase_add_test(tc, test_presence_inplace_too_large_restores);
    tcase_add_test(tc, test_presence_shared_state_copied);
    tcase_add_test(tc, test_presence_batch_bytes);
    tcase_add_test(tc, test_peer_ids_unique);
    tcase_add_test(tc, test_three_sessions);
    tcase_add_test(tc, test_presence_relay);
    tcase_add_test(tc, test_ephemeral_relay);
    tcase_add_test(tc, test_shared_by_reference);
    tcase_add_test(tc, test_leave_and_close);
    tcase_add_test(tc, test_close_drops_queue);
    tcase_add_test(tc, test_close_with_undrained_recipients);
    tcase_add_test(tc, test_permission_denied);
    tcase_add_test(tc, test_bad_room);
    tcase_add_test(tc, test_already_joined);
    tcase_add_test(tc, test_bad_initial_state);
    tcase_add_test(tc, test_too_many_rooms);
    tcase_add_test(tc, test_room_full);
    tcase_add_test(tc, test_state_too_large);
    tcase_add_test(tc, test_presence_rate_limited);
    tcase_add_test(tc, test_ephemeral_rate_limited);
    tcase_add_test(tc, test_join_rate_limited);
    tcase_add_test(tc, test_not_in_room);
    tcase_add_test(tc, test_heartbeat_ack);
    tcase_add_test(tc, test_eviction);
    tcase_add_test(tc, test_heartbeat_postpones_eviction);
    tcase_add_test(tc, test_buffer_limit_msgs);
    tcase_add_test(tc, test_buffer_limit_bytes);
    tcase_add_test(tc, test_reading_keeps_up);
    tcase_add_test(tc, test_room_json);
    tcase_add_test(tc, test_hub_send);
    tcase_add_test(tc, test_anonymous_identity_session);
    tcase_add_test(tc, test_left_reason_names);
    tcase_add_test(tc, test_join_after_close);
    tcase_add_test(tc, test_free_does_not_wake_gone_transports);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(hub_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
