/* check_jsontext.c - unit tests of jsontext.c: the encoder writes what
 * json-c writes, and the scanner's two modes (well-formed, canonical)
 * agree with json-c's strict parser; and of the text encoders that splice
 * encoded parts (stoa_wire_ephemeral_text). */
#include "stoa/jsontext.h"
#include "stoa/wire.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The encoder writes what json-c writes, byte for byte. */
static void check_encode(json_object *v)
{
    char *buf = NULL;
    size_t cap = 0, len = stoa_json_encode(v, &buf, &cap);
    const char *want = v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) : "null";
    ck_assert_msg(strcmp(buf, want) == 0, "encode: %s, json-c: %s", buf, want);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_uint_gt(cap, len);
    free(buf);
}

START_TEST(test_encode_like_json_c)
{
    static const char *const texts[] = {
        "{}", "[]", "null", "true", "false", "0", "-1", "9223372036854775807", "-9223372036854775808",
        "18446744073709551615", "9223372036854775808", "1.5", "0.1", "1e300", "-0.0", "1.0", "123456789.125",
        "\"\"", "\"plain\"", "\"a/b\\\\c\\\"d\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\\u00e9\\u2603\\ud83d\\ude00\"",
        "{\"t\":1763797040123456789,\"cursor\":{\"x\":1,\"y\":2}}",
        "{\"a\":[1,null,true,{\"b\":[]},\"x\"],\"k/\\\"ey\":{\"\":0},\"d\":-2.5e-3}",
        "[[[[{\"deep\":[1,[2,[3]]]}]]]]",
    };
    char all[130];
    json_object *o;
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        json_object *v = strcmp(texts[i], "null") == 0 ? NULL : json_tokener_parse(texts[i]);
        ck_assert_msg(v || strcmp(texts[i], "null") == 0, "does not parse: %s", texts[i]);
        check_encode(v);
        json_object_put(v);
    }
    /* every byte from 1 to 127 in a string and in a key; doubles made by
     * json-c rather than parsed; a string with a NUL inside */
    for (int c = 1; c < 128; c++)
        all[c - 1] = (char)c;
    all[127] = '\0';
    o = json_object_new_object();
    json_object_object_add(o, all, json_object_new_string(all));
    json_object_object_add(o, "d1", json_object_new_double(0.1));
    json_object_object_add(o, "d2", json_object_new_double(1e21));
    json_object_object_add(o, "d3", json_object_new_double(3.0));
    json_object_object_add(o, "u", json_object_new_uint64(UINT64_MAX));
    json_object_object_add(o, "i", json_object_new_int(-7));
    json_object_object_add(o, "nul", json_object_new_string_len("a\0b", 3));
    json_object_object_add(o, "n", NULL);
    check_encode(o);
    json_object_put(o);
}
END_TEST


/* json-c's strict parse of text (len bytes, the whole of it), or NULL. */
static json_object *strict_parse(const char *text, size_t len, bool *ok)
{
    struct json_tokener *tok = json_tokener_new_ex(64);
    json_object *v;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    v = json_tokener_parse_ex(tok, text, (int)len);
    if (!v && json_tokener_get_error(tok) == json_tokener_continue) {
        v = json_tokener_parse_ex(tok, "", 1);   /* a number at the end completes */
        *ok = json_tokener_get_error(tok) == json_tokener_success;
    } else {
        *ok = json_tokener_get_error(tok) == json_tokener_success && json_tokener_get_parse_end(tok) == len;
    }
    json_tokener_free(tok);
    if (!*ok) {
        json_object_put(v);
        v = NULL;
    }
    return v;
}

/* Canonical text is what the encoder writes for json-c's parse of it. */
static void check_canonical(const char *text)
{
    const char *end = text + strlen(text);
    char *buf = NULL;
    size_t cap = 0;
    bool ok;
    json_object *v = strict_parse(text, strlen(text), &ok);
    ck_assert_msg(stoa_json_canonical(text, end, 16) == end, "not taken as canonical: %s", text);
    ck_assert_msg(stoa_json_skip(text, end, 16) == end, "not taken as well-formed: %s", text);
    ck_assert_msg(ok, "json-c does not parse %s", text);
    stoa_json_encode(v, &buf, &cap);
    ck_assert_msg(strcmp(buf, text) == 0, "%s encodes back as %s", text, buf);
    free(buf);
    json_object_put(v);
}

