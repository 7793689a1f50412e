/* session_api.c - sessions over REST: create, inspect, end, and send
 * client messages in batches (the upstream half of SSE and long-poll). */
#include "http_internal.h"
#include "stoa/proto.h"
#include "stoa/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Client messages in one POST: bounded as well as the body's bytes. */
#define BATCH_MAX 256

stoa_session_t *stoa_http_session(call_t *c, enum MHD_Result *answered)
{
    stoa_http_t *h = c->http;
    char cookie_buf[STOA_TOKEN_MAX + 1], why[256];
    const char *token;
    stoa_session_t *sess = stoa_hub_find(h->hub, c->arg);
    stoa_identity_t *id;

    if (!sess) {
        *answered = STOA_HTTP_ERROR(c, STOA_ERR_SESSION_NOT_FOUND,
                                    "no such session (it ended or expired): start a new one");
        return NULL;
    }
    token = stoa_http_token(c, cookie_buf, sizeof cookie_buf);
    if (token) {   /* the id alone is the credential; a token must agree with it */
        id = stoa_auth_verify(h->auth, token, why, sizeof why);
        if (!id || strcmp(id->sub, stoa_session_sub(sess)) != 0) {
            stoa_identity_free(id);
            stoa_session_unref(sess);
            *answered = STOA_HTTP_ERROR(c, STOA_ERR_AUTH_FAILED, "%s",
                                        id ? "the token names another user than the session's" : why);
            return NULL;
        }
        stoa_identity_free(id);
    }
    return sess;
}

/* POST /v1/sessions: a new session, not attached to any transport yet (its
 * grace period runs until one attaches). */
enum MHD_Result stoa_sessions_create(call_t *c)
{
    stoa_http_t *h = c->http;
    stoa_err_t code;
    char why[256];
    stoa_identity_t *ident = stoa_http_identify(c, true, &code, why, sizeof why);
    stoa_session_t *sess;
    stoa_msg_t *welcome;
    json_object *o, *transports;

    if (!ident)
        return STOA_HTTP_ERROR(c, code, "%s", why);
    sess = stoa_hub_open(h->hub, ident, NULL, NULL, NULL, &welcome);
    o = json_tokener_parse(stoa_msg_text(welcome));
    stoa_msg_unref(welcome);
    stoa_session_unref(sess);   /* the hub keeps it until it ends */
    transports = json_object_new_array();
    json_object_array_add(transports, json_object_new_string("websocket"));
    json_object_array_add(transports, json_object_new_string("sse"));
    json_object_array_add(transports, json_object_new_string("longpoll"));
    json_object_object_add(o, "transports", transports);
    return stoa_http_send_json(c, MHD_HTTP_CREATED, o);
}

/* A request for a session this instance does not hold, which may live on
 * another one: GET answers from what the bus says of it, POST messages
 * and DELETE are forwarded to it (neither moves the session: only a
 * transport attaching does). Returns true when answered. As for a local
 * session, the id is the credential and a token, if sent, must name the
 * session's user. */
static bool elsewhere(call_t *c, json_object *msgs, bool end, enum MHD_Result *answered)
{
    stoa_hub_t *hub = c->http->hub;
    char *text, sub[256], cookie_buf[STOA_TOKEN_MAX + 1], why[256];
    const char *token;
    stoa_identity_t *id;
    size_t n;
    json_object *o;

    if (!c->http->bus || !stoa_hub_remote_sub(hub, c->arg, sub, sizeof sub))
        return false;
    if ((token = stoa_http_token(c, cookie_buf, sizeof cookie_buf))) {
        id = stoa_auth_verify(c->http->auth, token, why, sizeof why);
        if (!id || strcmp(id->sub, sub) != 0) {
            *answered = STOA_HTTP_ERROR(c, STOA_ERR_AUTH_FAILED, "%s",
                                        id ? "the token names another user than the session's" : why);
            stoa_identity_free(id);
            return true;
        }
        stoa_identity_free(id);
    }
    if ((msgs || end) && !stoa_bus_connected(c->http->bus)) {
        *answered = STOA_HTTP_ERROR(c, STOA_ERR_UNAVAILABLE,
                                    "the session lives on another instance, which cannot be reached now; retry");
        return true;
    }
    if (!msgs && !end) {
        if (!(text = stoa_hub_remote_session_json(hub, c->arg)))
            return false;
        *answered = stoa_http_send_text(c, MHD_HTTP_OK, "application/json", text, strlen(text), NULL, NULL);
        free(text);
        return true;
    }
    if (!stoa_hub_forward(hub, c->arg, msgs, end))
        return false;
    if (end) {
        *answered = stoa_http_send_text(c, MHD_HTTP_NO_CONTENT, "application/json", "", 0, NULL, NULL);
        return true;
    }
    n = json_object_is_type(msgs, json_type_array) ? json_object_array_length(msgs) : 1;
    o = json_object_new_object();
    json_object_object_add(o, "accepted", json_object_new_int64((int64_t)n));
    json_object_object_add(o, "errors", json_object_new_array());
    json_object_object_add(o, "forwarded", json_object_new_boolean(true));
    *answered = stoa_http_send_json(c, MHD_HTTP_ACCEPTED, o);
    return true;
}

