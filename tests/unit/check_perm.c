/* check_perm.c - unit tests of perm.c: room patterns and rights. */
#include "stoa/perm.h"

#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXP 128
#define R STOA_RIGHT_READ
#define RW (STOA_RIGHT_READ | STOA_RIGHT_WRITE)

static stoa_perms_t *parse_ok(const char *text)
{
    char err[256] = "";
    stoa_perms_t *p = stoa_perms_parse(text, MAXP, err, sizeof err);
    ck_assert_msg(p != NULL, "%s should parse, got: %s", text, err);
    return p;
}

static void parse_bad(const char *text, size_t maxp)
{
    char err[256] = "";
    stoa_perms_t *p = stoa_perms_parse(text, maxp, err, sizeof err);
    ck_assert_msg(p == NULL, "%.100s should be rejected", text);
    ck_assert_msg(err[0] != '\0', "%.100s: rejected without a message", text);
}

static void expect(const stoa_perms_t *p, const char *room, unsigned want)
{
    unsigned got = stoa_perms_rights(p, room);
    ck_assert_msg(got == want, "rights on %s: got %u, want %u", room, got, want);
}

/* Parse text and check the rights on each room: the arguments after it
 * are pairs of a room and the rights wanted on it, ended by NULL. */
static __attribute__((sentinel)) void rights_are(const char *text, ...)
{
    stoa_perms_t *p = parse_ok(text);
    const char *room;
    va_list ap;
    va_start(ap, text);
    while ((room = va_arg(ap, const char *)) != NULL)
        expect(p, room, (unsigned)va_arg(ap, int));
    va_end(ap);
    stoa_perms_free(p);
}

START_TEST(test_exact)
{
    /* doc:1234: an exact pattern is not a prefix. */
    rights_are("{\"doc:123\":\"rw\",\"doc:9\":\"r\"}", "doc:123", RW, "doc:9", R, "doc:1234", 0, "doc:12", 0,
               "record:123", 0, NULL);
}
END_TEST

START_TEST(test_wildcard)
{
    rights_are("{\"record:*\":\"r\"}", "record:abc", R, "record:1", R, "records:1", 0, "doc:1", 0, NULL);

    rights_are("{\"*\":\"rw\"}", "doc:1", RW, "anything:else", RW, NULL);
}
END_TEST

START_TEST(test_longest_match_wins)
{
    rights_are("{\"*\":\"rw\",\"doc:*\":\"r\",\"doc:secret*\":\"\"}", "record:1", RW, "doc:1", R,
               "doc:secret", 0, "doc:secret-plans", 0, NULL);

    /* Order in the object does not matter. */
    rights_are("{\"doc:secret*\":\"\",\"doc:*\":\"r\",\"*\":\"rw\"}", "record:1", RW, "doc:1", R,
               "doc:secret-plans", 0, NULL);

    /* An exact name beats any shorter wildcard, and a longer wildcard
     * beats a shorter exact name it does not match anyway. */
    rights_are("{\"doc:*\":\"rw\",\"doc:1\":\"r\"}", "doc:1", R, "doc:2", RW, NULL);
}
END_TEST

START_TEST(test_exact_beats_equal_wildcard)
{
    /* "doc:1*" and "doc:1" have the same 5-byte prefix; the exact one wins. */
    rights_are("{\"doc:1*\":\"rw\",\"doc:1\":\"r\"}", "doc:1", R, "doc:12", RW, NULL);

    rights_are("{\"doc:1\":\"\",\"doc:1*\":\"rw\"}", "doc:1", 0, "doc:10", RW, NULL);
}
END_TEST

START_TEST(test_empty_rights_deny)
{
    rights_are("{\"*\":\"r\",\"doc:secret\":\"\"}", "doc:secret", 0, "doc:public", R, NULL);

    rights_are("{\"doc:123\":\"rw\",\"record:*\":\"r\",\"*\":\"\"}", "doc:123", RW, "record:x", R,
               "project:7", 0, NULL);

    rights_are("{}", "doc:1", 0, NULL);
    expect(NULL, "doc:1", 0);
}
END_TEST

