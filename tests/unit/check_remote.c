/* check_remote.c - unit tests of the hub's cross-instance side
 * (hub_remote.c and the bus events hub.c emits), driven through the public
 * API of hub.h only.
 *
 * A fake bus records every event the hub emits (as text, parsed with
 * json-c to check it) and counts its kicks. A fake transport, shared with
 * check_hub.c (peer_fixture.h), lets the tests read what each local
 * session is sent.
 * Events "from another instance" are either written by hand (remote
 * records and events) or taken from a second hub's fake bus: hub A (the
 * fixture's `hub`) and hub B (`hub_b`) play two instances of one cluster.
 */
#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/hub.h"
#include "stoa/perm.h"
#include "stoa/util.h"
#include "stoa/wire.h"

#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PEERS 12
#define MAX_EVENTS 256

#include "peer_fixture.h"   /* peer_t, the fake transport, the queue readers */

/* Instance ids (12 characters, like the bus's). */
#define INST_A "instaaaaaaaa"   /* hub A, the fixture's hub */
#define INST_B "instbbbbbbbb"   /* hub B */
#define ORIGIN1 "inst00000001"
#define ORIGIN2 "inst00000002"

/* Remote peers (peer ids are 12 characters). */
#define R1 "remotepeer01"
#define R2 "remotepeer02"
#define R3 "remotepeer03"
/* Made-up session ids (32 characters) of remote sessions; their digests
 * are computed with stoa_digest_hex. */
#define R1_ID "abcdefghijklmnopqrstuvwxyz012345"
#define R2_ID "bcdefghijklmnopqrstuvwxyz0123456"
#define R3_ID "cdefghijklmnopqrstuvwxyz01234567"

/* ---- fake bus ---- */

typedef struct fake_bus {
    const char *name;
    char *events[MAX_EVENTS];
    int nevents;
    int next;                    /* the first event not yet read */
    int kicks;
} fake_bus_t;

static void fake_emit(void *bus, const char *event, size_t len)
{
    fake_bus_t *b = bus;
    ck_assert_msg(b->nevents < MAX_EVENTS, "%s: too many events", b->name);
    ck_assert_msg(memchr(event, '\0', len) == NULL, "%s: event has a NUL within its length", b->name);
    b->events[b->nevents] = stoa_xmalloc(len + 1);
    memcpy(b->events[b->nevents], event, len);
    b->events[b->nevents][len] = '\0';
    {
        /* The hub encodes events itself: exactly as json-c would (the bus
         * splices parts of them next to parts json-c wrote). */
        json_object *o = json_tokener_parse(b->events[b->nevents]);
        ck_assert_msg(o != NULL, "%s: event is not JSON: %s", b->name, b->events[b->nevents]);
        ck_assert_str_eq(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN), b->events[b->nevents]);
        json_object_put(o);
    }
    b->nevents++;
}

static void fake_kick(void *bus)
{
    ((fake_bus_t *)bus)->kicks++;
}

static const stoa_hub_bus_ops_t fake_bus_ops = {.emit = fake_emit, .kick = fake_kick};

static fake_bus_t bus_a, bus_b;

static void bus_reset(fake_bus_t *b, const char *name)
{
    for (int i = 0; i < b->nevents; i++)
        free(b->events[i]);
    memset(b, 0, sizeof *b);
    b->name = name;
}

static json_object *parse_text(const char *text)
{
    json_object *o = json_tokener_parse(text);
    ck_assert_msg(o != NULL, "not JSON: %s", text);
    return o;
}

/* The next unread event of b, which must be of type t: parsed (the caller
 * puts it). */
static json_object *bus_next(fake_bus_t *b, const char *t)
{
    json_object *o;
    ck_assert_msg(b->next < b->nevents, "%s: no more events, expected \"%s\"", b->name, t);
    o = parse_text(b->events[b->next++]);
    ck_assert_msg(json_object_is_type(o, json_type_object), "%s: event is not an object", b->name);
    ck_assert_msg(strcmp(str_field(o, "t"), t) == 0, "%s: expected \"%s\", got %s", b->name, t,
                  json_object_to_json_string(o));
    return o;
}

/* The text of the next unread event (which must be of type t), for
 * feeding to another hub. */
static const char *bus_next_text(fake_bus_t *b, const char *t)
{
    json_object_put(bus_next(b, t));
    return b->events[b->next - 1];
}

static void bus_expect_none(fake_bus_t *b)
{
    ck_assert_msg(b->next == b->nevents, "%s: expected no more events, got %s", b->name,
                  b->next < b->nevents ? b->events[b->next] : "");
}

static void bus_skip(fake_bus_t *b)
{
    b->next = b->nevents;
}

/* ---- JSON written with single quotes ---- */

/* Format fmt into buf (which it must fit), then turn each ' into ". */
static void format_quoted(char *buf, size_t size, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
static void format_quoted(char *buf, size_t size, const char *fmt, va_list ap)
{
    int n = vsnprintf(buf, size, fmt, ap);
    ck_assert_int_lt(n, (int)size);
    for (char *p = buf; *p; p++)
        if (*p == '\'')
            *p = '"';
}

/* Parse printf-formatted JSON in which ' stands for " (a new object). */
static json_object *J(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_object *J(const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    format_quoted(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return parse_text(buf);
}

/* ---- fixture ---- */

static stoa_hub_t *hub_b;
static char why[256];

static void setup(void)
{
    fixture_hub_setup();
    hub_b = NULL;
    bus_reset(&bus_a, "bus A");
    bus_reset(&bus_b, "bus B");
    stoa_hub_set_bus(hub, &fake_bus_ops, &bus_a, INST_A);
    peers_reset();
    why[0] = '\0';
}

static void teardown(void)
{
    peers_close();
    stoa_hub_free(hub);
    if (hub_b)
        stoa_hub_free(hub_b);
    bus_reset(&bus_a, "bus A");
    bus_reset(&bus_b, "bus B");
    stoa_config_free(cfg);
}

/* Start hub B, a second instance, with its own bus. */
static void start_hub_b(void)
{
    hub_b = stoa_hub_new(cfg);
    stoa_hub_set_bus(hub_b, &fake_bus_ops, &bus_b, INST_B);
}

/* ---- local sessions ---- */

/* Open a session on h for a user named `name`, attached to a fake
 * transport. */
static peer_t *open_on(stoa_hub_t *h, const char *name, const char *rights)
{
    peer_t *p = new_peer(name);
    stoa_msg_t *w = NULL;
    p->s = stoa_hub_open(h, fixture_ident(name, rights, "#e6194b"), &fake_ops, p, p, &w);
    ck_assert_ptr_nonnull(p->s);
    ck_assert_ptr_nonnull(w);
    stoa_msg_unref(w);
    return p;
}

static peer_t *open_peer(const char *name, const char *rights)
{
    return open_on(hub, name, rights);
}

static void join_ok(peer_t *p, const char *room, const char *state_json)
{
    json_object *state = state_json ? J("%s", state_json) : NULL;
    stoa_err_t err = stoa_hub_join(p->s, room, state, NULL, why, sizeof why);
    ck_assert_msg(err == STOA_OK, "%s join %s: %s (%s)", p->name, room, stoa_err_name(err), why);
    json_object_put(state);
}

/* ---- remote records and events ---- */

static void digest_of(const char *session_id, char out[STOA_HUB_SIDH_LEN + 1])
{
    stoa_digest_hex(session_id, STOA_SESSION_ID_LEN, out, STOA_HUB_SIDH_LEN);
}

/* A "sess" record (as text, ' for ") of a remote session of user `sub`
 * with read rights everywhere and these rooms (a JSON object text). */
static char *record(const char *peer, const char *session_id, int gen, const char *sub, const char *rooms)
{
    static char bufs[4][2048];   /* a few at once, for one batch */
    static unsigned next;
    char *buf = bufs[next++ % 4];
    char sidh[STOA_HUB_SIDH_LEN + 1];
    digest_of(session_id, sidh);
    snprintf(buf, sizeof bufs[0],
             "{'t':'sess','p':'%s','h':'%s','g':%d,'u':{'id':'%s','name':'%s','color':'#3cb44b','anonymous':false},"
             "'sub':'%s','anon':false,'perms':{'*':'r'},'exp':0,'rooms':%s}",
             peer, sidh, gen, sub, sub, sub, rooms);
    return buf;
}

/* Apply a batch (JSON array text, ' for ") from origin to h; nothing may
 * be forwarded. Returns whether events were missed. */
static bool apply_on(stoa_hub_t *h, const char *origin, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool apply_on(stoa_hub_t *h, const char *origin, const char *fmt, ...)
{
    char buf[8192];
    json_object *fwd = (json_object *)1;
    va_list ap;
    bool missed;
    va_start(ap, fmt);
    format_quoted(buf, sizeof buf, fmt, ap);
    va_end(ap);
    missed = stoa_hub_remote_apply(h, origin, parse_text(buf), &fwd);
    ck_assert_msg(fwd == NULL, "unexpected forwarded events: %s", fwd ? json_object_to_json_string(fwd) : "");
    return missed;
}

/* Apply one event text (as a hub emitted it) to h from origin. */
static bool apply_text(stoa_hub_t *h, const char *origin, const char *event)
{
    json_object *arr = json_object_new_array(), *fwd = (json_object *)1;
    bool missed;
    json_object_array_add(arr, parse_text(event));
    missed = stoa_hub_remote_apply(h, origin, arr, &fwd);
    ck_assert_msg(fwd == NULL, "unexpected forwarded events");
    return missed;
}

/* Feed every unread event of bus `from` to h, as from origin. */
static void relay(fake_bus_t *from, stoa_hub_t *h, const char *origin)
{
    while (from->next < from->nevents)
        ck_assert(!apply_text(h, origin, from->events[from->next++]));
}

/* ---- reading rooms ---- */

/* The peers array of stoa_hub_room_json(h, room) (the caller puts *top). */
static json_object *room_peers(stoa_hub_t *h, const char *room, json_object **top)
{
    char *text = stoa_hub_room_json(h, room);
    *top = parse_text(text);
    free(text);
    return obj_field(*top, "peers", json_type_array);
}

/* The entry of peer in room on h, or NULL (the caller puts *top). */
static json_object *room_entry(stoa_hub_t *h, const char *room, const char *peer, json_object **top)
{
    json_object *arr = room_peers(h, room, top);
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        if (strcmp(str_field(e, "peer"), peer) == 0)
            return e;
    }
    return NULL;
}

static size_t room_size(stoa_hub_t *h, const char *room)
{
    json_object *top;
    size_t n = json_object_array_length(room_peers(h, room, &top));
    json_object_put(top);
    return n;
}

static bool in_room(stoa_hub_t *h, const char *room, const char *peer)
{
    json_object *top;
    bool found = room_entry(h, room, peer, &top) != NULL;
    json_object_put(top);
    return found;
}

/* The "n" of peer's state in room (which it must be in). */
static int64_t state_n(stoa_hub_t *h, const char *room, const char *peer)
{
    json_object *top, *e = room_entry(h, room, peer, &top);
    int64_t n;
    ck_assert_msg(e != NULL, "%s is not in %s", peer, room);
    n = int_field(obj_field(e, "state", json_type_object), "n");
    json_object_put(top);
    return n;
}

/* stoa_hub_rooms(h)'s count for room (-1: not listed). */
static int64_t rooms_count(stoa_hub_t *h, const char *room)
{
    json_object *arr = stoa_hub_rooms(h);
    int64_t n = -1;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        if (strcmp(str_field(e, "room"), room) == 0)
            n = int_field(e, "peers");
    }
    json_object_put(arr);
    return n;
}

static void expect_stats(stoa_hub_t *h, size_t nsessions, size_t nrooms)
{
    size_t sessions, rooms;
    stoa_hub_stats(h, &sessions, &rooms);
    ck_assert_uint_eq(sessions, nsessions);
    ck_assert_uint_eq(rooms, nrooms);
}

/* p's next message is a peer_left of peer from room for reason. */
static void expect_left(peer_t *p, const char *room, const char *peer, const char *reason)
{
    json_object *o = expect_msg(p, "peer_left");
    ck_assert_str_eq(str_field(o, "room"), room);
    ck_assert_str_eq(str_field(o, "peer"), peer);
    ck_assert_str_eq(str_field(o, "reason"), reason);
    json_object_put(o);
}

static void expect_joined(peer_t *p, const char *room, const char *peer, const char *user, int64_t n)
{
    json_object *o = expect_msg(p, "peer_joined");
    ck_assert_str_eq(str_field(o, "room"), room);
    ck_assert_str_eq(str_field(o, "peer"), peer);
    ck_assert_str_eq(str_field(obj_field(o, "user", json_type_object), "id"), user);
    if (n >= 0)
        ck_assert_int_eq(int_field(obj_field(o, "state", json_type_object), "n"), n);
    json_object_put(o);
}

static void expect_presence(peer_t *p, const char *room, const char *peer, int64_t n)
{
    json_object *o = expect_msg(p, "presence");
    ck_assert_str_eq(str_field(o, "room"), room);
    ck_assert_str_eq(str_field(o, "peer"), peer);
    ck_assert_int_eq(int_field(obj_field(o, "state", json_type_object), "n"), n);
    json_object_put(o);
}

/* A remote peer R1 (user "rem", from ORIGIN1) in doc:1 with n 1, and a
 * local ada in doc:1 who has been told (queues and bus read). */
static peer_t *ada_with_remote(void)
{
    peer_t *a = open_peer("ada", "{\"*\":\"rw\"}");
    join_ok(a, "doc:1", NULL);
    drain(a);
    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R1, R1_ID, 0, "rem", "{'doc:1':{'n':1}}")));
    expect_joined(a, "doc:1", R1, "rem", 1);
    expect_empty(a);
    bus_skip(&bus_a);
    return a;
}

