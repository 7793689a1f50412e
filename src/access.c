/* access.c - tokens, Origins and identities of incoming requests. */
#include "stoa/access.h"
#include "stoa/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *stoa_access_token(const char *query_token, const char *authorization, const char *cookie_header,
                              const char *cookie_name, char *buf, size_t buflen)
{
    if (query_token && query_token[0])
        return query_token;
    if (authorization && strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *t = authorization + 7;
        while (*t == ' ')
            t++;
        if (*t)
            return t;
    }
    if (cookie_header && cookie_name && cookie_name[0]) {
        size_t nlen = strlen(cookie_name);
        const char *p = cookie_header;
        while (*p) {
            while (*p == ' ' || *p == ';')
                p++;
            if (strncmp(p, cookie_name, nlen) == 0 && p[nlen] == '=') {
                const char *v = p + nlen + 1, *end = strchr(v, ';');
                size_t vlen = end ? (size_t)(end - v) : strlen(v);
                if (vlen == 0 || vlen >= buflen)
                    return NULL;
                memcpy(buf, v, vlen);
                buf[vlen] = '\0';
                return buf;
            }
            p = strchr(p, ';');
            if (!p)
                break;
        }
    }
    return NULL;
}

static bool same_origin(const char *origin, const char *host)
{
    const char *rest;
    if (!host || !host[0])
        return false;
    if (strncmp(origin, "http://", 7) == 0)
        rest = origin + 7;
    else if (strncmp(origin, "https://", 8) == 0)
        rest = origin + 8;
    else
        return false;
    return strcasecmp(rest, host) == 0;
}

bool stoa_access_origin_allowed(const stoa_config_t *cfg, const char *origin, const char *host)
{
    const char *cursor = cfg->allowed_origins, *item;
    size_t olen, len;
    if (!origin || !origin[0])
        return true;
    if (same_origin(origin, host))
        return true;
    olen = strlen(origin);
    while ((item = stoa_list_next(&cursor, &len)))
        if ((len == 1 && item[0] == '*') || (len == olen && strncasecmp(item, origin, len) == 0))
            return true;
    return false;
}

stoa_identity_t *stoa_access_identify(const stoa_auth_t *auth, const stoa_config_t *cfg, const char *token,
                                      stoa_err_t *code, char *why, size_t whylen)
{
    stoa_identity_t *id;
    if (!token || !token[0]) {
        if (cfg->allow_anonymous)
            return stoa_auth_anonymous(auth);
        *code = STOA_ERR_AUTH_FAILED;
        snprintf(why, whylen, "a token is required (anonymous access is disabled)");
        return NULL;
    }
    id = stoa_auth_verify(auth, token, why, whylen);
    if (!id)
        *code = STOA_ERR_AUTH_FAILED;
    return id;
}

int stoa_access_parse_seq(const char *text, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!text || text[0] < '0' || text[0] > '9' || strlen(text) > 20)
        return -1;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

stoa_err_t stoa_access_connect(stoa_hub_t *hub, const stoa_auth_t *auth, const stoa_config_t *cfg,
                               const char *token, const char *session_id, const char *last_seq,
                               const stoa_transport_ops_t *ops, void *transport, void *conn,
                               stoa_session_t **sess, stoa_msg_t **welcome, char *why, size_t whylen)
{
    stoa_identity_t *ident;
    stoa_err_t code = STOA_OK;
    uint64_t seq = 0;

    *sess = NULL;
    *welcome = NULL;
    if (last_seq && stoa_access_parse_seq(last_seq, &seq) < 0) {
        snprintf(why, whylen, "last_seq must be a non-negative integer");
        return STOA_ERR_BAD_MESSAGE;
    }
    if (!session_id || !session_id[0]) {
        ident = stoa_access_identify(auth, cfg, token, &code, why, whylen);
        if (!ident)
            return code;
        *sess = stoa_hub_open(hub, ident, ops, transport, conn, welcome);
        return STOA_OK;
    }
    *sess = stoa_hub_find(hub, session_id);
    if (!*sess) {
        /* It may live on another instance: move it here, once a token (if
         * any) has been checked against its user. */
        char sub[256];
        if (stoa_hub_remote_sub(hub, session_id, sub, sizeof sub) && token && token[0]) {
            ident = stoa_auth_verify(auth, token, why, whylen);
            if (!ident || strcmp(ident->sub, sub) != 0) {
                if (ident)
                    snprintf(why, whylen, "the token names another user than the session's");
                stoa_identity_free(ident);
                return STOA_ERR_AUTH_FAILED;
            }
            stoa_identity_free(ident);
        }
        *sess = stoa_hub_adopt(hub, session_id, last_seq != NULL, seq);
    }
    if (!*sess) {
        snprintf(why, whylen, "no such session (it ended or expired): start a new one");
        return STOA_ERR_SESSION_NOT_FOUND;
    }
    if (token && token[0]) {
        ident = stoa_auth_verify(auth, token, why, whylen);
        if (!ident || strcmp(ident->sub, stoa_session_sub(*sess)) != 0) {
            if (ident)
                snprintf(why, whylen, "the token names another user than the session's");
            stoa_identity_free(ident);
            stoa_session_unref(*sess);
            *sess = NULL;
            return STOA_ERR_AUTH_FAILED;
        }
        stoa_identity_free(ident);
    }
    code = stoa_hub_attach(*sess, ops, transport, conn, last_seq != NULL, seq, welcome);
    if (code) {
        snprintf(why, whylen, "no such session (it ended or expired): start a new one");
        stoa_session_unref(*sess);
        *sess = NULL;
    }
    return code;
}
