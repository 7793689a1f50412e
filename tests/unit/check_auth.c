/* check_auth.c - unit tests of auth.c: JWT verification and minting,
 * the development secret, anonymous identities.
 *
 * Foreign tokens are made with libjwt directly, or by hand (alg none).
 * RSA and EC keys are generated with the openssl command-line tool. */
#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/names.h"
#include "stoa/perm.h"
#include "stoa/util.h"

#include <check.h>
#include <jwt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SECRET "0123456789abcdef0123456789abcdef-unit-test"
#define OTHER_SECRET "fedcba9876543210fedcba9876543210-other-key"
#define R STOA_RIGHT_READ
#define RW (STOA_RIGHT_READ | STOA_RIGHT_WRITE)

static char tmpdir[64];
static stoa_config_t *cfg;

/* ---- fixture and helpers ---- */

static void set(const char *name, const char *value)
{
    char err[256];
    ck_assert_msg(stoa_config_set(cfg, name, value, err, sizeof err) == 0, "%s: %s", name, err);
}

static void setup(void)
{
    strcpy(tmpdir, "/tmp/stoa-auth-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    cfg = stoa_config_new();
    set("jwt_secret", SECRET);
    set("data_dir", tmpdir);
}

static void teardown(void)
{
    char cmd[128];
    stoa_config_free(cfg);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
}

static stoa_auth_t *new_auth(void)
{
    char err[256] = "";
    stoa_auth_t *a = stoa_auth_new(cfg, err, sizeof err);
    ck_assert_msg(a != NULL, "stoa_auth_new: %s", err);
    return a;
}

static void auth_fails(const char *needle)
{
    char err[256] = "";
    stoa_auth_t *a = stoa_auth_new(cfg, err, sizeof err);
    ck_assert_msg(a == NULL, "stoa_auth_new should fail");
    ck_assert_msg(strstr(err, needle) != NULL, "message \"%s\" does not mention \"%s\"", err, needle);
}

static long long now_s(void)
{
    return (long long)time(NULL);
}

/* Standard valid claims with `extra` members appended (starting with ','). */
static char *claims(const char *extra)
{
    char *buf = malloc(16384);
    snprintf(buf, 16384, "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld%s}", now_s() + 3600,
             extra ? extra : "");
    return buf;
}

/* A token signed with libjwt. */
static char *sign(jwt_alg_t alg, const void *key, size_t keylen, const char *claims_json)
{
    jwt_t *jwt = NULL;
    char *out;
    ck_assert_int_eq(jwt_new(&jwt), 0);
    ck_assert_msg(jwt_add_grants_json(jwt, claims_json) == 0, "libjwt refused claims %s", claims_json);
    ck_assert_int_eq(jwt_set_alg(jwt, alg, key, (int)keylen), 0);
    out = jwt_encode_str(jwt);
    ck_assert_ptr_nonnull(out);
    jwt_free(jwt);
    return out;
}

static char *sign_hs(const char *secret, const char *claims_json)
{
    return sign(JWT_ALG_HS256, secret, strlen(secret), claims_json);
}

/* HS256 with SECRET over claims(extra). */
static char *good_token(const char *extra)
{
    char *c = claims(extra), *t = sign_hs(SECRET, c);
    free(c);
    return t;
}

static char *b64url(const void *data, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    char *out = malloc(len * 4 / 3 + 4), *o = out;
    size_t i;
    for (i = 0; i + 2 < len; i += 3) {
        *o++ = tbl[p[i] >> 2];
        *o++ = tbl[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        *o++ = tbl[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
        *o++ = tbl[p[i + 2] & 63];
    }
    if (len - i == 1) {
        *o++ = tbl[p[i] >> 2];
        *o++ = tbl[(p[i] & 3) << 4];
    } else if (len - i == 2) {
        *o++ = tbl[p[i] >> 2];
        *o++ = tbl[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        *o++ = tbl[(p[i + 1] & 15) << 2];
    }
    *o = '\0';
    return out;
}

/* header.payload.signature from raw JSON texts and a raw signature string. */
static char *craft(const char *header_json, const char *claims_json, const char *sig)
{
    char *h = b64url(header_json, strlen(header_json)), *c = b64url(claims_json, strlen(claims_json));
    size_t n = strlen(h) + strlen(c) + strlen(sig) + 3;
    char *t = malloc(n);
    snprintf(t, n, "%s.%s.%s", h, c, sig);
    free(h);
    free(c);
    return t;
}

static stoa_identity_t *verify_ok(const stoa_auth_t *a, const char *token)
{
    char err[256] = "";
    stoa_identity_t *id = stoa_auth_verify(a, token, err, sizeof err);
    ck_assert_msg(id != NULL, "token refused: %s", err);
    return id;
}

/* The token must be refused with a message mentioning needle (if any),
 * and the message must not contain the token. */
static void rejected(const stoa_auth_t *a, const char *token, const char *needle)
{
    char err[512] = "";
    stoa_identity_t *id = stoa_auth_verify(a, token, err, sizeof err);
    if (id)
        stoa_identity_free(id);
    ck_assert_msg(id == NULL, "token accepted but should be refused (%s)", needle ? needle : "");
    ck_assert_msg(err[0] != '\0', "refused without a reason");
    if (needle)
        ck_assert_msg(strstr(err, needle) != NULL, "reason \"%s\" does not mention \"%s\"", err, needle);
    if (token && strlen(token) > 12) {
        const char *dot = strchr(token, '.');
        ck_assert_msg(strstr(err, token) == NULL, "the reason contains the token");
        if (dot && dot - token > 12)
            ck_assert_msg(memmem(err, strlen(err), token, (size_t)(dot - token)) == NULL,
                          "the reason contains part of the token");
    }
}

static void reject_with_claims(const stoa_auth_t *a, const char *claims_json, const char *needle)
{
    char *t = sign_hs(SECRET, claims_json);
    rejected(a, t, needle);
    free(t);
}

static void path_in_tmp(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
}

static void need_openssl(void)
{
    ck_assert_msg(system("command -v openssl >/dev/null 2>&1") == 0,
                  "the openssl command-line tool is required by the RS256/ES256 tests and was not found in PATH");
}

/* Generate a key pair ("rsa" or "ec") as <prefix>.key / <prefix>.pub. */
static void gen_keys(const char *kind, const char *prefix, char *priv, char *pub, size_t len)
{
    char cmd[1024];
    need_openssl();
    snprintf(priv, len, "%s/%s.key", tmpdir, prefix);
    snprintf(pub, len, "%s/%s.pub", tmpdir, prefix);
    snprintf(cmd, sizeof cmd,
             "openssl genpkey %s -out '%s' 2>/dev/null && openssl pkey -in '%s' -pubout -out '%s' 2>/dev/null",
             strcmp(kind, "rsa") == 0 ? "-algorithm RSA -pkeyopt rsa_keygen_bits:2048"
                                      : "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
             priv, priv, pub);
    ck_assert_msg(system(cmd) == 0, "openssl failed to generate %s keys: %s", kind, cmd);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = malloc(1 << 16);
    size_t n;
    ck_assert_ptr_nonnull(f);
    n = fread(buf, 1, (1 << 16) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static stoa_identity_t *make_ident(const char *sub, const char *name, const char *color, const char *rights)
{
    char err[256];
    stoa_identity_t *id = stoa_identity_new(sub, name, color);
    id->perms = stoa_perms_parse(rights, 128, err, sizeof err);
    ck_assert_ptr_nonnull(id->perms);
    return id;
}

static bool in_list(const char *word, size_t len, size_t (*count)(void), const char *(*item)(size_t))
{
    for (size_t i = 0; i < count(); i++)
        if (strlen(item(i)) == len && strncmp(item(i), word, len) == 0)
            return true;
    return false;
}

static int count_dots(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '.';
    return n;
}

/* Mint for a fixed identity with a, verify with b, compare. */
static void round_trip(const stoa_auth_t *a, const stoa_auth_t *b)
{
    stoa_identity_t *in = make_ident("ada", "Ada Lovelace", "#e6194b", "{\"doc:*\":\"rw\",\"record:1\":\"r\"}");
    stoa_identity_t *out;
    char err[256] = "";
    char *token = stoa_auth_mint(a, in, 3600, err, sizeof err);
    ck_assert_msg(token != NULL, "mint: %s", err);
    ck_assert_int_eq(count_dots(token), 2);
    out = verify_ok(b, token);
    ck_assert_str_eq(out->sub, "ada");
    ck_assert_str_eq(out->name, "Ada Lovelace");
    ck_assert_str_eq(out->color, "#e6194b");
    ck_assert(!out->anonymous);
    ck_assert_int_ge(out->exp, now_s() + 3590);
    ck_assert_int_le(out->exp, now_s() + 3610);
    ck_assert_uint_eq(stoa_perms_rights(out->perms, "doc:1"), RW);
    ck_assert_uint_eq(stoa_perms_rights(out->perms, "record:1"), R);
    ck_assert_uint_eq(stoa_perms_rights(out->perms, "record:2"), 0);
    stoa_identity_free(out);
    stoa_identity_free(in);
    free(token);
}

/* Sign c with alg and key and check that a refuses it (see rejected). */
static void reject_signed(const stoa_auth_t *a, jwt_alg_t alg, const void *key, size_t keylen, const char *c,
                          const char *needle)
{
    char *t = sign(alg, key, keylen, c);
    rejected(a, t, needle);
    free(t);
}

/* The same with the key read from the file at path. */
static void reject_signed_file(const stoa_auth_t *a, jwt_alg_t alg, const char *path, const char *c,
                               const char *needle)
{
    size_t keylen;
    char *key = slurp(path, &keylen);
    reject_signed(a, alg, key, keylen, c, needle);
    free(key);
}

/* A hand-made token that a must refuse. */
static void reject_crafted(const stoa_auth_t *a, const char *header_json, const char *c, const char *sig)
{
    char *t = craft(header_json, c, sig);
    rejected(a, t, NULL);
    free(t);
}

/* good_token(extra) must be refused. */
static void reject_good_token(const stoa_auth_t *a, const char *extra, const char *needle)
{
    char *t = good_token(extra);
    rejected(a, t, needle);
    free(t);
}

/* An HS256 token with SECRET over claims_json must be accepted. */
static void accept_claims(const stoa_auth_t *a, const char *claims_json)
{
    char *t = sign_hs(SECRET, claims_json);
    stoa_identity_free(verify_ok(a, t));
    free(t);
}

/* reject_with_claims with the claims printed from fmt. */
static __attribute__((format(printf, 3, 4))) void reject_fmt(const stoa_auth_t *a, const char *needle,
                                                             const char *fmt, ...)
{
    char c[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c, sizeof c, fmt, ap);
    va_end(ap);
    reject_with_claims(a, c, needle);
}

/* accept_claims with the claims printed from fmt. */
static __attribute__((format(printf, 2, 3))) void accept_fmt(const stoa_auth_t *a, const char *fmt, ...)
{
    char c[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c, sizeof c, fmt, ap);
    va_end(ap);
    accept_claims(a, c);
}

/* good_token(extra) must be accepted. */
static void accept_good_token(const stoa_auth_t *a, const char *extra)
{
    char *t = good_token(extra);
    stoa_identity_free(verify_ok(a, t));
    free(t);
}

/* Configure jwt_alg with a public key file and, unless NULL, a private one. */
static void use_keys(const char *alg, const char *pub, const char *priv)
{
    set("jwt_alg", alg);
    set("jwt_public_key_file", pub);
    if (priv)
        set("jwt_private_key_file", priv);
}

/* ---- HS256 ---- */

START_TEST(test_hs256_round_trip)
{
    stoa_auth_t *a = new_auth();
    ck_assert(stoa_auth_can_mint(a));
    round_trip(a, a);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_foreign_token_accepted)
{
    /* A token made by another party holding the secret, with defaults. */
    stoa_auth_t *a = new_auth();
    char *t = good_token(",\"rooms\":{\"doc:9\":\"r\"}");
    stoa_identity_t *id = verify_ok(a, t);
    ck_assert_str_eq(id->sub, "ada");
    ck_assert_str_eq(id->name, "ada");   /* name defaults to sub */
    ck_assert_uint_eq(strlen(id->color), 7);
    ck_assert(in_list(id->color, 7, stoa_names_color_count, stoa_names_color));
    ck_assert(!id->anonymous);
    ck_assert_uint_eq(stoa_perms_rights(id->perms, "doc:9"), R);
    stoa_identity_free(id);
    free(t);

    /* No rooms claim: no rights at all. */
    t = good_token(NULL);
    id = verify_ok(a, t);
    ck_assert_ptr_nonnull(id->perms);
    ck_assert_uint_eq(stoa_perms_rights(id->perms, "doc:9"), 0);
    stoa_identity_free(id);
    free(t);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_expired)
{
    stoa_auth_t *a = new_auth();
    reject_fmt(a, "expired", "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld}", now_s() - 3600);
    /* Beyond the 30 s leeway. */
    reject_fmt(a, "expired", "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld}", now_s() - 60);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_expiry_leeway)
{
    stoa_auth_t *a;
    char c[512], *t;
    stoa_identity_t *id;
    a = new_auth();
    /* Expired 5 s ago: within the default 30 s of skew. */
    snprintf(c, sizeof c, "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld}", now_s() - 5);
    t = sign_hs(SECRET, c);
    id = verify_ok(a, t);
    stoa_identity_free(id);
    stoa_auth_free(a);
    /* With no leeway the same token is refused. */
    set("jwt_leeway_s", "0");
    a = new_auth();
    rejected(a, t, "expired");
    stoa_auth_free(a);
    free(t);
}
END_TEST

START_TEST(test_wrong_key)
{
    stoa_auth_t *a = new_auth();
    char *c = claims(NULL), *t = sign_hs(OTHER_SECRET, c);
    rejected(a, t, "signature");
    free(t);
    free(c);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_alg_none)
{
    stoa_auth_t *a = new_auth();
    char *c = claims(NULL);
    /* By hand: base64url(header).base64url(claims). */
    reject_crafted(a, "{\"alg\":\"none\",\"typ\":\"JWT\"}", c, "");
    reject_crafted(a, "{\"alg\":\"None\",\"typ\":\"JWT\"}", c, "");
    reject_crafted(a, "{\"alg\":\"none\"}", c, "");
    /* alg none with some signature bytes anyway. */
    reject_crafted(a, "{\"alg\":\"none\",\"typ\":\"JWT\"}", c, "c2ln");
    /* And as libjwt makes it. */
    reject_signed(a, JWT_ALG_NONE, NULL, 0, c, NULL);
    free(c);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_signature_stripped)
{
    stoa_auth_t *a = new_auth();
    char *t = good_token(NULL), *dot = strrchr(t, '.');
    stoa_identity_t *id = verify_ok(a, t);   /* it was good */
    stoa_identity_free(id);
    dot[1] = '\0';                            /* header.payload. */
    rejected(a, t, NULL);
    dot[0] = '\0';                            /* header.payload */
    rejected(a, t, NULL);
    free(t);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_tampered_payload)
{
    /* The signature of one token on the claims of another. */
    stoa_auth_t *a = new_auth();
    char *good = good_token(",\"rooms\":{\"doc:1\":\"r\"}");
    char *evil_claims = claims(",\"rooms\":{\"*\":\"rw\"}");
    char *sig = strrchr(good, '.') + 1;
    char *t = craft("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", evil_claims, sig);
    rejected(a, t, "signature");
    free(t);
    free(evil_claims);
    free(good);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_other_hmac_alg)
{
    stoa_auth_t *a = new_auth();
    char *c = claims(NULL);
    reject_signed(a, JWT_ALG_HS512, SECRET, strlen(SECRET), c, "algorithm");
    reject_signed(a, JWT_ALG_HS384, SECRET, strlen(SECRET), c, "algorithm");
    free(c);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_audience)
{
    stoa_auth_t *a = new_auth();
    long long exp = now_s() + 3600;
    reject_fmt(a, "audience", "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"other\",\"exp\":%lld}", exp);
    reject_fmt(a, "audience", "{\"sub\":\"ada\",\"iss\":\"stoa\",\"exp\":%lld}", exp);
    reject_fmt(a, "audience", "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":[\"x\",\"y\"],\"exp\":%lld}", exp);
    reject_fmt(a, "audience", "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":7,\"exp\":%lld}", exp);
    /* An array holding it is fine. */
    accept_fmt(a, "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":[\"x\",\"stoa\"],\"exp\":%lld}", exp);
    stoa_auth_free(a);

    /* With jwt_audience empty, aud is not checked. */
    set("jwt_audience", "");
    a = new_auth();
    accept_fmt(a, "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"other\",\"exp\":%lld}", exp);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_issuer)
{
    stoa_auth_t *a = new_auth();
    long long exp = now_s() + 3600;
    reject_fmt(a, "issuer", "{\"sub\":\"ada\",\"iss\":\"evil\",\"aud\":\"stoa\",\"exp\":%lld}", exp);
    reject_fmt(a, "issuer", "{\"sub\":\"ada\",\"aud\":\"stoa\",\"exp\":%lld}", exp);
    reject_fmt(a, "issuer", "{\"sub\":\"ada\",\"iss\":1,\"aud\":\"stoa\",\"exp\":%lld}", exp);
    stoa_auth_free(a);

    set("jwt_issuer", "https://id.example");
    a = new_auth();
    accept_fmt(a, "{\"sub\":\"ada\",\"iss\":\"https://id.example\",\"aud\":\"stoa\",\"exp\":%lld}", exp);
    reject_fmt(a, "issuer", "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld}", exp);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_missing_exp)
{
    stoa_auth_t *a = new_auth();
    reject_with_claims(a, "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\"}", "exp");
    reject_with_claims(a, "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":\"9999999999\"}", "exp");
    reject_with_claims(a, "{\"sub\":\"ada\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":null}", "exp");
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_nbf_and_iat)
{
    stoa_auth_t *a = new_auth();
    char extra[128];
    snprintf(extra, sizeof extra, ",\"nbf\":%lld", now_s() + 3600);
    reject_good_token(a, extra, "nbf");
    snprintf(extra, sizeof extra, ",\"iat\":%lld", now_s() + 3600);
    reject_good_token(a, extra, "iat");
    reject_good_token(a, ",\"nbf\":\"soon\"", NULL);
    /* Within the leeway, and in the past, both fine. */
    snprintf(extra, sizeof extra, ",\"nbf\":%lld,\"iat\":%lld", now_s() + 10, now_s() + 10);
    accept_good_token(a, extra);
    snprintf(extra, sizeof extra, ",\"nbf\":%lld,\"iat\":%lld", now_s() - 100, now_s() - 100);
    accept_good_token(a, extra);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_bad_claims)
{
    stoa_auth_t *a = new_auth();
    char big_name[100];
    long long exp = now_s() + 3600;
    char c[1024];
    reject_fmt(a, "sub", "{\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld}", exp);
    reject_fmt(a, "sub", "{\"sub\":\"\",\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld}", exp);
    reject_fmt(a, "sub", "{\"sub\":42,\"iss\":\"stoa\",\"aud\":\"stoa\",\"exp\":%lld}", exp);
    memset(big_name, 'n', 64);
    big_name[64] = '\0';
    snprintf(c, sizeof c, ",\"name\":\"%s\"", big_name);
    reject_good_token(a, c, "name");
    reject_good_token(a, ",\"name\":\"\"", "name");
    reject_good_token(a, ",\"color\":\"red\"", "color");
    reject_good_token(a, ",\"color\":\"#12345g\"", "color");
    reject_good_token(a, ",\"rooms\":{\"doc:1\":\"x\"}", NULL);
    reject_good_token(a, ",\"rooms\":[\"doc:1\"]", NULL);
    reject_good_token(a, ",\"rooms\":{\"doc:*:1\":\"r\"}", NULL);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_garbage)
{
    stoa_auth_t *a = new_auth();
    rejected(a, NULL, NULL);
    rejected(a, "", NULL);
    rejected(a, "abc", NULL);
    rejected(a, "a.b.c", NULL);
    rejected(a, "...", NULL);
    rejected(a, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", NULL);
    rejected(a, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln", NULL);
    rejected(a, "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln", NULL);
    reject_crafted(a, "not json", "{}", "c2ln");
    reject_crafted(a, "{\"alg\":\"HS256\"}", "not json", "c2ln");
    reject_crafted(a, "[1]", "{}", "c2ln");
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_too_long)
{
    stoa_auth_t *a = new_auth();
    char *t = malloc(STOA_TOKEN_MAX + 2), *pad, *extra;
    memset(t, 'a', STOA_TOKEN_MAX + 1);
    t[STOA_TOKEN_MAX + 1] = '\0';
    rejected(a, t, "longer");
    free(t);
    /* A correctly signed token is refused too when it is over the limit. */
    pad = malloc(STOA_TOKEN_MAX + 1);
    memset(pad, 'p', STOA_TOKEN_MAX);
    pad[STOA_TOKEN_MAX] = '\0';
    extra = malloc(STOA_TOKEN_MAX + 32);
    snprintf(extra, STOA_TOKEN_MAX + 32, ",\"pad\":\"%s\"", pad);
    t = good_token(extra);
    ck_assert_uint_gt(strlen(t), STOA_TOKEN_MAX);
    rejected(a, t, "longer");
    free(t);
    free(extra);
    free(pad);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_bad_configs)
{
    set("jwt_secret", "too-short");
    auth_fails("32");
    set("jwt_secret", SECRET);
    set("jwt_alg", "none");
    auth_fails("jwt_alg");
    set("jwt_alg", "HS512");
    auth_fails("jwt_alg");
    set("jwt_alg", "RS256");
    auth_fails("jwt_public_key_file");
    {
        char missing[256];
        path_in_tmp(missing, sizeof missing, "missing.pem");
        set("jwt_public_key_file", missing);
        auth_fails("missing.pem");
    }
    set("jwt_alg", "HS256");
    set("anonymous_rights", "{\"doc:1\":\"maybe\"}");
    auth_fails("anonymous_rights");
    set("anonymous_rights", "[]");
    auth_fails("anonymous_rights");
}
END_TEST

/* ---- development secret ---- */

START_TEST(test_dev_secret)
{
    char data_dir[256], path[300], *before, *after;
    struct stat st;
    stoa_auth_t *a, *b, *c;
    size_t len;
    path_in_tmp(data_dir, sizeof data_dir, "data");   /* does not exist yet */
    set("jwt_secret", "");
    set("data_dir", data_dir);
    snprintf(path, sizeof path, "%s/jwt-secret", data_dir);

    a = new_auth();
    ck_assert_int_eq(stat(data_dir, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    ck_assert_msg((st.st_mode & 0777) == 0600, "jwt-secret has mode %o", (unsigned)(st.st_mode & 0777));
    before = slurp(path, &len);
    ck_assert_uint_eq(len, 65);   /* 64 hex digits and a newline */
    ck_assert_uint_eq(strspn(before, "0123456789abcdef"), 64);
    ck_assert(stoa_auth_can_mint(a));

    /* A second verifier reuses it: tokens cross over, the file is unchanged. */
    b = new_auth();
    round_trip(a, b);
    round_trip(b, a);
    after = slurp(path, NULL);
    ck_assert_str_eq(before, after);

    /* A different data_dir means a different secret. */
    path_in_tmp(data_dir, sizeof data_dir, "data2");
    set("data_dir", data_dir);
    c = new_auth();
    {
        stoa_identity_t *id = make_ident("ada", "Ada", "#e6194b", "{}");
        char err[256], *t = stoa_auth_mint(a, id, 60, err, sizeof err);
        char *other;
        ck_assert_ptr_nonnull(t);
        rejected(c, t, "signature");
        other = slurp(path, NULL);
        snprintf(path, sizeof path, "%s/jwt-secret", data_dir);
        free(after);
        after = slurp(path, NULL);
        ck_assert_str_ne(other, after);
        free(other);
        free(t);
        stoa_identity_free(id);
    }
    stoa_auth_free(a);
    stoa_auth_free(b);
    stoa_auth_free(c);
    free(before);
    free(after);
}
END_TEST

START_TEST(test_dev_secret_unwritable)
{
    char data_dir[300];
    snprintf(data_dir, sizeof data_dir, "%s/no/such/parent", tmpdir);
    set("jwt_secret", "");
    set("data_dir", data_dir);
    auth_fails("data_dir");
}
END_TEST

/* ---- anonymous identities ---- */

START_TEST(test_anonymous)
{
    stoa_auth_t *a = new_auth();
    stoa_identity_t *x = stoa_auth_anonymous(a), *y = stoa_auth_anonymous(a);
    const char *space = strchr(x->name, ' ');
    json_object *u;
    ck_assert(x->anonymous);
    ck_assert_ptr_nonnull(space);
    ck_assert(in_list(x->name, (size_t)(space - x->name), stoa_names_adjective_count, stoa_names_adjective));
    ck_assert(in_list(space + 1, strlen(space + 1), stoa_names_animal_count, stoa_names_animal));
    ck_assert(in_list(x->color, strlen(x->color), stoa_names_color_count, stoa_names_color));
    ck_assert_int_eq(strncmp(x->sub, "anon-", 5), 0);
    ck_assert_uint_eq(strlen(x->sub), 5 + 16);
    ck_assert_uint_eq(strspn(x->sub + 5, "abcdefghijklmnopqrstuvwxyz0123456789"), 16);
    ck_assert_str_ne(x->sub, y->sub);
    /* Default anonymous_rights {"*":"r"}. */
    ck_assert_uint_eq(stoa_perms_rights(x->perms, "doc:1"), R);
    ck_assert_uint_eq(stoa_perms_rights(x->perms, "anything:x"), R);
    ck_assert_ptr_eq(x->perms, y->perms);   /* one set, shared */

    u = stoa_identity_user_json(x);
    ck_assert_str_eq(json_object_get_string(json_object_object_get(u, "id")), x->sub);
    ck_assert_str_eq(json_object_get_string(json_object_object_get(u, "name")), x->name);
    ck_assert_str_eq(json_object_get_string(json_object_object_get(u, "color")), x->color);
    ck_assert(json_object_get_boolean(json_object_object_get(u, "anonymous")));
    ck_assert_int_eq(json_object_object_length(u), 4);
    json_object_put(u);

    /* Minted and verified, it stays anonymous with the same rights. */
    {
        char err[256], *t = stoa_auth_mint(a, x, 600, err, sizeof err);
        stoa_identity_t *z;
        ck_assert_msg(t != NULL, "%s", err);
        z = verify_ok(a, t);
        ck_assert(z->anonymous);
        ck_assert_str_eq(z->sub, x->sub);
        ck_assert_str_eq(z->name, x->name);
        ck_assert_uint_eq(stoa_perms_rights(z->perms, "doc:1"), R);
        stoa_identity_free(z);
        free(t);
    }
    stoa_identity_free(x);
    stoa_identity_free(y);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_anonymous_rights_configured)
{
    stoa_auth_t *a;
    stoa_identity_t *x;
    set("anonymous_rights", "{\"doc:*\":\"rw\",\"*\":\"\"}");
    a = new_auth();
    x = stoa_auth_anonymous(a);
    ck_assert_uint_eq(stoa_perms_rights(x->perms, "doc:1"), RW);
    ck_assert_uint_eq(stoa_perms_rights(x->perms, "record:1"), 0);
    stoa_auth_free(a);   /* the identity does not depend on the verifier */
    ck_assert_uint_eq(stoa_perms_rights(x->perms, "doc:2"), RW);
    stoa_identity_free(x);
}
END_TEST

START_TEST(test_identity_free_null)
{
    stoa_identity_t *id = make_ident("u", "U", "#000075", "{\"a:*\":\"r\"}");
    json_object *u = stoa_identity_user_json(id);
    ck_assert(!json_object_get_boolean(json_object_object_get(u, "anonymous")));
    ck_assert_str_eq(json_object_get_string(json_object_object_get(u, "color")), "#000075");
    json_object_put(u);
    stoa_identity_free(id);
    stoa_identity_free(NULL);
}
END_TEST

/* ---- RS256 / ES256 ---- */

START_TEST(test_rs256_round_trip)
{
    char priv[256], pub[256];
    stoa_auth_t *a, *v;
    gen_keys("rsa", "rsa", priv, pub, sizeof priv);
    use_keys("RS256", pub, priv);
    a = new_auth();
    ck_assert(stoa_auth_can_mint(a));
    round_trip(a, a);
    /* A verify-only configuration accepts the same tokens but cannot mint. */
    set("jwt_private_key_file", "");
    v = new_auth();
    ck_assert(!stoa_auth_can_mint(v));
    round_trip(a, v);
    {
        char err[256] = "";
        stoa_identity_t *id = make_ident("ada", "Ada", "#e6194b", "{}");
        ck_assert_ptr_null(stoa_auth_mint(v, id, 60, err, sizeof err));
        ck_assert_str_ne(err, "");
        stoa_identity_free(id);
    }
    stoa_auth_free(a);
    stoa_auth_free(v);
}
END_TEST

START_TEST(test_es256_round_trip)
{
    char priv[256], pub[256];
    stoa_auth_t *a;
    gen_keys("ec", "ec", priv, pub, sizeof priv);
    use_keys("ES256", pub, priv);
    a = new_auth();
    ck_assert(stoa_auth_can_mint(a));
    round_trip(a, a);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_rs256_wrong_key)
{
    char priv[256], pub[256], priv2[256], pub2[256], *c, *key, *t;
    size_t keylen;
    stoa_auth_t *a;
    gen_keys("rsa", "rsa1", priv, pub, sizeof priv);
    gen_keys("rsa", "rsa2", priv2, pub2, sizeof priv2);
    use_keys("RS256", pub, NULL);
    a = new_auth();
    c = claims(NULL);
    reject_signed_file(a, JWT_ALG_RS256, priv2, c, "signature");
    /* Signed with the right key it passes: the refusal was the key. */
    key = slurp(priv, &keylen);
    t = sign(JWT_ALG_RS256, key, keylen, c);
    stoa_identity_free(verify_ok(a, t));
    free(t);
    /* RS512 with the right key is still the wrong algorithm. */
    reject_signed(a, JWT_ALG_RS512, key, keylen, c, "algorithm");
    free(key);
    free(c);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_alg_confusion)
{
    /* The classic attack: an HS256 token whose HMAC key is the server's
     * public key PEM, which the attacker knows. */
    char priv[256], pub[256], *pem, *c;
    size_t pemlen;
    stoa_auth_t *a;
    gen_keys("rsa", "rsa", priv, pub, sizeof priv);
    use_keys("RS256", pub, NULL);
    a = new_auth();
    pem = slurp(pub, &pemlen);
    c = claims(",\"rooms\":{\"*\":\"rw\"}");
    reject_signed(a, JWT_ALG_HS256, pem, pemlen, c, "algorithm");
    /* Without the trailing newline too. */
    reject_signed(a, JWT_ALG_HS256, pem, pemlen - 1, c, NULL);
    /* And alg none against RS256. */
    reject_crafted(a, "{\"alg\":\"none\",\"typ\":\"JWT\"}", c, "");
    free(c);
    free(pem);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_es256_refuses_rs256)
{
    char rpriv[256], rpub[256], epriv[256], epub[256], *c;
    stoa_auth_t *a;
    gen_keys("rsa", "rsa", rpriv, rpub, sizeof rpriv);
    gen_keys("ec", "ec", epriv, epub, sizeof epriv);
    use_keys("ES256", epub, NULL);
    a = new_auth();
    c = claims(NULL);
    reject_signed_file(a, JWT_ALG_RS256, rpriv, c, "algorithm");
    /* An HS256 token keyed with the EC public key PEM. */
    reject_signed_file(a, JWT_ALG_HS256, epub, c, "algorithm");
    free(c);
    stoa_auth_free(a);
}
END_TEST

START_TEST(test_hs256_refuses_rs256)
{
    char priv[256], pub[256], *c;
    stoa_auth_t *a = new_auth();
    gen_keys("rsa", "rsa", priv, pub, sizeof priv);
    c = claims(NULL);
    reject_signed_file(a, JWT_ALG_RS256, priv, c, "algorithm");
    free(c);
    stoa_auth_free(a);
}
END_TEST

static Suite *auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("hs256");
    TCase *tk = tcase_create("keys");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_checked_fixture(tk, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_set_timeout(tk, 120);
    tcase_add_test(tc, test_hs256_round_trip);
    tcase_add_test(tc, test_foreign_token_accepted);
    tcase_add_test(tc, test_expired);
    tcase_add_test(tc, test_expiry_leeway);
    tcase_add_test(tc, test_wrong_key);
    tcase_add_test(tc, test_alg_none);
    tcase_add_test(tc, test_signature_stripped);
    tcase_add_test(tc, test_tampered_payload);
    tcase_add_test(tc, test_other_hmac_alg);
    tcase_add_test(tc, test_audience);
    tcase_add_test(tc, test_issuer);
    tcase_add_test(tc, test_missing_exp);
    tcase_add_test(tc, test_nbf_and_iat);
    tcase_add_test(tc, test_bad_claims);
    tcase_add_test(tc, test_garbage);
    tcase_add_test(tc, test_too_long);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_dev_secret);
    tcase_add_test(tc, test_dev_secret_unwritable);
    tcase_add_test(tc, test_anonymous);
    tcase_add_test(tc, test_anonymous_rights_configured);
    tcase_add_test(tc, test_identity_free_null);
    tcase_add_test(tk, test_rs256_round_trip);
    tcase_add_test(tk, test_es256_round_trip);
    tcase_add_test(tk, test_rs256_wrong_key);
    tcase_add_test(tk, test_alg_confusion);
    tcase_add_test(tk, test_es256_refuses_rs256);
    tcase_add_test(tk, test_hs256_refuses_rs256);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, tk);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(auth_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