/* ---- what local operations tell the bus ---- */

START_TEST(test_open_emits_sess)
{
    peer_t *a = open_peer("ada", "{\"doc:*\":\"rw\",\"lobby\":\"r\"}");
    char sidh[STOA_HUB_SIDH_LEN + 1];
    json_object *o, *u, *perms;
    const char *h;

    ck_assert_int_eq(bus_a.nevents, 1);
    ck_assert_int_eq(bus_a.kicks, 1);
    o = bus_next(&bus_a, "sess");
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    h = str_field(o, "h");
    ck_assert_uint_eq(strlen(h), STOA_HUB_SIDH_LEN);
    ck_assert_uint_eq(strspn(h, "0123456789abcdef"), STOA_HUB_SIDH_LEN);
    ck_assert_str_ne(h, stoa_session_id(a->s));   /* never the secret itself */
    digest_of(stoa_session_id(a->s), sidh);
    ck_assert_str_eq(h, sidh);
    ck_assert_int_eq(int_field(o, "g"), 0);
    u = obj_field(o, "u", json_type_object);
    ck_assert_str_eq(str_field(u, "id"), "ada");
    ck_assert_str_eq(str_field(u, "name"), "ada");
    ck_assert_str_eq(str_field(u, "color"), "#e6194b");
    ck_assert_str_eq(str_field(o, "sub"), "ada");
    perms = obj_field(o, "perms", json_type_object);
    ck_assert_str_eq(str_field(perms, "doc:*"), "rw");
    ck_assert_str_eq(str_field(perms, "lobby"), "r");
    ck_assert_int_eq(json_object_object_length(obj_field(o, "rooms", json_type_object)), 0);
    ck_assert(!has_field(o, "session"));
    ck_assert_ptr_null(strstr(bus_a.events[0], stoa_session_id(a->s)));   /* the id never travels */
    json_object_put(o);
    bus_expect_none(&bus_a);

    /* A snapshot carries the same record, with its rooms and states. */
    join_ok(a, "doc:1", "{\"n\":5}");
    bus_skip(&bus_a);
    stoa_hub_bus_snapshot(hub);
    o = bus_next(&bus_a, "snap");
    {
        json_object *list = obj_field(o, "s", json_type_array), *rec, *rooms;
        ck_assert_uint_eq(json_object_array_length(list), 1);
        rec = json_object_array_get_idx(list, 0);
        ck_assert_str_eq(str_field(rec, "t"), "sess");
        ck_assert_str_eq(str_field(rec, "p"), peer_id(a));
        ck_assert_str_eq(str_field(rec, "h"), sidh);
        rooms = obj_field(rec, "rooms", json_type_object);
        ck_assert_int_eq(json_object_object_length(rooms), 1);
        ck_assert_int_eq(int_field(obj_field(rooms, "doc:1", json_type_object), "n"), 5);
    }
    json_object_put(o);
    bus_expect_none(&bus_a);
}
END_TEST

