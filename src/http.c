/* http.c - REST API and static files over libmicrohttpd. */
#include "http_internal.h"
#include "stoa/access.h"
#include "stoa/log.h"
#include "stoa/room.h"
#include "stoa/util.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- responses ---- */

/* The CORS headers for an allowed Origin ("%s": the origin): one list for
 * MHD's responses and the stream thread's. */
static const struct {
    const char *name, *value;
} cors_headers[] = {
    {MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, "%s"},
    {"Access-Control-Allow-Credentials", "true"},
    {"Access-Control-Expose-Headers", "ETag"},
    {MHD_HTTP_HEADER_VARY, "Origin"},
};

void stoa_http_cors(call_t *c, struct MHD_Response *r)
{
    if (!c->origin)
        return;
    for (size_t i = 0; i < STOA_ARRAY_LEN(cors_headers); i++)
        MHD_add_response_header(r, cors_headers[i].name,
                                strcmp(cors_headers[i].value, "%s") == 0 ? c->origin : cors_headers[i].value);
}

char *stoa_http_head(unsigned status, const char *type, const char *cache, const char *origin, const char *extra,
                     int64_t length, bool chunked, bool keep_alive, size_t *len)
{
    const char *reason = MHD_get_reason_phrase_for(status);
    size_t cap = 512 + (origin ? strlen(origin) : 0) + (extra ? strlen(extra) : 0), n;
    char *h = stoa_xmalloc(cap), date[64];
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    n = (size_t)snprintf(h, cap, "HTTP/1.1 %u %s\r\nContent-Type: %s\r\nCache-Control: %s\r\n", status,
                         reason && reason[0] ? reason : "Unknown", type, cache);
    for (size_t i = 0; origin && i < STOA_ARRAY_LEN(cors_headers); i++)
        n += (size_t)snprintf(h + n, cap - n, "%s: %s\r\n", cors_headers[i].name,
                              strcmp(cors_headers[i].value, "%s") == 0 ? origin : cors_headers[i].value);
    n += (size_t)snprintf(h + n, cap - n, "%sDate: %s\r\n", extra ? extra : "", date);
    if (length >= 0)
        n += (size_t)snprintf(h + n, cap - n, "Content-Length: %lld\r\n", (long long)length);
    else if (chunked)
        n += (size_t)snprintf(h + n, cap - n, "Transfer-Encoding: chunked\r\n");
    n += (size_t)snprintf(h + n, cap - n, "%s\r\n", keep_alive ? "" : "Connection: close\r\n");
    *len = n;
    return h;
}

char *stoa_http_error_body(stoa_err_t code, const char *message, size_t *len)
{
    json_object *o = json_object_new_object(), *e = json_object_new_object();
    const char *text;
    char *copy;
    json_object_object_add(e, "code", json_object_new_string(stoa_err_name(code)));
    json_object_object_add(e, "message", json_object_new_string(message));
    json_object_object_add(o, "error", e);
    text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, len);
    copy = stoa_xstrndup(text, *len);
    json_object_put(o);
    return copy;
}

bool stoa_http_keep_alive(call_t *c)
{
    const char *conn = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONNECTION);
    if (!c->version || strcmp(c->version, MHD_HTTP_VERSION_1_1) != 0)
        return false;
    for (const char *cur = conn, *tok; conn && (tok = strcasestr(cur, "close")); cur = tok + 5) {
        bool start = tok == conn || tok[-1] == ',' || tok[-1] == ' ' || tok[-1] == '\t';
        bool end = tok[5] == '\0' || tok[5] == ',' || tok[5] == ' ' || tok[5] == '\t';
        if (start && end)
            return false;
    }
    return true;
}

int stoa_http_take_socket(call_t *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) {
        errno = EBADF;
        return -1;
    }
    return fcntl(ci->connect_fd, F_DUPFD_CLOEXEC, 0);
}

enum MHD_Result stoa_http_send_text(call_t *c, unsigned status, const char *type, const char *text, size_t len,
                                 const char *extra_header, const char *extra_value)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    stoa_http_cors(c, r);
    if (extra_header)
        MHD_add_response_header(r, extra_header, extra_value);
    ret = MHD_queue_response(c->conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result stoa_http_send_json(call_t *c, unsigned status, json_object *obj)
{
    size_t len = 0;
    const char *text = json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN, &len);
    enum MHD_Result ret = stoa_http_send_text(c, status, "application/json", text, len, NULL, NULL);
    json_object_put(obj);
    return ret;
}

