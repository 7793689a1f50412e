/* check_proto.c - unit tests of proto.c: decoding client messages and the
 * errors, acks and pongs they cause, read back from the session queue. */
#include "stoa/config.h"
#include "stoa/hub.h"
#include "stoa/perm.h"
#include "stoa/proto.h"
#include "stoa/util.h"

#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub_fixture.h"

static int wakes;

static void fake_wake(void *transport, stoa_session_t *sess, void *conn)
{
    (void)transport;
    (void)sess;
    (void)conn;
    wakes++;
}

static const stoa_transport_ops_t fake_ops = {.name = "fake", .wake = fake_wake};

static stoa_session_t *sess, *other;

static stoa_identity_t *make_ident(const char *sub, const char *rights)
{
    return fixture_ident(sub, rights, "#3cb44b");
}

/* The fake transport's per-connection objects (stoa_session_next takes
 * the attached one), and the last seq each session delivered. */
static int sess_conn, other_conn;
static uint64_t sess_seq, other_seq;

/* The next message for s (NULL if none), checking that the connection is
 * still attached and that seqs run 1, 2, 3... */
static stoa_msg_t *next(stoa_session_t *s)
{
    uint64_t *last = s == sess ? &sess_seq : &other_seq, seq = 0;
    bool gone = true;
    stoa_msg_t *m = stoa_session_next(s, s == sess ? (void *)&sess_conn : (void *)&other_conn, &seq, &gone);
    ck_assert_msg(!gone, "the connection is no longer the session's");
    if (m) {
        ck_assert_msg(seq == *last + 1, "seq %llu after %llu", (unsigned long long)seq,
                      (unsigned long long)*last);
        *last = seq;
    }
    return m;
}

static void drain(stoa_session_t *s)
{
    stoa_msg_t *m;
    while ((m = next(s)))
        stoa_msg_unref(m);
}

/* The welcome must be one, for this session, un-numbered (seq 0). */
static void check_welcome(stoa_session_t *s, stoa_msg_t *w)
{
    json_object *o, *v;
    ck_assert_ptr_nonnull(w);
    o = json_tokener_parse(stoa_msg_text(w));
    ck_assert_ptr_nonnull(o);
    ck_assert(json_object_object_get_ex(o, "type", &v));
    ck_assert_str_eq(json_object_get_string(v), "welcome");
    ck_assert(json_object_object_get_ex(o, "peer", &v));
    ck_assert_str_eq(json_object_get_string(v), stoa_session_peer(s));
    ck_assert(json_object_object_get_ex(o, "seq", &v));
    ck_assert_int_eq(json_object_get_int64(v), 0);
    json_object_put(o);
    stoa_msg_unref(w);
}

/* Set by a fixture that sends many ephemeral messages. */
static bool big_burst;

static void setup(void)
{
    stoa_msg_t *w = NULL;
    cfg = stoa_config_new();
    if (big_burst)
        cfg->ephemeral_burst = 100000;
    hub = stoa_hub_new(cfg);
    wakes = 0;
    sess_seq = other_seq = 0;
    sess = stoa_hub_open(hub, make_ident("ada", "{\"doc:*\":\"rw\",\"doc:secret\":\"\"}"), &fake_ops, NULL,
                         &sess_conn, &w);
    check_welcome(sess, w);
    w = NULL;
    other = stoa_hub_open(hub, make_ident("bob", "{\"*\":\"r\"}"), &fake_ops, NULL, &other_conn, &w);
    check_welcome(other, w);
    /* The welcome is not queued. */
    ck_assert_ptr_null(next(sess));
    ck_assert_ptr_null(next(other));
}

static void setup_big_burst(void)
{
    big_burst = true;
    setup();
}

static void teardown(void)
{
    big_burst = false;
    stoa_hub_close(sess, STOA_LEFT_DISCONNECT);
    stoa_hub_close(other, STOA_LEFT_DISCONNECT);
    stoa_session_unref(sess);
    stoa_session_unref(other);
    stoa_hub_free(hub);
    stoa_config_free(cfg);
}