START_TEST(test_sidecar)
{
    /* Readable with read on the base room, never writable through it. */
    rights_are("{\"doc:1\":\"rw\",\"doc:2\":\"r\"}", "eph:doc:1", R, "eph:doc:2", R, "eph:doc:3", 0, NULL);

    rights_are("{\"doc:*\":\"r\"}", "eph:doc:77", R, "eph:record:1", 0, NULL);

    /* Whatever the patterns say about the sidecar itself. */
    rights_are("{\"doc:1\":\"r\",\"eph:*\":\"\"}", "eph:doc:1", R, NULL);

    /* Denying a room denies its sidecar: "*" does not reach it directly. */
    rights_are("{\"*\":\"r\",\"doc:secret\":\"\"}", "doc:secret", 0, "eph:doc:secret", 0, "eph:doc:open", R,
               NULL);

    /* Sidecar patterns apply to all sidecars. */
    rights_are("{\"eph:*\":\"r\"}", "eph:doc:9", R, "doc:9", 0, NULL);

    /* Explicit patterns on the sidecar still grant their own rights. */
    rights_are("{\"eph:doc:5\":\"rw\"}", "eph:doc:5", RW, "doc:5", 0, NULL);
}
END_TEST

START_TEST(test_grant)
{
    stoa_perms_t *p = parse_ok("{\"doc:*\":\"rw\",\"group:x\":\"\"}");
    stoa_perms_grant(p, "user:ada", STOA_RIGHT_READ);
    expect(p, "user:ada", R);
    stoa_perms_grant(p, "group:x", STOA_RIGHT_READ);   /* an exact pattern stays as it is */
    expect(p, "group:x", 0);
    stoa_perms_grant(p, "doc:1", STOA_RIGHT_READ);     /* exact beats the wildcard */
    expect(p, "doc:1", R);
    expect(p, "doc:2", RW);
    stoa_perms_free(p);
}
END_TEST

START_TEST(test_bad_inputs)
{
    parse_bad("[]", MAXP);
    parse_bad("\"r\"", MAXP);
    parse_bad("42", MAXP);
    parse_bad("null", MAXP);
    parse_bad("not json", MAXP);
    parse_bad("{\"doc:1\":\"x\"}", MAXP);
    parse_bad("{\"doc:1\":\"w\"}", MAXP);
    parse_bad("{\"doc:1\":\"wr\"}", MAXP);
    parse_bad("{\"doc:1\":\"R\"}", MAXP);
    parse_bad("{\"doc:1\":1}", MAXP);
    parse_bad("{\"doc:1\":null}", MAXP);
    parse_bad("{\"doc:1\":true}", MAXP);
    parse_bad("{\"doc:1\":[\"r\"]}", MAXP);
    parse_bad("{\"doc:*:1\":\"r\"}", MAXP);    /* '*' in the middle */
    parse_bad("{\"*doc\":\"r\"}", MAXP);
    parse_bad("{\"**\":\"r\"}", MAXP);
    parse_bad("{\"ok:1\":\"r\",\"d*c:*\":\"r\"}", MAXP);   /* bad after good: no leak */
    parse_bad("{\"\":\"r\"}", MAXP);           /* empty pattern */
    parse_bad("{\"doc:12345\":\"r\"}", 8);     /* longer than max_pattern_bytes */
}
END_TEST

START_TEST(test_from_json_non_object)
{
    char err[128] = "";
    json_object *arr = json_object_new_array();
    ck_assert_ptr_null(stoa_perms_from_json(arr, MAXP, err, sizeof err));
    ck_assert_str_ne(err, "");
    err[0] = '\0';
    ck_assert_ptr_null(stoa_perms_from_json(NULL, MAXP, err, sizeof err));
    ck_assert_str_ne(err, "");
    json_object_put(arr);
}
END_TEST