START_TEST(test_local_ops_emit_in_order)
{
    peer_t *a = open_peer("ada", "{\"doc:*\":\"rw\"}");
    peer_t *b = open_peer("bob", "{\"*\":\"r\"}");
    json_object *patch = J("{'sel':2}"), *data = J("{'k':'v'}"), *o, *st;
    int kicks;
    size_t delivered = 99;

    bus_skip(&bus_a);
    kicks = bus_a.kicks;
    join_ok(a, "doc:1", "{\"cursor\":1}");
    ck_assert_int_eq(bus_a.kicks, kicks + 1);
    join_ok(b, "doc:1", NULL);
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_leave(a->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_publish(hub, "doc:1", data, &delivered, why, sizeof why), STOA_OK);
    ck_assert_uint_eq(delivered, 1);   /* bob, the one local member left */
    stoa_hub_notice(hub, "warn", "restarting soon", true);
    join_ok(a, "doc:2", NULL);
    ck_assert_int_eq(bus_a.kicks, kicks + 8);
    stoa_hub_close(a->s, STOA_LEFT_DISCONNECT);
    ck_assert_int_eq(bus_a.kicks, kicks + 9);   /* one per locked section */

    o = bus_next(&bus_a, "join");
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_int_eq(int_field(obj_field(o, "state", json_type_object), "cursor"), 1);
    json_object_put(o);
    o = bus_next(&bus_a, "join");
    ck_assert_str_eq(str_field(o, "p"), peer_id(b));
    ck_assert_int_eq(json_object_object_length(obj_field(o, "state", json_type_object)), 0);
    json_object_put(o);
    o = bus_next(&bus_a, "pres");   /* the whole merged state, not the patch */
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    st = obj_field(o, "state", json_type_object);
    ck_assert_int_eq(json_object_object_length(st), 2);
    ck_assert_int_eq(int_field(st, "cursor"), 1);
    ck_assert_int_eq(int_field(st, "sel"), 2);
    json_object_put(o);
    o = bus_next(&bus_a, "eph");
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_str_eq(str_field(obj_field(o, "data", json_type_object), "k"), "v");
    json_object_put(o);
    o = bus_next(&bus_a, "leave");
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_str_eq(str_field(o, "why"), "leave");
    json_object_put(o);
    o = bus_next(&bus_a, "pub");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_str_eq(str_field(obj_field(o, "data", json_type_object), "k"), "v");
    json_object_put(o);
    o = bus_next(&bus_a, "notice");
    ck_assert_str_eq(str_field(o, "level"), "warn");
    ck_assert_str_eq(str_field(o, "message"), "restarting soon");
    json_object_put(o);
    o = bus_next(&bus_a, "join");
    ck_assert_str_eq(str_field(o, "room"), "doc:2");
    json_object_put(o);
    o = bus_next(&bus_a, "leave");   /* closing leaves every room first */
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    ck_assert_str_eq(str_field(o, "room"), "doc:2");
    ck_assert_str_eq(str_field(o, "why"), "disconnect");
    json_object_put(o);
    o = bus_next(&bus_a, "close");
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    json_object_put(o);
    bus_expect_none(&bus_a);

    /* Refused operations tell the bus nothing. */
    kicks = bus_a.kicks;
    ck_assert_int_ne(stoa_hub_join(b->s, "doc:1", NULL, NULL, why, sizeof why), STOA_OK);   /* already in */
    ck_assert_int_ne(stoa_hub_presence(b->s, "doc:9", patch, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_ne(stoa_hub_ephemeral(b->s, "doc:9", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_ne(stoa_hub_leave(b->s, "doc:9", NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_heartbeat(b->s, "doc:1", NULL, why, sizeof why), STOA_OK);
    bus_expect_none(&bus_a);
    ck_assert_int_eq(bus_a.kicks, kicks);

    /* A notice for this instance only (a shutdown) stays off the bus. */
    drain(b);
    stoa_hub_notice(hub, "warn", "going down", false);
    o = expect_msg(b, "notice");
    ck_assert_str_eq(str_field(o, "message"), "going down");
    json_object_put(o);
    bus_expect_none(&bus_a);
    ck_assert_int_eq(bus_a.kicks, kicks);

    json_object_put(patch);
    json_object_put(data);
}
END_TEST

START_TEST(test_no_bus_no_events)
{
    peer_t *a;
    stoa_hub_set_bus(hub, NULL, NULL, NULL);
    a = open_peer("ada", "{\"*\":\"r\"}");
    join_ok(a, "doc:1", NULL);
    stoa_hub_notice(hub, "info", "x", true);
    ck_assert_int_eq(bus_a.nevents, 0);
    ck_assert_int_eq(bus_a.kicks, 0);
    ck_assert(!stoa_hub_forward(hub, R1_ID, NULL, true));
    ck_assert_ptr_null(stoa_hub_adopt(hub, R1_ID, false, 0));
}
END_TEST

START_TEST(test_kick)
{
    peer_t *a = ada_with_remote();
    peer_t *b = open_peer("bob", "{\"*\":\"r\"}");
    json_object *o;

    join_ok(b, "doc:1", NULL);
    drain(a);
    drain(b);
    bus_skip(&bus_a);

    /* A remote peer: its instance is asked to remove it; nothing changes here. */
    ck_assert_int_eq(stoa_hub_kick(hub, "doc:1", R1, why, sizeof why), STOA_OK);
    o = bus_next(&bus_a, "kick");
    ck_assert_str_eq(str_field(o, "to"), ORIGIN1);
    ck_assert_str_eq(str_field(o, "p"), R1);
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    json_object_put(o);
    bus_expect_none(&bus_a);
    ck_assert(in_room(hub, "doc:1", R1));
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 3);
    expect_empty(a);
    expect_empty(b);

    /* A local peer: removed here, and the bus hears of its leave. */
    ck_assert_int_eq(stoa_hub_kick(hub, "doc:1", peer_id(b), why, sizeof why), STOA_OK);
    o = bus_next(&bus_a, "leave");
    ck_assert_str_eq(str_field(o, "p"), peer_id(b));
    ck_assert_str_eq(str_field(o, "why"), "kicked");
    json_object_put(o);
    expect_left(a, "doc:1", peer_id(b), "kicked");
    expect_left(b, "doc:1", peer_id(b), "kicked");

    /* A kick from another instance for a peer of ours... */
    join_ok(b, "doc:1", NULL);
    drain(a);
    drain(b);
    bus_skip(&bus_a);
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'kick','to':'instother001','p':'%s','room':'doc:1'}]", peer_id(b)));
    ck_assert(in_room(hub, "doc:1", peer_id(b)));   /* ...addressed elsewhere: ignored */
    bus_expect_none(&bus_a);
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'kick','to':'%s','p':'%s','room':'doc:1'}]", INST_A, peer_id(b)));
    ck_assert(!in_room(hub, "doc:1", peer_id(b)));
    expect_left(a, "doc:1", peer_id(b), "kicked");
    expect_left(b, "doc:1", peer_id(b), "kicked");
    o = bus_next(&bus_a, "leave");
    ck_assert_str_eq(str_field(o, "why"), "kicked");
    json_object_put(o);
    /* ...and one addressed to us for a remote peer removes nothing. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'kick','to':'%s','p':'%s','room':'doc:1'}]", INST_A, R1));
    ck_assert(in_room(hub, "doc:1", R1));
    bus_expect_none(&bus_a);
}
END_TEST

/* ---- what the bus brings ---- */

START_TEST(test_remote_sess_makes_peer)
{
    peer_t *a = open_peer("ada", "{\"*\":\"rw\"}");
    json_object *top, *e, *counts;
    int kicks;

    join_ok(a, "doc:1", "{\"n\":7}");
    drain(a);
    bus_skip(&bus_a);
    kicks = bus_a.kicks;

    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R1, R1_ID, 0, "rem", "{'doc:1':{'n':1},'doc:2':{'n':2}}")));
    expect_joined(a, "doc:1", R1, "rem", 1);   /* not doc:2, which ada is not in */
    expect_empty(a);

    e = room_entry(hub, "doc:1", R1, &top);
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(str_field(obj_field(e, "user", json_type_object), "id"), "rem");
    ck_assert_str_eq(str_field(obj_field(e, "user", json_type_object), "color"), "#3cb44b");
    ck_assert_int_eq(int_field(obj_field(e, "state", json_type_object), "n"), 1);
    json_object_put(top);
    ck_assert_int_eq(state_n(hub, "doc:1", peer_id(a)), 7);
    ck_assert_int_eq(state_n(hub, "doc:2", R1), 2);
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 2);
    ck_assert_int_eq(rooms_count(hub, "doc:2"), 1);
    expect_stats(hub, 1, 2);   /* sessions: local ones only; rooms: any */
    counts = stoa_hub_transport_counts(hub);
    ck_assert_int_eq(json_object_object_length(counts), 1);
    ck_assert_int_eq(int_field(counts, "fake"), 1);
    json_object_put(counts);

    /* The remote session is described with its instance, by its id. */
    {
        char *text = stoa_hub_remote_session_json(hub, R1_ID);
        json_object *o, *rooms;
        ck_assert_ptr_nonnull(text);
        o = parse_text(text);
        free(text);
        ck_assert_str_eq(str_field(o, "session"), R1_ID);
        ck_assert_str_eq(str_field(o, "peer"), R1);
        ck_assert_str_eq(str_field(o, "instance"), ORIGIN1);
        ck_assert(json_object_is_type(obj_field(o, "transport", json_type_null), json_type_null));
        rooms = obj_field(o, "rooms", json_type_array);
        ck_assert_uint_eq(json_object_array_length(rooms), 2);
        json_object_put(o);
        ck_assert_ptr_null(stoa_hub_remote_session_json(hub, R2_ID));
        ck_assert_ptr_null(stoa_hub_remote_session_json(hub, stoa_session_id(a->s)));   /* local */
    }
    ck_assert_ptr_null(stoa_hub_find(hub, R1_ID));   /* not a local session */
    {
        char sub[8];
        ck_assert(stoa_hub_remote_sub(hub, R1_ID, sub, sizeof sub));
        ck_assert_str_eq(sub, "rem");
        ck_assert(stoa_hub_remote_sub(hub, R1_ID, sub, 3));
        ck_assert_str_eq(sub, "re");   /* truncated */
        ck_assert(stoa_hub_remote_sub(hub, R1_ID, NULL, 0));
        ck_assert(!stoa_hub_remote_sub(hub, R2_ID, sub, sizeof sub));
        ck_assert(!stoa_hub_remote_sub(hub, stoa_session_id(a->s), sub, sizeof sub));   /* local */
        ck_assert(!stoa_hub_remote_sub(hub, "short", sub, sizeof sub));
    }

    /* Applying tells the bus nothing. */
    bus_expect_none(&bus_a);
    ck_assert_int_eq(bus_a.kicks, kicks);

    /* A malformed record (short peer id, short digest, no rooms) is ignored. */
    ck_assert(!apply_on(hub, ORIGIN1,
                        "[{'t':'sess','p':'short','h':'%032d','g':0,'u':{},'sub':'x','perms':{},'rooms':{'doc:1':{}}},"
                        "{'t':'sess','p':'remotepeer09','h':'abc','g':0,'u':{},'sub':'x','perms':{},'rooms':{'doc:1':{}}},"
                        "{'t':'sess','p':'remotepeer09','h':'%032d','g':0,'u':{},'sub':'x','perms':{}}]",
                        0, 0));
    ck_assert_uint_eq(room_size(hub, "doc:1"), 2);
    expect_empty(a);
}
END_TEST