static stoa_err_t handle(const char *text)
{
    return stoa_proto_handle(sess, text, strlen(text));
}

static json_object *pop(stoa_session_t *s)
{
    stoa_msg_t *m = next(s);
    json_object *o;
    ck_assert_msg(m != NULL, "expected a message, the queue is empty");
    o = json_tokener_parse(stoa_msg_text(m));
    ck_assert_msg(o != NULL, "not JSON: %s", stoa_msg_text(m));
    stoa_msg_unref(m);
    return o;
}

static void expect_empty(stoa_session_t *s)
{
    stoa_msg_t *m = next(s);
    ck_assert_msg(m == NULL, "expected no message, got %s", m ? stoa_msg_text(m) : "");
}

/* Pop an error of `code`; returns it (the caller puts it). */
static json_object *expect_error(stoa_session_t *s, const char *code)
{
    json_object *o = pop(s);
    ck_assert_str_eq(str_field(o, "type"), "error");
    ck_assert_msg(strcmp(str_field(o, "code"), code) == 0, "expected %s, got %s", code,
                  json_object_to_json_string(o));
    ck_assert_msg(str_field(o, "message")[0] != '\0', "error without a message");
    return o;
}

/* Send text, expect exactly one error of `code` with no id and no room. */
static void bad(const char *text, stoa_err_t want, const char *code)
{
    json_object *o;
    stoa_err_t got = handle(text);
    ck_assert_msg(got == want, "%s: returned %s, want %s", text, stoa_err_name(got), code);
    o = expect_error(sess, code);
    ck_assert_msg(!has_field(o, "id"), "%s: unexpected id", text);
    json_object_put(o);
    expect_empty(sess);
}

/* bad() for each text in turn; the list of texts ends with NULL. */
static __attribute__((sentinel)) void bad_all(stoa_err_t want, const char *code, ...)
{
    va_list ap;
    const char *text;
    va_start(ap, code);
    while ((text = va_arg(ap, const char *)) != NULL)
        bad(text, want, code);
    va_end(ap);
}

/* handle(text) returns want and queues an error of `code`. */
static void handled_error(const char *text, stoa_err_t want, const char *code)
{
    ck_assert_int_eq(handle(text), want);
    json_object_put(expect_error(sess, code));
}

/* Pop a message of `type`; returns it (the caller puts it). */
static json_object *pop_type(stoa_session_t *s, const char *type)
{
    json_object *o = pop(s);
    ck_assert_str_eq(str_field(o, "type"), type);
    return o;
}

/* Pop a message of `type` and drop it. */
static void expect_type(stoa_session_t *s, const char *type)
{
    json_object_put(pop_type(s, type));
}

/* o has an integer id equal to n. */
static void expect_int_id(json_object *o, int n)
{
    json_object *id;
    ck_assert(json_object_object_get_ex(o, "id", &id));
    ck_assert(json_object_is_type(id, json_type_int));
    ck_assert_int_eq(json_object_get_int(id), n);
}

START_TEST(test_bad_json)
{
    bad_all(STOA_ERR_BAD_JSON, "BAD_JSON", "{", "not json", "{\"type\":\"ping\",}", "{\"type\":\"ping\"",
            "{'type':'ping'}", "\"unterminated", "   ", NULL);
    ck_assert_int_eq(stoa_proto_handle(sess, "", 0), STOA_ERR_BAD_JSON);
    json_object_put(expect_error(sess, "BAD_JSON"));
    expect_empty(sess);
}
END_TEST

