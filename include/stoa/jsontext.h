/* jsontext.h - JSON text of json-c values, fast and byte-identical, and
 * JSON text checked without building a value.
 *
 * One encoder for every place that needs a value's text often: presence
 * states (their size limit, and the presence messages they go into) and
 * the events the hub sends to other instances (whose parts the bus
 * splices into client messages next to text json-c wrote, so the bytes
 * must agree).
 *
 * One scanner for text that need not become a json-c tree: the bus's
 * payloads (well-formed JSON), and the data of a client's ephemeral
 * message, which can be relayed as it came when it is already in the form
 * the encoder would write (canonical).
 */
#ifndef STOA_JSONTEXT_H
#define STOA_JSONTEXT_H

#include <json-c/json.h>
#include <stddef.h>

/* Encode v (borrowed; NULL is null) as plain JSON text, byte for byte
 * what json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) gives,
 * into *buf (grown with realloc as needed, *cap its size; owned by the
 * caller; NUL-terminated). Returns the text's length. A frozen value
 * (stoa_json_frozen) is written as its text; doubles, integers above
 * INT64_MAX and other objects with userdata (their own serializer) are
 * written by json-c. */
size_t stoa_json_encode(json_object *v, char **buf, size_t *cap);

/* A compact stand-in for obj (ownership taken) that serializes to the
 * same JSON text wherever it is embedded (json-c's serializer and
 * stoa_json_encode alike), for values that are only ever sent, never read
 * (a session's user): one json-c string holding the text in its own
 * allocation, instead of a tree. Owned by the caller. */
json_object *stoa_json_frozen(json_object *obj);
/* A frozen value's text and its length, or NULL when v is not one
 * (borrowed from v; nothing is allocated, nor kept on v). */
const char *stoa_json_frozen_text(json_object *v, size_t *len);

/* After the JSON whitespace at p (p itself when there is none). */
const char *stoa_json_ws(const char *p, const char *end);

/* After the decimal digits at p (at least one), or NULL. */
const char *stoa_json_digits(const char *p, const char *end);

/* After the JSON value at p (whitespace before it skipped) when one is
 * well-formed before end, nested at most depth deep (a scalar is depth 0);
 * NULL otherwise. Numbers json-c parses and keeps as written ("1.", NaN,
 * Infinity, -Infinity) count as well-formed. Allocates nothing. */
const char *stoa_json_skip(const char *p, const char *end, int depth);

/* Most keys an object may have to be canonical (each is compared with the
 * others). */
#define STOA_JSON_CANONICAL_KEYS 32

/* After the JSON value at p (nothing before it) when it is canonical:
 * the exact text stoa_json_encode writes for what json-c's strict parser
 * makes of it, so that the text can stand for the value. That is: no
 * whitespace; no key twice in an object, and at most
 * STOA_JSON_CANONICAL_KEYS keys; strings with no raw '/' or control
 * character and no escape but \" \\ \/ \b \f \n \r \t (so no \u);
 * integers of at most 18 digits, not -0, without leading zeros; other
 * numbers in JSON's grammar (json-c keeps their text); nested at most
 * depth deep. NULL otherwise, which does not mean invalid: json-c decides
 * that. Allocates nothing. */
const char *stoa_json_canonical(const char *p, const char *end, int depth);

#endif
