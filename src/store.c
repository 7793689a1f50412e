/* store.c - the generic side of the snapshot store: argument checks, the
 * metadata every backend keeps, SHA-256, and the choice of backend. */
#include "stoa/store.h"
#include "stoa/util.h"
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

struct stoa_store {
    const stoa_store_ops_t *ops;
    void *impl;
};

stoa_store_t *stoa_store_new(const stoa_store_ops_t *ops, void *impl)
{
    stoa_store_t *s = stoa_xcalloc(1, sizeof *s);
    s->ops = ops;
    s->impl = impl;
    return s;
}

/* mkdir, and on success fsync the parent so that the new entry survives a crash. */
static int mkdir_durable(const char *path)
{
    char parent[4096];
    const char *slash;
    int fd;
    if (mkdir(path, 0700) < 0)
        return -1;
    slash = strrchr(path, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else
        snprintf(parent, sizeof parent, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    if ((fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

stoa_store_t *stoa_store_open(const stoa_config_t *cfg, char *err, size_t errlen)
{
    char path[4096];
    if (cfg->database_url && cfg->database_url[0])
        return stoa_store_open_pg(cfg->database_url, (unsigned)cfg->snapshot_keep, err, errlen);
    if (mkdir_durable(cfg->data_dir) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data_dir %s: %s", cfg->data_dir, strerror(errno));
        return NULL;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/snapshots", cfg->data_dir) >= sizeof path) {
        snprintf(err, errlen, "data_dir is too long");
        return NULL;
    }
    return stoa_store_open_dir(path, (unsigned)cfg->snapshot_keep, err, errlen);
}

void stoa_store_close(stoa_store_t *store)
{
    if (!store)
        return;
    store->ops->close(store->impl);
    free(store);
}

const char *stoa_store_backend(const stoa_store_t *store)
{
    return store->ops->name;
}

static stoa_err_t check_room(const char *room, char *err, size_t errlen)
{
    if (!room || !room[0]) {
        snprintf(err, errlen, "no room named");
        return STOA_ERR_BAD_ROOM;
    }
    return STOA_OK;
}

stoa_err_t stoa_store_get(stoa_store_t *store, const char *room, uint64_t version, stoa_snapshot_info_t *info,
                          void **data, char *err, size_t errlen)
{
    stoa_err_t e = check_room(room, err, errlen);
    *data = NULL;
    if (e != STOA_OK)
        return e;
    memset(info, 0, sizeof *info);
    return store->ops->get(store->impl, room, version, info, data, err, errlen);
}

stoa_err_t stoa_store_list(stoa_store_t *store, const char *room, stoa_snapshot_info_t **infos, size_t *count,
                           char *err, size_t errlen)
{
    stoa_err_t e = check_room(room, err, errlen);
    *infos = NULL;
    *count = 0;
    if (e != STOA_OK)
        return e;
    return store->ops->list(store->impl, room, infos, count, err, errlen);
}

stoa_err_t stoa_store_put(stoa_store_t *store, const char *room, uint64_t if_match, const char *content_type,
                          const void *data, size_t len, stoa_snapshot_info_t *info, uint64_t *latest, char *err,
                          size_t errlen)
{
    stoa_snapshot_info_t own;
    uint64_t latest_own = 0;
    size_t tlen = content_type ? strlen(content_type) : 0;
    stoa_err_t e = check_room(room, err, errlen);

    if (!info)
        info = &own;
    if (!latest)
        latest = &latest_own;
    *latest = 0;
    if (e != STOA_OK)
        return e;
    if (tlen == 0 || tlen > STOA_STORE_TYPE_MAX) {
        snprintf(err, errlen, "the content type must be 1 to %d characters", STOA_STORE_TYPE_MAX);
        return STOA_ERR_BAD_MESSAGE;
    }
    for (size_t i = 0; i < tlen; i++)
        if (content_type[i] < 0x20 || content_type[i] > 0x7e) {
            snprintf(err, errlen, "the content type may hold only printable ASCII");
            return STOA_ERR_BAD_MESSAGE;
        }
    if (len > STOA_STORE_HARD_MAX_BYTES) {
        snprintf(err, errlen, "a snapshot may hold at most %u bytes", STOA_STORE_HARD_MAX_BYTES);
        return STOA_ERR_MESSAGE_TOO_LARGE;
    }
    if (len > 0 && !data) {
        snprintf(err, errlen, "no data");
        return STOA_ERR_BAD_MESSAGE;
    }
    memset(info, 0, sizeof *info);
    info->size = len;
    info->created_at = stoa_wall_s();
    memcpy(info->content_type, content_type, tlen + 1);
    stoa_store_sha256_hex(data, len, info->sha256);
    return store->ops->put(store->impl, room, if_match, info, data, latest, err, errlen);
}

/* ---- compression at rest ---- */

bool stoa_store_deflate(const void *data, size_t len, void **out, size_t *outlen, char *err, size_t errlen)
{
    uLongf zlen = compressBound((uLong)len);
    Bytef *z = stoa_xmalloc(zlen);
    int zrc = compress2(z, &zlen, len ? data : (const void *)"", (uLong)len, Z_DEFAULT_COMPRESSION);
    if (zrc != Z_OK) {
        snprintf(err, errlen, "cannot compress the snapshot (zlib %d)", zrc);
        free(z);
        return false;
    }
    *out = z;
    *outlen = (size_t)zlen;
    return true;
}

bool stoa_store_inflate(const void *z, size_t zlen, size_t size, void **out, const char **why)
{
    unsigned char *buf = stoa_xmalloc(size + 1);
    uLongf got = (uLongf)size;
    int zrc = uncompress(buf, &got, (const Bytef *)z, (uLong)zlen);
    if (zrc != Z_OK || got != size) {
        *why = zrc == Z_OK ? "wrong length" : zrc == Z_BUF_ERROR ? "truncated or too long" : "bad data";
        free(buf);
        return false;
    }
    buf[size] = '\0';
    *out = buf;
    return true;
}

/* ---- SHA-256 (FIPS 180-4) ---- */

typedef struct {
    uint32_t h[8];
    uint64_t bits;
    unsigned char block[64];
    size_t used;
} sha256_t;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_t *s, const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
    s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha256_update(sha256_t *s, const unsigned char *p, size_t n)
{
    s->bits += (uint64_t)n * 8;
    while (n > 0) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        n -= take;
        if (s->used == 64) {
            sha256_block(s, s->block);
            s->used = 0;
        }
    }
}

void stoa_store_sha256_hex(const void *data, size_t len, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    sha256_t s = {{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                   0x5be0cd19},
                  0, {0}, 0};
    unsigned char pad[72] = {0x80};
    uint64_t bits;
    size_t padlen;

    if (len > 0)
        sha256_update(&s, data, len);
    bits = s.bits;
    padlen = (s.used < 56 ? 56 : 120) - s.used;
    for (int i = 0; i < 8; i++)
        pad[padlen + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(&s, pad, padlen + 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) {
            unsigned char byte = (unsigned char)(s.h[i] >> (24 - 8 * j));
            out[8 * i + 2 * j] = hex[byte >> 4];
            out[8 * i + 2 * j + 1] = hex[byte & 15];
        }
    out[64] = '\0';
}

stoa_err_t stoa_store_precondition(const char *room, uint64_t if_match, uint64_t latest, char *err,
                                   size_t errlen)
{
    if (if_match == latest)
        return STOA_OK;
    if (latest == 0)
        snprintf(err, errlen, "%s has no snapshot yet (create the first with If-None-Match: *)", room);
    else if (if_match == STOA_STORE_IF_NONE)
        snprintf(err, errlen, "%s already has a snapshot: the latest is version %" PRIu64, room, latest);
    else
        snprintf(err, errlen, "version %" PRIu64 " of %s is not the latest: %" PRIu64 " is", if_match, room,
                 latest);
    return STOA_ERR_PRECONDITION_FAILED;
}
