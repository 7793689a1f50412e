/* ratelimit.h - token buckets. A plain struct: embed it where it is used;
 * not thread-safe (the hub calls it under its lock). A bucket keeps only
 * its tokens: its rate and burst, the same for every holder, are passed
 * in (from the configuration) on every call. */
#ifndef STOA_RATELIMIT_H
#define STOA_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct stoa_bucket {
    double tokens;
    int64_t last_ms;
} stoa_bucket_t;

/* A full bucket (burst tokens) at time now_ms. */
void stoa_bucket_init(stoa_bucket_t *b, double burst, int64_t now_ms);
/* Take one token at time now_ms from a bucket refilling at rate_per_s
 * tokens a second up to burst; false (and nothing taken) when empty. */
bool stoa_bucket_take(stoa_bucket_t *b, double rate_per_s, double burst, int64_t now_ms);

#endif