/* Not canonical as a whole (it may still be JSON). */
static void check_not_canonical(const char *text)
{
    const char *end = text + strlen(text);
    ck_assert_msg(stoa_json_canonical(text, end, 16) != end, "taken as canonical: %s", text);
}

START_TEST(test_canonical_cases)
{
    static const char *const yes[] = {
        "{}", "[]", "null", "true", "false", "0", "-1", "123456789012345678", "-123456789012345678",
        "1.5", "1.50", "-0.0", "0.1", "1e5", "1E+2", "2.5e-3", "123456789012345678901234.5",
        "\"\"", "\"plain\"", "\"a\\/b\"", "\"q\\\"b\\\\s\\b\\f\\n\\r\\t\"", "\"\xc3\xa9\xe2\x98\x83\x7f\"",
        "{\"t\":1763797040123456,\"cursor\":{\"x\":1,\"y\":2}}", "{\"a\":1,\"A\":2,\"b\":{\"a\":3}}",
        "[[],[{}],[1,\"x\",null,true,false,-2.5]]", "{\"\":0}", "[1,1,1]",
    };
    static const char *const no[] = {
        " 1", "[1, 2]", "{\"a\" :1}", "{\"a\":1 }", "\"a/b\"", "\"\\u00e9\"", "\"\\u0001\"", "-0", "01", "1.",
        ".5", "1e", "1234567890123456789", "-1234567890123456789", "9223372036854775807", "{\"a\":1,\"a\":2}",
        "{\"a\":{\"b\":1,\"b\":1}}", "NaN", "Infinity", "-Infinity", "True", "nul", "\"x", "\"\t\"", "[1,]", "{,}",
        "{\"\\/\":1,\"\\/\":2}", "'a'", "",
    };
    char many[1024];
    size_t n = 0;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        check_canonical(yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        check_not_canonical(no[i]);
    /* STOA_JSON_CANONICAL_KEYS keys are canonical; one more is not */
    many[n++] = '{';
    for (int i = 0; i < STOA_JSON_CANONICAL_KEYS; i++)
        n += (size_t)snprintf(many + n, sizeof many - n, "%s\"k%d\":%d", i ? "," : "", i, i);
    many[n++] = '}';
    many[n] = '\0';
    check_canonical(many);
    n--;
    n += (size_t)snprintf(many + n, sizeof many - n, ",\"k%d\":0}", STOA_JSON_CANONICAL_KEYS);
    check_not_canonical(many);
}
END_TEST

START_TEST(test_depth)
{
    const char *v = "[[[1]]]", *end = v + strlen(v);
    ck_assert_ptr_eq(stoa_json_canonical(v, end, 3), end);
    ck_assert_ptr_null(stoa_json_canonical(v, end, 2));
    ck_assert_ptr_eq(stoa_json_skip(v, end, 3), end);
    ck_assert_ptr_null(stoa_json_skip(v, end, 2));
    ck_assert_ptr_eq(stoa_json_canonical(v + 3, v + 4, 0), v + 4);   /* a scalar needs no depth */
    {
        const char *e = "[]";
        ck_assert_ptr_null(stoa_json_canonical(e, e + 2, 0));
    }
}
END_TEST

START_TEST(test_skip)
{
    static const char *const yes[] = {
        " {\"a\" : [1, 2.5, \"x\\u00e9\"] , \"b\":{}}", "\t\r\n 1", "NaN", "-Infinity", "1.", "\"a/b\"",
    };
    static const char *const no[] = {"{\"a\":}", "[1 2]", "\"\\x\"", "\"\\u12\"", "tru", "{\"a\" 1}", "  ", "[1,]"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        const char *end = yes[i] + strlen(yes[i]);
        ck_assert_msg(stoa_json_skip(yes[i], end, 8) == end, "not taken as well-formed: %s", yes[i]);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        const char *end = no[i] + strlen(no[i]);
        ck_assert_msg(stoa_json_skip(no[i], end, 8) != end, "taken as well-formed: %s", no[i]);
    }
    {
        const char *w = "  \t\n\rx";
        ck_assert_ptr_eq(stoa_json_ws(w, w + strlen(w)), w + 5);
        ck_assert_ptr_eq(stoa_json_ws(w, w + 2), w + 2);
    }
}
END_TEST

/* ---- random texts ---- */

static unsigned rng_state = 12345;

static unsigned rnd(unsigned n)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 8) % n;
}

