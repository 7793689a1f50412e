/* proto.c - decoding and dispatching client messages. */
#include "stoa/proto.h"
#include "stoa/jsontext.h"
#include "stoa/wire.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every command has the same shape: an optional room, an optional argument
 * (state or data), the request id. */
typedef stoa_err_t (*handler_t)(stoa_session_t *sess, const char *room, json_object *arg, json_object *id,
                                char *why, size_t whylen);

static stoa_err_t do_join(stoa_session_t *s, const char *room, json_object *arg, json_object *id, char *why,
                          size_t whylen)
{
    return stoa_hub_join(s, room, arg, id, why, whylen);
}

static stoa_err_t do_leave(stoa_session_t *s, const char *room, json_object *arg, json_object *id, char *why,
                           size_t whylen)
{
    return stoa_hub_leave(s, room, id, why, whylen);
}

static stoa_err_t do_heartbeat(stoa_session_t *s, const char *room, json_object *arg, json_object *id,
                               char *why, size_t whylen)
{
    return stoa_hub_heartbeat(s, room, id, why, whylen);
}

static stoa_err_t do_ping(stoa_session_t *s, const char *room, json_object *arg, json_object *id, char *why,
                          size_t whylen)
{
    stoa_hub_send(s, stoa_wire_pong(id));
    return STOA_OK;
}

typedef struct {
    const char *type;
    bool needs_room;
    const char *arg;        /* name of the argument field, or NULL */
    bool arg_required;
    handler_t handler;
} command_t;

static const command_t commands[] = {
    {.type = "join", .needs_room = true, .arg = "state", .handler = do_join},
    {.type = "leave", .needs_room = true, .handler = do_leave},
    {.type = "presence", .needs_room = true, .arg = "state", .arg_required = true, .handler = stoa_hub_presence},
    {.type = "heartbeat", .needs_room = true, .handler = do_heartbeat},
    {.type = "ephemeral", .needs_room = true, .arg = "data", .arg_required = true, .handler = stoa_hub_ephemeral},
    {.type = "ping", .handler = do_ping},
};

void stoa_proto_error(stoa_session_t *sess, stoa_err_t code, const char *message, json_object *id,
                      const char *room)
{
    stoa_hub_send(sess, stoa_wire_error(code, message, id, room));
}

/* One tokener per thread, reset for each message, instead of one made and
 * freed per message (its state, stack and buffer: three allocations). */
static pthread_key_t tok_key;
static pthread_once_t tok_once = PTHREAD_ONCE_INIT;

static void tok_free(void *tok)
{
    json_tokener_free(tok);
}

static void tok_key_init(void)
{
    if (pthread_key_create(&tok_key, tok_free) != 0)
        abort();
}

static struct json_tokener *thread_tokener(void)
{
    struct json_tokener *tok;
    pthread_once(&tok_once, tok_key_init);
    tok = pthread_getspecific(tok_key);
    if (tok) {
        json_tokener_reset(tok);
        return tok;
    }
    tok = json_tokener_new_ex(STOA_PROTO_MAX_DEPTH);
    if (!tok)
        return NULL;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);   /* no comments, single quotes or trailing commas */
    if (pthread_setspecific(tok_key, tok) != 0) {
        json_tokener_free(tok);
        return NULL;
    }
    return tok;
}

/* Parse one JSON text: 0 with the value in *out (NULL for JSON null), or
 * -1 with the reason in why. */
static int parse(const char *text, size_t len, json_object **out, char *why, size_t whylen)
{
    struct json_tokener *tok = thread_tokener();
    json_object *obj;
    enum json_tokener_error e;
    bool at_end = false;
    *out = NULL;
    if (!tok) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    obj = json_tokener_parse_ex(tok, text, (int)len);
    if (!obj && json_tokener_get_error(tok) == json_tokener_continue) {
        /* All input read: end it, so that a number or literal at the end completes. */
        obj = json_tokener_parse_ex(tok, "", 1);
        at_end = true;
    }
    e = json_tokener_get_error(tok);
    if (e != json_tokener_success) {
        snprintf(why, whylen, "invalid JSON: %s", json_tokener_error_desc(e));
        json_object_put(obj);
        return -1;
    } else if (!at_end && json_tokener_get_parse_end(tok) < len) {
        size_t end = json_tokener_get_parse_end(tok);
        while (end < len && text[end] && strchr(" \t\r\n", text[end]))
            end++;
        if (end < len) {
            snprintf(why, whylen, "unexpected data after the JSON value");
            json_object_put(obj);
            return -1;
        }
    }
    *out = obj;
    return 0;
}

