/* http_internal.h - shared by the files of the HTTP side (http.c, the
 * session REST API, SSE, long-poll); not a public header.
 *
 * Every handler runs on libmicrohttpd's thread.
 */
#ifndef STOA_HTTP_INTERNAL_H
#define STOA_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <stdbool.h>

#include "stoa/auth.h"
#include "stoa/http.h"
#include "stoa/hub.h"
#include "stoa/park.h"
#include "stoa/store.h"

#define PATH_ARG_MAX 1024

struct stoa_http {
    const stoa_config_t *cfg;
    stoa_hub_t *hub;
    const stoa_auth_t *auth;
    stoa_park_t *park;
    stoa_store_t *store;
    stoa_bus_t *bus;             /* NULL without a database */
    struct MHD_Daemon *daemon;
};

/* Per-request state, made on the first call and freed when MHD completes
 * the request. A handler that keeps state across calls (a long-poll that
 * was suspended) hangs it on `stream` with `done` to free it. */
typedef struct request {
    char *body;
    size_t len;
    bool too_big;
    void *stream;
    void (*done)(stoa_http_t *http, void *stream);
} request_t;

typedef struct call {
    stoa_http_t *http;
    struct MHD_Connection *conn;
    const char *method;
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

/* The wake of SSE and long-poll: transport is the park, conn the parked
 * connection (stoa_park_wake checks it is still there). */
void stoa_http_park_wake(void *transport, stoa_session_t *sess, void *conn);

/* Transport ops of SSE and long-poll. */
extern const stoa_transport_ops_t stoa_sse_ops;
extern const stoa_transport_ops_t stoa_longpoll_ops;

#endif
