/* snapshot_api.c - document snapshots over REST (docs/snapshots.md):
 *   GET /v1/rooms/{room}/snapshot             the latest snapshot's bytes, ETag "<version>"
 *   PUT /v1/rooms/{room}/snapshot             save the next version (If-Match / If-None-Match)
 *   GET /v1/rooms/{room}/snapshots            the kept versions, newest first
 *   GET /v1/rooms/{room}/snapshots/{version}  one version's bytes
 * Reads need the read right on the room, saves the write right; anonymous
 * rights apply without a token.
 */
#include "http_internal.h"
#include "stoa/log.h"
#include "stoa/room.h"
#include "stoa/store.h"
#include "stoa/util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TYPE "application/octet-stream"

/* Check the room and the caller's right on it; answers and returns false
 * when the request may not go on. */
static bool allowed(call_t *c, unsigned right, enum MHD_Result *answered, char *who, size_t wholen)
{
    const char *why_room;
    stoa_err_t code;
    char why[256];
    stoa_identity_t *id;
    unsigned rights;

    if (!stoa_room_valid(c->arg, (size_t)c->http->cfg->max_room_name_bytes, &why_room)) {
        *answered = STOA_HTTP_ERROR(c, STOA_ERR_BAD_ROOM, "%s", why_room);
        return false;
    }
    id = stoa_http_identify(c, true, &code, why, sizeof why);
    if (!id) {
        *answered = STOA_HTTP_ERROR(c, code, "%s", why);
        return false;
    }
    rights = stoa_perms_rights(id->perms, c->arg);
    snprintf(who, wholen, "%s", id->sub);
    stoa_identity_free(id);
    if (!(rights & right)) {
        *answered = STOA_HTTP_ERROR(c, STOA_ERR_PERMISSION_DENIED, "no %s permission on %s",
                                    right == STOA_RIGHT_WRITE ? "write" : "read", c->arg);
        return false;
    }
    return true;
}

/* A version number: decimal, no sign, no leading zero, no overflow. */
static bool parse_version(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || (s[0] == '0' && len > 1))
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

/* The value without surrounding spaces and tabs: start and length. */
static const char *trim(const char *s, size_t *len)
{
    size_t n;
    while (*s == ' ' || *s == '\t')
        s++;
    n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    *len = n;
    return s;
}

/* One strong entity tag "<version>". */
static bool parse_etag(const char *value, uint64_t *out)
{
    size_t len;
    const char *s = trim(value, &len);
    if (len < 3 || s[0] != '"' || s[len - 1] != '"')
        return false;
    return parse_version(s + 1, len - 2, out);
}

static void etag_of(uint64_t version, char out[32])
{
    snprintf(out, 32, "\"%" PRIu64 "\"", version);
}

/* Answer a store error (INTERNAL is logged: it is a fault, not the client's). */
static enum MHD_Result store_error(call_t *c, stoa_err_t e, const char *err)
{
    if (e == STOA_ERR_INTERNAL)
        STOA_ERROR("snapshot store: %s", err);
    return STOA_HTTP_ERROR(c, e, "%s", err);
}

static enum MHD_Result send_version(call_t *c, uint64_t version)
{
    stoa_snapshot_info_t info;
    char err[512], etag[32];
    void *data = NULL;
    enum MHD_Result ret;
    stoa_err_t e = stoa_store_get(c->http->store, c->arg, version, &info, &data, err, sizeof err);
    if (e != STOA_OK)
        return store_error(c, e, err);
    etag_of(info.version, etag);
    ret = stoa_http_send_text(c, MHD_HTTP_OK, info.content_type, data, info.size, MHD_HTTP_HEADER_ETAG, etag);
    free(data);
    return ret;
}

enum MHD_Result stoa_snapshot_get(call_t *c)
{
    enum MHD_Result answered;
    char who[256];
    if (!allowed(c, STOA_RIGHT_READ, &answered, who, sizeof who))
        return answered;
    return send_version(c, 0);
}

enum MHD_Result stoa_snapshot_get_version(call_t *c)
{
    enum MHD_Result answered;
    char who[256];
    uint64_t version;
    if (!allowed(c, STOA_RIGHT_READ, &answered, who, sizeof who))
        return answered;
    if (!parse_version(c->arg2, strlen(c->arg2), &version) || version == 0)
        return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "a version is a positive integer, such as 3");
    return send_version(c, version);
}

enum MHD_Result stoa_snapshot_list(call_t *c)
{
    enum MHD_Result answered;
    stoa_snapshot_info_t *infos;
    size_t count;
    char who[256], err[512];
    json_object *o, *arr;
    stoa_err_t e;