START_TEST(test_remote_events)
{
    peer_t *a = ada_with_remote();
    json_object *o;

    /* pres: local members get presence, the room shows it. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'pres','p':'%s','room':'doc:1','state':{'n':2}}]", R1));
    expect_presence(a, "doc:1", R1, 2);
    expect_empty(a);
    ck_assert_int_eq(state_n(hub, "doc:1", R1), 2);

    /* eph: local members get it, from the remote peer with its user. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'eph','p':'%s','room':'doc:1','data':{'cursor':[1,2]}}]", R1));
    o = expect_msg(a, "ephemeral");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_str_eq(str_field(o, "from"), R1);
    ck_assert_str_eq(str_field(obj_field(o, "user", json_type_object), "id"), "rem");
    ck_assert_uint_eq(json_object_array_length(obj_field(obj_field(o, "data", json_type_object), "cursor",
                                                         json_type_array)), 2);
    json_object_put(o);
    expect_empty(a);

    /* join of a room ada is not in: nobody here is told, the room exists. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'join','p':'%s','room':'doc:3','state':{'n':3}}]", R1));
    expect_empty(a);
    ck_assert_int_eq(rooms_count(hub, "doc:3"), 1);
    /* join of ada's room: peer_joined (a second remote peer, R2). */
    ck_assert(!apply_on(hub, ORIGIN1, "[%s,{'t':'join','p':'%s','room':'doc:1','state':{'n':4}}]",
                        record(R2, R2_ID, 0, "rem2", "{}"), R2));
    expect_joined(a, "doc:1", R2, "rem2", 4);
    expect_empty(a);
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 3);

    /* pub and notice from another instance reach local members. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'pub','room':'doc:1','data':{'x':1}},"
                                      "{'t':'pub','room':'doc:404','data':{'x':2}},"
                                      "{'t':'notice','level':'info','message':'hello'}]"));
    o = expect_msg(a, "message");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_int_eq(int_field(obj_field(o, "data", json_type_object), "x"), 1);
    json_object_put(o);
    o = expect_msg(a, "notice");
    ck_assert_str_eq(str_field(o, "message"), "hello");
    json_object_put(o);
    expect_empty(a);

    /* leave: peer_left with the reason given. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'leave','p':'%s','room':'doc:1','why':'timeout'}]", R2));
    expect_left(a, "doc:1", R2, "timeout");
    ck_assert(!in_room(hub, "doc:1", R2));

    /* close: it leaves every room ("disconnect") and is forgotten. */
    join_ok(a, "doc:3", NULL);
    drain(a);
    bus_skip(&bus_a);
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'close','p':'%s'}]", R1));
    {
        /* one peer_left per shared room, in either order */
        bool doc1 = false, doc3 = false;
        for (int i = 0; i < 2; i++) {
            o = expect_msg(a, "peer_left");
            ck_assert_str_eq(str_field(o, "peer"), R1);
            ck_assert_str_eq(str_field(o, "reason"), "disconnect");
            if (strcmp(str_field(o, "room"), "doc:1") == 0)
                doc1 = true;
            else if (strcmp(str_field(o, "room"), "doc:3") == 0)
                doc3 = true;
            json_object_put(o);
        }
        ck_assert(doc1 && doc3);
    }
    expect_empty(a);
    ck_assert(!in_room(hub, "doc:1", R1));
    ck_assert(!in_room(hub, "doc:3", R1));
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 1);
    ck_assert_ptr_null(stoa_hub_remote_session_json(hub, R1_ID));
    /* Events of the closed session now name an unknown peer. */
    ck_assert(apply_on(hub, ORIGIN1, "[{'t':'pres','p':'%s','room':'doc:1','state':{'n':2}}]", R1));
    expect_empty(a);
    bus_expect_none(&bus_a);   /* nothing applied went back on the bus */
}
END_TEST

/* Events the bus hands over as text (stoa_hub_remote_apply_events): an
 * ephemeral message and a publish reach local members as the very bytes
 * the parsed events give; an unknown peer or a room it is not in counts
 * as missed; parsed and text events mix in order. */
static char *next_text(peer_t *p)
{
    stoa_msg_t *m = next_msg(p);
    char *t;
    ck_assert_ptr_nonnull(m);
    t = stoa_xstrdup(stoa_msg_text(m));
    stoa_msg_unref(m);
    return t;
}

static stoa_hub_bus_event_t text_event(const char *peer, const char *room, const char *data)
{
    stoa_hub_bus_event_t ev = {.obj = NULL, .peer = peer, .room = room, .room_len = strlen(room), .data = data,
                               .data_len = strlen(data)};
    return ev;
}

START_TEST(test_text_events)
{
    peer_t *a = ada_with_remote();
    stoa_hub_bus_event_t ev[3];
    json_object *fwd = (json_object *)1;
    char *want, *got;
    /* data as the sending hub encoded it (json-c: UTF-8 as is, '"' and '\\' escaped) */
    static const char data[] = "{\"cursor\":[1,2.5,-3e2],\"s\":\"\xc3\xa9\\\"\\\\\",\"n\":null,\"b\":[true,false,{}]}";

    /* eph: the same bytes as the parsed event gives */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'eph','p':'%s','room':'doc:1','data':%s}]", R1, data));
    want = next_text(a);
    ev[0] = text_event(R1, "doc:1", data);
    ck_assert(!stoa_hub_remote_apply_events(hub, ORIGIN1, ev, 1, &fwd));
    ck_assert_ptr_null(fwd);
    got = next_text(a);
    ck_assert_str_eq(got, want);
    free(want);
    free(got);
    expect_empty(a);

    /* pub (peer NULL): the same bytes; a room nobody here is in: nothing */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'pub','room':'doc:1','data':%s}]", data));
    want = next_text(a);
    ev[0] = text_event(NULL, "doc:1", data);
    ev[1] = text_event(NULL, "doc:404", "1");
    ck_assert(!stoa_hub_remote_apply_events(hub, ORIGIN1, ev, 2, &fwd));
    got = next_text(a);
    ck_assert_str_eq(got, want);
    free(want);
    free(got);
    expect_empty(a);

    /* parsed and text events in one batch keep their order */
    ev[0] = text_event(R1, "doc:1", "1");
    ev[1] = (stoa_hub_bus_event_t){.obj = parse_text("{\"t\":\"pres\",\"p\":\"" R1 "\",\"room\":\"doc:1\","
                                                     "\"state\":{\"n\":7}}")};
    ev[2] = text_event(R1, "doc:1", "2");
    ck_assert(!stoa_hub_remote_apply_events(hub, ORIGIN1, ev, 3, &fwd));
    ck_assert_ptr_null(ev[1].obj);   /* the reference was taken */
    {
        json_object *o = expect_msg(a, "ephemeral");
        ck_assert_int_eq(int_field(o, "data"), 1);
        json_object_put(o);
        expect_presence(a, "doc:1", R1, 7);
        o = expect_msg(a, "ephemeral");
        ck_assert_int_eq(int_field(o, "data"), 2);
        json_object_put(o);
    }
    expect_empty(a);

    /* unknown peer, or a room the peer is not in: missed */
    ev[0] = text_event(R2, "doc:1", "1");
    ck_assert(stoa_hub_remote_apply_events(hub, ORIGIN1, ev, 1, &fwd));
    ev[0] = text_event(R1, "doc:2", "1");
    ck_assert(stoa_hub_remote_apply_events(hub, ORIGIN1, ev, 1, &fwd));
    /* another instance's peer: ignored, not missed */
    ev[0] = text_event(R1, "doc:1", "1");
    ck_assert(!stoa_hub_remote_apply_events(hub, ORIGIN2, ev, 1, &fwd));
    expect_empty(a);
    bus_expect_none(&bus_a);
}
END_TEST

/* The hub writes events itself (hub_emit): byte for byte what json-c
 * writes, whatever the data holds (escapes, control characters, UTF-8,
 * numbers as the client wrote them, unsigned beyond int64, nesting). */
