/* wire.c - server-to-client message encoders. */
#include "stoa/wire.h"
#include "stoa/jsontext.h"
#include "stoa/util.h"

#include <stdlib.h>
#include <string.h>

static json_object *start(const char *type)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string(type));
    return o;
}

static void add_ref(json_object *o, const char *key, json_object *v)
{
    json_object_object_add(o, key, v ? json_object_get(v) : NULL);
}

static void add_str(json_object *o, const char *key, const char *v)
{
    json_object_object_add(o, key, json_object_new_string(v));
}

static void add_id(json_object *o, json_object *id)
{
    if (id)
        add_ref(o, "id", id);
}

stoa_msg_t *stoa_wire_encode(json_object *obj)
{
    size_t len = 0;
    const char *text = json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN, &len);
    return stoa_msg_new(text, len);
}

static stoa_msg_t *finish(json_object *o)
{
    stoa_msg_t *m = stoa_wire_encode(o);
    json_object_put(o);
    return m;
}

stoa_msg_t *stoa_wire_welcome(const char *peer, const char *session, json_object *user, uint64_t seq,
                              bool resumed, int heartbeat_interval_s, int heartbeat_timeout_s,
                              json_object *limits)
{
    json_object *o = start("welcome");
    add_str(o, "peer", peer);
    add_str(o, "session", session);
    add_ref(o, "user", user);
    json_object_object_add(o, "seq", json_object_new_int64((int64_t)seq));
    json_object_object_add(o, "resumed", json_object_new_boolean(resumed));
    json_object_object_add(o, "heartbeat_interval", json_object_new_int(heartbeat_interval_s));
    json_object_object_add(o, "heartbeat_timeout", json_object_new_int(heartbeat_timeout_s));
    if (limits)
        add_ref(o, "limits", limits);
    return finish(o);
}

stoa_msg_t *stoa_wire_room_state(const char *room, json_object *peers, json_object *id)
{
    json_object *o = start("room_state");
    add_str(o, "room", room);
    add_ref(o, "peers", peers);
    add_id(o, id);
    return finish(o);
}

stoa_msg_t *stoa_wire_peer_joined(const char *room, const char *peer, json_object *user, json_object *state)
{
    json_object *o = start("peer_joined");
    add_str(o, "room", room);
    add_str(o, "peer", peer);
    add_ref(o, "user", user);
    add_ref(o, "state", state);
    return finish(o);
}

stoa_msg_t *stoa_wire_presence(const char *room, const char *peer, json_object *state)
{
    json_object *o = start("presence");
    add_str(o, "room", room);
    add_str(o, "peer", peer);
    add_ref(o, "state", state);
    return finish(o);
}

stoa_msg_t *stoa_wire_presence_batch(const char *room, json_object *peers)
{
    json_object *o = start("presence_batch");
    add_str(o, "room", room);
    add_ref(o, "peers", peers);
    return finish(o);
}

stoa_msg_t *stoa_wire_peer_left(const char *room, const char *peer, const char *reason)
{
    json_object *o = start("peer_left");
    add_str(o, "room", room);
    add_str(o, "peer", peer);
    add_str(o, "reason", reason);
    return finish(o);
}

stoa_msg_t *stoa_wire_ephemeral(const char *room, const char *from, json_object *user, json_object *data)
{
    json_object *o = start("ephemeral");
    add_str(o, "room", room);
    add_str(o, "from", from);
    add_ref(o, "user", user);
    add_ref(o, "data", data);
    return finish(o);
}

stoa_msg_t *stoa_wire_server_message(const char *room, json_object *data)
{
    json_object *o = start("message");
    add_str(o, "room", room);
    add_ref(o, "data", data);
    return finish(o);
}

stoa_msg_t *stoa_wire_notice(const char *level, const char *message)
{
    json_object *o = start("notice");
    add_str(o, "level", level);
    add_str(o, "message", message);
    return finish(o);
}

stoa_msg_t *stoa_wire_error(stoa_err_t code, const char *message, json_object *id, const char *room)
{
    json_object *o = start("error");
    add_str(o, "code", stoa_err_name(code));
    add_str(o, "message", message);
    add_id(o, id);
    if (room)
        add_str(o, "room", room);
    return finish(o);
}

stoa_msg_t *stoa_wire_ack(json_object *id)
{
    json_object *o = start("ack");
    add_id(o, id);
    return finish(o);
}

