/* check_session.c - unit tests of sessions outliving their connections:
 * sequence numbers, resume, resync, supersede, detach and the grace period,
 * the bounded buffer, and stoa_access_connect.
 *
 * A fake transport: one transport object records every wakeup; each
 * connection is a conn_t, passed as `conn` and counting its own wakeups. */
#include "stoa/access.h"
#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/hub.h"
#include "stoa/perm.h"
#include "stoa/util.h"
#include "stoa/wire.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hub_fixture.h"

#define MAX_SESSIONS 16
#define SECRET "0123456789abcdef0123456789abcdef-session-test"

/* ---- fake transport ---- */

typedef struct conn {
    const char *name;
    int wakes;                   /* wakeups naming this connection */
    stoa_session_t *woken;       /* the session of the last one */
    uint64_t seq;                /* the last seq it read */
} conn_t;

typedef struct transport {
    int wakes;
} transport_t;

static transport_t tp, tp_other;

static void fake_wake(void *transport, stoa_session_t *sess, void *conn)
{
    conn_t *c = conn;
    ck_assert_msg(transport == &tp || transport == &tp_other, "wake with an unknown transport");
    ck_assert_msg(c != NULL, "wake without a connection");
    ((transport_t *)transport)->wakes++;
    c->wakes++;
    c->woken = sess;
}

static const stoa_transport_ops_t fake_ops = {.name = "fake", .wake = fake_wake};
static const stoa_transport_ops_t other_ops = {.name = "other", .wake = fake_wake};

/* Connections live in a pool that outlives each test's body: teardown
 * closes the sessions still open, which wakes their connections. */
#define MAX_CONNS 32
static conn_t conns[MAX_CONNS];
static int nconns;

static conn_t *new_conn(const char *name)
{
    conn_t *c;
    ck_assert_int_lt(nconns, MAX_CONNS);
    c = &conns[nconns++];
    memset(c, 0, sizeof *c);
    c->name = name;
    return c;
}

/* ---- fixture ---- */

static stoa_session_t *opened[MAX_SESSIONS];   /* references the test owns */
static int nopened;
static char why[256];

static void setup(void)
{
    fixture_hub_setup();
    memset(opened, 0, sizeof opened);
    nopened = 0;
    memset(&tp, 0, sizeof tp);
    memset(&tp_other, 0, sizeof tp_other);
    memset(conns, 0, sizeof conns);
    nconns = 0;
    why[0] = '\0';
}

static void teardown(void)
{
    for (int i = 0; i < nopened; i++) {
        stoa_hub_close(opened[i], STOA_LEFT_DISCONNECT);
        stoa_session_unref(opened[i]);
    }
    stoa_hub_free(hub);
    stoa_config_free(cfg);
}

static void keep(stoa_session_t *s)
{
    ck_assert_int_lt(nopened, MAX_SESSIONS);
    opened[nopened++] = s;
}

static stoa_identity_t *make_ident(const char *sub, const char *rights)
{
    return fixture_ident(sub, rights, "#4363d8");
}

/* ---- JSON ---- */

/* The "n" of a presence message's state. */
static int64_t presence_n_of(json_object *o)
{
    return int_field(obj_field(o, "state", json_type_object), "n");
}

/* ---- sessions and connections ---- */

/* Check a welcome (and drop it); returns its seq. */
static uint64_t check_welcome(stoa_session_t *s, stoa_msg_t *w, bool resumed)
{
    json_object *o;
    uint64_t seq;
    ck_assert_msg(w != NULL, "no welcome");
    o = parse_msg(w);
    stoa_msg_unref(w);
    ck_assert_str_eq(str_field(o, "type"), "welcome");
    ck_assert_str_eq(str_field(o, "peer"), stoa_session_peer(s));
    ck_assert_str_eq(str_field(o, "session"), stoa_session_id(s));
    ck_assert_str_eq(str_field(obj_field(o, "user", json_type_object), "id"), stoa_session_sub(s));
    ck_assert_msg(bool_field(o, "resumed") == resumed, "resumed is not %d in %s", resumed,
                  json_object_to_json_string(o));
    obj_field(o, "limits", json_type_object);
    int_field(o, "heartbeat_interval");
    int_field(o, "heartbeat_timeout");
    seq = (uint64_t)int_field(o, "seq");
    json_object_put(o);
    return seq;
}

/* Open a session for sub with every right, attached to c. */
static stoa_session_t *open_on(const char *sub, conn_t *c)
{
    stoa_msg_t *w = NULL;
    stoa_session_t *s = stoa_hub_open(hub, make_ident(sub, "{\"*\":\"rw\"}"), &fake_ops, &tp, c, &w);
    ck_assert_ptr_nonnull(s);
    keep(s);
    c->name = sub;
    c->seq = 0;
    ck_assert_uint_eq(check_welcome(s, w, false), 0);
    return s;
}

/* Attach c to s (after last_seq if has_last), expecting success; returns
 * the welcome's seq, which becomes c's position. */
static uint64_t attach_ok(stoa_session_t *s, conn_t *c, bool has_last, uint64_t last_seq)
{
    stoa_msg_t *w = NULL;
    stoa_err_t err = stoa_hub_attach(s, &fake_ops, &tp, c, has_last, last_seq, &w);
    ck_assert_msg(err == STOA_OK, "attach: %s", stoa_err_name(err));
    c->seq = check_welcome(s, w, true);
    ck_assert_ptr_eq(stoa_session_conn(s, &fake_ops), c);
    return c->seq;
}

/* The next message for c, which must be attached; seqs must run on. */
static stoa_msg_t *next_on(stoa_session_t *s, conn_t *c)
{
    uint64_t seq = 0;
    bool gone = true;
    stoa_msg_t *m = stoa_session_next(s, c, &seq, &gone);
    ck_assert_msg(!gone, "%s: the connection is no longer the session's", c->name);
    if (m) {
        ck_assert_msg(seq == c->seq + 1, "%s: seq %llu after %llu (%s)", c->name, (unsigned long long)seq,
                      (unsigned long long)c->seq, stoa_msg_text(m));
        c->seq = seq;
    }
    return m;
}

