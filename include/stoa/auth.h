/* auth.h - identities, and JWTs that carry them.
 *
 * The accepted algorithm and key are pinned by configuration: a token
 * whose header names any other algorithm (including "none") is refused
 * before its signature is looked at, and again after. exp is required;
 * exp, nbf and iat are checked with jwt_leeway_s of skew; iss and aud
 * must match when configured. Error messages never contain the token.
 */
#ifndef STOA_AUTH_H
#define STOA_AUTH_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "stoa/config.h"
#include "stoa/perm.h"

#define STOA_TOKEN_MAX 8192

/* Who a peer is. A plain record; whoever holds one owns it and frees it
 * with stoa_identity_free. One made by stoa_identity_new holds sub, name
 * and color in its own allocation: they are not to be replaced. */
typedef struct stoa_identity {
    char *sub;            /* user id */
    char *name;           /* display name */
    char *color;          /* "#rrggbb" */
    bool anonymous;
    stoa_perms_t *perms;  /* room rights; never NULL */
    int64_t exp;          /* expiry (epoch seconds), 0 for none */
    char **groups;        /* the "groups" claim (NULL when absent) */
    size_t ngroups;
    char **auto_rooms;    /* rooms a session joins when it opens: user:{sub}
                           * and group:{id} when the token lists groups */
    size_t nauto_rooms;
} stoa_identity_t;

#define STOA_MAX_GROUPS 16

/* A new identity owned by the caller, every other field zero: sub, name
 * and color (all three required) copied into the one allocation. */
stoa_identity_t *stoa_identity_new(const char *sub, const char *name, const char *color);
void stoa_identity_free(stoa_identity_t *id);
/* {"id","name","color","anonymous"}: a new object owned by the caller. */
json_object *stoa_identity_user_json(const stoa_identity_t *id);

typedef struct stoa_auth stoa_auth_t;

/* Load keys as configured. With HS256 and no jwt_secret, a 256-bit secret
 * is generated once into <data_dir>/jwt-secret (mode 0600) and reused.
 * Returns a verifier owned by the caller, or NULL with a message in err. */
stoa_auth_t *stoa_auth_new(const stoa_config_t *cfg, char *err, size_t errlen);
void stoa_auth_free(stoa_auth_t *auth);

/* Verify a token. Returns a new identity owned by the caller, or NULL with
 * the reason in err (safe to show to the client). Thread-safe. */
stoa_identity_t *stoa_auth_verify(const stoa_auth_t *auth, const char *token, char *err, size_t errlen);

/* A new anonymous identity ("Neon Narwhal", a colour, the configured
 * anonymous rights, a random sub "anon-..."), owned by the caller. */
stoa_identity_t *stoa_auth_anonymous(const stoa_auth_t *auth);

/* Whether this configuration holds a signing key (HS256 always; RS256 and
 * ES256 only with jwt_private_key_file). */
bool stoa_auth_can_mint(const stoa_auth_t *auth);

/* Sign a token for id (borrowed; a NULL color is left out, so verifiers
 * derive one from sub) valid for ttl_s seconds from now. Returns
 * a string owned by the caller (free()), or NULL with a message in err. */
char *stoa_auth_mint(const stoa_auth_t *auth, const stoa_identity_t *id, int ttl_s, char *err, size_t errlen);

#endif
