/* check_presence.c - unit tests of presence.c: RFC 7386 merge-patch. */
#include "stoa/presence.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static json_object *parse(const char *text)
{
    json_object *o;
    if (strcmp(text, "null") == 0)
        return NULL;
    o = json_tokener_parse(text);
    ck_assert_msg(o != NULL, "test JSON does not parse: %s", text);
    return o;
}

static char *plain(json_object *o)
{
    return strdup(o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : "null");
}

/* merge(original, patch) must equal result, leaving both inputs unchanged. */
static void check_merge(const char *original, const char *patch, const char *result)
{
    json_object *t = parse(original), *p = parse(patch), *want = parse(result), *got;
    char *t_before = plain(t), *p_before = plain(p), *t_after, *p_after, *got_text;

    got = stoa_presence_merge(t, p);
    got_text = plain(got);
    ck_assert_msg(json_object_equal(got, want), "merge(%s, %s) = %s, want %s", original, patch, got_text,
                  result);
    if (got && t)
        ck_assert_ptr_ne(got, t);
    t_after = plain(t);
    p_after = plain(p);
    ck_assert_str_eq(t_after, t_before);
    ck_assert_str_eq(p_after, p_before);

    free(t_before);
    free(p_before);
    free(t_after);
    free(p_after);
    free(got_text);
    json_object_put(got);
    json_object_put(t);
    json_object_put(p);
    json_object_put(want);
}

/* RFC 7386, Appendix A, every example. */
START_TEST(test_rfc7386_appendix_a)
{
    check_merge("{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}");
    check_merge("{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}");
    check_merge("{\"a\":\"b\"}", "{\"a\":null}", "{}");
    check_merge("{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}");
    check_merge("{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}");
    check_merge("{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}");
    check_merge("{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}");
    check_merge("{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}");
    check_merge("[\"a\",\"b\"]", "[\"c\",\"d\"]", "[\"c\",\"d\"]");
    check_merge("{\"a\":\"b\"}", "[\"c\"]", "[\"c\"]");
    check_merge("{\"a\":\"foo\"}", "null", "null");
    check_merge("{\"a\":\"foo\"}", "\"bar\"", "\"bar\"");
    check_merge("{\"e\":null}", "{\"a\":1}", "{\"e\":null,\"a\":1}");
    check_merge("[1,2]", "{\"a\":\"b\",\"c\":null}", "{\"a\":\"b\"}");
    check_merge("{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}");
}
END_TEST

/* The RFC 7386 section 3 example document. */
START_TEST(test_rfc7386_section3)
{
    check_merge("{\"title\":\"Goodbye!\",\"author\":{\"givenName\":\"John\",\"familyName\":\"Doe\"},"
                "\"tags\":[\"example\",\"sample\"],\"content\":\"This will be unchanged\"}",
                "{\"title\":\"Hello!\",\"phoneNumber\":\"+01-123-456-7890\",\"author\":{\"familyName\":null},"
                "\"tags\":[\"example\"]}",
                "{\"title\":\"Hello!\",\"author\":{\"givenName\":\"John\"},\"tags\":[\"example\"],"
                "\"content\":\"This will be unchanged\",\"phoneNumber\":\"+01-123-456-7890\"}");
}
END_TEST

START_TEST(test_presence_cases)
{
    check_merge("{\"cursor\":{\"line\":3,\"ch\":14},\"selection\":[1,2]}",
                "{\"cursor\":{\"line\":4},\"selection\":null}", "{\"cursor\":{\"line\":4,\"ch\":14}}");
    check_merge("{\"a\":1}", "{}", "{\"a\":1}");
    check_merge("{\"a\":{\"b\":1}}", "{\"a\":null}", "{}");
    check_merge("{\"a\":1}", "{\"a\":{\"b\":null,\"c\":2}}", "{\"a\":{\"c\":2}}");
    check_merge("{\"n\":null}", "{\"x\":true}", "{\"n\":null,\"x\":true}");
    check_merge("{}", "{\"missing\":null}", "{}");
    check_merge("{\"d\":1.5}", "{\"d\":2}", "{\"d\":2}");
}
END_TEST

