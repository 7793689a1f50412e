/* ratelimit.h - token buckets. A plain struct: embed it where it is used;
 * not thread-safe (the hub calls it under its lock). */
#ifndef STOA_RATELIMIT_H
#define STOA_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct stoa_bucket {
    double tokens;
    double rate_per_ms;
    double burst;
    int64_t last_ms;
} stoa_bucket_t;

/* A full bucket refilling at rate_per_s tokens a second up to burst. */
void stoa_bucket_init(stoa_bucket_t *b, double rate_per_s, double burst, int64_t now_ms);
/* Take one token at time now_ms; false (and nothing taken) when empty. */
bool stoa_bucket_take(stoa_bucket_t *b, int64_t now_ms);

#endif
