/* bench_common.h - pieces shared by the two benchmark programs
 * (stoa-bench.c, ceiling.c): a bounded growable byte buffer and the
 * WebSocket accept key. Header-only: each program is one file. */
#ifndef STOA_BENCH_COMMON_H
#define STOA_BENCH_COMMON_H

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---- bounded growable buffer: data is p[off, len) ----------------------- */

struct buf {
    char *p;
    size_t off, len, cap;
};

static inline size_t buf_size(const struct buf *b)
{
    return b->len - b->off;
}

static inline char *buf_data(const struct buf *b)
{
    return b->p + b->off;
}

/* Append n bytes, growing to at most max; false (nothing appended) when
 * that would exceed max or memory runs out. */
static inline bool buf_append(struct buf *b, const void *d, size_t n, size_t max)
{
    if (b->off && b->len + n > b->cap) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    size_t need = b->len + n;
    if (need > max)
        return false;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap *= 2;
        if (cap > max)
            cap = max;
        char *np = realloc(b->p, cap);
        if (!np)
            return false;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return true;
}

static inline void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}

static inline void buf_clear(struct buf *b)
{
    b->off = b->len = 0;
}

static inline void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* An empty buffer that grew for one large message gives its memory back:
 * with many connections, high-water marks would add up. */
#define BUF_KEEP 16384u
static inline void buf_shrink(struct buf *b)
{
    if (b->off == b->len && b->cap > BUF_KEEP)
        buf_free(b);
}

/* Sec-WebSocket-Accept for a key of keylen bytes (at most 100 used), as
 * NUL-terminated base64 in out (at least 32 bytes). */
static inline void ws_accept_key(const char *key, size_t keylen, char *out)
{
    char cat[160];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    int n = snprintf(cat, sizeof cat, "%.*s%s", (int)(keylen < 100 ? keylen : 100), key, WS_GUID);
    EVP_Digest(cat, (size_t)n, md, &mdlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
}

/* The payload length of the WebSocket frame starting at u (n bytes
 * there): 1 with the length in *len and the header size before any mask
 * in *hdr, 0 when the header is not complete yet. */
static inline int ws_frame_len(const unsigned char *u, size_t n, uint64_t *len, size_t *hdr)
{
    if (n < 2)
        return 0;
    *len = u[1] & 0x7fu;
    *hdr = 2;
    if (*len == 126) {
        if (n < 4)
            return 0;
        *len = (uint64_t)u[2] << 8 | u[3];
        *hdr = 4;
    } else if (*len == 127) {
        if (n < 10)
            return 0;
        *len = 0;
        for (int i = 0; i < 8; i++)
            *len = *len << 8 | u[2 + i];
        *hdr = 10;
    }
    return 1;
}

#endif
