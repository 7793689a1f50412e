/* access.h - who is calling: token extraction, Origin checks, identity.
 * Shared by every transport and the REST API so they agree exactly. */
#ifndef STOA_ACCESS_H
#define STOA_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/error.h"
#include "stoa/hub.h"

/* Pick the token from, in order: the `token` query parameter, an
 * "Authorization: Bearer" header, the cookie named cookie_name. Any input
 * may be NULL. Returns a pointer into one of the inputs, or a copy
 * written into buf for the cookie; NULL if none. */
const char *stoa_access_token(const char *query_token, const char *authorization, const char *cookie_header,
                              const char *cookie_name, char *buf, size_t buflen);

/* A browser Origin is allowed when there is none (not a browser), when it
 * is the server's own origin (http or https + Host), when
 * allowed_origins is "*", or when it is listed there. */
bool stoa_access_origin_allowed(const stoa_config_t *cfg, const char *origin, const char *host);

/* The identity for a request: the token's, or an anonymous one when there
 * is no token and anonymous access is allowed. Returns a new identity owned
 * by the caller, or NULL with *code (AUTH_FAILED) and a reason in why. */
stoa_identity_t *stoa_access_identify(const stoa_auth_t *auth, const stoa_config_t *cfg, const char *token,
                                      stoa_err_t *code, char *why, size_t whylen);

/* Parse a sequence number (decimal, no sign). 0 or -1. */
int stoa_access_parse_seq(const char *text, uint64_t *out);

/* Connect a transport connection to a session, the one way every
 * transport does it. With session_id, resume that session (a token, if
 * given, must name the same user; the id alone is the credential
 * otherwise) after last_seq (NULL: where it stands). Without, open a new
 * session for the token's identity (or an anonymous one). On success
 * *sess receives a reference and *welcome the message to send first, both
 * owned by the caller. Otherwise an error code (AUTH_FAILED,
 * SESSION_NOT_FOUND, BAD_MESSAGE) with the reason in why. */
stoa_err_t stoa_access_connect(stoa_hub_t *hub, const stoa_auth_t *auth, const stoa_config_t *cfg,
                               const char *token, const char *session_id, const char *last_seq,
                               const stoa_transport_ops_t *ops, void *transport, void *conn,
                               stoa_session_t **sess, stoa_msg_t **welcome, char *why, size_t whylen);

#endif