START_TEST(test_null_target_is_empty_object)
{
    json_object *p = parse("{\"a\":1,\"b\":null}"), *want = parse("{\"a\":1}");
    json_object *got = stoa_presence_merge(NULL, p);
    ck_assert(json_object_equal(got, want));
    json_object_put(got);
    got = stoa_presence_merge(NULL, want);
    ck_assert_ptr_ne(got, want);   /* a copy, not the patch itself */
    ck_assert(json_object_equal(got, want));
    json_object_put(got);
    json_object_put(p);
    json_object_put(want);
}
END_TEST

START_TEST(test_result_is_independent)
{
    /* The result shares nothing with the inputs: changing it leaves them be. */
    json_object *t = parse("{\"a\":{\"b\":1},\"keep\":{\"k\":true}}");
    json_object *p = parse("{\"a\":{\"c\":{\"d\":2}}}");
    json_object *got = stoa_presence_merge(t, p), *a, *keep, *ta, *tkeep, *pa, *ga_c;
    ck_assert(json_object_object_get_ex(got, "a", &a));
    ck_assert(json_object_object_get_ex(got, "keep", &keep));
    ck_assert(json_object_object_get_ex(t, "a", &ta));
    ck_assert(json_object_object_get_ex(t, "keep", &tkeep));
    ck_assert(json_object_object_get_ex(p, "a", &pa));
    ck_assert(json_object_object_get_ex(a, "c", &ga_c));
    ck_assert_ptr_ne(a, ta);
    ck_assert_ptr_ne(keep, tkeep);
    ck_assert_ptr_ne(a, pa);
    json_object_object_add(a, "x", json_object_new_int(9));
    json_object_object_add(ga_c, "y", json_object_new_int(9));
    json_object_object_del(keep, "k");
    ck_assert_str_eq(json_object_to_json_string_ext(t, JSON_C_TO_STRING_PLAIN),
                     "{\"a\":{\"b\":1},\"keep\":{\"k\":true}}");
    ck_assert_str_eq(json_object_to_json_string_ext(p, JSON_C_TO_STRING_PLAIN), "{\"a\":{\"c\":{\"d\":2}}}");
    json_object_put(got);
    json_object_put(t);
    json_object_put(p);
}
END_TEST

START_TEST(test_size)
{
    const char *samples[] = {"{}", "{\"a\":1}", "{\"cursor\":{\"line\":3,\"ch\":14}}",
                             "{\"s\":\"caf\\u00e9 \\\"q\\\"\",\"arr\":[1,2,3],\"n\":null}"};
    json_object *o;
    ck_assert_uint_eq(stoa_presence_size(NULL), 2);
    o = json_object_new_object();
    ck_assert_uint_eq(stoa_presence_size(o), 2);
    json_object_object_add(o, "a", json_object_new_int(1));
    ck_assert_uint_eq(stoa_presence_size(o), strlen("{\"a\":1}"));
    json_object_object_add(o, "name", json_object_new_string("Ada"));
    ck_assert_uint_eq(stoa_presence_size(o), strlen("{\"a\":1,\"name\":\"Ada\"}"));
    json_object_put(o);
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        o = parse(samples[i]);
        /* Exactly the bytes of the plain (no whitespace) encoding. */
        ck_assert_uint_eq(stoa_presence_size(o), strlen(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN)));
        json_object_put(o);
    }
    /* Whitespace in the source text does not count. */
    o = parse("{  \"a\" :   1 ,\n \"b\": [ 1 , 2 ] }");
    ck_assert_uint_eq(stoa_presence_size(o), strlen("{\"a\":1,\"b\":[1,2]}"));
    json_object_put(o);
}
END_TEST

static Suite *presence_suite(void)
{
    Suite *s = suite_create("presence");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_rfc7386_appendix_a);
    tcase_add_test(tc, test_rfc7386_section3);
    tcase_add_test(tc, test_presence_cases);
    tcase_add_test(tc, test_null_target_is_empty_object);
    tcase_add_test(tc, test_result_is_independent);
    tcase_add_test(tc, test_size);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(presence_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