stoa_msg_t *stoa_wire_pong(json_object *id)
{
    json_object *o = start("pong");
    add_id(o, id);
    return finish(o);
}

/* ---- messages from encoded parts ---- */

/* A growing byte buffer for the text encoders; it may start in a buffer
 * on the caller's stack (stack, cap bytes). */
typedef struct {
    char *p;
    size_t len, cap;
    char *stack;
} tbuf_t;

static void tb_put(tbuf_t *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        if (b->p && b->p == b->stack) {   /* off the caller's stack */
            b->p = stoa_xmalloc(b->cap);
            memcpy(b->p, b->stack, b->len);
        } else {
            b->p = stoa_xrealloc(b->p, b->cap);
        }
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define TB_LIT(b, lit) tb_put((b), (lit), sizeof(lit) - 1)

/* s as a JSON string, as json-c writes it (JSON_C_TO_STRING_PLAIN): copied
 * between quotes when nothing in it needs escaping, else through json-c. */
static void tb_str(tbuf_t *b, const char *s)
{
    size_t n = 0;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++, n++)
        if (*q < 0x20 || *q >= 0x7f || *q == '"' || *q == '\\' || *q == '/')
            goto slow;
    tb_put(b, "\"", 1);
    tb_put(b, s, n);
    tb_put(b, "\"", 1);
    return;
slow: {
    json_object *o = json_object_new_string(s);
    size_t len = 0;
    const char *text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, &len);
    tb_put(b, text, len);
    json_object_put(o);
}
}

static stoa_msg_t *tb_msg(tbuf_t *b)
{
    stoa_msg_t *m = stoa_msg_new(b->p, b->len);
    if (b->p != b->stack)
        free(b->p);
    return m;
}

stoa_msg_t *stoa_wire_presence_text(const char *room, const stoa_wire_state_t *st)
{
    tbuf_t b = {NULL, 0, 0, NULL};
    TB_LIT(&b, "{\"type\":\"presence\",\"room\":");
    tb_str(&b, room);
    TB_LIT(&b, ",\"peer\":");
    tb_str(&b, st->peer);
    TB_LIT(&b, ",\"state\":");
    tb_put(&b, st->state, st->state_len);
    TB_LIT(&b, "}");
    return tb_msg(&b);
}

stoa_msg_t *stoa_wire_presence_batch_text(const char *room, const stoa_wire_state_t *peers, size_t n)
{
    tbuf_t b = {NULL, 0, 0, NULL};
    size_t est = 64 + strlen(room);
    for (size_t i = 0; i < n; i++)
        est += 32 + strlen(peers[i].peer) + peers[i].state_len;
    b.p = stoa_xmalloc(est);
    b.cap = est;
    TB_LIT(&b, "{\"type\":\"presence_batch\",\"room\":");
    tb_str(&b, room);
    TB_LIT(&b, ",\"peers\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            TB_LIT(&b, ",");
        TB_LIT(&b, "{\"peer\":");
        tb_str(&b, peers[i].peer);
        TB_LIT(&b, ",\"state\":");
        tb_put(&b, peers[i].state, peers[i].state_len);
        TB_LIT(&b, "}");
    }
    TB_LIT(&b, "]}");
    return tb_msg(&b);
}

/* The JSON text of obj: a frozen value's own, without json-c (which
 * would keep a copy in a buffer on the value for its lifetime). */
static const char *json_text(json_object *obj, size_t *len)
{
    const char *text = stoa_json_frozen_text(obj, len);
    return text ? text : json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN, len);
}

stoa_msg_t *stoa_wire_ephemeral_text(const char *room, const char *from, json_object *user, const char *data,
                                     size_t data_len)
{
    char stack[4096];
    tbuf_t b = {stack, 0, sizeof stack, stack};
    size_t ulen = 0;
    const char *utext = json_text(user, &ulen);
    TB_LIT(&b, "{\"type\":\"ephemeral\",\"room\":");
    tb_str(&b, room);
    TB_LIT(&b, ",\"from\":");
    tb_str(&b, from);
    TB_LIT(&b, ",\"user\":");
    tb_put(&b, utext, ulen);
    TB_LIT(&b, ",\"data\":");
    tb_put(&b, data, data_len);
    TB_LIT(&b, "}");
    return tb_msg(&b);
}