enum MHD_Result stoa_http_send_error_h(call_t *c, stoa_err_t code, const char *hname, const char *hvalue,
                                    const char *fmt, ...)
{
    char msg[512], *text;
    va_list ap;
    size_t len = 0;
    enum MHD_Result ret;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    text = stoa_http_error_body(code, msg, &len);
    ret = stoa_http_send_text(c, stoa_err_http_status(code), "application/json", text, len, hname, hvalue);
    free(text);
    return ret;
}


/* ---- identity of the caller ---- */

const char *stoa_http_token(call_t *c, char *buf, size_t buflen)
{
    return stoa_access_token(MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "token"),
                             MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
                             MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_COOKIE),
                             c->http->cfg->token_cookie, buf, buflen);
}

stoa_identity_t *stoa_http_identify(call_t *c, bool allow_anonymous_fallback, stoa_err_t *code, char *why,
                                    size_t whylen)
{
    stoa_http_t *h = c->http;
    char cookie_buf[STOA_TOKEN_MAX + 1];
    const char *token = stoa_http_token(c, cookie_buf, sizeof cookie_buf);
    if (!token && !allow_anonymous_fallback) {
        *code = STOA_ERR_AUTH_FAILED;
        snprintf(why, whylen, "no token (send Authorization: Bearer <token>)");
        return NULL;
    }
    return stoa_access_identify(h->auth, h->cfg, token, code, why, whylen);
}

/* ---- handlers ---- */

static enum MHD_Result h_health(call_t *c)
{
    size_t sessions, rooms;
    json_object *o = json_object_new_object();
    stoa_hub_stats(c->http->hub, &sessions, &rooms);
    json_object_object_add(o, "status", json_object_new_string("ok"));
    json_object_object_add(o, "version", json_object_new_string(STOA_VERSION));
    json_object_object_add(o, "sessions", json_object_new_int64((int64_t)sessions));
    json_object_object_add(o, "rooms", json_object_new_int64((int64_t)rooms));
    json_object_object_add(o, "transports", stoa_hub_transport_counts(c->http->hub));
    if (c->http->bus)
        json_object_object_add(o, "bus", stoa_bus_status(c->http->bus));
    return stoa_http_send_json(c, MHD_HTTP_OK, o);
}

static enum MHD_Result h_me(call_t *c)
{
    stoa_err_t code;
    char why[256];
    stoa_identity_t *id = stoa_http_identify(c, false, &code, why, sizeof why);
    json_object *o;
    if (!id)
        return STOA_HTTP_ERROR(c, code, "%s", why);
    o = json_object_new_object();
    json_object_object_add(o, "user", stoa_identity_user_json(id));
    json_object_object_add(o, "rooms", stoa_perms_to_json(id->perms));
    json_object_object_add(o, "expires_at", json_object_new_int64(id->exp));
    stoa_identity_free(id);
    return stoa_http_send_json(c, MHD_HTTP_OK, o);
}

static enum MHD_Result h_anonymous(call_t *c)
{
    stoa_http_t *h = c->http;
    stoa_identity_t *id;
    char err[256];
    char *token;
    json_object *o;

    if (!h->cfg->allow_anonymous)
        return STOA_HTTP_ERROR(c, STOA_ERR_ANONYMOUS_DISABLED, "anonymous access is disabled on this server");
    if (!stoa_auth_can_mint(h->auth))
        return STOA_HTTP_ERROR(c, STOA_ERR_NOT_SUPPORTED, "this server has no signing key (jwt_private_key_file)");
    id = stoa_auth_anonymous(h->auth);
    token = stoa_auth_mint(h->auth, id, h->cfg->token_ttl_s, err, sizeof err);
    if (!token) {
        stoa_identity_free(id);
        return STOA_HTTP_ERROR(c, STOA_ERR_INTERNAL, "%s", err);
    }
    o = json_object_new_object();
    json_object_object_add(o, "token", json_object_new_string(token));
    json_object_object_add(o, "user", stoa_identity_user_json(id));
    json_object_object_add(o, "rooms", stoa_perms_to_json(id->perms));
    json_object_object_add(o, "expires_at", json_object_new_int64(stoa_wall_s() + h->cfg->token_ttl_s));
    free(token);
    stoa_identity_free(id);
    return stoa_http_send_json(c, MHD_HTTP_OK, o);
}