static bool valid_id(json_object *id)
{
    switch (json_object_get_type(id)) {
    case json_type_int:
    case json_type_double:
        return true;
    case json_type_string:
        return json_object_get_string_len(id) <= STOA_PROTO_MAX_ID;
    default:
        return false;
    }
}

/* Report an error: into `errors` when given, else on the session's stream. */
static void report(stoa_session_t *sess, json_object *errors, stoa_err_t code, const char *why, json_object *id,
                   const char *room)
{
    json_object *e;
    if (!errors) {
        stoa_proto_error(sess, code, why, id, room);
        return;
    }
    e = json_object_new_object();
    json_object_object_add(e, "code", json_object_new_string(stoa_err_name(code)));
    json_object_object_add(e, "message", json_object_new_string(why));
    if (id)
        json_object_object_add(e, "id", json_object_get(id));
    if (room)
        json_object_object_add(e, "room", json_object_new_string(room));
    json_object_array_add(errors, e);
}

stoa_err_t stoa_proto_handle_json(stoa_session_t *sess, json_object *msg, json_object *errors)
{
    json_object *id = NULL, *type, *room_obj, *arg = NULL;
    const command_t *cmd = NULL;
    const char *room = NULL, *type_name;
    char why[256] = "";
    stoa_err_t err = STOA_OK;

    if (!json_object_is_type(msg, json_type_object)) {
        err = STOA_ERR_BAD_MESSAGE;
        snprintf(why, sizeof why, "a message is a JSON object with a \"type\"");
        goto out;
    }
    if (json_object_object_get_ex(msg, "id", &id) && !valid_id(id)) {
        id = NULL;
        err = STOA_ERR_BAD_MESSAGE;
        snprintf(why, sizeof why, "id must be a number or a string of at most %d bytes", STOA_PROTO_MAX_ID);
        goto out;
    }
    if (!json_object_object_get_ex(msg, "type", &type) || !json_object_is_type(type, json_type_string)) {
        err = STOA_ERR_BAD_MESSAGE;
        snprintf(why, sizeof why, "missing field \"type\" (a string)");
        goto out;
    }
    type_name = json_object_get_string(type);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].type, type_name) == 0)
            cmd = &commands[i];
    if (!cmd) {
        err = STOA_ERR_UNKNOWN_TYPE;
        snprintf(why, sizeof why, "unknown message type \"%.64s\"", type_name);
        goto out;
    }
    if (cmd->needs_room) {
        if (!json_object_object_get_ex(msg, "room", &room_obj) || !json_object_is_type(room_obj, json_type_string)) {
            err = STOA_ERR_BAD_MESSAGE;
            snprintf(why, sizeof why, "%s needs field \"room\" (a string)", cmd->type);
            goto out;
        }
        room = json_object_get_string(room_obj);
    }
    if (cmd->arg && !json_object_object_get_ex(msg, cmd->arg, &arg) && cmd->arg_required) {
        err = STOA_ERR_BAD_MESSAGE;
        snprintf(why, sizeof why, "%s needs field \"%s\"", cmd->type, cmd->arg);
        goto out;
    }
    if (cmd->handler == do_join) {   /* join alone has a flag */
        json_object *obs;
        bool observe = false;
        if (json_object_object_get_ex(msg, "observe", &obs)) {
            if (!json_object_is_type(obs, json_type_boolean)) {
                err = STOA_ERR_BAD_MESSAGE;
                snprintf(why, sizeof why, "observe must be true or false");
                goto out;
            }
            observe = json_object_get_boolean(obs);
        }
        err = stoa_hub_join_ex(sess, room, arg, observe, id, why, sizeof why);
    } else {
        err = cmd->handler(sess, room, arg, id, why, sizeof why);
    }
out:
    if (err)
        report(sess, errors, err, why, id, room);
    return err;
}

/* ---- ephemeral messages from their text ----
 *
 * Most client messages are ephemeral ones, many a second per peer. One in
 * the form clients write is handled from its text, without a json-c tree,
 * and its data relayed as it came: the keys type ("ephemeral"), room, data
 * and perhaps id, each once and no other; the room and a string id with
 * nothing escaped; an integer id of at most 18 digits; data canonical
 * (stoa_json_canonical: the text json-c's parse would encode back to).
 * Anything else goes through json-c, whose parse decides what is valid.
 * Both ways give the same replies and the same bytes to the room. */

/* Data nested at most this deep is taken from its text: json-c's limit
 * allows this much inside the message object. */
#define FAST_DATA_DEPTH (STOA_PROTO_MAX_DEPTH - 1)