START_TEST(test_emit_encoding)
{
    static const char *const datas[] = {
        "{\"s\":\"a/b\\\"c\\\\d\\n\\t\\b\\f\\r\\u0001\\u001f \\u00e9 \\u20ac \\ud83c\\udf89\",\"k/\\\"\":1}",
        "[1.50,-3e2,0.1,1e400,-0,12345678901234567890,-9223372036854775808,9223372036854775807]",
        "{\"a\":{},\"b\":[],\"c\":[[],{}],\"d\":null,\"e\":[null,true,false],\"f\":{\"g\":{\"h\":[1,{\"i\":\"\"}]}}}",
        "\"just a string with a \\u0000 inside\"", "42", "true", "null",
    };
    peer_t *a;
    cfg->ephemeral_burst = 1000;   /* read when the session opens */
    a = open_peer("ada", "{\"*\":\"rw\"}");
    join_ok(a, "doc:1", NULL);
    bus_skip(&bus_a);
    for (size_t i = 0; i < sizeof datas / sizeof datas[0]; i++) {
        json_object *data = json_tokener_parse(datas[i]), *ev = json_object_new_object();
        stoa_err_t err;
        ck_assert_msg(data != NULL || strcmp(datas[i], "null") == 0, "%s", datas[i]);
        err = stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why);
        ck_assert_msg(err == STOA_OK, "%s: %s", datas[i], why);
        json_object_object_add(ev, "t", json_object_new_string("eph"));
        json_object_object_add(ev, "p", json_object_new_string(peer_id(a)));
        json_object_object_add(ev, "room", json_object_new_string("doc:1"));
        json_object_object_add(ev, "data", json_object_get(data));
        ck_assert_int_eq(bus_a.nevents, bus_a.next + 1);
        ck_assert_str_eq(bus_a.events[bus_a.next], json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN));
        bus_a.next++;
        json_object_put(ev);
        json_object_put(data);
    }
    /* strings of every byte, at every offset and length around a word */
    bus_reset(&bus_a, bus_a.name);
    srand(7);
    for (int i = 0; i < 300; i++) {
        char raw[40];
        int n = i % 40;
        json_object *data, *ev = json_object_new_object();
        for (int k = 0; k < n; k++)
            raw[k] = (char)(rand() % 4 ? 'a' + rand() % 26 : rand() % 256);
        data = json_object_new_string_len(raw, n);
        ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
        json_object_object_add(ev, "t", json_object_new_string("eph"));
        json_object_object_add(ev, "p", json_object_new_string(peer_id(a)));
        json_object_object_add(ev, "room", json_object_new_string("doc:1"));
        json_object_object_add(ev, "data", data);
        ck_assert_int_eq(bus_a.nevents, bus_a.next + 1);
        ck_assert_str_eq(bus_a.events[bus_a.next], json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN));
        free(bus_a.events[bus_a.next]);
        bus_a.events[bus_a.next] = NULL;
        bus_a.nevents = bus_a.next = 0;   /* room for them all */
        json_object_put(ev);
    }
}
END_TEST

START_TEST(test_nothing_queued_for_remote)
{
    /* Everything that reaches local members while R1 is remote, then R1
     * moves here: its buffer holds only the resync and its room_state. */
    peer_t *a = ada_with_remote();
    json_object *patch = J("{'n':9}"), *data = J("{'k':1}"), *o;
    size_t delivered = 0;
    stoa_session_t *s;
    peer_t *r;

    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'join','p':'%s','room':'doc:2','state':{}}]", R1));
    ck_assert_int_eq(stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_ephemeral(a->s, "doc:1", data, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_publish(hub, "doc:1", data, &delivered, why, sizeof why), STOA_OK);
    ck_assert_uint_eq(delivered, 2);   /* counts every member; only ada is queued */
    stoa_hub_notice(hub, "info", "hello", true);
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'pub','room':'doc:2','data':{'x':1}},"
                                      "{'t':'notice','level':'info','message':'hi'},"
                                      "{'t':'eph','p':'%s','room':'doc:1','data':{}}]", R1));
    ck_assert_int_eq(stoa_hub_kick(hub, "doc:1", R1, why, sizeof why), STOA_OK);
    stoa_hub_tick(hub, stoa_now_ms() + 10LL * 60 * 1000);   /* remote members are never evicted here */
    ck_assert(in_room(hub, "doc:1", R1));
    ck_assert(in_room(hub, "doc:2", R1));
    /* ada was evicted by the tick, and told */
    drain(a);

    s = stoa_hub_adopt(hub, R1_ID, true, 0);
    ck_assert_ptr_nonnull(s);
    r = new_peer("rem");
    r->s = s;
    ck_assert_str_eq(stoa_session_peer(s), R1);
    ck_assert_int_eq(stoa_hub_attach(s, &fake_ops, r, r, true, 0, NULL), STOA_OK);
    o = expect_msg(r, "resync");
    ck_assert_int_eq(int_field(o, "seq"), 1);
    json_object_put(o);
    json_object_put(expect_msg(r, "room_state"));
    json_object_put(expect_msg(r, "room_state"));
    expect_empty(r);
    json_object_put(patch);
    json_object_put(data);
}
END_TEST

START_TEST(test_unknown_peer_missed)
{
    peer_t *a = ada_with_remote();
    json_object *top;

    ck_assert(apply_on(hub, ORIGIN1, "[{'t':'join','p':'%s','room':'doc:1','state':{}}]", R2));
    ck_assert(apply_on(hub, ORIGIN1, "[{'t':'pres','p':'%s','room':'doc:1','state':{}}]", R2));
    ck_assert(apply_on(hub, ORIGIN1, "[{'t':'eph','p':'%s','room':'doc:1','data':{}}]", R2));
    ck_assert(apply_on(hub, ORIGIN1, "[{'t':'leave','p':'%s','room':'doc:1','why':'leave'}]", R2));
    ck_assert(!in_room(hub, "doc:1", R2));
    /* ephemeral in a room the (known) peer was never seen to join */
    ck_assert(apply_on(hub, ORIGIN1, "[{'t':'eph','p':'%s','room':'doc:2','data':{}}]", R1));
    /* a close of an unknown session changes nothing (and is not a gap) */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'close','p':'%s'}]", R2));
    /* a missed event in a batch does not stop the others */
    ck_assert(apply_on(hub, ORIGIN1, "[{'t':'pres','p':'%s','room':'doc:1','state':{}},"
                                     "{'t':'pres','p':'%s','room':'doc:1','state':{'n':5}}]", R2, R1));
    expect_presence(a, "doc:1", R1, 5);
    /* another instance cannot speak for a local peer */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'pres','p':'%s','room':'doc:1','state':{'n':66}},"
                                      "{'t':'eph','p':'%s','room':'doc:1','data':{}},"
                                      "{'t':'leave','p':'%s','room':'doc:1','why':'leave'},"
                                      "{'t':'close','p':'%s'}]", peer_id(a), peer_id(a), peer_id(a), peer_id(a)));
    ck_assert(in_room(hub, "doc:1", peer_id(a)));
    ck_assert_int_eq(json_object_object_length(obj_field(room_entry(hub, "doc:1", peer_id(a), &top), "state",
                                                         json_type_object)), 0);
    json_object_put(top);
    /* junk is not a gap */
    ck_assert(!apply_on(hub, ORIGIN1, "[1,{},{'t':7},{'t':'what'},{'t':'pres','p':'%s','state':{}}]", R1));
    expect_empty(a);
    bus_expect_none(&bus_a);
}
END_TEST

START_TEST(test_stale_records_ignored)
{
    peer_t *a = open_peer("ada", "{\"*\":\"rw\"}");
    char *text;
    json_object *o;

    join_ok(a, "doc:1", NULL);
    drain(a);
    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R1, R1_ID, 3, "rem", "{'doc:1':{'n':3}}")));
    expect_joined(a, "doc:1", R1, "rem", 3);

    /* a lower generation: stale, ignored */
    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R1, R1_ID, 2, "rem", "{}")));
    ck_assert(!apply_on(hub, ORIGIN2, "[%s]", record(R1, R1_ID, 1, "rem", "{'doc:1':{'n':1}}")));
    expect_empty(a);
    ck_assert_int_eq(state_n(hub, "doc:1", R1), 3);

    /* the same generation updates */
    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R1, R1_ID, 3, "rem", "{'doc:1':{'n':4}}")));
    expect_presence(a, "doc:1", R1, 4);
    expect_empty(a);

    /* a higher one from another instance: it moved there */
    ck_assert(!apply_on(hub, ORIGIN2, "[%s]", record(R1, R1_ID, 4, "rem", "{'doc:1':{'n':4}}")));
    expect_empty(a);   /* same rooms and state: nobody is told anything */
    text = stoa_hub_remote_session_json(hub, R1_ID);
    ck_assert_ptr_nonnull(text);
    o = parse_text(text);
    free(text);
    ck_assert_str_eq(str_field(o, "instance"), ORIGIN2);
    json_object_put(o);
    /* the old instance's late events are ignored (and are no gap) */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'leave','p':'%s','room':'doc:1','why':'leave'},"
                                      "{'t':'pres','p':'%s','room':'doc:1','state':{'n':0}},"
                                      "{'t':'close','p':'%s'}]", R1, R1, R1));
    ck_assert(in_room(hub, "doc:1", R1));
    ck_assert_int_eq(state_n(hub, "doc:1", R1), 4);
    expect_empty(a);
    /* its new instance's are not */
    ck_assert(!apply_on(hub, ORIGIN2, "[{'t':'pres','p':'%s','room':'doc:1','state':{'n':5}}]", R1));
    expect_presence(a, "doc:1", R1, 5);
    /* dropping the old instance leaves it */
    stoa_hub_remote_drop(hub, ORIGIN1);
    ck_assert(in_room(hub, "doc:1", R1));
    expect_empty(a);
    /* a kick goes to where it is now */
    bus_skip(&bus_a);
    ck_assert_int_eq(stoa_hub_kick(hub, "doc:1", R1, why, sizeof why), STOA_OK);
    o = bus_next(&bus_a, "kick");
    ck_assert_str_eq(str_field(o, "to"), ORIGIN2);
    json_object_put(o);
}
END_TEST

/* ---- snapshots, drops, sync ---- */