    if (!allowed(c, STOA_RIGHT_READ, &answered, who, sizeof who))
        return answered;
    e = stoa_store_list(c->http->store, c->arg, &infos, &count, err, sizeof err);
    if (e != STOA_OK)
        return store_error(c, e, err);
    o = json_object_new_object();
    arr = json_object_new_array();
    for (size_t i = 0; i < count; i++) {
        json_object *v = json_object_new_object();
        json_object_object_add(v, "version", json_object_new_int64((int64_t)infos[i].version));
        json_object_object_add(v, "size", json_object_new_int64((int64_t)infos[i].size));
        json_object_object_add(v, "content_type", json_object_new_string(infos[i].content_type));
        json_object_object_add(v, "created_at", json_object_new_int64(infos[i].created_at));
        if (infos[i].sha256[0])
            json_object_object_add(v, "sha256", json_object_new_string(infos[i].sha256));
        json_object_array_add(arr, v);
    }
    free(infos);
    json_object_object_add(o, "room", json_object_new_string(c->arg));
    json_object_object_add(o, "versions", arr);
    return stoa_http_send_json(c, MHD_HTTP_OK, o);
}

enum MHD_Result stoa_snapshot_put(call_t *c)
{
    stoa_http_t *h = c->http;
    enum MHD_Result answered;
    const char *if_match = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_MATCH);
    const char *if_none = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    const char *type = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    stoa_snapshot_info_t info;
    uint64_t expected = STOA_STORE_IF_NONE, latest = 0;
    char who[256], err[512], etag[32], *text;
    size_t len;
    json_object *o;
    stoa_err_t e;

    if (!allowed(c, STOA_RIGHT_WRITE, &answered, who, sizeof who))
        return answered;
    if (if_match && if_none)
        return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "send If-Match or If-None-Match, not both");
    if (!if_match && !if_none)
        return STOA_HTTP_ERROR(c, STOA_ERR_PRECONDITION_REQUIRED,
                               "send If-Match: \"<latest version>\", or If-None-Match: * for the first snapshot");
    if (if_none) {
        const char *s = trim(if_none, &len);
        if (len != 1 || s[0] != '*')
            return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "If-None-Match must be *");
    } else {
        const char *s = trim(if_match, &len);
        if (len == 1 && s[0] == '*')
            return STOA_HTTP_ERROR(c, STOA_ERR_PRECONDITION_REQUIRED,
                                   "If-Match must name the version you saw, as \"<version>\", not *");
        if (!parse_etag(if_match, &expected))
            return STOA_HTTP_ERROR(c, STOA_ERR_BAD_MESSAGE, "If-Match must be one entity tag such as \"3\"");
        if (expected == 0)
            return STOA_HTTP_ERROR(c, STOA_ERR_PRECONDITION_FAILED,
                                   "there is no version 0 (create the first snapshot with If-None-Match: *)");
    }
    if (c->req->len > (size_t)h->cfg->snapshot_max_bytes)   /* the HTTP layer stops bodies first */
        return STOA_HTTP_ERROR(c, STOA_ERR_MESSAGE_TOO_LARGE, "a snapshot may hold at most %d bytes",
                               h->cfg->snapshot_max_bytes);
    e = stoa_store_put(h->store, c->arg, expected, type ? type : DEFAULT_TYPE, c->req->body, c->req->len, &info,
                       &latest, err, sizeof err);
    if (e == STOA_ERR_PRECONDITION_FAILED && latest > 0) {
        etag_of(latest, etag);
        return stoa_http_send_error_h(c, e, MHD_HTTP_HEADER_ETAG, etag, "%s", err);
    }
    if (e != STOA_OK)
        return store_error(c, e, err);
    if (info.size > (size_t)h->cfg->snapshot_warn_bytes)
        STOA_WARN("snapshot: %s version %" PRIu64 " saved by %s is %zu bytes (over snapshot_warn_bytes %d)", c->arg,
                  info.version, who, info.size, h->cfg->snapshot_warn_bytes);
    else
        STOA_DEBUG("snapshot: %s version %" PRIu64 " saved by %s (%zu bytes)", c->arg, info.version, who,
                   info.size);
    etag_of(info.version, etag);
    o = json_object_new_object();
    json_object_object_add(o, "room", json_object_new_string(c->arg));
    json_object_object_add(o, "version", json_object_new_int64((int64_t)info.version));
    text = stoa_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    answered = stoa_http_send_text(c, MHD_HTTP_CREATED, "application/json", text, strlen(text),
                                   MHD_HTTP_HEADER_ETAG, etag);
    free(text);
    return answered;
}