typedef struct {
    char buf[4096];
    size_t len;
} text_t;

static void put(text_t *t, const char *s)
{
    size_t n = strlen(s);
    if (t->len + n < sizeof t->buf) {
        memcpy(t->buf + t->len, s, n);
        t->len += n;
    }
}

/* Whitespace now and then. */
static void maybe_ws(text_t *t)
{
    if (rnd(40) == 0)
        put(t, rnd(2) ? " " : "\n");
}

static void gen_string(text_t *t)
{
    static const char *const parts[] = {"a", "b", "key", "/", "\\/", "\\\"", "\\\\", "\\n", "\\t", "\\u00e9",
                                        "\\u0001", "\xc3\xa9", "\x7f", " ", "\\x"};
    unsigned n = rnd(4);
    put(t, "\"");
    for (unsigned i = 0; i < n; i++)
        put(t, rnd(4) ? parts[rnd(3)] : parts[rnd(sizeof parts / sizeof parts[0])]);
    put(t, "\"");
}

static void gen_value(text_t *t, int depth)
{
    static const char *const numbers[] = {"0", "12", "-7", "1.5", "-0.0", "1e5", "2.5E-3", "123456789012345678",
                                          "-0", "007", "1.", "1234567890123456789", ".5", "1e", "-"};
    static const char *const literals[] = {"true", "false", "null", "NaN", "True"};
    unsigned kind = rnd(depth > 0 ? 6 : 3);
    maybe_ws(t);
    switch (kind) {
    case 0:
        gen_string(t);
        break;
    case 1:
        put(t, rnd(4) ? numbers[rnd(8)] : numbers[rnd(sizeof numbers / sizeof numbers[0])]);
        break;
    case 2:
        put(t, rnd(8) ? literals[rnd(3)] : literals[rnd(sizeof literals / sizeof literals[0])]);
        break;
    case 3:
    case 4: {
        unsigned n = rnd(4);
        put(t, "{");
        for (unsigned i = 0; i < n; i++) {
            static const char *const keys[] = {"\"a\"", "\"b\"", "\"c\"", "\"d\"", "\"e\"", "\"\\/\"", "\"x y\""};
            if (i)
                put(t, ",");
            maybe_ws(t);
            put(t, keys[rnd(sizeof keys / sizeof keys[0])]);
            maybe_ws(t);
            put(t, ":");
            gen_value(t, depth - 1);
            maybe_ws(t);
        }
        put(t, "}");
        break;
    }
    default: {
        unsigned n = rnd(4);
        put(t, "[");
        for (unsigned i = 0; i < n; i++) {
            if (i)
                put(t, ",");
            gen_value(t, depth - 1);
            maybe_ws(t);
        }
        put(t, "]");
    }
    }
}

/* Over many random texts (valid or not, canonical or not): whatever the
 * scanner takes as canonical json-c parses and the encoder writes back
 * byte for byte; whatever json-c parses the scanner takes as well-formed.
 * Both kinds must come up often, or the test proves nothing. */
START_TEST(test_random_texts)
{
    unsigned canonical = 0, parsed_not_canonical = 0, rejected = 0;
    for (int i = 0; i < 50000; i++) {
        text_t t = {.len = 0};
        const char *end;
        bool ok;
        json_object *v;
        gen_value(&t, 4);
        t.buf[t.len] = '\0';
        end = t.buf + t.len;
        v = strict_parse(t.buf, t.len, &ok);
        if (stoa_json_canonical(t.buf, end, 16) == end) {
            char *buf = NULL;
            size_t cap = 0;
            canonical++;
            ck_assert_msg(ok, "canonical, but json-c does not parse it: %s", t.buf);
            stoa_json_encode(v, &buf, &cap);
            ck_assert_msg(strcmp(buf, t.buf) == 0, "canonical %s encodes back as %s", t.buf, buf);
            free(buf);
        } else if (ok) {
            parsed_not_canonical++;
        } else {
            rejected++;
        }
        if (ok)
            ck_assert_msg(stoa_json_skip(t.buf, end, 16) == end, "json-c parses it, skip does not: %s", t.buf);
        json_object_put(v);
    }
    ck_assert_uint_gt(canonical, 5000);
    ck_assert_uint_gt(parsed_not_canonical, 2000);
    ck_assert_uint_gt(rejected, 2000);
}
END_TEST