/* The next message for c, which must be of `type`; returns it parsed (the
 * caller puts it). */
static json_object *expect_on(stoa_session_t *s, conn_t *c, const char *type)
{
    return msg_of_type(next_on(s, c), c->name, type);
}

/* The next message on s through c is a presence whose state has n. */
static void expect_presence_n(stoa_session_t *s, conn_t *c, int64_t n)
{
    json_object *o = expect_on(s, c, "presence");
    ck_assert_int_eq(presence_n_of(o), n);
    json_object_put(o);
}

static void expect_none(stoa_session_t *s, conn_t *c)
{
    uint64_t seq = 777;
    bool gone = true;
    stoa_msg_t *m = stoa_session_next(s, c, &seq, &gone);
    ck_assert_msg(m == NULL, "%s: expected nothing, got %s", c->name, m ? stoa_msg_text(m) : "");
    ck_assert_msg(!gone, "%s: unexpectedly gone", c->name);
    ck_assert_uint_eq(seq, 777);
}

static void expect_gone(stoa_session_t *s, conn_t *c)
{
    uint64_t seq = 777;
    bool gone = false;
    stoa_msg_t *m = stoa_session_next(s, c, &seq, &gone);
    ck_assert_msg(m == NULL, "%s: expected nothing, got %s", c->name, m ? stoa_msg_text(m) : "");
    ck_assert_msg(gone, "%s: expected gone", c->name);
    ck_assert_uint_eq(seq, 777);
}

static void drain(stoa_session_t *s, conn_t *c)
{
    stoa_msg_t *m;
    while ((m = next_on(s, c)))
        stoa_msg_unref(m);
}

/* The next message must be a resync with this reason and rooms (in any
 * order), numbered with its own "seq"; then a room_state for each room, in
 * the resync's order. Returns the resync's seq. */
static uint64_t expect_resync(stoa_session_t *s, conn_t *c, const char *reason, const char *const *rooms,
                              size_t nrooms)
{
    uint64_t seq = 0;
    bool gone = true;
    stoa_msg_t *m = stoa_session_next(s, c, &seq, &gone);
    json_object *o, *arr;
    ck_assert(!gone);
    ck_assert_msg(m != NULL, "%s: nothing, expected a resync", c->name);
    o = parse_msg(m);
    stoa_msg_unref(m);
    ck_assert_msg(strcmp(str_field(o, "type"), "resync") == 0, "%s: expected resync, got %s", c->name,
                  json_object_to_json_string(o));
    ck_assert_uint_eq((uint64_t)int_field(o, "seq"), seq);
    ck_assert_uint_gt(seq, c->seq);
    ck_assert_str_eq(str_field(o, "reason"), reason);
    c->seq = seq;
    arr = obj_field(o, "rooms", json_type_array);
    ck_assert_uint_eq(json_object_array_length(arr), nrooms);
    for (size_t i = 0; i < nrooms; i++) {
        bool found = false;
        for (size_t j = 0; j < nrooms; j++)
            found |= strcmp(json_object_get_string(json_object_array_get_idx(arr, j)), rooms[i]) == 0;
        ck_assert_msg(found, "%s not in %s", rooms[i], json_object_to_json_string(arr));
    }
    for (size_t i = 0; i < nrooms; i++) {
        json_object *st = expect_on(s, c, "room_state");
        ck_assert_str_eq(str_field(st, "room"), json_object_get_string(json_object_array_get_idx(arr, i)));
        ck_assert(!json_object_object_get_ex(st, "id", NULL));
        json_object_put(st);
    }
    json_object_put(o);
    return seq;
}

static void join_ok(stoa_session_t *s, const char *room, const char *state_json)
{
    json_object *state = state_json ? json_tokener_parse(state_json) : NULL;
    stoa_err_t err = stoa_hub_join(s, room, state, NULL, why, sizeof why);
    ck_assert_msg(err == STOA_OK, "join %s: %s (%s)", room, stoa_err_name(err), why);
    json_object_put(state);
}

/* ada opens on ca and bob on cb; both join doc:1. */
static void ada_and_bob_in_doc1(stoa_session_t **a, conn_t *ca, stoa_session_t **b, conn_t *cb)
{
    *a = open_on("ada", ca);
    *b = open_on("bob", cb);
    join_ok(*a, "doc:1", NULL);
    join_ok(*b, "doc:1", NULL);
}

static void presence_n(stoa_session_t *s, const char *room, int n)
{
    char text[64];
    json_object *patch;
    snprintf(text, sizeof text, "{\"n\":%d}", n);
    patch = json_tokener_parse(text);
    ck_assert_int_eq(stoa_hub_presence(s, room, patch, NULL, why, sizeof why), STOA_OK);
    json_object_put(patch);
}

static bool is_open(stoa_session_t *s)
{
    stoa_session_t *found = stoa_hub_find(hub, stoa_session_id(s));
    if (!found)
        return false;
    ck_assert_ptr_eq(found, s);
    stoa_session_unref(found);
    return true;
}

static size_t room_size(const char *room)
{
    char *text = stoa_hub_room_json(hub, room);
    json_object *o = json_tokener_parse(text);
    size_t n = json_object_array_length(obj_field(o, "peers", json_type_array));
    json_object_put(o);
    free(text);
    return n;
}

static void expect_peer_left(stoa_session_t *s, conn_t *c, const char *room, stoa_session_t *who,
                             const char *reason)
{
    json_object *o = expect_on(s, c, "peer_left");
    ck_assert_str_eq(str_field(o, "room"), room);
    ck_assert_str_eq(str_field(o, "peer"), stoa_session_peer(who));
    ck_assert_str_eq(str_field(o, "reason"), reason);
    json_object_put(o);
}

/* ---- tests ---- */