static enum MHD_Result h_presence(call_t *c)
{
    stoa_http_t *h = c->http;
    const char *why_room;
    stoa_err_t code;
    char why[256];
    stoa_identity_t *id;
    unsigned rights;
    char *text;
    enum MHD_Result ret;

    if (!stoa_room_valid(c->arg, (size_t)h->cfg->max_room_name_bytes, &why_room))
        return STOA_HTTP_ERROR(c, STOA_ERR_BAD_ROOM, "%s", why_room);
    id = stoa_http_identify(c, true, &code, why, sizeof why);
    if (!id)
        return STOA_HTTP_ERROR(c, code, "%s", why);
    rights = stoa_perms_rights(id->perms, c->arg);
    stoa_identity_free(id);
    if (!(rights & STOA_RIGHT_READ))
        return STOA_HTTP_ERROR(c, STOA_ERR_PERMISSION_DENIED, "no read permission on %s", c->arg);
    text = stoa_hub_room_json(h->hub, c->arg);
    ret = stoa_http_send_text(c, MHD_HTTP_OK, "application/json", text, strlen(text), NULL, NULL);
    free(text);
    return ret;
}

static enum MHD_Result h_ws_plain(call_t *c)
{
    return stoa_http_send_error_h(c, STOA_ERR_UPGRADE_REQUIRED, MHD_HTTP_HEADER_UPGRADE, "websocket",
                        "/v1/ws is a WebSocket endpoint: send Upgrade: websocket on a new connection");
}

static const route_t routes[] = {
    {"GET", "/healthz", h_health},
    {"POST", "/v1/sessions", stoa_sessions_create},
    {"GET", "/v1/sessions/{}", stoa_sessions_get},
    {"DELETE", "/v1/sessions/{}", stoa_sessions_delete},
    {"POST", "/v1/sessions/{}/messages", stoa_sessions_post_messages},
    {"GET", "/v1/sessions/{}/sse", stoa_sse_open},
    {"GET", "/v1/sessions/{}/poll", stoa_longpoll_poll},
    {"GET", "/v1/rooms", stoa_integrator_rooms},
    {"POST", "/v1/rooms/{}/publish", stoa_integrator_publish},
    {"DELETE", "/v1/rooms/{}/peers/{}", stoa_integrator_kick},
    {"POST", "/v1/notices", stoa_integrator_notice},
    {"GET", "/v1/auth/me", h_me},
    {"POST", "/v1/auth/anonymous", h_anonymous},
    {"GET", "/v1/rooms/{}/presence", h_presence},
    {"GET", "/v1/rooms/{}/snapshot", stoa_snapshot_get},
    {"PUT", "/v1/rooms/{}/snapshot", stoa_snapshot_put},
    {"GET", "/v1/rooms/{}/snapshots", stoa_snapshot_list},
    {"GET", "/v1/rooms/{}/snapshots/{}", stoa_snapshot_get_version},
    {"GET", "/v1/ws", h_ws_plain},
};

/* Match url against pattern; on a match copy the {} segment into arg. */
/* Match url against pattern; on a match copy the {} segments into c->arg
 * and c->arg2. */
static bool match(const char *pattern, const char *url, call_t *c)
{
    int nargs = 0;
    while (*pattern && *url) {
        if (pattern[0] == '{' && pattern[1] == '}') {
            const char *end = strchr(url, '/');
            size_t len = end ? (size_t)(end - url) : strlen(url);
            char *arg = nargs++ == 0 ? c->arg : c->arg2;
            if (len == 0 || len >= PATH_ARG_MAX || nargs > 2)
                return false;
            memcpy(arg, url, len);
            arg[len] = '\0';
            url += len;
            pattern += 2;
            continue;
        }
        if (*pattern++ != *url++)
            return false;
    }
    return *pattern == '\0' && *url == '\0';
}

/* ---- static files ---- */

