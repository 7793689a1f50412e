/* check_room.c - unit tests of room.c: room name rules and sidecars. */
#include "stoa/room.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#define MAX 128

static void expect_valid(const char *name)
{
    const char *why = NULL;
    ck_assert_msg(stoa_room_valid(name, MAX, &why), "\"%s\" should be valid, got: %s", name, why ? why : "?");
}

static void expect_invalid(const char *name, size_t max)
{
    const char *why = NULL;
    ck_assert_msg(!stoa_room_valid(name, max, &why), "\"%s\" should be invalid", name);
    ck_assert_msg(why != NULL && why[0] != '\0', "\"%s\": no reason given", name);
}

START_TEST(test_valid_names)
{
    expect_valid("doc:123");
    expect_valid("record:abc");
    expect_valid("project:7");
    expect_valid("eph:doc:123");
    expect_valid("a:b");
    expect_valid("k9_x-y:Z");
    expect_valid("doc:a.b_c~d@e+f=g-h:i");   /* every id punctuation, ':' inside */
    expect_valid("doc:ABC:def");
}
END_TEST

START_TEST(test_invalid_names)
{
    expect_invalid("doc123", MAX);         /* no colon */
    expect_invalid("doc:", MAX);           /* empty id */
    expect_invalid(":123", MAX);           /* empty kind */
    expect_invalid("Doc:123", MAX);        /* uppercase kind */
    expect_invalid("DOC:123", MAX);
    expect_invalid("doc: 123", MAX);       /* space in id */
    expect_invalid("do c:123", MAX);       /* space in kind */
    expect_invalid(" doc:123", MAX);
    expect_invalid("doc:123 ", MAX);
    expect_invalid("eph:eph:doc:1", MAX);  /* sidecar of a sidecar */
    expect_invalid("doc:1:", MAX);         /* trailing colon */
    expect_invalid("doc::", MAX);
    expect_invalid("1doc:1", MAX);         /* kind starting with a digit */
    expect_invalid("_doc:1", MAX);
    expect_invalid("doc:a/b", MAX);        /* '/' not allowed */
    expect_invalid("doc:a#b", MAX);
    expect_invalid("doc:caf\xc3\xa9", MAX); /* non-ASCII */
    expect_invalid("doc:a\tb", MAX);
    expect_invalid("", MAX);
}
END_TEST

START_TEST(test_invalid_sidecars)
{
    expect_invalid("eph:doc", MAX);        /* base has no colon */
    expect_invalid("eph:Doc:1", MAX);      /* base kind uppercase */
    expect_invalid("eph::1", MAX);
    expect_invalid("eph:doc:", MAX);
}
END_TEST

START_TEST(test_too_long)
{
    char name[MAX + 2];
    memcpy(name, "doc:", 4);
    memset(name + 4, 'x', MAX - 4);
    name[MAX] = '\0';                      /* exactly MAX bytes: fine */
    ck_assert(stoa_room_valid(name, MAX, NULL));
    name[MAX] = 'x';
    name[MAX + 1] = '\0';                  /* one more: too long */
    expect_invalid(name, MAX);
    ck_assert(!stoa_room_valid("doc:123", 6, NULL));
    ck_assert(stoa_room_valid("doc:123", 7, NULL));
}
END_TEST

START_TEST(test_kind_length)
{
    char name[64];
    memset(name, 'k', 32);
    strcpy(name + 32, ":1");
    ck_assert(stoa_room_valid(name, MAX, NULL));
    memset(name, 'k', 33);
    strcpy(name + 33, ":1");
    expect_invalid(name, MAX);
}
END_TEST

START_TEST(test_null_inputs)
{
    const char *why = NULL;
    ck_assert(!stoa_room_valid(NULL, MAX, &why));
    ck_assert_ptr_nonnull(why);
    /* why may be NULL */
    ck_assert(!stoa_room_valid("bad", MAX, NULL));
    ck_assert(stoa_room_valid("doc:1", MAX, NULL));
}
END_TEST

START_TEST(test_sidecar_base)
{
    const char *name = "eph:doc:123";
    ck_assert_ptr_eq(stoa_room_sidecar_base(name), name + 4);
    ck_assert_str_eq(stoa_room_sidecar_base(name), "doc:123");
    ck_assert_ptr_null(stoa_room_sidecar_base("doc:123"));
    ck_assert_ptr_null(stoa_room_sidecar_base("ephemeral:1"));
    ck_assert_ptr_null(stoa_room_sidecar_base("xeph:doc:1"));
}
END_TEST

static Suite *room_suite(void)
{
    Suite *s = suite_create("room");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_valid_names);
    tcase_add_test(tc, test_invalid_names);
    tcase_add_test(tc, test_invalid_sidecars);
    tcase_add_test(tc, test_too_long);
    tcase_add_test(tc, test_kind_length);
    tcase_add_test(tc, test_null_inputs);
    tcase_add_test(tc, test_sidecar_base);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(room_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
