/* check_presence.c - unit tests of presence.c: RFC 7386 merge-patch. */
#include "stoa/presence.h"
#include "stoa/wire.h"

#include <check.h>
#include <stdint.h>
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

/* merge_inplace(original, patch) must give what merge gives, byte for
 * byte (member order too), leave the patch unchanged and share nothing
 * with it. */
static void check_inplace(const char *original, const char *patch)
{
    json_object *t = parse(original), *p = parse(patch), *want = stoa_presence_merge(t, p);
    char *p_before = plain(p), *want_text = plain(want), *got_text, *p_after;
    stoa_presence_merge_inplace(&t, p);
    got_text = plain(t);
    ck_assert_msg(strcmp(got_text, want_text) == 0, "inplace(%s, %s) = %s, want %s", original, patch, got_text,
                  want_text);
    p_after = plain(p);
    ck_assert_str_eq(p_after, p_before);
    /* Change everything in the patch: the result must not move. */
    if (json_object_is_type(p, json_type_object)) {
        json_object_object_foreach(p, key, val) {
            if (json_object_is_type(val, json_type_object))
                json_object_object_add(val, "zz", json_object_new_int(9));
            else if (json_object_is_type(val, json_type_array))
                json_object_array_add(val, json_object_new_int(9));
            else if (json_object_is_type(val, json_type_int))
                json_object_set_int64(val, 999);
            else if (json_object_is_type(val, json_type_string))
                json_object_set_string(val, "changed");
            (void)key;
        }
    }
    free(got_text);
    got_text = plain(t);
    ck_assert_str_eq(got_text, want_text);
    free(p_before);
    free(p_after);
    free(want_text);
    free(got_text);
    json_object_put(t);
    json_object_put(p);
    json_object_put(want);
}

START_TEST(test_inplace_rfc7386)
{
    /* RFC 7386 Appendix A, and then some */
    check_inplace("{\"a\":\"b\"}", "{\"a\":\"c\"}");
    check_inplace("{\"a\":\"b\"}", "{\"b\":\"c\"}");
    check_inplace("{\"a\":\"b\"}", "{\"a\":null}");
    check_inplace("{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}");
    check_inplace("{\"a\":[\"b\"]}", "{\"a\":\"c\"}");
    check_inplace("{\"a\":\"c\"}", "{\"a\":[\"b\"]}");
    check_inplace("{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}");
    check_inplace("{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}");
    check_inplace("[\"a\",\"b\"]", "[\"c\",\"d\"]");
    check_inplace("{\"a\":\"b\"}", "[\"c\"]");
    check_inplace("{\"a\":\"foo\"}", "null");
    check_inplace("{\"a\":\"foo\"}", "\"bar\"");
    check_inplace("{\"e\":null}", "{\"a\":1}");
    check_inplace("[1,2]", "{\"a\":\"b\",\"c\":null}");
    check_inplace("{}", "{\"a\":{\"bb\":{\"ccc\":null}}}");
    check_inplace("null", "{\"a\":1}");
    /* in-place scalar overwrites and type changes */
    check_inplace("{\"n\":1,\"b\":true,\"d\":1.5,\"s\":\"x\"}", "{\"n\":2,\"b\":false,\"d\":2.5,\"s\":\"yy\"}");
    check_inplace("{\"n\":1}", "{\"n\":18446744073709551615}");
    check_inplace("{\"n\":1}", "{\"n\":9223372036854775807}");
    check_inplace("{\"n\":1}", "{\"n\":-9223372036854775808}");
    check_inplace("{\"n\":18446744073709551615}", "{\"n\":5}");
    check_inplace("{\"n\":1}", "{\"n\":1.0}");
    check_inplace("{\"n\":1.0}", "{\"n\":1}");
    check_inplace("{\"n\":1}", "{\"n\":true}");
    check_inplace("{\"c\":{\"x\":1,\"y\":2}}", "{\"c\":{\"x\":3,\"z\":{\"q\":null,\"r\":[null]}}}");
    check_inplace("{\"c\":{\"x\":1}}", "{\"c\":5}");
    check_inplace("{\"c\":5}", "{\"c\":{\"x\":null,\"y\":{}}}");
    check_inplace("{\"a\":1,\"b\":2,\"c\":3}", "{\"b\":null,\"d\":4,\"a\":0}");
}
END_TEST

/* The presence encoders from encoded states equal the json-c ones, byte
 * for byte, also where strings need escaping. */
START_TEST(test_wire_presence_text)
{
    static const char *const rooms[] = {"doc:1", "a:b.c_~@+=-:x", "we/ird:\"q\"\\\x01\xc3\xa9"};
    static const char *const states[] = {"{}", "{\"t\":1763797040123456789,\"cursor\":{\"x\":1,\"y\":2}}",
                                         "{\"s\":\"\\u00e9\\/\\\"\\n\",\"d\":0.1,\"a\":[1,null,true]}"};
    static const char *const peer_ids[] = {"abcdefghijkl", "0123456789ab", "p/\"x"};
    for (size_t r = 0; r < sizeof rooms / sizeof rooms[0]; r++) {
        json_object *list = json_object_new_array();
        stoa_wire_state_t ws[3];
        stoa_msg_t *a, *b;
        for (size_t i = 0; i < 3; i++) {
            json_object *st = parse(states[i]), *e = json_object_new_object();
            size_t len = 0;
            const char *text = json_object_to_json_string_length(st, JSON_C_TO_STRING_PLAIN, &len);
            ws[i] = (stoa_wire_state_t){peer_ids[i], strdup(text), len};
            a = stoa_wire_presence(rooms[r], peer_ids[i], st);
            b = stoa_wire_presence_text(rooms[r], &ws[i]);
            ck_assert_str_eq(stoa_msg_text(b), stoa_msg_text(a));
            ck_assert_uint_eq(stoa_msg_len(b), stoa_msg_len(a));
            stoa_msg_unref(a);
            stoa_msg_unref(b);
            json_object_object_add(e, "peer", json_object_new_string(peer_ids[i]));
            json_object_object_add(e, "state", st);
            json_object_array_add(list, e);
        }
        a = stoa_wire_presence_batch(rooms[r], list);
        b = stoa_wire_presence_batch_text(rooms[r], ws, 3);
        ck_assert_str_eq(stoa_msg_text(b), stoa_msg_text(a));
        ck_assert_uint_eq(stoa_msg_len(b), stoa_msg_len(a));
        stoa_msg_unref(a);
        stoa_msg_unref(b);
        for (size_t i = 0; i < 3; i++)
            free((char *)ws[i].state);
        json_object_put(list);
    }
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
    tcase_add_test(tc, test_inplace_rfc7386);
    tcase_add_test(tc, test_wire_presence_text);
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