START_TEST(test_trailing_garbage)
{
    bad_all(STOA_ERR_BAD_JSON, "BAD_JSON", "{\"type\":\"ping\"} x", "{\"type\":\"ping\"}{\"type\":\"ping\"}",
            "{\"type\":\"ping\"}]", NULL);
    /* A NUL byte is not whitespace. */
    ck_assert_int_eq(stoa_proto_handle(sess, "{\"type\":\"ping\"}\0x", 17), STOA_ERR_BAD_JSON);
    json_object_put(expect_error(sess, "BAD_JSON"));
    ck_assert_int_eq(stoa_proto_handle(sess, "{\"type\":\"ping\"}\0", 16), STOA_ERR_BAD_JSON);
    json_object_put(expect_error(sess, "BAD_JSON"));
    /* Trailing whitespace is fine. */
    ck_assert_int_eq(handle("{\"type\":\"ping\"} \r\n\t "), STOA_OK);
    expect_type(sess, "pong");
    expect_empty(sess);
}
END_TEST

START_TEST(test_not_nul_terminated)
{
    /* Only len bytes are read: what follows them is not part of the message. */
    const char buf[] = "{\"type\":\"ping\",\"id\":9}GARBAGE";
    ck_assert_int_eq(stoa_proto_handle(sess, buf, strlen(buf) - strlen("GARBAGE")), STOA_OK);
    expect_type(sess, "pong");
    expect_empty(sess);
}
END_TEST

