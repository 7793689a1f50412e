/* jsontext.c - JSON text of a json-c value, byte for byte as json-c's
 * plain encoder writes it, without its cost (no printbuf per object, no
 * formatted printing of integers). */
#include "stoa/jsontext.h"
#include "stoa/util.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char **buf;
    size_t *cap;
    size_t len;
} enc_t;

static void enc_reserve(enc_t *e, size_t n)
{
    if (e->len + n + 1 > *e->cap) {
        size_t cap = (e->len + n + 1) * 2;
        if (cap < 64)
            cap = 64;
        *e->buf = stoa_xrealloc(*e->buf, cap);
        *e->cap = cap;
    }
}

static void enc_put(enc_t *e, const char *s, size_t n)
{
    enc_reserve(e, n);
    memcpy(*e->buf + e->len, s, n);
    e->len += n;
}

/* A string as json-c escapes it (json_escape_str, slashes escaped). */
static void enc_str(enc_t *e, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    enc_reserve(e, n + 2);
    (*e->buf)[e->len++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t k = 2;
        if (c >= 0x20 && c != '"' && c != '\\' && c != '/')
            continue;
        enc_put(e, s + start, i - start);
        start = i + 1;
        esc[0] = '\\';
        switch (c) {
        case '\b': esc[1] = 'b'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\f': esc[1] = 'f'; break;
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '/': esc[1] = '/'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            k = 6;
        }
        enc_put(e, esc, k);
    }
    enc_put(e, s + start, n - start);
    enc_put(e, "\"", 1);
}

static void enc_int(enc_t *e, int64_t v)
{
    char tmp[24], *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    enc_put(e, p, (size_t)(tmp + sizeof tmp - p));
}

/* A frozen value is a json-c string (its text stored inline) whose
 * serializer writes that text as it is; frozen_tag, as its userdata,
 * marks it. */
static const char frozen_tag = 0;

static int frozen_serialize(json_object *jso, struct printbuf *pb, int level, int flags)
{
    (void)level;
    (void)flags;
    return printbuf_memappend(pb, json_object_get_string(jso), json_object_get_string_len(jso));
}

json_object *stoa_json_frozen(json_object *obj)
{
    size_t len = 0;
    const char *text = json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN, &len);
    json_object *f = json_object_new_string_len(text, (int)len);
    json_object_put(obj);
    json_object_set_serializer(f, frozen_serialize, (void *)&frozen_tag, NULL);
    return f;
}

const char *stoa_json_frozen_text(json_object *v, size_t *len)
{
    if (!v || json_object_get_userdata(v) != &frozen_tag)
        return NULL;
    *len = (size_t)json_object_get_string_len(v);
    return json_object_get_string(v);
}

/* Whatever json-c itself must write (doubles, with their text kept from
 * the parse; integers above INT64_MAX): its own encoding of v alone. */
static void enc_jsonc(enc_t *e, json_object *v)
{
    size_t n = 0;
    const char *text = json_object_to_json_string_length(v, JSON_C_TO_STRING_PLAIN, &n);
    enc_put(e, text, n);
}

static void enc_value(enc_t *e, json_object *v)
{
    /* A frozen value's text as it is (json-c would keep a copy in a
     * buffer on the value for its lifetime); any other object with
     * userdata (a number kept as parsed) has json-c write it. */
    size_t flen;
    const char *ftext = stoa_json_frozen_text(v, &flen);
    if (ftext) {
        enc_put(e, ftext, flen);
        return;
    }
    if (v && json_object_get_userdata(v)) {
        enc_jsonc(e, v);
        return;
    }
    switch (json_object_get_type(v)) {
    case json_type_null:
        enc_put(e, "null", 4);
        break;
    case json_type_boolean:
        if (json_object_get_boolean(v))
            enc_put(e, "true", 4);
        else
            enc_put(e, "false", 5);
        break;
    case json_type_int: {
        int64_t i = json_object_get_int64(v);
        if (i == INT64_MAX)
            enc_jsonc(e, v);   /* perhaps an unsigned one above it */
        else
            enc_int(e, i);
        break;
    }
    case json_type_string:
        enc_str(e, json_object_get_string(v), (size_t)json_object_get_string_len(v));
        break;
    case json_type_object: {
        bool first = true;
        enc_put(e, "{", 1);
        json_object_object_foreach(v, key, val) {
            if (!first)
                enc_put(e, ",", 1);
            first = false;
            enc_str(e, key, strlen(key));
            enc_put(e, ":", 1);
            enc_value(e, val);
        }
        enc_put(e, "}", 1);
        break;
    }
    case json_type_array: {
        size_t n = json_object_array_length(v);
        enc_put(e, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                enc_put(e, ",", 1);
            enc_value(e, json_object_array_get_idx(v, i));
        }
        enc_put(e, "]", 1);
        break;
    }
    default:   /* double */
        enc_jsonc(e, v);
        break;
    }
}

