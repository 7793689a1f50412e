/* ratelimit.c - token buckets. */
#include "stoa/ratelimit.h"

void stoa_bucket_init(stoa_bucket_t *b, double burst, int64_t now_ms)
{
    b->tokens = burst;
    b->last_ms = now_ms;
}

bool stoa_bucket_take(stoa_bucket_t *b, double rate_per_s, double burst, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * (rate_per_s / 1000.0);
        if (b->tokens > burst)
            b->tokens = burst;
        b->last_ms = now_ms;
    }
    if (b->tokens < 1.0)
        return false;
    b->tokens -= 1.0;
    return true;
}