START_TEST(test_non_object)
{
    bad_all(STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE", "[1,2]", "[]", "\"ping\"", "true", "null", NULL);
    /* A number is valid JSON, just not a message. */
    bad_all(STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE", "42", "-1.5e3", " 7 ", NULL);
}
END_TEST

START_TEST(test_missing_or_bad_type)
{
    bad_all(STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE", "{}", "{\"room\":\"doc:1\"}", "{\"type\":5}",
            "{\"type\":null}", "{\"type\":[\"ping\"]}", "{\"type\":{\"name\":\"ping\"}}", NULL);
}
END_TEST

START_TEST(test_unknown_type)
{
    json_object *o;
    bad_all(STOA_ERR_UNKNOWN_TYPE, "UNKNOWN_TYPE", "{\"type\":\"dance\"}", "{\"type\":\"PING\"}",
            "{\"type\":\"\"}", NULL);
    ck_assert_int_eq(handle("{\"type\":\"welcome\",\"id\":\"w\"}"), STOA_ERR_UNKNOWN_TYPE);
    o = expect_error(sess, "UNKNOWN_TYPE");
    ck_assert_str_eq(str_field(o, "id"), "w");
    ck_assert_ptr_nonnull(strstr(str_field(o, "message"), "welcome"));
    json_object_put(o);
}
END_TEST

START_TEST(test_missing_room)
{
    bad_all(STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE", "{\"type\":\"join\"}", "{\"type\":\"leave\"}",
            "{\"type\":\"heartbeat\"}", "{\"type\":\"presence\",\"state\":{}}",
            "{\"type\":\"ephemeral\",\"data\":1}", "{\"type\":\"join\",\"room\":7}",
            "{\"type\":\"join\",\"room\":null}", NULL);
}
END_TEST

START_TEST(test_missing_argument)
{
    json_object *o;
    ck_assert_int_eq(handle("{\"type\":\"join\",\"room\":\"doc:1\"}"), STOA_OK);
    expect_type(sess, "room_state");

    ck_assert_int_eq(handle("{\"type\":\"presence\",\"room\":\"doc:1\",\"id\":1}"), STOA_ERR_BAD_MESSAGE);
    o = expect_error(sess, "BAD_MESSAGE");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_int_eq(json_object_get_int(json_object_object_get(o, "id")), 1);
    ck_assert_ptr_nonnull(strstr(str_field(o, "message"), "state"));
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"ephemeral\",\"room\":\"doc:1\"}"), STOA_ERR_BAD_MESSAGE);
    o = expect_error(sess, "BAD_MESSAGE");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_ptr_nonnull(strstr(str_field(o, "message"), "data"));
    json_object_put(o);

    /* A state that is not an object is refused too. */
    handled_error("{\"type\":\"presence\",\"room\":\"doc:1\",\"state\":[1]}", STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE");
    handled_error("{\"type\":\"join\",\"room\":\"doc:2\",\"state\":\"x\"}", STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE");
    expect_empty(sess);
}
END_TEST

START_TEST(test_bad_id)
{
    char text[400];
    json_object *o;
    bad_all(STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE", "{\"type\":\"ping\",\"id\":{}}",
            "{\"type\":\"ping\",\"id\":{\"a\":1}}", "{\"type\":\"ping\",\"id\":[1]}",
            "{\"type\":\"ping\",\"id\":true}", "{\"type\":\"ping\",\"id\":null}", NULL);
    /* A bad id is reported before anything else is looked at. */
    bad("{\"type\":\"dance\",\"id\":{}}", STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE");
    /* Strings up to STOA_PROTO_MAX_ID bytes. */
    snprintf(text, sizeof text, "{\"type\":\"ping\",\"id\":\"%0*d\"}", STOA_PROTO_MAX_ID + 1, 0);
    bad(text, STOA_ERR_BAD_MESSAGE, "BAD_MESSAGE");
    snprintf(text, sizeof text, "{\"type\":\"ping\",\"id\":\"%0*d\"}", STOA_PROTO_MAX_ID, 0);
    ck_assert_int_eq(handle(text), STOA_OK);
    o = pop_type(sess, "pong");
    ck_assert_uint_eq(strlen(str_field(o, "id")), STOA_PROTO_MAX_ID);
    json_object_put(o);
    expect_empty(sess);
}
END_TEST

START_TEST(test_id_echoed_in_errors)
{
    json_object *o, *id;
    ck_assert_int_eq(handle("{\"type\":\"leave\",\"room\":\"doc:1\",\"id\":\"req-7\"}"), STOA_ERR_NOT_IN_ROOM);
    o = expect_error(sess, "NOT_IN_ROOM");
    ck_assert_str_eq(str_field(o, "id"), "req-7");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"join\",\"room\":\"doc:secret\",\"id\":7}"), STOA_ERR_PERMISSION_DENIED);
    o = expect_error(sess, "PERMISSION_DENIED");
    expect_int_id(o, 7);
    ck_assert_str_eq(str_field(o, "room"), "doc:secret");
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"join\",\"room\":\"bad room\",\"id\":2.5}"), STOA_ERR_BAD_ROOM);
    o = expect_error(sess, "BAD_ROOM");
    ck_assert(json_object_object_get_ex(o, "id", &id));
    ck_assert(json_object_is_type(id, json_type_double));
    ck_assert_double_eq(json_object_get_double(id), 2.5);
    json_object_put(o);
    expect_empty(sess);
}
END_TEST

START_TEST(test_join_and_acks)
{
    json_object *o;
    ck_assert_int_eq(handle("{\"type\":\"join\",\"room\":\"doc:1\",\"state\":{\"name\":\"Ada\"},\"id\":1}"),
                     STOA_OK);
    o = pop_type(sess, "room_state");
    ck_assert_str_eq(str_field(o, "room"), "doc:1");
    ck_assert_int_eq(json_object_get_int(json_object_object_get(o, "id")), 1);
    json_object_put(o);

    ck_assert_int_eq(stoa_proto_handle(other, "{\"type\":\"join\",\"room\":\"doc:1\"}", strlen("{\"type\":\"join\",\"room\":\"doc:1\"}")), STOA_OK);
    drain(other);
    drain(sess);

    ck_assert_int_eq(handle("{\"type\":\"presence\",\"room\":\"doc:1\",\"state\":{\"cursor\":4},\"id\":2}"),
                     STOA_OK);
    o = pop_type(sess, "ack");
    expect_int_id(o, 2);
    json_object_put(o);
    o = pop_type(other, "presence");
    ck_assert_int_eq(json_object_get_int(json_object_object_get(json_object_object_get(o, "state"), "cursor")), 4);
    ck_assert_str_eq(str_field(json_object_object_get(o, "state"), "name"), "Ada");
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"heartbeat\",\"room\":\"doc:1\",\"id\":\"hb\"}"), STOA_OK);
    o = pop_type(sess, "ack");
    ck_assert_str_eq(str_field(o, "id"), "hb");
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":{\"emoji\":\"x\"},\"id\":3}"),
                     STOA_OK);
    expect_type(sess, "ack");
    o = pop_type(other, "ephemeral");
    ck_assert_str_eq(str_field(json_object_object_get(o, "data"), "emoji"), "x");
    json_object_put(o);

    /* Identity fields a client sends are ignored: the server stamps its own. */
    ck_assert_int_eq(handle("{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":1,\"from\":\"forged\","
                            "\"user\":{\"id\":\"root\"}}"),
                     STOA_OK);
    o = pop(other);
    ck_assert_str_eq(str_field(o, "from"), stoa_session_peer(sess));
    ck_assert_str_eq(str_field(json_object_object_get(o, "user"), "id"), "ada");
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"leave\",\"room\":\"doc:1\",\"id\":\"bye\"}"), STOA_OK);
    o = pop_type(sess, "ack");
    ck_assert_str_eq(str_field(o, "id"), "bye");
    json_object_put(o);
    o = pop_type(other, "peer_left");
    ck_assert_str_eq(str_field(o, "reason"), "leave");
    json_object_put(o);
    expect_empty(sess);
    expect_empty(other);
}
END_TEST