START_TEST(test_snapshot_diff)
{
    peer_t *a = open_peer("ada", "{\"*\":\"rw\"}");

    join_ok(a, "doc:1", NULL);
    join_ok(a, "doc:2", NULL);
    drain(a);
    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R1, R1_ID, 0, "rem1", "{'doc:1':{'n':1}}")));
    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R2, R2_ID, 0, "rem2", "{'doc:1':{'n':2}}")));
    ck_assert(!apply_on(hub, ORIGIN2, "[%s]", record(R3, R3_ID, 0, "rem3", "{'doc:1':{'n':3}}")));
    drain(a);
    bus_skip(&bus_a);
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 4);

    /* ORIGIN1's snapshot no longer lists R2 and has R1 changed. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'snap','s':[%s]}]",
                        record(R1, R1_ID, 0, "rem1", "{'doc:1':{'n':10}}")));
    expect_presence(a, "doc:1", R1, 10);
    expect_left(a, "doc:1", R2, "disconnect");
    expect_empty(a);
    ck_assert(!in_room(hub, "doc:1", R2));
    ck_assert(in_room(hub, "doc:1", R3));   /* another instance's */
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 3);
    ck_assert_ptr_null(stoa_hub_remote_session_json(hub, R2_ID));

    /* An unchanged snapshot changes nothing; one that moves R1 between
     * rooms gives peer_left (leave) and peer_joined. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'snap','s':[%s]}]",
                        record(R1, R1_ID, 0, "rem1", "{'doc:1':{'n':10}}")));
    expect_empty(a);
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'snap','s':[%s]}]",
                        record(R1, R1_ID, 0, "rem1", "{'doc:2':{'n':11}}")));
    expect_left(a, "doc:1", R1, "leave");
    expect_joined(a, "doc:2", R1, "rem1", 11);
    expect_empty(a);

    /* A snapshot from a new instance adds its sessions. */
    ck_assert(!apply_on(hub, ORIGIN2, "[{'t':'snap','s':[%s,%s]}]",
                        record(R3, R3_ID, 0, "rem3", "{'doc:1':{'n':3}}"),
                        record(R2, R2_ID, 0, "rem2", "{'doc:2':{'n':2}}")));
    expect_joined(a, "doc:2", R2, "rem2", 2);
    expect_empty(a);

    /* An empty one removes every session of its instance. */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'snap','s':[]}]"));
    expect_left(a, "doc:2", R1, "disconnect");
    expect_empty(a);
    ck_assert(in_room(hub, "doc:1", R3));
    ck_assert(in_room(hub, "doc:2", R2));
    expect_stats(hub, 1, 2);
    bus_expect_none(&bus_a);
}
END_TEST

START_TEST(test_remote_drop)
{
    peer_t *a = open_peer("ada", "{\"*\":\"rw\"}");
    bool saw1 = false, saw2 = false;

    join_ok(a, "doc:1", NULL);
    drain(a);
    ck_assert(!apply_on(hub, ORIGIN1, "[%s,%s]", record(R1, R1_ID, 0, "rem1", "{'doc:1':{'n':1}}"),
                        record(R2, R2_ID, 0, "rem2", "{'doc:1':{'n':2},'doc:9':{}}")));
    ck_assert(!apply_on(hub, ORIGIN2, "[%s]", record(R3, R3_ID, 0, "rem3", "{'doc:1':{'n':3},'doc:9':{}}")));
    drain(a);
    bus_skip(&bus_a);
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 4);
    ck_assert_int_eq(rooms_count(hub, "doc:9"), 2);

    stoa_hub_remote_drop(hub, ORIGIN1);
    for (int i = 0; i < 2; i++) {
        json_object *o = expect_msg(a, "peer_left");
        const char *p = str_field(o, "peer");
        ck_assert_str_eq(str_field(o, "room"), "doc:1");
        ck_assert_str_eq(str_field(o, "reason"), "disconnect");
        if (strcmp(p, R1) == 0)
            saw1 = true;
        else if (strcmp(p, R2) == 0)
            saw2 = true;
        json_object_put(o);
    }
    ck_assert(saw1 && saw2);
    expect_empty(a);
    ck_assert_int_eq(rooms_count(hub, "doc:1"), 2);
    ck_assert_int_eq(rooms_count(hub, "doc:9"), 1);
    ck_assert(in_room(hub, "doc:1", R3));
    ck_assert_ptr_null(stoa_hub_remote_session_json(hub, R1_ID));
    ck_assert_ptr_null(stoa_hub_remote_session_json(hub, R2_ID));
    stoa_hub_remote_drop(hub, ORIGIN1);   /* again: nothing left to drop */
    expect_empty(a);

    /* "bye" from an instance does the same. */
    ck_assert(!apply_on(hub, ORIGIN2, "[{'t':'bye'}]"));
    expect_left(a, "doc:1", R3, "disconnect");
    expect_empty(a);
    ck_assert_int_eq(rooms_count(hub, "doc:9"), -1);
    expect_stats(hub, 1, 1);
    bus_expect_none(&bus_a);
}
END_TEST

START_TEST(test_sync)
{
    peer_t *a = open_peer("ada", "{\"*\":\"rw\"}");
    peer_t *b = open_peer("bob", "{\"*\":\"rw\"}");
    json_object *o, *list;
    int kicks;
    bool sa = false, sb = false;

    join_ok(a, "doc:1", "{\"n\":1}");
    ck_assert(!apply_on(hub, ORIGIN1, "[%s]", record(R1, R1_ID, 0, "rem", "{'doc:1':{'n':2}}")));
    bus_skip(&bus_a);
    kicks = bus_a.kicks;

    /* to every instance */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'sync','to':'*'}]"));
    ck_assert_int_eq(bus_a.kicks, kicks + 1);
    o = bus_next(&bus_a, "snap");
    list = obj_field(o, "s", json_type_array);
    ck_assert_uint_eq(json_object_array_length(list), 2);   /* local sessions only, not R1 */
    for (size_t i = 0; i < 2; i++) {
        json_object *rec = json_object_array_get_idx(list, i);
        const char *p = str_field(rec, "p");
        ck_assert_str_eq(str_field(rec, "t"), "sess");
        if (strcmp(p, peer_id(a)) == 0) {
            json_object *rooms = obj_field(rec, "rooms", json_type_object);
            sa = true;
            ck_assert_int_eq(int_field(obj_field(rooms, "doc:1", json_type_object), "n"), 1);
        } else if (strcmp(p, peer_id(b)) == 0) {
            sb = true;
            ck_assert_int_eq(json_object_object_length(obj_field(rec, "rooms", json_type_object)), 0);
        }
    }
    ck_assert(sa && sb);
    json_object_put(o);
    bus_expect_none(&bus_a);

    /* to this instance */
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'sync','to':'%s'}]", INST_A));
    json_object_put(bus_next(&bus_a, "snap"));
    bus_expect_none(&bus_a);

    /* to another one: nothing */
    kicks = bus_a.kicks;
    ck_assert(!apply_on(hub, ORIGIN1, "[{'t':'sync','to':'%s'},{'t':'sync'}]", ORIGIN2));
    bus_expect_none(&bus_a);
    ck_assert_int_eq(bus_a.kicks, kicks);

    /* asking for one */
    stoa_hub_bus_sync(hub, ORIGIN2);
    o = bus_next(&bus_a, "sync");
    ck_assert_str_eq(str_field(o, "to"), ORIGIN2);
    json_object_put(o);
    ck_assert_int_eq(bus_a.kicks, kicks + 1);

    /* a closed session is no longer listed */
    stoa_hub_close(b->s, STOA_LEFT_LEAVE);
    bus_skip(&bus_a);
    stoa_hub_bus_snapshot(hub);
    o = bus_next(&bus_a, "snap");
    list = obj_field(o, "s", json_type_array);
    ck_assert_uint_eq(json_object_array_length(list), 1);
    ck_assert_str_eq(str_field(json_object_array_get_idx(list, 0), "p"), peer_id(a));
    json_object_put(o);
}
END_TEST

/* ---- sessions moving between instances ---- */

/* ada (doc:* rw) on hub A in doc:1 (n 1) and doc:2, with bob (A) in
 * doc:1 and cy (B) in doc:1; B has heard everything A said. */
static void two_instances(peer_t **a, peer_t **b, peer_t **c)
{
    start_hub_b();
    *a = open_peer("ada", "{\"doc:*\":\"rw\"}");
    *b = open_peer("bob", "{\"*\":\"r\"}");
    *c = open_on(hub_b, "cy", "{\"*\":\"r\"}");
    join_ok(*a, "doc:1", "{\"n\":1}");
    join_ok(*a, "doc:2", NULL);
    join_ok(*b, "doc:1", NULL);
    join_ok(*c, "doc:1", NULL);
    relay(&bus_a, hub_b, INST_A);
    relay(&bus_b, hub, INST_B);
    drain(*a);
    drain(*b);
    drain(*c);
    ck_assert_uint_eq(room_size(hub, "doc:1"), 3);
    ck_assert_uint_eq(room_size(hub_b, "doc:1"), 3);
}

/* Hub B adopts the session `id` (ada's, after last_seq if has_last): a new
 * peer "ada@B" holding it, not yet attached. */
static peer_t *adopt_on_b(const char *id, bool has_last, uint64_t last_seq)
{
    peer_t *r = new_peer("ada@B");
    r->s = stoa_hub_adopt(hub_b, id, has_last, last_seq);
    ck_assert_ptr_nonnull(r->s);
    return r;
}