size_t stoa_json_encode(json_object *v, char **buf, size_t *cap)
{
    enc_t e = {buf, cap, 0};
    enc_value(&e, v);
    enc_reserve(&e, 0);
    (*buf)[e.len] = '\0';
    return e.len;
}


/* ---- scanning ----
 *
 * One recursive scanner, in two modes: well-formed (the bus's payloads,
 * whitespace allowed, numbers as json-c takes them) and canonical (the
 * text the encoder above would write for json-c's parse of it). */

const char *stoa_json_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* After the JSON string starting at p (a quote), or NULL. Canonical: only
 * the escapes enc_str writes, and '/' always escaped. */
static const char *scan_string(const char *p, const char *end, bool canon)
{
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20 || (c == '/' && canon))
            return NULL;
        if (c == '\\') {
            if (++p >= end)
                return NULL;
            switch (*p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                break;
            case 'u':   /* decoded by json-c, and not written back alike */
                if (canon || end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4]))
                    return NULL;
                p += 4;
                break;
            default:
                return NULL;
            }
        }
    }
    return NULL;
}

const char *stoa_json_digits(const char *p, const char *end)
{
    if (p >= end || !is_digit(*p))
        return NULL;
    while (p < end && is_digit(*p))
        p++;
    return p;
}

/* A number. Well-formed: JSON's, and also what json-c's parser takes and
 * keeps as written ("1.", NaN, Infinity, -Infinity). Canonical: JSON's
 * grammar; an integer (json-c re-prints it) of at most 18 digits and not
 * -0, so that it prints back as written. */
static const char *scan_number(const char *p, const char *end, bool canon)
{
    const char *start = p, *int_end;
    bool neg = p < end && *p == '-', frac = false;
    if (neg)
        p++;
    if (!canon && end - p >= 8 && memcmp(p, "Infinity", 8) == 0)
        return p + 8;
    if (p < end && *p == '0')
        p++;
    else if (!(p = stoa_json_digits(p, end)))
        return NULL;
    int_end = p;
    if (p < end && *p == '.') {
        frac = true;
        for (p++; p < end && is_digit(*p); p++)
            ;
        if (canon && p[-1] == '.')
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        frac = true;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!(p = stoa_json_digits(p, end)))
            return NULL;
    }
    if (canon && !frac && (int_end - start - neg > 18 || (neg && int_end[-1] == '0' && int_end - start == 2)))
        return NULL;
    return p;
}

static const char *scan_value(const char *p, const char *end, int depth, bool canon);

/* After the object or array at p ('{' or '['), or NULL. Canonical: no
 * whitespace, and an object's keys all different. */
static const char *scan_container(const char *p, const char *end, int depth, bool canon)
{
    bool obj = *p == '{';
    char close = obj ? '}' : ']';
    const char *keys[STOA_JSON_CANONICAL_KEYS];
    size_t key_len[STOA_JSON_CANONICAL_KEYS], nkeys = 0;

    if (depth <= 0)
        return NULL;
    p = canon ? p + 1 : stoa_json_ws(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (obj) {
            const char *key = canon ? p : (p = stoa_json_ws(p, end));
            if (p >= end || *p != '"' || !(p = scan_string(p, end, canon)))
                return NULL;
            if (canon) {
                if (nkeys == STOA_JSON_CANONICAL_KEYS)
                    return NULL;
                for (size_t i = 0; i < nkeys; i++)   /* one spelling per key: equal text is an equal key */
                    if (key_len[i] == (size_t)(p - key) && memcmp(keys[i], key, key_len[i]) == 0)
                        return NULL;
                keys[nkeys] = key;
                key_len[nkeys++] = (size_t)(p - key);
            } else {
                p = stoa_json_ws(p, end);
            }
            if (p >= end || *p != ':')
                return NULL;
            p++;
        }
        if (!(p = scan_value(p, end, depth - 1, canon)))
            return NULL;
        if (!canon)
            p = stoa_json_ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == close)
            return p + 1;
        if (*p != ',')
            return NULL;
        p++;
    }
}

static const char *scan_value(const char *p, const char *end, int depth, bool canon)
{
    if (!canon)
        p = stoa_json_ws(p, end);
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"':
        return scan_string(p, end, canon);
    case '{':
    case '[':
        return scan_container(p, end, depth, canon);
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    case 'N':
        return !canon && end - p >= 3 && memcmp(p, "NaN", 3) == 0 ? p + 3 : NULL;
    default:
        return scan_number(p, end, canon);
    }
}

const char *stoa_json_skip(const char *p, const char *end, int depth)
{
    return scan_value(p, end, depth, false);
}

const char *stoa_json_canonical(const char *p, const char *end, int depth)
{
    return scan_value(p, end, depth, true);
}