static const char *content_type(const char *path)
{
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".json", "application/json"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
        {".ico", "image/x-icon"}, {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(path, '.');
    for (size_t i = 0; dot && i < STOA_ARRAY_LEN(types); i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

static bool safe_path(const char *url)
{
    if (url[0] != '/' || strstr(url, "..") || strstr(url, "//"))
        return false;
    for (const char *p = url; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("/._-", *p)))
            return false;
    return true;
}

static enum MHD_Result serve_file(call_t *c, const char *url)
{
    stoa_http_t *h = c->http;
    char path[4096], etag[64];
    struct stat st;
    struct MHD_Response *r;
    enum MHD_Result ret;
    const char *inm;
    unsigned status = MHD_HTTP_OK;
    int fd;

    if (strcmp(c->method, "GET") != 0 && strcmp(c->method, "HEAD") != 0)
        return stoa_http_send_error_h(c, STOA_ERR_METHOD_NOT_ALLOWED, MHD_HTTP_HEADER_ALLOW, "GET, HEAD",
                            "%s is not allowed on %s", c->method, url);
    if (!h->cfg->www_dir[0] || !safe_path(url))
        return STOA_HTTP_ERROR(c, STOA_ERR_NOT_FOUND, "no such resource");
    snprintf(path, sizeof path, "%s%s%s", h->cfg->www_dir, url, url[strlen(url) - 1] == '/' ? "index.html" : "");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return STOA_HTTP_ERROR(c, STOA_ERR_NOT_FOUND, "no such resource");
    }
    /* Browsers may keep a copy but must ask again each time (no-cache);
     * the ETag (size and modification time) lets them get 304 instead of
     * the file when it has not changed. */
    snprintf(etag, sizeof etag, "\"%llx-%llx\"", (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtim.tv_sec * 1000000000ull + (unsigned long long)st.st_mtim.tv_nsec);
    inm = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (inm && (strcmp(inm, etag) == 0 || strcmp(inm, "*") == 0 || strstr(inm, etag))) {
        close(fd);
        r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_MODIFIED;
    } else {
        r = MHD_create_response_from_fd((size_t)st.st_size, fd);   /* MHD closes fd */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type(path));
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, etag);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    ret = MHD_queue_response(c->conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* ---- dispatch ---- */

/* The largest request body: snapshot_max_bytes for a snapshot save,
 * max_message_bytes for anything else. */
static size_t body_limit(const stoa_http_t *h, const char *method, const char *url)
{
    call_t scratch;
    if (strcmp(method, "PUT") == 0 && match("/v1/rooms/{}/snapshot", url, &scratch))
        return (size_t)h->cfg->snapshot_max_bytes;
    return (size_t)h->cfg->max_message_bytes;
}

static enum MHD_Result dispatch(call_t *c, const char *url)
{
    stoa_http_t *h = c->http;
    const char *origin = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN);
    const char *host = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    char allow[64] = "";
    bool path_matched = false;

    if (origin && origin[0]) {
        if (!stoa_access_origin_allowed(h->cfg, origin, host))
            return STOA_HTTP_ERROR(c, STOA_ERR_ORIGIN_DENIED, "Origin %.100s is not allowed", origin);
        c->origin = origin;
    }
    if (c->req->too_big)
        return STOA_HTTP_ERROR(c, STOA_ERR_MESSAGE_TOO_LARGE, "request body larger than %zu bytes",
                          body_limit(h, c->method, url));
    for (size_t i = 0; i < STOA_ARRAY_LEN(routes); i++) {
        if (!match(routes[i].pattern, url, c))
            continue;
        if (strcmp(routes[i].method, c->method) == 0)
            return routes[i].handler(c);
        path_matched = true;
        if (strlen(allow) + strlen(routes[i].method) + 3 < sizeof allow) {
            if (allow[0])
                strcat(allow, ", ");
            strcat(allow, routes[i].method);
        }
    }
    if (path_matched) {
        if (strcmp(c->method, "OPTIONS") == 0 && c->origin) {
            struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
            enum MHD_Result ret;
            stoa_http_cors(c, r);
            MHD_add_response_header(r, "Access-Control-Allow-Methods", allow);
            MHD_add_response_header(r, "Access-Control-Allow-Headers",
                                    "Authorization, Content-Type, Last-Event-ID, If-Match, If-None-Match");
            MHD_add_response_header(r, "Access-Control-Max-Age", "600");
            ret = MHD_queue_response(c->conn, MHD_HTTP_NO_CONTENT, r);
            MHD_destroy_response(r);
            return ret;
        }
        return stoa_http_send_error_h(c, STOA_ERR_METHOD_NOT_ALLOWED, MHD_HTTP_HEADER_ALLOW, allow,
                            "%s is not allowed on %s (allowed: %s)", c->method, url, allow);
    }
    if (strncmp(url, "/v1/", 4) == 0 || strcmp(url, "/v1") == 0)
        return STOA_HTTP_ERROR(c, STOA_ERR_NOT_FOUND, "no such endpoint: %.200s", url);
    return serve_file(c, url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    stoa_http_t *h = cls;
    request_t *req = *con_cls;
    call_t call;

    if (!req) {
        *con_cls = stoa_xcalloc(1, sizeof(request_t));
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        if (!req->too_big && req->len + n <= body_limit(h, method, url)) {
            req->body = stoa_xrealloc(req->body, req->len + n + 1);
            memcpy(req->body + req->len, upload_data, n);
            req->len += n;
            req->body[req->len] = '\0';
        } else {
            req->too_big = true;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    memset(&call, 0, sizeof call);
    call.http = h;
    call.conn = conn;
    call.method = method;
    call.version = version;
    call.req = req;
    return dispatch(&call, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    request_t *req = *con_cls;
    if (req) {
        free(req->body);
        free(req);
        *con_cls = NULL;
    }
}

__attribute__((format(printf, 2, 0))) static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    size_t len;
    vsnprintf(line, sizeof line, fmt, ap);
    len = strlen(line);
    while (len > 0 && line[len - 1] == '\n')
        line[--len] = '\0';
    STOA_DEBUG("mhd: %s", line);
}

static void give_back(void *ud, int fd);

stoa_http_t *stoa_http_new(const stoa_config_t *cfg, stoa_hub_t *hub, const stoa_auth_t *auth,
                           stoa_store_t *store, char *err, size_t errlen)
{
    stoa_http_t *h = stoa_xcalloc(1, sizeof *h);
    h->cfg = cfg;
    h->hub = hub;
    h->auth = auth;
    h->store = store;
    h->stream = stoa_stream_new(cfg->max_connections, cfg->http_idle_timeout_s * 1000, give_back, h, err, errlen);
    if (!h->stream) {
        free(h);
        return NULL;
    }
    /* MHD_USE_TURBO: MHD closes a connection without shutdown(), which is
     * what lets a handler take the socket over (stoa_http_take_socket). */
    h->daemon = MHD_start_daemon(
        MHD_USE_NO_LISTEN_SOCKET | MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_TURBO | MHD_USE_ITC | MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, h,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->http_memory_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->http_idle_timeout_s,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, h,
        MHD_OPTION_END);
    if (!h->daemon) {
        snprintf(err, errlen, "libmicrohttpd: cannot start the HTTP daemon");
        stoa_stream_free(h->stream);
        free(h);
        return NULL;
    }
    return h;
}

void stoa_http_set_bus(stoa_http_t *http, stoa_bus_t *bus)
{
    http->bus = bus;
}

void stoa_http_add(stoa_http_t *h, int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    if (MHD_add_connection(h->daemon, fd, addr, addrlen) != MHD_YES)
        STOA_WARN("http: connection refused (limit of %d reached?)", h->cfg->max_connections);
}

/* The stream thread is done with a keep-alive socket: MHD serves its next
 * request as on a new connection. */
static void give_back(void *ud, int fd)
{
    stoa_http_t *h = ud;
    struct sockaddr_storage addr;
    socklen_t addrlen = sizeof addr;
    if (getpeername(fd, (struct sockaddr *)&addr, &addrlen) < 0) {
        close(fd);   /* the peer is gone */
        return;
    }
    stoa_http_add(h, fd, (struct sockaddr *)&addr, addrlen);
}

void stoa_http_stream_wake(void *transport, stoa_session_t *sess, void *conn)
{
    (void)sess;
    stoa_stream_wake(transport, (uint64_t)(uintptr_t)conn);
}

void stoa_http_free(stoa_http_t *h)
{
    if (!h)
        return;
    /* Streams end and polls answer (bounded by shutdown_timeout_ms); from
     * then on no socket goes back to MHD, which can stop. The stream
     * thread stops last: MHD's handlers may still hand it a stream (it is
     * ended at once). */
    if (stoa_stream_close(h->stream, h->cfg->shutdown_timeout_ms) > 0)
        STOA_WARN("http: %zu streams still open after %d ms; stopping anyway", stoa_stream_count(h->stream),
                  h->cfg->shutdown_timeout_ms);
    MHD_stop_daemon(h->daemon);
    stoa_stream_free(h->stream);
    free(h);
}
