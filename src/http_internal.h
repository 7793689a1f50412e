/* http_internal.h - shared by the files of the HTTP side (http.c, the
 * session REST API, SSE, long-poll); not a public header.
 *
 * Every handler runs on libmicrohttpd's thread. SSE streams and held
 * long-polls continue on the stream thread (stream.h) after their handler
 * took the socket from MHD.
 */
#ifndef STOA_HTTP_INTERNAL_H
#define STOA_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <stdbool.h>

#include "stoa/auth.h"
#include "stoa/http.h"
#include "stoa/hub.h"
#include "stoa/store.h"
#include "stoa/stream.h"

#define PATH_ARG_MAX 1024

struct stoa_http {
    const stoa_config_t *cfg;
    stoa_hub_t *hub;
    const stoa_auth_t *auth;
    stoa_stream_t *stream;        /* SSE streams and held polls, outside MHD */
    stoa_store_t *store;
    stoa_bus_t *bus;             /* NULL without a database */
    struct MHD_Daemon *daemon;
};

/* Per-request state, made on the first call and freed when MHD completes
 * the request. */
typedef struct request {
    char *body;
    size_t len;
    bool too_big;
} request_t;

typedef struct call {
    stoa_http_t *http;
    struct MHD_Connection *conn;
    const char *method;
    const char *version;         /* "HTTP/1.1"... */
    request_t *req;
    char arg[PATH_ARG_MAX];      /* the first {} segment, when the route has one */
    char arg2[PATH_ARG_MAX];     /* the second */
    const char *origin;          /* allowed Origin to echo in CORS headers, or NULL */
} call_t;

typedef enum MHD_Result (*handler_fn)(call_t *call);

typedef struct {
    const char *method;
    const char *pattern;         /* "{}" matches one path segment */
    handler_fn handler;
} route_t;

/* CORS headers for an allowed browser Origin (none without one). */
void stoa_http_cors(call_t *c, struct MHD_Response *r);

/* The head of a response written outside MHD (the stream thread): the
 * status line, Content-Type, Cache-Control, CORS headers for origin (NULL:
 * none), `extra` (complete header lines, or NULL), Date, then
 * Content-Length: length, or with length < 0 Transfer-Encoding: chunked
 * when chunked; Connection: close unless keep_alive. The same headers as
 * MHD would send. Returns a new string owned by the caller (free()), its
 * length in *len. */
char *stoa_http_head(unsigned status, const char *type, const char *cache, const char *origin, const char *extra,
                     int64_t length, bool chunked, bool keep_alive, size_t *len);
/* {"error":{"code","message"}} as a new string owned by the caller
 * (free()), its length in *len. */
char *stoa_http_error_body(stoa_err_t code, const char *message, size_t *len);
/* Whether the connection may serve another request after this one
 * (HTTP/1.1 without Connection: close). */
bool stoa_http_keep_alive(call_t *c);
/* Take the request's socket from MHD for the stream thread: a duplicate
 * of MHD's descriptor (owned by the caller), or -1 with errno. The
 * handler must then return MHD_NO without queueing a response: MHD
 * closes its own descriptor without shutdown() (MHD_USE_TURBO), so the
 * connection lives on in the duplicate. */
int stoa_http_take_socket(call_t *c);

/* Responses. Every answer carries Cache-Control: no-store and, for an
 * allowed Origin, CORS headers. text is copied. */
enum MHD_Result stoa_http_send_text(call_t *c, unsigned status, const char *type, const char *text, size_t len,
                                    const char *extra_header, const char *extra_value);
/* Sends obj and drops the caller's reference to it. */
enum MHD_Result stoa_http_send_json(call_t *c, unsigned status, json_object *obj);
/* {"error":{"code","message"}} with the code's HTTP status. */
enum MHD_Result stoa_http_send_error_h(call_t *c, stoa_err_t code, const char *hname, const char *hvalue,
                                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define STOA_HTTP_ERROR(c, code, ...) stoa_http_send_error_h((c), (code), NULL, NULL, __VA_ARGS__)

/* The request's token (query, Authorization, cookie), or NULL; buf holds
 * a cookie's copy. */
const char *stoa_http_token(call_t *c, char *buf, size_t buflen);
/* The caller's identity (a new one owned by the caller), or NULL with
 * *code and why. Without a token: anonymous when allowed and
 * allow_anonymous_fallback, else AUTH_FAILED. */
stoa_identity_t *stoa_http_identify(call_t *c, bool allow_anonymous_fallback, stoa_err_t *code, char *why,
                                    size_t whylen);

/* The session named by c->arg, checked against the request's token when
 * there is one (a reference owned by the caller), or NULL having answered
 * the request with the error. */
stoa_session_t *stoa_http_session(call_t *c, enum MHD_Result *answered);

/* Route handlers in the other files. */
enum MHD_Result stoa_sessions_create(call_t *c);
enum MHD_Result stoa_sessions_get(call_t *c);
enum MHD_Result stoa_sessions_delete(call_t *c);
enum MHD_Result stoa_sessions_post_messages(call_t *c);
enum MHD_Result stoa_sse_open(call_t *c);
enum MHD_Result stoa_longpoll_poll(call_t *c);
enum MHD_Result stoa_snapshot_get(call_t *c);
enum MHD_Result stoa_snapshot_put(call_t *c);
enum MHD_Result stoa_snapshot_list(call_t *c);
enum MHD_Result stoa_snapshot_get_version(call_t *c);
enum MHD_Result stoa_integrator_rooms(call_t *c);
enum MHD_Result stoa_integrator_publish(call_t *c);
enum MHD_Result stoa_integrator_kick(call_t *c);
enum MHD_Result stoa_integrator_notice(call_t *c);

/* The wake of SSE and long-poll: transport is the stream module, conn the
 * connection id (stoa_stream_new_id) cast to a pointer. */
void stoa_http_stream_wake(void *transport, stoa_session_t *sess, void *conn);
#define STOA_HTTP_CONN(id) ((void *)(uintptr_t)(id))

/* Transport ops of SSE and long-poll. */
extern const stoa_transport_ops_t stoa_sse_ops;
extern const stoa_transport_ops_t stoa_longpoll_ops;

#endif
