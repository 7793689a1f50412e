/* auth.c - JWT verification and minting (libjwt), anonymous identities. */
#include "stoa/auth.h"
#include "stoa/log.h"
#include "stoa/names.h"
#include "stoa/room.h"
#include "stoa/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HS256_MIN_SECRET 32
#define SUB_MAX 256

struct stoa_auth {
    jwt_alg_t alg;
    unsigned char *verify_key;
    size_t verify_len;
    unsigned char *sign_key;     /* NULL when this configuration cannot mint */
    size_t sign_len;
    char *issuer;                /* NULL: not checked */
    char *audience;
    int leeway_s;
    size_t max_pattern;
    bool allow_anonymous;
    stoa_perms_t *anonymous_perms;
};

stoa_identity_t *stoa_identity_new(const char *sub, const char *name, const char *color)
{
    size_t ls = strlen(sub) + 1, ln = strlen(name) + 1, lc = strlen(color) + 1;
    stoa_identity_t *id = stoa_xcalloc(1, sizeof *id + ls + ln + lc);
    id->sub = memcpy((char *)(id + 1), sub, ls);
    id->name = memcpy(id->sub + ls, name, ln);
    id->color = memcpy(id->name + ln, color, lc);
    return id;
}

void stoa_identity_free(stoa_identity_t *id)
{
    if (!id)
        return;
    stoa_perms_free(id->perms);
    for (size_t i = 0; i < id->ngroups; i++)
        free(id->groups[i]);
    free(id->groups);
    for (size_t i = 0; i < id->nauto_rooms; i++)
        free(id->auto_rooms[i]);
    free(id->auto_rooms);
    free(id);
}

/* The "groups" claim: an array of at most STOA_MAX_GROUPS group ids, each
 * making a valid room "group:<id>". The session joins group:<id> for each,
 * and user:<sub> (when that is a valid room name), with read rights on
 * them. */
static bool take_groups(stoa_identity_t *id, json_object *groups, size_t max_room, char *err, size_t errlen)
{
    size_t n;
    char room[1100];
    if (!json_object_is_type(groups, json_type_array) ||
        (n = json_object_array_length(groups)) > STOA_MAX_GROUPS) {
        snprintf(err, errlen, "groups must be an array of at most %d group ids", STOA_MAX_GROUPS);
        return false;
    }
    id->groups = stoa_xcalloc(n + 1, sizeof *id->groups);
    id->auto_rooms = stoa_xcalloc(n + 2, sizeof *id->auto_rooms);
    snprintf(room, sizeof room, "user:%s", id->sub);
    if (stoa_room_valid(room, max_room, NULL))
        id->auto_rooms[id->nauto_rooms++] = stoa_xstrdup(room);
    for (size_t i = 0; i < n; i++) {
        json_object *g = json_object_array_get_idx(groups, i);
        const char *gid = json_object_is_type(g, json_type_string) ? json_object_get_string(g) : NULL;
        if (gid)
            snprintf(room, sizeof room, "group:%s", gid);
        if (!gid || strlen(gid) > 256 || !stoa_room_valid(room, max_room, NULL)) {
            snprintf(err, errlen, "groups: each group id must make a valid room name group:<id>");
            return false;
        }
        id->groups[id->ngroups++] = stoa_xstrdup(gid);
        id->auto_rooms[id->nauto_rooms++] = stoa_xstrdup(room);
    }
    for (size_t i = 0; i < id->nauto_rooms; i++)
        stoa_perms_grant(id->perms, id->auto_rooms[i], STOA_RIGHT_READ);
    return true;
}

json_object *stoa_identity_user_json(const stoa_identity_t *id)
{
    json_object *u = json_object_new_object();
    json_object_object_add(u, "id", json_object_new_string(id->sub));
    json_object_object_add(u, "name", json_object_new_string(id->name));
    json_object_object_add(u, "color", json_object_new_string(id->color));
    json_object_object_add(u, "anonymous", json_object_new_boolean(id->anonymous));
    return u;
}