START_TEST(test_ping_pong)
{
    json_object *o;
    ck_assert_int_eq(handle("{\"type\":\"ping\",\"id\":4}"), STOA_OK);
    o = pop_type(sess, "pong");
    expect_int_id(o, 4);
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"ping\",\"id\":\"abc\"}"), STOA_OK);
    o = pop_type(sess, "pong");
    ck_assert_str_eq(str_field(o, "id"), "abc");
    json_object_put(o);

    ck_assert_int_eq(handle("{\"type\":\"ping\"}"), STOA_OK);
    o = pop_type(sess, "pong");
    ck_assert(!has_field(o, "id"));
    json_object_put(o);
    /* Unknown extra fields are ignored. */
    ck_assert_int_eq(handle("{\"type\":\"ping\",\"extra\":[1,2,3]}"), STOA_OK);
    json_object_put(pop(sess));
    expect_empty(sess);
    expect_empty(other);
}
END_TEST

START_TEST(test_depth_limit)
{
    char text[256];
    size_t n = 0;
    int depth = STOA_PROTO_MAX_DEPTH + 5;
    n += (size_t)snprintf(text, sizeof text, "{\"type\":\"ping\",\"x\":");
    for (int i = 0; i < depth; i++)
        text[n++] = '[';
    for (int i = 0; i < depth; i++)
        text[n++] = ']';
    text[n++] = '}';
    text[n] = '\0';
    bad(text, STOA_ERR_BAD_JSON, "BAD_JSON");
}
END_TEST

START_TEST(test_proto_error)
{
    json_object *id = json_object_new_string("e1"), *o;
    int before = wakes;
    stoa_proto_error(sess, STOA_ERR_RATE_LIMITED, "slow down", id, "doc:9");
    ck_assert_int_gt(wakes, before);
    o = expect_error(sess, "RATE_LIMITED");
    ck_assert_str_eq(str_field(o, "message"), "slow down");
    ck_assert_str_eq(str_field(o, "id"), "e1");
    ck_assert_str_eq(str_field(o, "room"), "doc:9");
    json_object_put(o);
    stoa_proto_error(sess, STOA_ERR_INTERNAL, "oops", NULL, NULL);
    o = expect_error(sess, "INTERNAL");
    ck_assert(!has_field(o, "id"));
    ck_assert(!has_field(o, "room"));
    json_object_put(o);
    json_object_put(id);
}
END_TEST