START_TEST(test_seqs_consecutive)
{
    conn_t *ca = new_conn("ca"), *cb = new_conn("cb");
    stoa_session_t *a = open_on("ada", ca), *b = open_on("bob", cb);
    json_object *id = json_object_new_int(1), *patch = json_tokener_parse("{\"x\":1}");
    json_object *data = json_object_new_string("hi"), *o;
    static const char *const a_types[] = {"room_state", "peer_joined", "ack", "ephemeral", "ack", "ack"};
    static const char *const b_types[] = {"room_state", "presence", "peer_left"};
    stoa_msg_t *m;

    ck_assert_int_eq(stoa_hub_join(a, "doc:1", NULL, id, why, sizeof why), STOA_OK);
    join_ok(b, "doc:1", NULL);
    ck_assert_int_eq(stoa_hub_presence(a, "doc:1", patch, id, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_ephemeral(b, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_heartbeat(a, "doc:1", id, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_leave(a, "doc:1", id, why, sizeof why), STOA_OK);

    /* Each session numbers its own messages 1, 2, 3..., in the order
     * they were queued; next() hands them out in that order. */
    for (size_t i = 0; i < STOA_ARRAY_LEN(a_types); i++) {
        o = expect_on(a, ca, a_types[i]);
        ck_assert_uint_eq(ca->seq, i + 1);
        json_object_put(o);
    }
    expect_none(a, ca);
    for (size_t i = 0; i < STOA_ARRAY_LEN(b_types); i++) {
        o = expect_on(b, cb, b_types[i]);
        ck_assert_uint_eq(cb->seq, i + 1);
        json_object_put(o);
    }
    expect_none(b, cb);

    /* seq and gone may be NULL. */
    stoa_hub_send(a, stoa_wire_notice("info", "x"));
    m = stoa_session_next(a, ca, NULL, NULL);
    ck_assert_ptr_nonnull(m);
    stoa_msg_unref(m);
    ck_assert_ptr_null(stoa_session_next(a, ca, NULL, NULL));
    /* The numbering went on (that next() read seq 7 without saying so). */
    stoa_hub_send(a, stoa_wire_notice("info", "y"));
    ca->seq = 7;
    json_object_put(expect_on(a, ca, "notice"));
    ck_assert_uint_eq(ca->seq, 8);

    json_object_put(id);
    json_object_put(patch);
    json_object_put(data);
}
END_TEST

START_TEST(test_resume_replays)
{
    conn_t *ca1 = new_conn("ca1"), *ca2 = new_conn("ca2"), *ca3 = new_conn("ca3"), *cb = new_conn("cb");
    stoa_session_t *a, *b;
    uint64_t n;
    json_object *o;
    set("presence_burst", "100");
    ada_and_bob_in_doc1(&a, ca1, &b, cb);
    drain(a, ca1);
    drain(b, cb);
    for (int i = 1; i <= 5; i++)
        presence_n(b, "doc:1", i);
    for (int i = 1; i <= 3; i++)
        expect_presence_n(a, ca1, i);
    n = ca1->seq;

    /* The connection drops: the session and its membership stay. */
    stoa_hub_detach(a, ca1, false);
    ck_assert_ptr_null(stoa_session_conn(a, &fake_ops));
    expect_gone(a, ca1);
    presence_n(b, "doc:1", 6);
    presence_n(b, "doc:1", 7);
    expect_none(b, cb);   /* nobody left */
    ck_assert_uint_eq(room_size("doc:1"), 2);
    ck_assert(is_open(a));

    /* Resume after n: exactly n+1... in order, no duplicates. */
    ck_assert_uint_eq(attach_ok(a, ca2, true, n), n);
    ck_assert_int_ge(ca2->wakes, 1);   /* it has messages waiting */
    ck_assert_ptr_eq(ca2->woken, a);
    for (int i = 4; i <= 7; i++)
        expect_presence_n(a, ca2, i);
    ck_assert_uint_eq(ca2->seq, n + 4);
    expect_none(a, ca2);
    expect_gone(a, ca1);

    /* A client may have lost what was handed to its connection: resuming
     * after n + 2 (behind the cursor) replays n + 3 and n + 4 again. */
    ck_assert_uint_eq(attach_ok(a, ca3, true, n + 2), n + 2);
    for (int i = 6; i <= 7; i++)
        expect_presence_n(a, ca3, i);
    expect_none(a, ca3);
    expect_gone(a, ca2);

    /* New messages go on with the numbering. */
    presence_n(b, "doc:1", 8);
    o = expect_on(a, ca3, "presence");
    ck_assert_int_eq(presence_n_of(o), 8);
    ck_assert_uint_eq(ca3->seq, n + 5);
    json_object_put(o);
}
END_TEST

START_TEST(test_resume_without_last_seq)
{
    conn_t *ca1 = new_conn("ca1"), *ca2 = new_conn("ca2"), *cb = new_conn("cb");
    stoa_session_t *a = open_on("ada", ca1), *b = open_on("bob", cb);
    uint64_t at;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    drain(a, ca1);
    for (int i = 1; i <= 4; i++)
        presence_n(b, "doc:1", i);
    json_object_put(expect_on(a, ca1, "presence"));
    json_object_put(expect_on(a, ca1, "presence"));
    at = ca1->seq;
    stoa_hub_detach(a, ca1, false);
    /* Delivery continues where the cursor stands; the welcome says where. */
    ck_assert_uint_eq(attach_ok(a, ca2, false, 0), at);
    for (int i = 3; i <= 4; i++)
        expect_presence_n(a, ca2, i);
    expect_none(a, ca2);
}
END_TEST

START_TEST(test_resume_gap)
{
    conn_t *ca1 = new_conn("ca1"), *ca2 = new_conn("ca2"), *ca3 = new_conn("ca3"), *cb = new_conn("cb");
    stoa_session_t *a, *b;
    static const char *const rooms[] = {"doc:1", "doc:2"};
    uint64_t n, r, w;
    json_object *o, *arr;
    set("presence_burst", "100");
    set("session_buffer_msgs", "8");
    a = open_on("ada", ca1);
    b = open_on("bob", cb);
    join_ok(a, "doc:1", "{\"me\":\"ada\"}");
    join_ok(a, "doc:2", NULL);
    join_ok(b, "doc:1", NULL);
    drain(a, ca1);
    n = ca1->seq;
    stoa_hub_detach(a, ca1, false);
    /* 10 messages while away, 8 kept: n + 1 and n + 2 are gone. */
    for (int i = 1; i <= 10; i++)
        presence_n(b, "doc:1", i);

    w = attach_ok(a, ca2, true, n);
    r = expect_resync(a, ca2, "gap", rooms, 2);
    ck_assert_uint_eq(r, n + 11);   /* numbered after the 10 */
    ck_assert_uint_eq(w, r - 1);    /* the welcome: the next message is the resync */
    expect_none(a, ca2);

    /* Those room_states are buffered like anything else: a resume right
     * after the resync replays them. doc:1's holds both peers, with B's
     * latest state. */
    ck_assert_uint_eq(attach_ok(a, ca3, true, r), r);
    for (int i = 0; i < 2; i++) {
        bool seen_a = false, seen_b = false;
        o = expect_on(a, ca3, "room_state");
        arr = obj_field(o, "peers", json_type_array);
        if (strcmp(str_field(o, "room"), "doc:1") == 0) {
            ck_assert_uint_eq(json_object_array_length(arr), 2);
            for (size_t j = 0; j < 2; j++) {
                json_object *p = json_object_array_get_idx(arr, j), *st = obj_field(p, "state", json_type_object);
                if (strcmp(str_field(p, "peer"), stoa_session_peer(b)) == 0) {
                    ck_assert_int_eq(int_field(st, "n"), 10);
                    seen_b = true;
                } else if (strcmp(str_field(p, "peer"), stoa_session_peer(a)) == 0) {
                    ck_assert_str_eq(str_field(st, "me"), "ada");
                    seen_a = true;
                }
            }
            ck_assert(seen_a && seen_b);
        } else {
            ck_assert_str_eq(str_field(o, "room"), "doc:2");
            ck_assert_uint_eq(json_object_array_length(arr), 1);
            ck_assert_str_eq(str_field(json_object_array_get_idx(arr, 0), "peer"), stoa_session_peer(a));
        }
        json_object_put(o);
    }
    expect_none(a, ca3);
}
END_TEST

START_TEST(test_resume_unknown_seq)
{
    conn_t *ca1 = new_conn("ca1"), *ca2 = new_conn("ca2"), *ca3 = new_conn("ca3"), *ca4 = new_conn("ca4"),
           *cb = new_conn("cb");
    stoa_session_t *a = open_on("ada", ca1), *b = open_on("bob", cb);
    static const char *const rooms[] = {"doc:1"};
    uint64_t n, r;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    drain(a, ca1);
    drain(b, cb);
    n = ca1->seq;
    ck_assert_uint_eq(n, 2);   /* room_state, peer_joined */
    stoa_hub_detach(a, ca1, false);

    /* The last seq sent: nothing to replay, no resync. */
    ck_assert_uint_eq(attach_ok(a, ca2, true, n), n);
    expect_none(a, ca2);

    /* One beyond: never sent. */
    ck_assert_uint_eq(attach_ok(a, ca3, true, n + 1), n);
    r = expect_resync(a, ca3, "unknown_seq", rooms, 1);
    ck_assert_uint_eq(r, n + 1);
    expect_none(a, ca3);

    /* Far beyond (no overflow anywhere). */
    ck_assert_uint_eq(attach_ok(a, ca4, true, UINT64_MAX), r + 1);
    ck_assert_uint_eq(expect_resync(a, ca4, "unknown_seq", rooms, 1), r + 2);
    expect_none(a, ca4);
    expect_none(b, cb);
}
END_TEST

START_TEST(test_supersede)
{
    conn_t *ca1 = new_conn("ca1"), *ca2 = new_conn("ca2"), *ca3 = new_conn("ca3"), *cb = new_conn("cb"),
           *bogus = new_conn("bogus");
    stoa_session_t *a = open_on("ada", ca1), *b = open_on("bob", cb);
    stoa_msg_t *w = NULL;
    json_object *o;
    int w1, w2;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    drain(a, ca1);
    drain(b, cb);

    w1 = ca1->wakes;
    attach_ok(a, ca2, true, ca1->seq);   /* without detaching ca1 */
    ck_assert_int_gt(ca1->wakes, w1);     /* the old connection was told */
    ck_assert_ptr_eq(ca1->woken, a);
    expect_gone(a, ca1);
    ck_assert_ptr_eq(stoa_session_conn(a, &fake_ops), ca2);
    expect_none(b, cb);   /* nobody left, nobody joined */

    /* New messages wake the new connection only. */
    w1 = ca1->wakes;
    w2 = ca2->wakes;
    presence_n(b, "doc:1", 1);
    ck_assert_int_gt(ca2->wakes, w2);
    ck_assert_int_eq(ca1->wakes, w1);
    expect_gone(a, ca1);
    o = expect_on(a, ca2, "presence");
    json_object_put(o);

    /* The superseded (or a foreign) connection cannot detach or end it. */
    stoa_hub_detach(a, ca1, true);
    stoa_hub_detach(a, bogus, true);
    stoa_hub_detach(a, ca1, false);
    ck_assert(is_open(a));
    ck_assert_ptr_eq(stoa_session_conn(a, &fake_ops), ca2);
    stoa_hub_tick(hub, stoa_now_ms() + cfg->session_grace_ms + 1000);
    ck_assert(is_open(a));
    expect_none(b, cb);
    expect_none(a, ca2);

    /* Another transport may take over; the old one is told through its
     * own transport. */
    w1 = tp.wakes;
    w2 = ca2->wakes;
    ck_assert_int_eq(stoa_hub_attach(a, &other_ops, &tp_other, ca3, true, ca2->seq, &w), STOA_OK);
    ca3->seq = check_welcome(a, w, true);
    ck_assert_int_gt(ca2->wakes, w2);
    ck_assert_int_gt(tp.wakes, w1);
    ck_assert_int_eq(tp_other.wakes, 0);   /* nothing for the new one yet */
    expect_gone(a, ca2);
    ck_assert_ptr_null(stoa_session_conn(a, &fake_ops));
    ck_assert_ptr_eq(stoa_session_conn(a, &other_ops), ca3);
    presence_n(b, "doc:1", 2);
    ck_assert_int_ge(tp_other.wakes, 1);
    ck_assert_ptr_eq(ca3->woken, a);
    expect_presence_n(a, ca3, 2);
}
END_TEST

START_TEST(test_detach_end)
{
    conn_t *ca = new_conn("ca"), *ca2 = new_conn("ca2"), *cb = new_conn("cb");
    stoa_session_t *a = open_on("ada", ca), *b = open_on("bob", cb);
    stoa_msg_t *w = NULL;
    size_t sessions, rooms;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    drain(b, cb);

    stoa_hub_detach(a, ca, true);   /* the client said goodbye */
    expect_peer_left(b, cb, "doc:1", a, "disconnect");
    expect_none(b, cb);
    ck_assert(!is_open(a));
    expect_gone(a, ca);
    ck_assert_ptr_null(stoa_session_conn(a, &fake_ops));
    stoa_hub_stats(hub, &sessions, &rooms);
    ck_assert_uint_eq(sessions, 1);
    ck_assert_uint_eq(rooms, 1);
    ck_assert_uint_eq(room_size("doc:1"), 1);

    /* It cannot be resumed. */
    ck_assert_int_eq(stoa_hub_attach(a, &fake_ops, &tp, ca2, true, 0, &w), STOA_ERR_SESSION_NOT_FOUND);
    ck_assert_ptr_null(w);
    expect_gone(a, ca2);
    /* Closing again changes nothing. */
    stoa_hub_close(a, STOA_LEFT_DISCONNECT);
    expect_none(b, cb);
}
END_TEST

START_TEST(test_detach_grace)
{
    conn_t *ca = new_conn("ca"), *ca2 = new_conn("ca2"), *cb = new_conn("cb"), *cc1 = new_conn("cc1"),
           *cc2 = new_conn("cc2");
    stoa_session_t *a = open_on("ada", ca), *b = open_on("bob", cb), *c = open_on("cy", cc1);
    stoa_msg_t *w = NULL;
    size_t sessions, rooms;
    int64_t grace = cfg->session_grace_ms;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    drain(b, cb);

    stoa_hub_detach(a, ca, false);   /* vanished: may come back */
    stoa_hub_detach(c, cc1, false);
    attach_ok(c, cc2, false, 0);     /* came back */
    expect_none(b, cb);
    ck_assert(is_open(a));
    ck_assert_uint_eq(room_size("doc:1"), 2);

    /* Within the grace period nothing happens. */
    stoa_hub_tick(hub, stoa_now_ms());
    stoa_hub_tick(hub, stoa_now_ms() + grace - 2000);
    expect_none(b, cb);
    ck_assert(is_open(a));
    stoa_hub_stats(hub, &sessions, &rooms);
    ck_assert_uint_eq(sessions, 3);

    /* After it, the session is closed and its peers leave. */
    stoa_hub_tick(hub, stoa_now_ms() + grace + 1000);
    expect_peer_left(b, cb, "doc:1", a, "disconnect");
    expect_none(b, cb);
    ck_assert(!is_open(a));
    ck_assert_ptr_null(stoa_hub_find(hub, stoa_session_id(a)));
    ck_assert(is_open(c));   /* reattached in time */
    ck_assert(is_open(b));
    stoa_hub_stats(hub, &sessions, &rooms);
    ck_assert_uint_eq(sessions, 2);
    ck_assert_uint_eq(room_size("doc:1"), 1);
    ck_assert_int_eq(stoa_hub_attach(a, &fake_ops, &tp, ca2, false, 0, &w), STOA_ERR_SESSION_NOT_FOUND);
    ck_assert_ptr_null(w);
}
END_TEST

START_TEST(test_open_detached)
{
    conn_t *ca = new_conn("ca");
    stoa_msg_t *w = NULL, *m;
    stoa_session_t *a, *z;
    uint64_t seq = 0;
    bool gone = false;
    a = stoa_hub_open(hub, make_ident("ada", "{}"), NULL, NULL, NULL, &w);
    keep(a);
    ck_assert_uint_eq(check_welcome(a, w, false), 0);
    ck_assert_ptr_null(stoa_session_conn(a, &fake_ops));
    m = stoa_session_next(a, NULL, &seq, &gone);
    ck_assert_ptr_null(m);
    ck_assert(gone);   /* nobody is attached */
    stoa_hub_send(a, stoa_wire_notice("info", "queued while detached"));
    ck_assert_int_eq(tp.wakes, 0);
    attach_ok(a, ca, true, 0);
    ck_assert_int_eq(ca->wakes, 1);
    json_object_put(expect_on(a, ca, "notice"));
    ck_assert_uint_eq(ca->seq, 1);

    /* One that never gets a connection expires too; welcome may be NULL. */
    z = stoa_hub_open(hub, make_ident("zed", "{}"), NULL, NULL, NULL, NULL);
    keep(z);
    ck_assert(is_open(z));
    stoa_hub_tick(hub, stoa_now_ms() + cfg->session_grace_ms + 1000);
    ck_assert(!is_open(z));
    ck_assert(is_open(a));
}
END_TEST

START_TEST(test_find)
{
    conn_t *ca = new_conn("ca"), *cb = new_conn("cb");
    stoa_session_t *a = open_on("ada", ca), *b = open_on("bob", cb), *f;
    char id[STOA_SESSION_ID_LEN + 2];
    const char *aid = stoa_session_id(a);

    ck_assert_uint_eq(strlen(aid), STOA_SESSION_ID_LEN);
    ck_assert_str_ne(aid, stoa_session_id(b));
    f = stoa_hub_find(hub, aid);
    ck_assert_ptr_eq(f, a);
    stoa_session_unref(f);
    f = stoa_hub_find(hub, stoa_session_id(b));
    ck_assert_ptr_eq(f, b);
    stoa_session_unref(f);

    /* One character off. */
    memcpy(id, aid, STOA_SESSION_ID_LEN + 1);
    id[STOA_SESSION_ID_LEN - 1] = id[STOA_SESSION_ID_LEN - 1] == 'a' ? 'b' : 'a';
    ck_assert_ptr_null(stoa_hub_find(hub, id));
    /* A prefix, an extension, nothing. */
    memcpy(id, aid, STOA_SESSION_ID_LEN + 1);
    id[STOA_SESSION_ID_LEN - 1] = '\0';
    ck_assert_ptr_null(stoa_hub_find(hub, id));
    memcpy(id, aid, STOA_SESSION_ID_LEN);
    id[STOA_SESSION_ID_LEN] = 'x';
    id[STOA_SESSION_ID_LEN + 1] = '\0';
    ck_assert_ptr_null(stoa_hub_find(hub, id));
    ck_assert_ptr_null(stoa_hub_find(hub, ""));
    ck_assert_ptr_null(stoa_hub_find(hub, NULL));
    /* The public peer id is not the secret. */
    ck_assert_ptr_null(stoa_hub_find(hub, stoa_session_peer(a)));

    /* A closed session is not found; the others still are. */
    stoa_hub_close(a, STOA_LEFT_LEAVE);
    ck_assert_ptr_null(stoa_hub_find(hub, aid));
    ck_assert(is_open(b));
}
END_TEST

START_TEST(test_ack)
{
    conn_t *ca1 = new_conn("ca1"), *ca2 = new_conn("ca2"), *ca3 = new_conn("ca3"), *cb = new_conn("cb");
    stoa_session_t *a, *b;
    static const char *const rooms[] = {"doc:1"};
    uint64_t n;
    stoa_msg_t *note = stoa_wire_notice("info", "acked");
    set("presence_burst", "100");
    ada_and_bob_in_doc1(&a, ca1, &b, cb);
    drain(a, ca1);
    stoa_hub_send(a, stoa_msg_ref(note));
    for (int i = 1; i <= 4; i++)
        presence_n(b, "doc:1", i);
    drain(a, ca1);
    n = ca1->seq;

    /* Acking drops what the buffer holds up to the seq... */
    ck_assert_uint_eq(stoa_msg_refcount(note), 2);
    stoa_session_ack(a, n - 2);
    ck_assert_uint_eq(stoa_msg_refcount(note), 1);
    /* ...and no more: a resume from n - 2 replays n - 1 and n. */
    ck_assert_uint_eq(attach_ok(a, ca2, true, n - 2), n - 2);
    expect_presence_n(a, ca2, 3);
    expect_presence_n(a, ca2, 4);
    expect_none(a, ca2);

    /* After ack(n), a resume from n - 1 has a gap. */
    stoa_session_ack(a, n);
    attach_ok(a, ca3, true, n - 1);
    ck_assert_uint_eq(expect_resync(a, ca3, "gap", rooms, 1), n + 1);
    expect_none(a, ca3);

    /* An ack beyond what was handed out drops nothing unread. */
    presence_n(b, "doc:1", 5);
    presence_n(b, "doc:1", 6);
    stoa_session_ack(a, ca3->seq + 100);
    expect_presence_n(a, ca3, 5);
    expect_presence_n(a, ca3, 6);
    expect_none(a, ca3);
    stoa_msg_unref(note);
}
END_TEST

START_TEST(test_age_trim)
{
    conn_t *ca = new_conn("ca"), *cb = new_conn("cb"), *cc1 = new_conn("cc1"), *cc2 = new_conn("cc2");
    stoa_session_t *a, *b, *c;
    static const char *const rooms[] = {"doc:1"};
    uint64_t before, n_c;
    set("session_buffer_age_s", "1");
    set("presence_burst", "100");
    a = open_on("ada", ca);
    b = open_on("bob", cb);
    c = open_on("cy", cc1);
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    join_ok(c, "doc:1", NULL);
    drain(a, ca);
    drain(b, cb);
    drain(c, cc1);
    n_c = cc1->seq;
    stoa_hub_detach(c, cc1, false);
    for (int i = 1; i <= 3; i++)
        presence_n(b, "doc:1", i);

    /* Fresh messages are kept. */
    stoa_hub_tick(hub, stoa_now_ms());
    expect_presence_n(a, ca, 1);

    /* 5 s later (session_buffer_age_s is 1) they are gone: the unread
     * ones with them, so A resyncs; B, which read everything, does not. */
    before = ca->seq;
    stoa_hub_tick(hub, stoa_now_ms() + 5000);
    ck_assert_uint_eq(expect_resync(a, ca, "gap", rooms, 1), before + 3);
    expect_none(a, ca);
    expect_none(b, cb);
    /* A resume after an aged-out seq has a gap as well. */
    ck_assert(is_open(c));
    attach_ok(c, cc2, true, n_c);
    expect_resync(c, cc2, "gap", rooms, 1);
    expect_none(c, cc2);
}
END_TEST

START_TEST(test_shared_by_reference)
{
    conn_t *ca = new_conn("ca"), *cb = new_conn("cb"), *cc1 = new_conn("cc1"), *cc2 = new_conn("cc2");
    stoa_session_t *a = open_on("ada", ca), *b = open_on("bob", cb), *c = open_on("cy", cc1);
    json_object *data = json_object_new_string("shared");
    stoa_msg_t *mb, *mc;
    join_ok(a, "doc:1", NULL);
    join_ok(b, "doc:1", NULL);
    join_ok(c, "doc:1", NULL);
    drain(b, cb);
    drain(c, cc1);
    stoa_hub_detach(c, cc1, false);

    ck_assert_int_eq(stoa_hub_ephemeral(a, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    mb = next_on(b, cb);
    ck_assert_ptr_nonnull(mb);
    /* One encoding: B's buffer, C's buffer and our reference. */
    ck_assert_uint_eq(stoa_msg_refcount(mb), 3);
    attach_ok(c, cc2, true, cc1->seq);
    mc = next_on(c, cc2);
    ck_assert_ptr_eq(mb, mc);   /* the replay hands out the same message */
    ck_assert_uint_eq(stoa_msg_refcount(mb), 4);
    stoa_session_ack(b, cb->seq);
    stoa_session_ack(c, cc2->seq);
    ck_assert_uint_eq(stoa_msg_refcount(mb), 2);
    stoa_msg_unref(mb);
    stoa_msg_unref(mc);
    json_object_put(data);
}
END_TEST

START_TEST(test_close_wakes_attached)
{
    conn_t *ca = new_conn("ca"), *cb = new_conn("cb");
    stoa_session_t *a = open_on("ada", ca), *b = open_on("bob", cb);
    int w = ca->wakes;
    stoa_hub_close(a, STOA_LEFT_LEAVE);
    ck_assert_int_gt(ca->wakes, w);   /* its connection finds out */
    ck_assert_ptr_eq(ca->woken, a);
    expect_gone(a, ca);
    /* A detached session that closes wakes nobody. */
    stoa_hub_detach(b, cb, false);
    w = tp.wakes;
    stoa_hub_close(b, STOA_LEFT_LEAVE);
    ck_assert_int_eq(tp.wakes, w);
}
END_TEST

START_TEST(test_resume_after_live_gap)
{
    /* The buffer overflowed while detached; attaching without last_seq
     * starts with the resync, and the welcome's seq is the one before it. */
    conn_t *ca1 = new_conn("ca1"), *ca2 = new_conn("ca2"), *cb = new_conn("cb");
    stoa_session_t *a, *b;
    static const char *const rooms[] = {"doc:1"};
    uint64_t w, r;
    set("presence_burst", "100");
    set("session_buffer_msgs", "8");
    ada_and_bob_in_doc1(&a, ca1, &b, cb);
    drain(a, ca1);
    stoa_hub_detach(a, ca1, false);
    for (int i = 1; i <= 12; i++)
        presence_n(b, "doc:1", i);
    w = attach_ok(a, ca2, false, 0);
    r = expect_resync(a, ca2, "gap", rooms, 1);
    ck_assert_uint_eq(w + 1, r);
    expect_none(a, ca2);
}
END_TEST

/* ---- stoa_access_connect ---- */

static char tmpdir[64];

static void access_setup(void)
{
    setup();
    strcpy(tmpdir, "/tmp/stoa-session-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    set("jwt_secret", SECRET);
    set("data_dir", tmpdir);
}

static void access_teardown(void)
{
    char cmd[128];
    teardown();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
}

static char *mint(const stoa_auth_t *auth, const char *sub)
{
    char err[256] = "";
    stoa_identity_t *id = make_ident(sub, "{\"*\":\"rw\"}");
    char *token = stoa_auth_mint(auth, id, 600, err, sizeof err);
    ck_assert_msg(token != NULL, "mint: %s", err);
    stoa_identity_free(id);
    return token;
}

/* stoa_access_connect must fail with want, leaving nothing behind. */
static void connect_fails(const stoa_auth_t *auth, const char *token, const char *sid, const char *last_seq,
                          conn_t *c, stoa_err_t want)
{
    stoa_session_t *s = (stoa_session_t *)&tp;   /* must be overwritten */
    stoa_msg_t *w = (stoa_msg_t *)&tp;
    stoa_err_t err;
    why[0] = '\0';
    err = stoa_access_connect(hub, auth, cfg, token, sid, last_seq, &fake_ops, &tp, c, &s, &w, why,
                              sizeof why);
    ck_assert_msg(err == want, "token %s, session %s, last_seq %s: %s, want %s", token ? token : "-",
                  sid ? sid : "-", last_seq ? last_seq : "-", stoa_err_name(err), stoa_err_name(want));
    ck_assert_ptr_null(s);
    ck_assert_ptr_null(w);
    ck_assert_msg(why[0] != '\0', "no reason given");
}

static stoa_session_t *connect_ok(const stoa_auth_t *auth, const char *token, const char *sid,
                                  const char *last_seq, conn_t *c, bool resumed)
{
    stoa_session_t *s = NULL;
    stoa_msg_t *w = NULL;
    stoa_err_t err =
        stoa_access_connect(hub, auth, cfg, token, sid, last_seq, &fake_ops, &tp, c, &s, &w, why, sizeof why);
    ck_assert_msg(err == STOA_OK, "connect: %s (%s)", stoa_err_name(err), why);
    ck_assert_ptr_nonnull(s);
    c->seq = check_welcome(s, w, resumed);
    ck_assert_ptr_eq(stoa_session_conn(s, &fake_ops), c);
    for (int i = 0; i < nopened; i++) {
        if (opened[i] == s) {   /* resumed one we hold: one reference will do */
            stoa_session_unref(s);
            return s;
        }
    }
    keep(s);
    return s;
}

START_TEST(test_access_connect)
{
    char err[256] = "", bogus[STOA_SESSION_ID_LEN + 1];
    stoa_auth_t *auth = stoa_auth_new(cfg, err, sizeof err);
    char *ta, *tb;
    conn_t *c1 = new_conn("c1"), *c2 = new_conn("c2"), *c3 = new_conn("c3"), *c4 = new_conn("c4"),
           *c5 = new_conn("c5"), *cx = new_conn("cx");
    stoa_session_t *s, *s2, *anon;
    const char *sid;
    size_t sessions, rooms;
    ck_assert_msg(auth != NULL, "%s", err);
    ta = mint(auth, "ada");
    tb = mint(auth, "bob");

    /* No session id: a new session for the token's user. */
    s = connect_ok(auth, ta, NULL, NULL, c1, false);
    ck_assert_str_eq(stoa_session_sub(s), "ada");
    ck_assert_uint_eq(c1->seq, 0);
    sid = stoa_session_id(s);
    s2 = connect_ok(auth, ta, "", "5", c2, false);   /* "" is no id; last_seq is then moot */
    ck_assert_ptr_ne(s2, s);
    join_ok(s, "doc:1", NULL);
    drain(s, c1);

    /* Another user's token cannot take the session over. */
    connect_fails(auth, tb, sid, NULL, cx, STOA_ERR_AUTH_FAILED);
    connect_fails(auth, "not.a.token", sid, NULL, cx, STOA_ERR_AUTH_FAILED);
    ck_assert_ptr_eq(stoa_session_conn(s, &fake_ops), c1);   /* untouched */
    expect_none(s, c1);
    /* No such session. */
    memset(bogus, 'q', STOA_SESSION_ID_LEN);
    bogus[STOA_SESSION_ID_LEN] = '\0';
    connect_fails(auth, ta, bogus, NULL, cx, STOA_ERR_SESSION_NOT_FOUND);
    connect_fails(auth, NULL, "short", "1", cx, STOA_ERR_SESSION_NOT_FOUND);
    /* A bad last_seq. */
    connect_fails(auth, ta, sid, "abc", cx, STOA_ERR_BAD_MESSAGE);
    connect_fails(auth, ta, sid, "-1", cx, STOA_ERR_BAD_MESSAGE);
    connect_fails(auth, ta, sid, "1x", cx, STOA_ERR_BAD_MESSAGE);
    connect_fails(auth, ta, sid, "", cx, STOA_ERR_BAD_MESSAGE);
    connect_fails(auth, ta, sid, "99999999999999999999", cx, STOA_ERR_BAD_MESSAGE);
    connect_fails(auth, ta, NULL, "x", cx, STOA_ERR_BAD_MESSAGE);
    stoa_hub_stats(hub, &sessions, &rooms);
    ck_assert_uint_eq(sessions, 2);   /* none of those opened one */
    ck_assert_ptr_eq(stoa_session_conn(s, &fake_ops), c1);

    /* The same user resumes, superseding c1-> */
    ck_assert_ptr_eq(connect_ok(auth, ta, sid, "1", c3, true), s);
    ck_assert_uint_eq(c3->seq, 1);
    expect_gone(s, c1);
    ck_assert_int_ge(c1->wakes, 1);
    expect_none(s, c3);
    /* The id alone is the credential; no last_seq: where it stands. */
    ck_assert_ptr_eq(connect_ok(auth, NULL, sid, NULL, c4, true), s);
    ck_assert_uint_eq(c4->seq, 1);
    expect_none(s, c4);   /* no resync: nothing was missed */
    expect_gone(s, c3);
    /* A resume naming a seq never sent. */
    ck_assert_ptr_eq(connect_ok(auth, ta, sid, "999", c5, true), s);
    {
        static const char *const rooms1[] = {"doc:1"};
        expect_resync(s, c5, "unknown_seq", rooms1, 1);
    }

    /* No token and no session: anonymous when allowed, refused otherwise. */
    anon = connect_ok(auth, NULL, NULL, NULL, cx, false);
    ck_assert(strncmp(stoa_session_sub(anon), "anon-", 5) == 0);
    set("allow_anonymous", "false");
    connect_fails(auth, NULL, NULL, NULL, cx, STOA_ERR_AUTH_FAILED);
    connect_fails(auth, "", NULL, NULL, cx, STOA_ERR_AUTH_FAILED);
    /* ...but a session id still resumes without a token. */
    ck_assert_ptr_eq(connect_ok(auth, NULL, sid, "1", c1, true), s);

    free(ta);
    free(tb);
    stoa_auth_free(auth);
}
END_TEST

START_TEST(test_parse_seq)
{
    uint64_t v = 42;
    ck_assert_int_eq(stoa_access_parse_seq("0", &v), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(stoa_access_parse_seq("123", &v), 0);
    ck_assert_uint_eq(v, 123);
    ck_assert_int_eq(stoa_access_parse_seq("18446744073709551615", &v), 0);
    ck_assert_uint_eq(v, UINT64_MAX);
    v = 42;
    ck_assert_int_eq(stoa_access_parse_seq("18446744073709551616", &v), -1);
    ck_assert_int_eq(stoa_access_parse_seq("-1", &v), -1);
    ck_assert_int_eq(stoa_access_parse_seq("+1", &v), -1);
    ck_assert_int_eq(stoa_access_parse_seq(" 1", &v), -1);
    ck_assert_int_eq(stoa_access_parse_seq("1 ", &v), -1);
    ck_assert_int_eq(stoa_access_parse_seq("0x10", &v), -1);
    ck_assert_int_eq(stoa_access_parse_seq("", &v), -1);
    ck_assert_int_eq(stoa_access_parse_seq(NULL, &v), -1);
    ck_assert_uint_eq(v, 42);   /* untouched on failure */
}
END_TEST

static Suite *session_suite(void)
{
    Suite *s = suite_create("session");
    TCase *tc = tcase_create("core"), *ta = tcase_create("access");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_seqs_consecutive);
    tcase_add_test(tc, test_resume_replays);
    tcase_add_test(tc, test_resume_without_last_seq);
    tcase_add_test(tc, test_resume_gap);
    tcase_add_test(tc, test_resume_unknown_seq);
    tcase_add_test(tc, test_supersede);
    tcase_add_test(tc, test_detach_end);
    tcase_add_test(tc, test_detach_grace);
    tcase_add_test(tc, test_open_detached);
    tcase_add_test(tc, test_find);
    tcase_add_test(tc, test_ack);
    tcase_add_test(tc, test_age_trim);
    tcase_add_test(tc, test_shared_by_reference);
    tcase_add_test(tc, test_close_wakes_attached);
    tcase_add_test(tc, test_resume_after_live_gap);
    suite_add_tcase(s, tc);
    tcase_add_checked_fixture(ta, access_setup, access_teardown);
    tcase_set_timeout(ta, 30);
    tcase_add_test(ta, test_access_connect);
    tcase_add_test(ta, test_parse_seq);
    suite_add_tcase(s, ta);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(session_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
