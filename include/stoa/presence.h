/* presence.h - a peer's presence state and JSON merge-patch (RFC 7386). */
#ifndef STOA_PRESENCE_H
#define STOA_PRESENCE_H

#include <json-c/json.h>
#include <stddef.h>

/* Apply the merge-patch `patch` (borrowed) to `target` (borrowed, may be
 * NULL for an empty object) per RFC 7386: members set to null are removed,
 * objects merge recursively, anything else replaces. Neither input is
 * changed. Returns a new object owned by the caller. */
json_object *stoa_presence_merge(json_object *target, json_object *patch);

/* The same merge, applied to *target in place: *target (may be NULL for
 * an empty object) must be owned by the caller alone (no other reference
 * to it or to anything in it), and may be replaced (when patch is not an
 * object). patch (borrowed) is not changed and nothing in the result
 * shares anything with it: values are copied, or, where the types match
 * (integers, booleans), overwritten in place. Members set to null are
 * removed, objects merge recursively (members of a patch object added
 * where the target has none lose their null members too), anything else
 * replaces. */
void stoa_presence_merge_inplace(json_object **target, json_object *patch);


/* Bytes of the plain JSON encoding of state. */
size_t stoa_presence_size(json_object *state);

#endif
