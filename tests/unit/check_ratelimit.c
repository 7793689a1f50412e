/* check_ratelimit.c - unit tests of ratelimit.c: token buckets.
 * Rates are chosen so that tokens per millisecond are exact in binary
 * floating point (500/s = 0.5/ms, 250/s = 0.25/ms). */
#include "stoa/ratelimit.h"

#include <check.h>
#include <stdlib.h>

START_TEST(test_burst_then_refusal)
{
    stoa_bucket_t b;
    stoa_bucket_init(&b, 5, 1000);
    for (int i = 0; i < 5; i++)
        ck_assert_msg(stoa_bucket_take(&b, 1.0, 5, 1000), "take %d of the burst refused", i + 1);
    ck_assert(!stoa_bucket_take(&b, 1.0, 5, 1000));
    ck_assert(!stoa_bucket_take(&b, 1.0, 5, 1000));
}
END_TEST

START_TEST(test_refusal_takes_nothing)
{
    stoa_bucket_t b;
    stoa_bucket_init(&b, 1, 0);
    ck_assert(stoa_bucket_take(&b, 500.0, 1, 0));
    ck_assert(!stoa_bucket_take(&b, 500.0, 1, 0));
    ck_assert(!stoa_bucket_take(&b, 500.0, 1, 1));   /* 0.5 tokens: refused, nothing taken */
    ck_assert(stoa_bucket_take(&b, 500.0, 1, 2));    /* 1.0: the refused attempt cost nothing */
    ck_assert(!stoa_bucket_take(&b, 500.0, 1, 2));
}
END_TEST

START_TEST(test_refill_over_time)
{
    stoa_bucket_t b;
    stoa_bucket_init(&b, 2, 0);   /* one token every 4 ms */
    ck_assert(stoa_bucket_take(&b, 250.0, 2, 0));
    ck_assert(stoa_bucket_take(&b, 250.0, 2, 0));
    ck_assert(!stoa_bucket_take(&b, 250.0, 2, 0));
    ck_assert(!stoa_bucket_take(&b, 250.0, 2, 3));
    ck_assert(stoa_bucket_take(&b, 250.0, 2, 4));
    ck_assert(!stoa_bucket_take(&b, 250.0, 2, 4));
    ck_assert(!stoa_bucket_take(&b, 250.0, 2, 7));
    ck_assert(stoa_bucket_take(&b, 250.0, 2, 8));
    /* 8 ms later: two tokens back, not more than that. */
    ck_assert(stoa_bucket_take(&b, 250.0, 2, 16));
    ck_assert(stoa_bucket_take(&b, 250.0, 2, 16));
    ck_assert(!stoa_bucket_take(&b, 250.0, 2, 16));
}
END_TEST

START_TEST(test_refill_capped_at_burst)
{
    stoa_bucket_t b;
    stoa_bucket_init(&b, 3, 0);
    for (int i = 0; i < 3; i++)
        ck_assert(stoa_bucket_take(&b, 500.0, 3, 0));
    ck_assert(!stoa_bucket_take(&b, 500.0, 3, 0));
    /* An hour idle refills the bucket only to its burst. */
    for (int i = 0; i < 3; i++)
        ck_assert(stoa_bucket_take(&b, 500.0, 3, 3600000));
    ck_assert(!stoa_bucket_take(&b, 500.0, 3, 3600000));
}
END_TEST

START_TEST(test_slow_rate)
{
    stoa_bucket_t b;
    stoa_bucket_init(&b, 1, 10000);   /* 2 a second */
    ck_assert(stoa_bucket_take(&b, 2.0, 1, 10000));
    ck_assert(!stoa_bucket_take(&b, 2.0, 1, 10100));
    ck_assert(stoa_bucket_take(&b, 2.0, 1, 11000));   /* a second later: capped at burst 1 */
    ck_assert(!stoa_bucket_take(&b, 2.0, 1, 11000));
}
END_TEST

START_TEST(test_clock_going_back)
{
    stoa_bucket_t b;
    stoa_bucket_init(&b, 1, 100);
    ck_assert(stoa_bucket_take(&b, 500.0, 1, 100));
    /* An earlier time adds nothing (and must not remove tokens either). */
    ck_assert(!stoa_bucket_take(&b, 500.0, 1, 50));
    ck_assert(!stoa_bucket_take(&b, 500.0, 1, 101));
    ck_assert(stoa_bucket_take(&b, 500.0, 1, 102));
}
END_TEST

START_TEST(test_init_full)
{
    stoa_bucket_t b;
    stoa_bucket_init(&b, 5, 42);
    ck_assert_double_eq(b.tokens, 5.0);
    ck_assert_int_eq(b.last_ms, 42);
    /* 250 a second: 4 ms later one token is back, 3 ms later it is not */
    for (int i = 0; i < 5; i++)
        ck_assert(stoa_bucket_take(&b, 250.0, 5, 42));
    ck_assert(!stoa_bucket_take(&b, 250.0, 5, 45));
    ck_assert(stoa_bucket_take(&b, 250.0, 5, 46));
}
END_TEST

static Suite *ratelimit_suite(void)
{
    Suite *s = suite_create("ratelimit");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_burst_then_refusal);
    tcase_add_test(tc, test_refusal_takes_nothing);
    tcase_add_test(tc, test_refill_over_time);
    tcase_add_test(tc, test_refill_capped_at_burst);
    tcase_add_test(tc, test_slow_rate);
    tcase_add_test(tc, test_clock_going_back);
    tcase_add_test(tc, test_init_full);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ratelimit_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