START_TEST(test_session_stays_open)
{
    for (int i = 0; i < 20; i++)
        handled_error("garbage", STOA_ERR_BAD_JSON, "BAD_JSON");
    /* Still open, still attached: findable by its id, next() not gone. */
    {
        stoa_session_t *found = stoa_hub_find(hub, stoa_session_id(sess));
        ck_assert_ptr_eq(found, sess);
        stoa_session_unref(found);
        ck_assert_ptr_eq(stoa_session_conn(sess, &fake_ops), &sess_conn);
    }
    ck_assert_int_eq(handle("{\"type\":\"ping\",\"id\":1}"), STOA_OK);
    expect_type(sess, "pong");
}
END_TEST

/* The text of the one message queued for s (a copy, freed by the
 * caller), or NULL when there is none. */
static char *take_text(stoa_session_t *s)
{
    stoa_msg_t *m = next(s);
    char *text = m ? stoa_xstrdup(stoa_msg_text(m)) : NULL;
    if (m)
        stoa_msg_unref(m);
    expect_empty(s);
    return text;
}

static void same_text(const char *what, const char *text, const char *a, const char *b)
{
    ck_assert_msg((a == NULL) == (b == NULL), "%s: %s, then %s, for %s", what, a ? a : "nothing",
                  b ? b : "nothing", text);
    if (a)
        ck_assert_msg(strcmp(a, b) == 0, "%s: %s, then %s, for %s", what, a, b, text);
}

/* text handled as it came (from its text when an ephemeral message is in
 * the clients' form) and through a json-c tree (stoa_proto_parse, then
 * stoa_proto_handle_json) returns the same, sends the room the same bytes
 * and the sender the same reply. */
static void same_both_ways(const char *text)
{
    char why[256], *room_a, *reply_a, *room_b, *reply_b;
    json_object *msg;
    stoa_err_t a = handle(text), b;
    room_a = take_text(other);
    reply_a = take_text(sess);
    msg = stoa_proto_parse(text, strlen(text), why, sizeof why);
    ck_assert_msg(msg != NULL, "json-c does not parse %s: %s", text, why);
    b = stoa_proto_handle_json(sess, msg, NULL);
    json_object_put(msg);
    room_b = take_text(other);
    reply_b = take_text(sess);
    ck_assert_msg(a == b, "%s, then %s, for %s", stoa_err_name(a), stoa_err_name(b), text);
    same_text("to the room", text, room_a, room_b);
    same_text("to the sender", text, reply_a, reply_b);
    free(room_a);
    free(reply_a);
    free(room_b);
    free(reply_b);
}