typedef struct {
    const char *p;   /* NULL: absent */
    size_t n;
} span_t;

/* After the JSON string at p (a quote) when nothing in it is escaped, with
 * its contents in *out; NULL otherwise. */
static const char *plain_string(const char *p, const char *end, span_t *out)
{
    const char *start = ++p;
    for (; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *out = (span_t){start, (size_t)(p - start)};
            return p + 1;
        }
        if (c == '\\' || c < 0x20)
            return NULL;
    }
    return NULL;
}

/* After the integer at p (as json-c prints it back), or NULL. */
static const char *plain_int(const char *p, const char *end, span_t *out)
{
    const char *q = stoa_json_canonical(p, end, 0);
    if (!q || (*p != '-' && (*p < '0' || *p > '9')))
        return NULL;
    for (const char *c = p + 1; c < q; c++)
        if (*c < '0' || *c > '9')
            return NULL;   /* a fraction or exponent: a double */
    *out = (span_t){p, (size_t)(q - p)};
    return q;
}

static bool span_is(span_t s, const char *lit)
{
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

/* Handle text when it is an ephemeral message in the form above: true,
 * with the outcome in *err. false: not in that form (nothing was done). */
static bool handle_ephemeral_text(stoa_session_t *sess, const char *text, size_t len, stoa_err_t *err)
{
    const char *p = stoa_json_ws(text, text + len), *end = text + len;
    span_t type = {0}, room = {0}, data = {0}, id = {0};
    bool id_is_string = false;
    char roombuf[256], why[256] = "";
    json_object *id_obj = NULL;

    if (p >= end || *p++ != '{')
        return false;
    for (;;) {
        span_t key, *field;
        p = stoa_json_ws(p, end);
        if (p >= end || *p != '"' || !(p = plain_string(p, end, &key)))
            return false;
        p = stoa_json_ws(p, end);
        if (p >= end || *p++ != ':')
            return false;
        p = stoa_json_ws(p, end);
        if (p >= end)
            return false;
        field = span_is(key, "type") ? &type : span_is(key, "room") ? &room : span_is(key, "data") ? &data
              : span_is(key, "id")  ? &id : NULL;
        if (!field || field->p)
            return false;   /* another key, or one twice */
        if (field == &data) {
            const char *q = stoa_json_canonical(p, end, FAST_DATA_DEPTH);
            if (!q)
                return false;
            data = (span_t){p, (size_t)(q - p)};
            p = q;
        } else if (*p == '"') {
            if (!(p = plain_string(p, end, field)))
                return false;
            id_is_string |= field == &id;
        } else if (field != &id || !(p = plain_int(p, end, &id))) {
            return false;
        }
        p = stoa_json_ws(p, end);
        if (p >= end)
            return false;
        if (*p == '}')
            break;
        if (*p++ != ',')
            return false;
    }
    if (stoa_json_ws(p + 1, end) != end || !span_is(type, "ephemeral") || !room.p || !data.p ||
        room.n >= sizeof roombuf || (id_is_string && id.n > STOA_PROTO_MAX_ID))
        return false;
    memcpy(roombuf, room.p, room.n);
    roombuf[room.n] = '\0';
    if (id.p)
        id_obj = id_is_string ? json_object_new_string_len(id.p, (int)id.n)
                              : json_object_new_int64(strtoll(id.p, NULL, 10));
    *err = stoa_hub_ephemeral_text(sess, roombuf, data.p, data.n, id_obj, why, sizeof why);
    if (*err)
        stoa_proto_error(sess, *err, why, id_obj, roombuf);
    json_object_put(id_obj);
    return true;
}

stoa_err_t stoa_proto_handle(stoa_session_t *sess, const char *text, size_t len)
{
    json_object *msg = NULL;
    char why[256] = "";
    stoa_err_t err;

    if (handle_ephemeral_text(sess, text, len, &err))
        return err;
    if (len == 0 || parse(text, len, &msg, why, sizeof why) < 0) {
        stoa_proto_error(sess, STOA_ERR_BAD_JSON, len ? why : "empty message", NULL, NULL);
        return STOA_ERR_BAD_JSON;
    }
    err = stoa_proto_handle_json(sess, msg, NULL);
    json_object_put(msg);
    return err;
}

json_object *stoa_proto_parse(const char *text, size_t len, char *why, size_t whylen)
{
    json_object *obj = NULL;
    if (len == 0) {
        snprintf(why, whylen, "empty message");
        return NULL;
    }
    if (parse(text, len, &obj, why, whylen) < 0)
        return NULL;
    if (!obj)
        snprintf(why, whylen, "expected a JSON object, got null");
    return obj;
}