START_TEST(test_adopt)
{
    peer_t *a, *b, *c, *r;
    char id[STOA_SESSION_ID_LEN + 1], sidh[STOA_HUB_SIDH_LEN + 1];
    stoa_session_t *s, *found;
    stoa_msg_t *w = NULL;
    json_object *o, *rooms, *peers_arr;
    int a_wakes, kicks_b, sess_idx;
    bool r1 = false, r2 = false;

    two_instances(&a, &b, &c);
    memcpy(id, stoa_session_id(a->s), sizeof id);
    digest_of(id, sidh);
    ck_assert_ptr_null(stoa_hub_find(hub_b, id));
    ck_assert_ptr_null(stoa_hub_adopt(hub_b, "abcdefghijklmnopqrstuvwxyz999999", true, 7));   /* unknown */
    ck_assert_ptr_null(stoa_hub_adopt(hub_b, "short", true, 7));
    ck_assert_ptr_null(stoa_hub_adopt(hub, id, true, 7));   /* local already */
    bus_expect_none(&bus_b);

    /* B takes the session over. */
    kicks_b = bus_b.kicks;
    r = adopt_on_b(id, true, 7);
    s = r->s;
    r->seq = 7;
    ck_assert_str_eq(stoa_session_peer(s), peer_id(a));
    ck_assert_str_eq(stoa_session_id(s), id);
    ck_assert_str_eq(stoa_session_sub(s), "ada");
    found = stoa_hub_find(hub_b, id);
    ck_assert_ptr_eq(found, s);
    stoa_session_unref(found);
    expect_stats(hub_b, 2, 2);
    expect_empty(c);   /* cy sees nothing: ada has not left or joined */

    /* B tells the others, generation + 1. */
    ck_assert_int_eq(bus_b.kicks, kicks_b + 1);
    sess_idx = bus_b.next;
    o = bus_next(&bus_b, "sess");
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    ck_assert_str_eq(str_field(o, "h"), sidh);
    ck_assert_int_eq(int_field(o, "g"), 1);
    rooms = obj_field(o, "rooms", json_type_object);
    ck_assert_int_eq(json_object_object_length(rooms), 2);
    ck_assert_int_eq(int_field(obj_field(rooms, "doc:1", json_type_object), "n"), 1);
    json_object_put(o);
    bus_expect_none(&bus_b);

    /* Its buffer starts with a resync after the client's seq, then a room_state per room. */
    ck_assert_int_eq(stoa_hub_attach(s, &fake_ops, r, r, true, 7, &w), STOA_OK);
    ck_assert_ptr_nonnull(w);
    o = parse_msg(w);
    stoa_msg_unref(w);
    ck_assert_str_eq(str_field(o, "type"), "welcome");
    ck_assert_str_eq(str_field(o, "session"), id);
    ck_assert_int_eq(int_field(o, "seq"), 7);
    json_object_put(o);
    o = expect_msg(r, "resync");
    ck_assert_int_eq(int_field(o, "seq"), 8);
    ck_assert_str_eq(str_field(o, "reason"), "moved");
    ck_assert_uint_eq(json_object_array_length(obj_field(o, "rooms", json_type_array)), 2);
    json_object_put(o);
    for (int i = 0; i < 2; i++) {
        o = expect_msg(r, "room_state");
        peers_arr = obj_field(o, "peers", json_type_array);
        if (strcmp(str_field(o, "room"), "doc:1") == 0) {
            r1 = true;
            ck_assert_uint_eq(json_object_array_length(peers_arr), 3);   /* ada, bob, cy */
        } else {
            ck_assert_str_eq(str_field(o, "room"), "doc:2");
            r2 = true;
            ck_assert_uint_eq(json_object_array_length(peers_arr), 1);
        }
        json_object_put(o);
    }
    ck_assert(r1 && r2);
    expect_empty(r);

    /* Its rights came with it. */
    ck_assert_int_eq(stoa_hub_join(s, "doc:3", NULL, NULL, why, sizeof why), STOA_OK);
    ck_assert_int_eq(stoa_hub_join(s, "other:1", NULL, NULL, why, sizeof why), STOA_ERR_PERMISSION_DENIED);
    json_object_put(expect_msg(r, "room_state"));

    /* A hears B's record: its session is gone from here, its connection
     * is let go, and its rooms see no leave. */
    a_wakes = a->wakes;
    ck_assert(!apply_text(hub, INST_B, bus_b.events[sess_idx]));
    ck_assert_ptr_null(stoa_hub_find(hub, id));
    ck_assert_int_gt(a->wakes, a_wakes);
    ck_assert_ptr_eq(a->woken, a->s);
    expect_gone(a);
    expect_empty(b);
    ck_assert(in_room(hub, "doc:1", peer_id(a)));
    ck_assert_int_eq(state_n(hub, "doc:1", peer_id(a)), 1);
    expect_stats(hub, 1, 2);
    bus_expect_none(&bus_a);
    {
        char *text = stoa_hub_remote_session_json(hub, id);
        ck_assert_ptr_nonnull(text);
        o = parse_text(text);
        free(text);
        ck_assert_str_eq(str_field(o, "instance"), INST_B);
        json_object_put(o);
    }
    /* The rest of what B said (the join of doc:3) follows. */
    relay(&bus_b, hub, INST_B);
    ck_assert(in_room(hub, "doc:3", peer_id(a)));
    expect_empty(b);

    /* What the session does on B reaches A's members as a remote peer's. */
    {
        json_object *patch = J("{'n':2}");
        ck_assert_int_eq(stoa_hub_presence(s, "doc:1", patch, NULL, why, sizeof why), STOA_OK);
        json_object_put(patch);
    }
    expect_presence(c, "doc:1", peer_id(a), 2);
    relay(&bus_b, hub, INST_B);
    expect_presence(b, "doc:1", peer_id(a), 2);
    expect_empty(b);

    /* A late echo of A's own old record changes nothing. */
    ck_assert(!apply_on(hub_b, INST_A, "[%s]", bus_a.events[0]));
    found = stoa_hub_find(hub_b, id);
    ck_assert_ptr_eq(found, s);
    stoa_session_unref(found);
    bus_expect_none(&bus_b);
}
END_TEST

START_TEST(test_adopt_and_back)
{
    peer_t *a, *b, *c, *r, *a2;
    char id[STOA_SESSION_ID_LEN + 1];
    stoa_session_t *s, *back;
    json_object *o;
    int r_wakes;

    two_instances(&a, &b, &c);
    memcpy(id, stoa_session_id(a->s), sizeof id);
    r = adopt_on_b(id, false, 0);
    s = r->s;
    ck_assert_int_eq(stoa_hub_attach(s, &fake_ops, r, r, false, 0, NULL), STOA_OK);
    o = expect_msg(r, "resync");
    ck_assert_int_eq(int_field(o, "seq"), 1);
    json_object_put(o);
    drain(r);
    relay(&bus_b, hub, INST_B);
    ck_assert_ptr_null(stoa_hub_find(hub, id));

    /* ...and back to A: generation 2, B lets its connection go. */
    back = stoa_hub_adopt(hub, id, true, r->seq);
    ck_assert_ptr_nonnull(back);
    ck_assert_ptr_eq(back, a->s);   /* the same session object A kept */
    a2 = new_peer("ada@A");
    a2->s = back;
    a2->seq = r->seq;
    ck_assert_int_eq(stoa_hub_attach(back, &fake_ops, a2, a2, true, r->seq, NULL), STOA_OK);
    o = expect_msg(a2, "resync");
    ck_assert_str_eq(str_field(o, "reason"), "moved");
    json_object_put(o);
    o = bus_next(&bus_a, "sess");
    ck_assert_int_eq(int_field(o, "g"), 2);
    json_object_put(o);
    bus_a.next--;   /* relayed below */
    r_wakes = r->wakes;
    relay(&bus_a, hub_b, INST_A);
    ck_assert_ptr_null(stoa_hub_find(hub_b, id));
    ck_assert_int_gt(r->wakes, r_wakes);
    expect_gone(r);
    expect_empty(c);
    expect_empty(b);
    expect_stats(hub, 2, 2);
    expect_stats(hub_b, 1, 2);
}
END_TEST

/* A session whose rights are at the pattern limit, plus the exact grants
 * auth.c adds for its own rooms (user:{sub}, group:{id}): other instances
 * must still know it from its record. */
START_TEST(test_record_with_many_grants)
{
    char *rights = stoa_xmalloc(256 * 24 + 16), err[256];
    size_t len = 0;
    stoa_identity_t *id;
    peer_t *a, *c;
    stoa_session_t *s;
    json_object *o;
    bool missed;
    int n;

    start_hub_b();
    len += (size_t)sprintf(rights + len, "{\"doc:*\":\"r\"");
    for (int i = 1; i < STOA_PERM_MAX_PATTERNS; i++)
        len += (size_t)sprintf(rights + len, ",\"x%d:*\":\"r\"", i);
    sprintf(rights + len, "}");
    id = stoa_identity_new("ada", "ada", "#e6194b");
    id->perms = stoa_perms_parse(rights, 128, err, sizeof err);
    free(rights);
    ck_assert_msg(id->perms != NULL, "%s", err);
    stoa_perms_grant(id->perms, "user:ada", STOA_RIGHT_READ);   /* as auth.c's take_groups does */
    a = new_peer("ada");
    a->s = stoa_hub_open(hub, id, &fake_ops, a, a, NULL);
    c = open_on(hub_b, "cy", "{\"*\":\"r\"}");
    join_ok(c, "doc:1", NULL);
    drain(c);
    join_ok(a, "doc:1", NULL);
    o = bus_next(&bus_a, "sess");
    n = json_object_object_length(obj_field(o, "perms", json_type_object));
    json_object_put(o);
    bus_a.next--;
    ck_assert(!apply_text(hub_b, INST_A, bus_next_text(&bus_a, "sess")));
    missed = apply_text(hub_b, INST_A, bus_next_text(&bus_a, "join"));
    ck_assert_msg(!missed && in_room(hub_b, "doc:1", peer_id(a)),
                  "hub B ignored A's record of a session whose perms list %d patterns (> %d): "
                  "its join %s", n, STOA_PERM_MAX_PATTERNS, missed ? "was reported as missed" : "is not seen");
    expect_joined(c, "doc:1", peer_id(a), "ada", -1);
    s = stoa_hub_adopt(hub_b, stoa_session_id(a->s), false, 0);
    ck_assert_ptr_nonnull(s);
    stoa_session_unref(s);
}
END_TEST