START_TEST(test_ephemeral_from_text)
{
    static const char *const texts[] = {
        /* in the clients' form (the text path) */
        ("{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":{\"x\":1,\"y\":-2,\"s\":\"a\\/b\\\"c\\\\d\\n\","
         "\"f\":1.50,\"e\":-2.5E+3,\"n\":null,\"t\":true,\"a\":[],\"o\":{}}}"),
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":\"hi\",\"id\":7}",
        "{\"id\":\"req-1/x\",\"data\":0,\"room\":\"doc:1\",\"type\":\"ephemeral\"}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":null,\"id\":-12}",
        " {\n \"type\" : \"ephemeral\" ,\t\"room\":\"doc:1\", \"data\": [1,2] } \r\n",
        "{\"type\":\"ephemeral\",\"room\":\"doc:2\",\"data\":1,\"id\":9}",         /* NOT_IN_ROOM */
        "{\"type\":\"ephemeral\",\"room\":\"no room\",\"data\":1}",               /* BAD_ROOM */
        "{\"type\":\"ephemeral\",\"room\":\"doc:a/b\",\"data\":1,\"id\":\"r\"}",
        "{\"type\":\"ephemeral\",\"room\":\"\",\"data\":{}}",
        /* not in that form: through json-c */
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":{\"x\": 1}}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":\"a/b\"}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":\"\\u00e9\\u0001\"}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":[-0,1234567890123456789]}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":{\"a\":1,\"b\":2,\"a\":3}}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":1,\"id\":1.5}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":1,\"id\":true}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":1,\"id\":\"a\\\"b\"}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":1,\"from\":\"forged\"}",
        "{\"type\":\"ephem\\u0065ral\",\"room\":\"doc:1\",\"data\":1}",
        "{\"type\":\"ephemeral\",\"room\":\"doc\\u003a1\",\"data\":1}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":1,\"room\":\"doc:2\"}",
        "{\"type\":\"ephemeral\",\"room\":\"doc:1\"}",
        "{\"type\":\"ephemeral\",\"room\":7,\"data\":1}",
        "{\"type\":\"ephemeral\",\"data\":1}",
    };
    char text[512];
    size_t n;
    ck_assert_int_eq(handle("{\"type\":\"join\",\"room\":\"doc:1\"}"), STOA_OK);
    {
        const char *join = "{\"type\":\"join\",\"room\":\"doc:1\"}";
        ck_assert_int_eq(stoa_proto_handle(other, join, strlen(join)), STOA_OK);
    }
    drain(sess);
    drain(other);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        same_both_ways(texts[i]);
    /* a string id of STOA_PROTO_MAX_ID bytes, and one byte more */
    for (int extra = 0; extra < 2; extra++) {
        n = (size_t)snprintf(text, sizeof text, "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":1,\"id\":\"");
        memset(text + n, 'i', STOA_PROTO_MAX_ID + extra);
        n += STOA_PROTO_MAX_ID + (size_t)extra;
        snprintf(text + n, sizeof text - n, "\"}");
        same_both_ways(text);
    }
    /* data nested up to json-c's limit and past it: the text path takes
     * nothing json-c refuses, and both ways agree on what it takes */
    for (int depth = STOA_PROTO_MAX_DEPTH - 2; depth <= STOA_PROTO_MAX_DEPTH + 1; depth++) {
        char why[256];
        json_object *msg;
        n = (size_t)snprintf(text, sizeof text, "{\"type\":\"ephemeral\",\"room\":\"doc:1\",\"data\":");
        for (int i = 0; i < depth; i++)
            text[n++] = '[';
        for (int i = 0; i < depth; i++)
            text[n++] = ']';
        snprintf(text + n, sizeof text - n, "}");
        msg = stoa_proto_parse(text, n + 1, why, sizeof why);
        if (depth < STOA_PROTO_MAX_DEPTH) {   /* the message object and the arrays: 32 levels */
            ck_assert_msg(msg != NULL, "depth %d: %s", depth, why);
            same_both_ways(text);
        } else {
            ck_assert_msg(msg == NULL, "depth %d parsed", depth);
            bad(text, STOA_ERR_BAD_JSON, "BAD_JSON");
        }
        json_object_put(msg);
    }
}
END_TEST

static Suite *proto_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_bad_json);
    tcase_add_test(tc, test_trailing_garbage);
    tcase_add_test(tc, test_not_nul_terminated);
    tcase_add_test(tc, test_non_object);
    tcase_add_test(tc, test_missing_or_bad_type);
    tcase_add_test(tc, test_unknown_type);
    tcase_add_test(tc, test_missing_room);
    tcase_add_test(tc, test_missing_argument);
    tcase_add_test(tc, test_bad_id);
    tcase_add_test(tc, test_id_echoed_in_errors);
    tcase_add_test(tc, test_join_and_acks);
    tcase_add_test(tc, test_ping_pong);
    tcase_add_test(tc, test_depth_limit);
    tcase_add_test(tc, test_proto_error);
    tcase_add_test(tc, test_session_stays_open);
    suite_add_tcase(s, tc);
    tc = tcase_create("ephemeral_text");
    tcase_add_checked_fixture(tc, setup_big_burst, teardown);
    tcase_add_test(tc, test_ephemeral_from_text);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(proto_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
