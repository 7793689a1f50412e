/* check_msg.c - unit tests of msg.c: refcounted encoded messages. */
#include "stoa/msg.h"

#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_new_text_and_len)
{
    const char *text = "{\"type\":\"ping\"}";
    stoa_msg_t *m = stoa_msg_new(text, strlen(text));
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(stoa_msg_len(m), strlen(text));
    ck_assert_str_eq(stoa_msg_text(m), text);
    ck_assert_int_eq(stoa_msg_text(m)[stoa_msg_len(m)], '\0');
    ck_assert_uint_eq(stoa_msg_refcount(m), 1);
    stoa_msg_unref(m);
}
END_TEST

START_TEST(test_new_copies_text)
{
    char buf[16] = "hello";
    stoa_msg_t *m = stoa_msg_new(buf, 5);
    ck_assert_ptr_ne(stoa_msg_text(m), buf);
    buf[0] = 'J';
    ck_assert_str_eq(stoa_msg_text(m), "hello");
    stoa_msg_unref(m);
}
END_TEST

START_TEST(test_new_partial_and_binary)
{
    /* Only len bytes are copied, and bytes after an embedded NUL are kept. */
    static const char raw[] = {'a', '\0', 'b', 'c', 'd'};
    stoa_msg_t *m = stoa_msg_new(raw, 4);
    ck_assert_uint_eq(stoa_msg_len(m), 4);
    ck_assert_mem_eq(stoa_msg_text(m), raw, 4);
    ck_assert_int_eq(stoa_msg_text(m)[4], '\0');
    stoa_msg_unref(m);

    m = stoa_msg_new("abcdef", 3);
    ck_assert_str_eq(stoa_msg_text(m), "abc");
    ck_assert_uint_eq(stoa_msg_len(m), 3);
    stoa_msg_unref(m);
}
END_TEST

START_TEST(test_empty_message)
{
    stoa_msg_t *m = stoa_msg_new("", 0);
    ck_assert_uint_eq(stoa_msg_len(m), 0);
    ck_assert_str_eq(stoa_msg_text(m), "");
    stoa_msg_unref(m);
}
END_TEST

START_TEST(test_refcount)
{
    stoa_msg_t *m = stoa_msg_new("x", 1);
    ck_assert_ptr_eq(stoa_msg_ref(m), m);
    ck_assert_uint_eq(stoa_msg_refcount(m), 2);
    ck_assert_ptr_eq(stoa_msg_ref(m), m);
    ck_assert_uint_eq(stoa_msg_refcount(m), 3);
    stoa_msg_unref(m);
    ck_assert_uint_eq(stoa_msg_refcount(m), 2);
    stoa_msg_unref(m);
    ck_assert_uint_eq(stoa_msg_refcount(m), 1);
    /* Still alive and intact with one reference left. */
    ck_assert_str_eq(stoa_msg_text(m), "x");
    stoa_msg_unref(m);   /* frees; ASan would flag a leak or double free */
}
END_TEST

START_TEST(test_unref_null)
{
    /* NULL is ignored (a crash would fail the test) and touches nothing else. */
    stoa_msg_t *m = stoa_msg_new("y", 1);
    stoa_msg_unref(NULL);
    ck_assert_uint_eq(stoa_msg_refcount(m), 1);
    ck_assert_str_eq(stoa_msg_text(m), "y");
    stoa_msg_unref(m);
}
END_TEST

START_TEST(test_headroom_writable)
{
    const char *text = "payload";
    stoa_msg_t *m = stoa_msg_new(text, strlen(text));
    unsigned char *p = stoa_msg_framable(m);
    ck_assert_ptr_eq((const char *)p, stoa_msg_text(m));
    /* The whole headroom before the text is writable without touching it. */
    memset(p - STOA_MSG_HEADROOM, 0xAB, STOA_MSG_HEADROOM);
    for (size_t i = 1; i <= STOA_MSG_HEADROOM; i++)
        ck_assert_uint_eq(p[-(long)i], 0xAB);
    ck_assert_str_eq(stoa_msg_text(m), text);
    ck_assert_uint_eq(stoa_msg_len(m), strlen(text));
    ck_assert_uint_eq(stoa_msg_refcount(m), 1);
    stoa_msg_unref(m);
}
END_TEST

START_TEST(test_headroom_at_least_lws_pre)
{
    /* libwebsockets 4.1 needs LWS_PRE (16) bytes in front of a payload. */
    ck_assert_int_ge(STOA_MSG_HEADROOM, 16);
}
END_TEST

#define THREADS 4
#define ROUNDS 20000

static void *hammer(void *arg)
{
    stoa_msg_t *m = arg;
    for (int i = 0; i < ROUNDS; i++) {
        stoa_msg_ref(m);
        stoa_msg_unref(m);
    }
    return NULL;
}

START_TEST(test_refcount_threads)
{
    stoa_msg_t *m = stoa_msg_new("shared", 6);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, m), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    ck_assert_uint_eq(stoa_msg_refcount(m), 1);
    ck_assert_str_eq(stoa_msg_text(m), "shared");
    stoa_msg_unref(m);
}
END_TEST

START_TEST(test_refcount_n)
{
    stoa_msg_t *m = stoa_msg_new("x", 1);
    ck_assert_ptr_eq(stoa_msg_ref_n(m, 5), m);
    ck_assert_uint_eq(stoa_msg_refcount(m), 6);
    stoa_msg_ref_n(m, 0);
    ck_assert_uint_eq(stoa_msg_refcount(m), 6);
    stoa_msg_unref_n(m, 3);
    ck_assert_uint_eq(stoa_msg_refcount(m), 3);
    stoa_msg_unref_n(m, 0);
    stoa_msg_unref_n(NULL, 2);
    ck_assert_uint_eq(stoa_msg_refcount(m), 3);
    stoa_msg_unref_n(m, 3);   /* the last ones: freed (ASan watches) */
}
END_TEST

static Suite *msg_suite(void)
{
    Suite *s = suite_create("msg");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_new_text_and_len);
    tcase_add_test(tc, test_new_copies_text);
    tcase_add_test(tc, test_new_partial_and_binary);
    tcase_add_test(tc, test_empty_message);
    tcase_add_test(tc, test_refcount);
    tcase_add_test(tc, test_unref_null);
    tcase_add_test(tc, test_headroom_writable);
    tcase_add_test(tc, test_headroom_at_least_lws_pre);
    tcase_add_test(tc, test_refcount_threads);
    tcase_add_test(tc, test_refcount_n);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(msg_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
