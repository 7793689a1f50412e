/* jsontext.h - JSON text of json-c values, fast and byte-identical.
 *
 * One encoder for every place that needs a value's text often: presence
 * states (their size limit, and the presence messages they go into) and
 * the events the hub sends to other instances (whose parts the bus
 * splices into client messages next to text json-c wrote, so the bytes
 * must agree).
 */
#ifndef STOA_JSONTEXT_H
#define STOA_JSONTEXT_H

#include <json-c/json.h>
#include <stddef.h>

/* Encode v (borrowed; NULL is null) as plain JSON text, byte for byte
 * what json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) gives,
 * into *buf (grown with realloc as needed, *cap its size; owned by the
 * caller; NUL-terminated). Returns the text's length. Doubles, integers
 * above INT64_MAX and objects with userdata (their own serializer) are
 * written by json-c. */
size_t stoa_json_encode(json_object *v, char **buf, size_t *cap);

#endif
