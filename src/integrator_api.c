/* integrator_api.c - the REST API for an application's own backend,
 * authorized by an API key from configuration (api_keys):
 *   GET    /v1/rooms                      rooms with their peer counts
 *   POST   /v1/rooms/{room}/publish       a server `message` into a room
 *   DELETE /v1/rooms/{room}/peers/{peer}  remove a peer ("kicked")
 *   POST   /v1/notices                    a `notice` to every session
 */
#include "http_internal.h"
#include "stoa/proto.h"
#include "stoa/util.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define API_KEY_MIN 24
#define NOTICE_MAX 1024

/* Compare without an early exit, so timing does not tell how much of a
 * key matched. */
static bool same_secret(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < alen && i < blen; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* The request carries one of the configured API keys. */
static bool authorized(call_t *c)
{
    const char *authz = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *cursor = c->http->cfg->api_keys, *item, *key;
    size_t klen, len;
    bool ok = false;
    if (!authz || strncasecmp(authz, "Bearer ", 7) != 0)
        return false;
    key = authz + 7;
    klen = strlen(key);
    while ((item = stoa_list_next(&cursor, &len)))
        if (len >= API_KEY_MIN && same_secret(key, klen, item, len))
            ok = true;   /* keep going: same work whichever key matched */
    return ok;
}

#define REQUIRE_KEY(c)                                                                                   \
    do {                                                                                                 \
        if (!(c)->http->cfg->api_keys[0])                                                                \
            return STOA_HTTP_ERROR((c), STOA_ERR_NOT_SUPPORTED, "the integrator API is off (no api_keys)"); \
        if (!authorized(c))                                                                              \
            return STOA_HTTP_ERROR((c), STOA_ERR_AUTH_FAILED, "send Authorization: Bearer <api key>");    \
    } while (0)

/* The request body as a JSON object, or NULL having answered. */
static json_object *body_object(call_t *c, enum MHD_Result *answered)
{
    char why[256];
    json_object *o = c->req->body ? stoa_proto_parse(c->req->body, c->req->len, why, sizeof why) : NULL;
    if (!o) {
        *answered = STOA_HTTP_ERROR(c, STOA_ERR_BAD_JSON, "%s", c->req->body ? why : "no body: send a JSON object");
        return NULL;
    }
    if (!json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        *answered = STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "the body must be a JSON object");
        return NULL;
    }
    return o;
}

enum MHD_Result stoa_integrator_rooms(call_t *c)
{
    json_object *o;
    REQUIRE_KEY(c);
    o = json_object_new_object();
    json_object_object_add(o, "rooms", stoa_hub_rooms(c->http->hub));
    return stoa_http_send_json(c, MHD_HTTP_OK, o);
}

enum MHD_Result stoa_integrator_publish(call_t *c)
{
    enum MHD_Result answered;
    json_object *body, *data, *o;
    size_t delivered;
    char why[256];
    stoa_err_t err;

    REQUIRE_KEY(c);
    if (!(body = body_object(c, &answered)))
        return answered;
    if (!json_object_object_get_ex(body, "data", &data)) {
        json_object_put(body);
        return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "the body needs field \"data\"");
    }
    err = stoa_hub_publish(c->http->hub, c->arg, data, &delivered, why, sizeof why);
    json_object_put(body);
    if (err)
        return STOA_HTTP_ERROR(c, err, "%s", why);
    o = json_object_new_object();
    json_object_object_add(o, "room", json_object_new_string(c->arg));
    json_object_object_add(o, "delivered", json_object_new_int64((int64_t)delivered));
    return stoa_http_send_json(c, MHD_HTTP_OK, o);
}

enum MHD_Result stoa_integrator_kick(call_t *c)
{
    char why[512];
    REQUIRE_KEY(c);
    if (stoa_hub_kick(c->http->hub, c->arg, c->arg2, why, sizeof why) != STOA_OK)
        return STOA_HTTP_ERROR(c, STOA_ERR_NOT_FOUND, "%s", why);
    return stoa_http_send_text(c, MHD_HTTP_NO_CONTENT, "application/json", "", 0, NULL, NULL);
}

enum MHD_Result stoa_integrator_notice(call_t *c)
{
    enum MHD_Result answered;
    json_object *body, *msg, *level;
    const char *lv = "info";

    REQUIRE_KEY(c);
    if (!(body = body_object(c, &answered)))
        return answered;
    if (!json_object_object_get_ex(body, "message", &msg) || !json_object_is_type(msg, json_type_string) ||
        json_object_get_string_len(msg) == 0 || json_object_get_string_len(msg) > NOTICE_MAX) {
        json_object_put(body);
        return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "message must be a string of 1 to %d bytes", NOTICE_MAX);
    }
    if (json_object_object_get_ex(body, "level", &level)) {
        lv = json_object_get_string(level);
        if (!json_object_is_type(level, json_type_string) || (strcmp(lv, "info") != 0 && strcmp(lv, "warn") != 0)) {
            json_object_put(body);
            return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "level must be \"info\" or \"warn\"");
        }
    }
    stoa_hub_notice(c->http->hub, lv, json_object_get_string(msg), true);
    json_object_put(body);
    return stoa_http_send_text(c, MHD_HTTP_ACCEPTED, "application/json", "{}", 2, NULL, NULL);
}