/* A frozen value encodes to the text it was made from, by the encoder
 * and by json-c alike, wherever it is embedded. */
START_TEST(test_frozen)
{
    const char *user = "{\"id\":\"ada\",\"name\":\"Ada \\\"L\\\"\",\"color\":\"#fff\",\"n\":[1,2.5,null]}";
    json_object *f = stoa_json_frozen(json_tokener_parse(user)), *o = json_object_new_object();
    char *buf = NULL;
    size_t cap = 0, len, n = 0;
    ck_assert_str_eq(stoa_json_frozen_text(f, &n), user);
    ck_assert_uint_eq(n, strlen(user));
    ck_assert_ptr_null(stoa_json_frozen_text(o, &n));
    ck_assert_ptr_null(stoa_json_frozen_text(NULL, &n));
    json_object_object_add(o, "u", json_object_get(f));
    json_object_object_add(o, "x", json_object_new_int(1));
    len = stoa_json_encode(o, &buf, &cap);
    ck_assert_str_eq(buf, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    ck_assert_uint_eq(len, strlen(buf));
    ck_assert_ptr_nonnull(strstr(buf, user));
    free(buf);
    json_object_put(o);
    json_object_put(f);
}
END_TEST

/* stoa_wire_ephemeral_text gives stoa_wire_ephemeral's bytes. */
START_TEST(test_wire_ephemeral_text)
{
    static const char *const datas[] = {"null", "{\"x\":1,\"s\":\"a\\/b\"}", "[1,2.50,\"\xc3\xa9\"]", "\"\""};
    static const char *const users[] = {NULL, "{\"id\":\"ada\",\"name\":\"Ada \\\"L\\\"\",\"color\":\"#fff\"}"};
    static const char *const rooms[] = {"doc:1", "eph:doc:a.b~c@d+e=f-g"};
    char big[9000];
    memset(big, 'x', sizeof big);
    big[0] = '"';
    big[sizeof big - 2] = '"';
    big[sizeof big - 1] = '\0';
    for (size_t d = 0; d <= sizeof datas / sizeof datas[0]; d++)
        for (size_t u = 0; u < 2; u++)
            for (size_t r = 0; r < 2; r++) {
                bool ok;
                const char *text = d < sizeof datas / sizeof datas[0] ? datas[d] : big;
                json_object *data = strict_parse(text, strlen(text), &ok);
                json_object *user = users[u] ? json_tokener_parse(users[u]) : NULL;
                char *buf = NULL;
                size_t cap = 0, len = stoa_json_encode(data, &buf, &cap);
                stoa_msg_t *a, *b;
                ck_assert(ok);
                if (u && r)
                    user = stoa_json_frozen(user);   /* as sessions hold it */
                a = stoa_wire_ephemeral(rooms[r], "AbCdEf123456", user, data);
                b = stoa_wire_ephemeral_text(rooms[r], "AbCdEf123456", user, buf, len);
                ck_assert_str_eq(stoa_msg_text(b), stoa_msg_text(a));
                ck_assert_uint_eq(stoa_msg_len(b), stoa_msg_len(a));
                stoa_msg_unref(a);
                stoa_msg_unref(b);
                free(buf);
                json_object_put(data);
                json_object_put(user);
            }
}
END_TEST

static Suite *jsontext_suite(void)
{
    Suite *s = suite_create("jsontext");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_encode_like_json_c);
    tcase_add_test(tc, test_canonical_cases);
    tcase_add_test(tc, test_depth);
    tcase_add_test(tc, test_skip);
    tcase_add_test(tc, test_random_texts);
    tcase_add_test(tc, test_frozen);
    tcase_add_test(tc, test_wire_ephemeral_text);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(jsontext_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