static char *many_patterns(int n)
{
    size_t cap = (size_t)n * 24 + 8, len = 0;
    char *text = malloc(cap);
    text[len++] = '{';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s\"doc:%d\":\"r\"", i ? "," : "", i);
    text[len++] = '}';
    text[len] = '\0';
    return text;
}

START_TEST(test_too_many_patterns)
{
    char *text = many_patterns(STOA_PERM_MAX_PATTERNS);
    rights_are(text, "doc:0", R, "doc:255", R, "doc:256", 0, NULL);
    free(text);

    text = many_patterns(STOA_PERM_MAX_PATTERNS + 1);
    parse_bad(text, MAXP);
    free(text);
}
END_TEST

START_TEST(test_to_json_round_trip)
{
    const char *text = "{\"doc:123\":\"rw\",\"record:*\":\"r\",\"*\":\"\"}";
    json_object *want = json_tokener_parse(text), *got, *again_json;
    stoa_perms_t *p = parse_ok(text), *again;
    char err[128];
    got = stoa_perms_to_json(p);
    ck_assert_msg(json_object_equal(got, want), "to_json gave %s",
                  json_object_to_json_string_ext(got, JSON_C_TO_STRING_PLAIN));
    again = stoa_perms_from_json(got, MAXP, err, sizeof err);
    ck_assert_ptr_nonnull(again);
    expect(again, "doc:123", RW);
    expect(again, "record:z", R);
    expect(again, "other:1", 0);
    again_json = stoa_perms_to_json(again);
    ck_assert(json_object_equal(again_json, want));
    json_object_put(again_json);
    json_object_put(got);
    json_object_put(want);
    stoa_perms_free(p);
    stoa_perms_free(again);

    got = stoa_perms_to_json(NULL);
    ck_assert_int_eq(json_object_object_length(got), 0);
    json_object_put(got);
}
END_TEST

START_TEST(test_copy)
{
    stoa_perms_t *p = parse_ok("{\"doc:*\":\"rw\",\"doc:1\":\"\"}");
    stoa_perms_t *c = stoa_perms_copy(p);
    json_object *a, *b;
    ck_assert_ptr_ne(c, p);
    stoa_perms_free(p);   /* the copy stands alone */
    expect(c, "doc:2", RW);
    expect(c, "doc:1", 0);
    a = stoa_perms_to_json(c);
    b = json_tokener_parse("{\"doc:*\":\"rw\",\"doc:1\":\"\"}");
    ck_assert(json_object_equal(a, b));
    json_object_put(a);
    json_object_put(b);
    stoa_perms_free(c);
    stoa_perms_free(NULL);
}
END_TEST

/* A shared set outlives every holder but the last (ASan reports a use
 * after free or a leak when the count is wrong). */
START_TEST(test_ref)
{
    stoa_perms_t *p = parse_ok("{\"doc:*\":\"rw\"}");
    ck_assert_ptr_eq(stoa_perms_ref(p), p);
    ck_assert_ptr_eq(stoa_perms_ref(p), p);
    stoa_perms_free(p);
    stoa_perms_free(p);
    expect(p, "doc:1", RW);   /* one holder left */
    stoa_perms_free(p);
}
END_TEST

static Suite *perm_suite(void)
{
    Suite *s = suite_create("perm");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_exact);
    tcase_add_test(tc, test_wildcard);
    tcase_add_test(tc, test_longest_match_wins);
    tcase_add_test(tc, test_exact_beats_equal_wildcard);
    tcase_add_test(tc, test_empty_rights_deny);
    tcase_add_test(tc, test_sidecar);
    tcase_add_test(tc, test_grant);
    tcase_add_test(tc, test_bad_inputs);
    tcase_add_test(tc, test_from_json_non_object);
    tcase_add_test(tc, test_too_many_patterns);
    tcase_add_test(tc, test_to_json_round_trip);
    tcase_add_test(tc, test_copy);
    tcase_add_test(tc, test_ref);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(perm_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
