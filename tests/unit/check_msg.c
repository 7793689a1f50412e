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

/* The frame for a text of len bytes: header bytes as RFC 6455 5.2 lays
 * them out (FIN + text opcode, unmasked, 7/16/64-bit length), then the
 * text itself. */
static void check_frame(size_t len, const unsigned char *want_header, size_t hlen)
{
    char *text = malloc(len + 1);
    size_t flen = 0;
    ck_assert_ptr_nonnull(text);
    for (size_t i = 0; i < len; i++)
        text[i] = (char)('a' + i % 26);
    stoa_msg_t *m = stoa_msg_new(text, len);
    const unsigned char *f = stoa_msg_ws_frame(m, &flen);
    ck_assert_uint_eq(flen, hlen + len);
    ck_assert_mem_eq(f, want_header, hlen);
    ck_assert(memcmp(f + hlen, text, len) == 0);
    /* the text stays where stoa_msg_text says, right after the header */
    ck_assert_ptr_eq((const char *)f + hlen, stoa_msg_text(m));
    stoa_msg_unref(m);
    free(text);
}

START_TEST(test_ws_frame)
{
    check_frame(0, (const unsigned char[]){0x81, 0x00}, 2);
    check_frame(100, (const unsigned char[]){0x81, 100}, 2);
    check_frame(125, (const unsigned char[]){0x81, 125}, 2);
    check_frame(126, (const unsigned char[]){0x81, 126, 0x00, 126}, 4);
    check_frame(65535, (const unsigned char[]){0x81, 126, 0xff, 0xff}, 4);
    check_frame(65536, (const unsigned char[]){0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00}, 10);
    check_frame(1000000, (const unsigned char[]){0x81, 127, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40}, 10);
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
    tcase_add_test(tc, test_ws_frame);
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