/* ---- forwarded requests ---- */

START_TEST(test_forward_round_trip)
{
    peer_t *a, *b, *c;
    char id[STOA_SESSION_ID_LEN + 1], sidh[STOA_HUB_SIDH_LEN + 1];
    json_object *msgs, *o, *fwd = NULL, *arr, *m0;
    stoa_session_t *found;

    two_instances(&a, &b, &c);
    memcpy(id, stoa_session_id(a->s), sizeof id);
    digest_of(id, sidh);

    /* Only a remote session can be forwarded to. */
    msgs = J("[{'type':'join','room':'doc:5','state':{'n':5}}]");
    ck_assert(!stoa_hub_forward(hub_b, "abcdefghijklmnopqrstuvwxyz999999", msgs, false));
    ck_assert(!stoa_hub_forward(hub_b, "short", msgs, false));
    ck_assert(!stoa_hub_forward(hub, id, msgs, false));   /* local on A */
    bus_expect_none(&bus_a);
    bus_expect_none(&bus_b);

    ck_assert(stoa_hub_forward(hub_b, id, msgs, false));
    o = bus_next(&bus_b, "fwd");
    ck_assert_str_eq(str_field(o, "to"), INST_A);
    ck_assert_str_eq(str_field(o, "p"), peer_id(a));
    ck_assert_str_eq(str_field(o, "h"), sidh);
    ck_assert(!has_field(o, "end"));
    m0 = json_object_array_get_idx(obj_field(o, "m", json_type_array), 0);
    ck_assert_str_eq(str_field(m0, "room"), "doc:5");
    json_object_put(o);
    ck_assert_ptr_null(strstr(bus_b.events[bus_b.next - 1], id));   /* the secret stays home */
    json_object_put(msgs);

    /* A hub it is not addressed to ignores it. */
    arr = json_object_new_array();
    json_object_array_add(arr, parse_text(bus_b.events[bus_b.next - 1]));
    ck_assert(!stoa_hub_remote_apply(hub_b, ORIGIN1, arr, &fwd));
    ck_assert_ptr_null(fwd);

    /* A hands it back, then handles it as ada's own message. */
    arr = json_object_new_array();
    json_object_array_add(arr, parse_text(bus_b.events[bus_b.next - 1]));
    ck_assert(!stoa_hub_remote_apply(hub, INST_B, arr, &fwd));
    ck_assert_ptr_nonnull(fwd);
    ck_assert(json_object_is_type(fwd, json_type_array));
    ck_assert_uint_eq(json_object_array_length(fwd), 1);
    expect_empty(a);   /* not yet */
    bus_expect_none(&bus_a);
    stoa_hub_forwarded(hub, json_object_array_get_idx(fwd, 0));
    json_object_put(fwd);
    o = expect_msg(a, "room_state");
    ck_assert_str_eq(str_field(o, "room"), "doc:5");
    json_object_put(o);
    expect_empty(a);
    ck_assert_int_eq(state_n(hub, "doc:5", peer_id(a)), 5);
    o = bus_next(&bus_a, "join");
    ck_assert_str_eq(str_field(o, "room"), "doc:5");
    json_object_put(o);
    bus_a.next--;   /* relayed next */
    relay(&bus_a, hub_b, INST_A);
    ck_assert(in_room(hub_b, "doc:5", peer_id(a)));

    /* A forwarded event whose digest does not match is dropped. */
    o = J("{'t':'fwd','to':'%s','p':'%s','h':'%032d','m':{'type':'join','room':'doc:6'}}", INST_A, peer_id(a), 0);
    stoa_hub_forwarded(hub, o);
    json_object_put(o);
    expect_empty(a);
    ck_assert(!in_room(hub, "doc:6", peer_id(a)));

    /* A single message (not an array) works too; errors go out on the session. */
    ck_assert(stoa_hub_forward(hub_b, id, (msgs = J("{'type':'join','room':'doc:5'}")), false));
    json_object_put(msgs);
    arr = json_object_new_array();
    json_object_array_add(arr, parse_text(bus_next_text(&bus_b, "fwd")));
    ck_assert(!stoa_hub_remote_apply(hub, INST_B, arr, &fwd));
    ck_assert_ptr_nonnull(fwd);
    stoa_hub_forwarded(hub, json_object_array_get_idx(fwd, 0));
    json_object_put(fwd);
    o = expect_msg(a, "error");   /* already in doc:5 */
    json_object_put(o);

    /* end: the session is closed at home. */
    ck_assert(stoa_hub_forward(hub_b, id, NULL, true));
    o = bus_next(&bus_b, "fwd");
    ck_assert(bool_field(o, "end"));
    ck_assert(!has_field(o, "m"));
    json_object_put(o);
    arr = json_object_new_array();
    json_object_array_add(arr, parse_text(bus_b.events[bus_b.next - 1]));
    ck_assert(!stoa_hub_remote_apply(hub, INST_B, arr, &fwd));
    ck_assert_ptr_nonnull(fwd);
    stoa_hub_forwarded(hub, json_object_array_get_idx(fwd, 0));
    json_object_put(fwd);
    found = stoa_hub_find(hub, id);
    ck_assert_ptr_null(found);
    expect_gone(a);
    expect_left(b, "doc:1", peer_id(a), "leave");
    bus_skip(&bus_a);
}
END_TEST

/* ---- a session that moved away refuses its old connection ---- */

START_TEST(test_moved_session_refuses_old_connection)
{
    peer_t *a, *b, *c;
    char id[STOA_SESSION_ID_LEN + 1];
    json_object *patch = J("{'n':42}");
    stoa_err_t err;

    two_instances(&a, &b, &c);
    memcpy(id, stoa_session_id(a->s), sizeof id);
    adopt_on_b(id, false, 0);   /* the peer, in the pool, holds B's session */
    relay(&bus_b, hub, INST_B);
    ck_assert_ptr_null(stoa_hub_find(hub, id));
    bus_skip(&bus_a);

    /* A message that A's old connection had already read arrives after
     * the move: it must not change A's copy of the (now remote) session,
     * nor go on the bus as if A still held it. */
    {
        char report[1024] = "";
        size_t len = 0;
        int events = bus_a.nevents;
        err = stoa_hub_presence(a->s, "doc:1", patch, NULL, why, sizeof why);
        if (err == STOA_OK || state_n(hub, "doc:1", peer_id(a)) != 1)
            len += (size_t)snprintf(report + len, sizeof report - len,
                                    "presence accepted (A's copy now n=%lld, %d bus event(s)); ",
                                    (long long)state_n(hub, "doc:1", peer_id(a)), bus_a.nevents - events);
        events = bus_a.nevents;
        err = stoa_hub_join(a->s, "doc:7", NULL, NULL, why, sizeof why);
        if (err == STOA_OK || in_room(hub, "doc:7", peer_id(a)))
            len += (size_t)snprintf(report + len, sizeof report - len, "join accepted (%d bus event(s)); ",
                                    bus_a.nevents - events);
        /* Nor may the old connection reattach to it. */
        err = stoa_hub_attach(a->s, &fake_ops, a, a, false, 0, NULL);
        if (err != STOA_ERR_SESSION_NOT_FOUND)
            len += (size_t)snprintf(report + len, sizeof report - len, "attach returned %s; ", stoa_err_name(err));
        json_object_put(patch);
        ck_assert_msg(len == 0, "a session that moved to B still serves A's old connection: %s", report);
    }
}
END_TEST

static Suite *remote_suite(void)
{
    Suite *s = suite_create("remote");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_open_emits_sess);
    tcase_add_test(tc, test_local_ops_emit_in_order);
    tcase_add_test(tc, test_no_bus_no_events);
    tcase_add_test(tc, test_kick);
    tcase_add_test(tc, test_remote_sess_makes_peer);
    tcase_add_test(tc, test_remote_events);
    tcase_add_test(tc, test_text_events);
    tcase_add_test(tc, test_emit_encoding);
    tcase_add_test(tc, test_nothing_queued_for_remote);
    tcase_add_test(tc, test_unknown_peer_missed);
    tcase_add_test(tc, test_stale_records_ignored);
    tcase_add_test(tc, test_snapshot_diff);
    tcase_add_test(tc, test_remote_drop);
    tcase_add_test(tc, test_sync);
    tcase_add_test(tc, test_adopt);
    tcase_add_test(tc, test_adopt_and_back);
    tcase_add_test(tc, test_record_with_many_grants);
    tcase_add_test(tc, test_forward_round_trip);
    tcase_add_test(tc, test_moved_session_refuses_old_connection);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(remote_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