/* elsewhere() only when this instance does not hold the session. */
static bool elsewhere_first(call_t *c, json_object *msgs, bool end, enum MHD_Result *answered)
{
    stoa_session_t *sess = stoa_hub_find(c->http->hub, c->arg);
    if (sess) {
        stoa_session_unref(sess);
        return false;
    }
    return elsewhere(c, msgs, end, answered);
}

/* GET /v1/sessions/{id}: the session as the server sees it. */
enum MHD_Result stoa_sessions_get(call_t *c)
{
    enum MHD_Result answered;
    stoa_session_t *sess;
    char *text;
    if (elsewhere_first(c, NULL, false, &answered))
        return answered;
    sess = stoa_http_session(c, &answered);
    if (!sess)
        return answered;
    text = stoa_hub_session_json(sess);
    stoa_session_unref(sess);
    answered = stoa_http_send_text(c, MHD_HTTP_OK, "application/json", text, strlen(text), NULL, NULL);
    free(text);
    return answered;
}

/* DELETE /v1/sessions/{id}: the client leaves; its peers see "leave". */
enum MHD_Result stoa_sessions_delete(call_t *c)
{
    enum MHD_Result answered;
    stoa_session_t *sess;
    if (elsewhere_first(c, NULL, true, &answered))
        return answered;
    sess = stoa_http_session(c, &answered);
    if (!sess)
        return answered;
    stoa_hub_close(sess, STOA_LEFT_LEAVE);
    stoa_session_unref(sess);
    return stoa_http_send_text(c, MHD_HTTP_NO_CONTENT, "application/json", "", 0, NULL, NULL);
}

/* POST /v1/sessions/{id}/messages: one client message, or an array of
 * them, handled in order. What they cause (room_state, ack, relays) goes
 * out on the session's stream; problems come back in this answer:
 * {"accepted": n, "errors": [{"index", "code", "message", "id"?, "room"?}]}. */
enum MHD_Result stoa_sessions_post_messages(call_t *c)
{
    enum MHD_Result answered;
    stoa_session_t *sess;
    json_object *body, *errors, *o;
    char why[256];
    size_t n, accepted = 0;

    body = c->req->body ? stoa_proto_parse(c->req->body, c->req->len, why, sizeof why) : NULL;
    if (!body)
        return STOA_HTTP_ERROR(c, STOA_ERR_BAD_JSON, "%s", c->req->body ? why : "no body: send a JSON message or array");
    if (!json_object_is_type(body, json_type_array) && !json_object_is_type(body, json_type_object)) {
        json_object_put(body);
        return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "send a JSON message (an object) or an array of them");
    }
    n = json_object_is_type(body, json_type_array) ? json_object_array_length(body) : 1;
    if (n > BATCH_MAX) {
        json_object_put(body);
        return STOA_HTTP_ERROR(c, STOA_ERR_MESSAGE_TOO_LARGE, "%zu messages in one batch; the limit is %d", n,
                               BATCH_MAX);
    }
    if (elsewhere_first(c, body, false, &answered)) {
        json_object_put(body);
        return answered;
    }
    sess = stoa_http_session(c, &answered);
    if (!sess) {
        json_object_put(body);
        return answered;
    }
    errors = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *msg = json_object_is_type(body, json_type_array) ? json_object_array_get_idx(body, i) : body;
        size_t before = json_object_array_length(errors);
        if (stoa_proto_handle_json(sess, msg, errors) == STOA_OK)
            accepted++;
        else if (json_object_array_length(errors) > before)
            json_object_object_add(json_object_array_get_idx(errors, before), "index",
                                   json_object_new_int64((int64_t)i));
    }
    stoa_session_unref(sess);
    json_object_put(body);
    o = json_object_new_object();
    json_object_object_add(o, "accepted", json_object_new_int64((int64_t)accepted));
    json_object_object_add(o, "errors", errors);
    return stoa_http_send_json(c, MHD_HTTP_OK, o);
}
