/* util.c - allocation, clocks and randomness. */
#include "stoa/util.h"

#include <errno.h>
#include <malloc.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static void oom(size_t n)
{
    fprintf(stderr, "stoa: out of memory allocating %zu bytes\n", n);
    abort();
}

void *stoa_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *stoa_xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (!p)
        oom(nmemb * size);
    return p;
}

void *stoa_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *stoa_xstrdup(const char *s)
{
    return stoa_xstrndup(s, strlen(s));
}

char *stoa_xstrndup(const char *s, size_t n)
{
    char *p = stoa_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

int64_t stoa_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t stoa_wall_s(void)
{
    return (int64_t)time(NULL);
}

void stoa_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            perror("stoa: getrandom");
            abort();
        }
        p += got;
        n -= (size_t)got;
    }
}

uint32_t stoa_random_below(uint32_t bound)
{
    uint32_t r, limit;
    if (bound < 2)
        return 0;
    limit = UINT32_MAX - (UINT32_MAX % bound);   /* reject to avoid modulo bias */
    do
        stoa_random_bytes(&r, sizeof r);
    while (r >= limit);
    return r % bound;
}

void stoa_random_id(char *out, size_t chars)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char raw[64];
    size_t i = 0;
    while (i < chars) {
        stoa_random_bytes(raw, sizeof raw);
        for (size_t j = 0; j < sizeof raw && i < chars; j++) {
            if (raw[j] >= 252)          /* 252 = 7 * 36: keep it unbiased */
                continue;
            out[i++] = alphabet[raw[j] % 36];
        }
    }
    out[chars] = '\0';
}

const char *stoa_list_next(const char **cursor, size_t *len)
{
    const char *item = *cursor, *end;
    size_t n;
    if (!item || !*item)
        return NULL;
    end = strchr(item, ',');
    n = end ? (size_t)(end - item) : strlen(item);
    *cursor = end ? end + 1 : item + n;
    while (n > 0 && *item == ' ') {
        item++;
        n--;
    }
    while (n > 0 && item[n - 1] == ' ')
        n--;
    *len = n;
    return item;
}

void stoa_digest_hex(const void *data, size_t len, char *out, size_t hexlen)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
        abort();   /* SHA-256 is always there; failing means libcrypto is broken */
    for (size_t i = 0; i < hexlen / 2 && i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[hexlen] = '\0';
}

bool stoa_heap_trim(void)
{
    static _Atomic int64_t last_ms;
    int64_t now = stoa_now_ms(), last = atomic_load(&last_ms);
    if (now - last < 1000 || !atomic_compare_exchange_strong(&last_ms, &last, now))
        return false;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    return true;
}