static int read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    long size;
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || size > 1 << 20 || fseek(f, 0, SEEK_SET) != 0) {
        snprintf(err, errlen, "cannot read %s (or larger than 1 MiB)", path);
        fclose(f);
        return -1;
    }
    *out = stoa_xmalloc((size_t)size + 1);
    if (fread(*out, 1, (size_t)size, f) != (size_t)size) {
        snprintf(err, errlen, "cannot read %s", path);
        free(*out);
        fclose(f);
        return -1;
    }
    (*out)[size] = '\0';
    *len = (size_t)size;
    fclose(f);
    return 0;
}

/* The development secret: created once, with O_EXCL so two processes
 * starting together agree on one. */
static int dev_secret(const char *data_dir, unsigned char **out, size_t *len, char *err, size_t errlen)
{
    char path[4096];
    int fd;
    if (mkdir(data_dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data_dir %s: %s", data_dir, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/jwt-secret", data_dir);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        char hex[2 * HS256_MIN_SECRET + 2];
        unsigned char raw[HS256_MIN_SECRET];
        stoa_random_bytes(raw, sizeof raw);
        for (size_t i = 0; i < sizeof raw; i++)
            snprintf(hex + 2 * i, 3, "%02x", raw[i]);
        hex[2 * sizeof raw] = '\n';
        if (write(fd, hex, 2 * sizeof raw + 1) != (ssize_t)(2 * sizeof raw + 1) || fsync(fd) < 0) {
            snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
            close(fd);
            unlink(path);
            return -1;
        }
        close(fd);
        STOA_INFO("generated a development JWT secret in %s", path);
    } else if (errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    if (read_file(path, out, len, err, errlen) < 0)
        return -1;
    while (*len > 0 && ((*out)[*len - 1] == '\n' || (*out)[*len - 1] == '\r'))
        (*out)[--*len] = '\0';
    return 0;
}

stoa_auth_t *stoa_auth_new(const stoa_config_t *cfg, char *err, size_t errlen)
{
    stoa_auth_t *a = stoa_xcalloc(1, sizeof *a);
    char perr[256];

    a->alg = jwt_str_alg(cfg->jwt_alg);
    if (a->alg != JWT_ALG_HS256 && a->alg != JWT_ALG_RS256 && a->alg != JWT_ALG_ES256) {
        snprintf(err, errlen, "jwt_alg must be HS256, RS256 or ES256, not \"%s\"", cfg->jwt_alg);
        goto fail;
    }
    if (a->alg == JWT_ALG_HS256) {
        if (cfg->jwt_secret[0]) {
            a->verify_key = (unsigned char *)stoa_xstrdup(cfg->jwt_secret);
            a->verify_len = strlen(cfg->jwt_secret);
        } else if (dev_secret(cfg->data_dir, &a->verify_key, &a->verify_len, err, errlen) < 0) {
            goto fail;
        }
        if (a->verify_len < HS256_MIN_SECRET) {
            snprintf(err, errlen, "the HS256 secret must be at least %d bytes", HS256_MIN_SECRET);
            goto fail;
        }
        a->sign_key = stoa_xmalloc(a->verify_len + 1);
        memcpy(a->sign_key, a->verify_key, a->verify_len + 1);
        a->sign_len = a->verify_len;
    } else {
        if (!cfg->jwt_public_key_file[0]) {
            snprintf(err, errlen, "jwt_alg %s needs jwt_public_key_file", cfg->jwt_alg);
            goto fail;
        }
        if (read_file(cfg->jwt_public_key_file, &a->verify_key, &a->verify_len, err, errlen) < 0)
            goto fail;
        if (cfg->jwt_private_key_file[0] &&
            read_file(cfg->jwt_private_key_file, &a->sign_key, &a->sign_len, err, errlen) < 0)
            goto fail;
    }
    a->issuer = cfg->jwt_issuer[0] ? stoa_xstrdup(cfg->jwt_issuer) : NULL;
    a->audience = cfg->jwt_audience[0] ? stoa_xstrdup(cfg->jwt_audience) : NULL;
    a->leeway_s = cfg->jwt_leeway_s;
    a->max_pattern = (size_t)cfg->max_room_name_bytes;
    a->allow_anonymous = cfg->allow_anonymous;
    a->anonymous_perms = stoa_perms_parse(cfg->anonymous_rights, a->max_pattern, perr, sizeof perr);
    if (!a->anonymous_perms) {
        snprintf(err, errlen, "anonymous_rights: %s", perr);
        goto fail;
    }
    return a;
fail:
    stoa_auth_free(a);
    return NULL;
}

void stoa_auth_free(stoa_auth_t *a)
{
    if (!a)
        return;
    if (a->verify_key)
        memset(a->verify_key, 0, a->verify_len);
    if (a->sign_key)
        memset(a->sign_key, 0, a->sign_len);
    free(a->verify_key);
    free(a->sign_key);
    free(a->issuer);
    free(a->audience);
    stoa_perms_free(a->anonymous_perms);
    free(a);
}

bool stoa_auth_can_mint(const stoa_auth_t *a)
{
    return a->sign_key != NULL;
}

static bool valid_color(const char *c)
{
    if (strlen(c) != 7 || c[0] != '#')
        return false;
    for (int i = 1; i < 7; i++)
        if (!strchr("0123456789abcdefABCDEF", c[i]))
            return false;
    return true;
}

/* A stable palette colour for a user without one. */
static const char *color_for(const char *sub)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (const char *p = sub; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return stoa_names_color(h % stoa_names_color_count());
}

static bool get_int(json_object *claims, const char *key, int64_t *out, bool *present)
{
    json_object *v;
    *present = json_object_object_get_ex(claims, key, &v);
    if (!*present)
        return true;
    if (!json_object_is_type(v, json_type_int))
        return false;
    *out = json_object_get_int64(v);
    return true;
}

static bool audience_ok(json_object *claims, const char *want)
{
    json_object *aud;
    if (!json_object_object_get_ex(claims, "aud", &aud))
        return false;
    if (json_object_is_type(aud, json_type_string))
        return strcmp(json_object_get_string(aud), want) == 0;
    if (json_object_is_type(aud, json_type_array)) {
        size_t n = json_object_array_length(aud);
        for (size_t i = 0; i < n && i < 64; i++) {
            json_object *v = json_object_array_get_idx(aud, i);
            if (json_object_is_type(v, json_type_string) && strcmp(json_object_get_string(v), want) == 0)
                return true;
        }
    }
    return false;
}

static const char *claim_str(json_object *claims, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(claims, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static stoa_identity_t *identity_from_claims(const stoa_auth_t *a, json_object *claims, char *err, size_t errlen)
{
    int64_t now = stoa_wall_s(), exp = 0, nbf = 0, iat = 0;
    bool has_exp, has_nbf, has_iat;
    const char *sub, *name, *color, *iss;
    json_object *rooms = NULL, *anon = NULL, *groups = NULL;
    stoa_identity_t *id;
    char perr[200];

    if (!get_int(claims, "exp", &exp, &has_exp) || !get_int(claims, "nbf", &nbf, &has_nbf) ||
        !get_int(claims, "iat", &iat, &has_iat)) {
        snprintf(err, errlen, "exp, nbf and iat must be integers");
        return NULL;
    }
    if (!has_exp) {
        snprintf(err, errlen, "token has no exp claim");
        return NULL;
    }
    if (now > exp + a->leeway_s) {
        snprintf(err, errlen, "token expired");
        return NULL;
    }
    if (has_nbf && now + a->leeway_s < nbf) {
        snprintf(err, errlen, "token not valid yet (nbf)");
        return NULL;
    }
    if (has_iat && now + a->leeway_s < iat) {
        snprintf(err, errlen, "token issued in the future (iat)");
        return NULL;
    }
    iss = claim_str(claims, "iss");
    if (a->issuer && (!iss || strcmp(iss, a->issuer) != 0)) {
        snprintf(err, errlen, "wrong issuer");
        return NULL;
    }
    if (a->audience && !audience_ok(claims, a->audience)) {
        snprintf(err, errlen, "wrong audience");
        return NULL;
    }
    sub = claim_str(claims, "sub");
    if (!sub || !sub[0] || strlen(sub) > SUB_MAX) {
        snprintf(err, errlen, "sub must be a string of 1 to %d bytes", SUB_MAX);
        return NULL;
    }
    name = claim_str(claims, "name");
    color = claim_str(claims, "color");
    if (name && (!name[0] || strlen(name) >= STOA_NAME_MAX)) {
        snprintf(err, errlen, "name must be 1 to %d bytes", STOA_NAME_MAX - 1);
        return NULL;
    }
    if (color && !valid_color(color)) {
        snprintf(err, errlen, "color must be #rrggbb");
        return NULL;
    }
    id = stoa_identity_new(sub, name ? name : sub, color ? color : color_for(sub));
    id->exp = exp;
    if (json_object_object_get_ex(claims, "anon", &anon))
        id->anonymous = json_object_get_boolean(anon);
    if (json_object_object_get_ex(claims, "rooms", &rooms)) {
        id->perms = stoa_perms_from_json(rooms, a->max_pattern, perr, sizeof perr);
        if (!id->perms) {
            snprintf(err, errlen, "%s", perr);
            stoa_identity_free(id);
            return NULL;
        }
    } else {
        id->perms = stoa_perms_parse("{}", a->max_pattern, perr, sizeof perr);
    }
    if (json_object_object_get_ex(claims, "groups", &groups) &&
        !take_groups(id, groups, a->max_pattern, err, errlen)) {
        stoa_identity_free(id);
        return NULL;
    }
    return id;
}

/* The algorithm a token's header names, read without libjwt: libjwt 1.10
 * reports every token decoded without a key as "none", so it cannot pin
 * the algorithm before the signature is checked. JWT_ALG_INVAL when the
 * header is not base64url JSON with a string "alg". */
static jwt_alg_t header_alg(const char *token)
{
    static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *dot = strchr(token, '.');
    size_t n = dot ? (size_t)(dot - token) : 0, o = 0;
    unsigned acc = 0;
    int bits = 0;
    char *text;
    json_object *head, *alg;
    jwt_alg_t result = JWT_ALG_INVAL;

    while (n > 0 && token[n - 1] == '=')
        n--;
    if (n == 0 || n > 4096)
        return JWT_ALG_INVAL;
    text = stoa_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        const char *p = memchr(b64url, token[i], sizeof b64url - 1);
        if (!p) {
            free(text);
            return JWT_ALG_INVAL;
        }
        acc = (acc << 6) | (unsigned)(p - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            text[o++] = (char)((acc >> bits) & 0xffu);
        }
    }
    text[o] = '\0';
    head = json_tokener_parse(text);
    if (json_object_is_type(head, json_type_object) && json_object_object_get_ex(head, "alg", &alg) &&
        json_object_is_type(alg, json_type_string))
        result = jwt_str_alg(json_object_get_string(alg));
    json_object_put(head);
    free(text);
    return result;
}

stoa_identity_t *stoa_auth_verify(const stoa_auth_t *a, const char *token, char *err, size_t errlen)
{
    jwt_t *jwt = NULL;
    char *grants = NULL;
    json_object *claims = NULL;
    stoa_identity_t *id = NULL;
    jwt_alg_t alg;

    if (!token || !token[0]) {
        snprintf(err, errlen, "no token");
        return NULL;
    }
    if (strnlen(token, STOA_TOKEN_MAX + 1) > STOA_TOKEN_MAX) {
        snprintf(err, errlen, "token longer than %d bytes", STOA_TOKEN_MAX);
        return NULL;
    }
    /* Pin the algorithm before any signature check: parse the header alone. */
    alg = header_alg(token);
    if (alg == JWT_ALG_INVAL) {
        snprintf(err, errlen, "malformed token");
        return NULL;
    }
    if (alg != a->alg) {
        snprintf(err, errlen, "token algorithm %s is not the configured %s", jwt_alg_str(alg),
                 jwt_alg_str(a->alg));
        return NULL;
    }
    if (jwt_decode(&jwt, token, a->verify_key, (int)a->verify_len) != 0 || jwt_get_alg(jwt) != a->alg) {
        snprintf(err, errlen, "bad signature");
        goto out;
    }
    grants = jwt_get_grants_json(jwt, NULL);
    claims = grants ? json_tokener_parse(grants) : NULL;
    if (!claims || !json_object_is_type(claims, json_type_object)) {
        snprintf(err, errlen, "malformed claims");
        goto out;
    }
    id = identity_from_claims(a, claims, err, errlen);
out:
    json_object_put(claims);
    free(grants);
    jwt_free(jwt);
    return id;
}

stoa_identity_t *stoa_auth_anonymous(const stoa_auth_t *a)
{
    stoa_identity_t *id;
    char name[STOA_NAME_MAX], color[STOA_COLOR_LEN], rnd[17], sub[32];
    stoa_names_anonymous(name, color);
    stoa_random_id(rnd, 16);
    snprintf(sub, sizeof sub, "anon-%s", rnd);
    id = stoa_identity_new(sub, name, color);
    id->anonymous = true;
    id->perms = stoa_perms_ref(a->anonymous_perms);   /* shared, never changed */
    return id;
}

char *stoa_auth_mint(const stoa_auth_t *a, const stoa_identity_t *id, int ttl_s, char *err, size_t errlen)
{
    jwt_t *jwt = NULL;
    json_object *claims, *rooms;
    char *out = NULL;
    int64_t now = stoa_wall_s();

    if (!a->sign_key) {
        snprintf(err, errlen, "no signing key configured (jwt_private_key_file)");
        return NULL;
    }
    claims = json_object_new_object();
    json_object_object_add(claims, "sub", json_object_new_string(id->sub));
    json_object_object_add(claims, "name", json_object_new_string(id->name));
    if (id->color)
        json_object_object_add(claims, "color", json_object_new_string(id->color));
    if (id->anonymous)
        json_object_object_add(claims, "anon", json_object_new_boolean(1));
    rooms = stoa_perms_to_json(id->perms);
    json_object_object_add(claims, "rooms", rooms);
    if (id->groups) {
        json_object *groups = json_object_new_array();
        for (size_t i = 0; i < id->ngroups; i++)
            json_object_array_add(groups, json_object_new_string(id->groups[i]));
        json_object_object_add(claims, "groups", groups);
    }
    json_object_object_add(claims, "iat", json_object_new_int64(now));
    json_object_object_add(claims, "exp", json_object_new_int64(now + ttl_s));
    if (a->issuer)
        json_object_object_add(claims, "iss", json_object_new_string(a->issuer));
    if (a->audience)
        json_object_object_add(claims, "aud", json_object_new_string(a->audience));
    if (jwt_new(&jwt) != 0 ||
        jwt_add_grants_json(jwt, json_object_to_json_string_ext(claims, JSON_C_TO_STRING_PLAIN)) != 0 ||
        jwt_set_alg(jwt, a->alg, a->sign_key, (int)a->sign_len) != 0 || !(out = jwt_encode_str(jwt))) {
        snprintf(err, errlen, "cannot sign the token (is the signing key a valid %s key?)", jwt_alg_str(a->alg));
        out = NULL;
    }
    jwt_free(jwt);
    json_object_put(claims);
    return out;
}
