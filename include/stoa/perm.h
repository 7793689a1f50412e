/* perm.h - room rights granted by a token.
 *
 * A grant is a JSON object mapping room patterns to rights, for example
 * {"doc:123": "rw", "record:*": "r"}. A pattern is a room name, or a
 * prefix ending in '*' ("*" alone matches every room). Rights are "r"
 * (read: join, see presence, send own presence and ephemeral messages),
 * "rw" (read and write: document updates and snapshots) or "" (none).
 * For a room the longest matching pattern decides, an exact name beating
 * any wildcard. The sidecar "eph:<room>" is readable by anyone who can
 * read <room>; beyond that only patterns starting with "eph:" apply to
 * sidecars ("*" reaches a sidecar only through its base room, so denying
 * a room denies its sidecar).
 */
#ifndef STOA_PERM_H
#define STOA_PERM_H

#include <json-c/json.h>
#include <stddef.h>

enum { STOA_RIGHT_READ = 1u, STOA_RIGHT_WRITE = 2u };

#define STOA_PERM_MAX_PATTERNS 256

typedef struct stoa_perms stoa_perms_t;

/* Build rights from a JSON object (borrowed). Returns a new set owned by
 * the caller, or NULL with a message in err when the object is malformed
 * (not an object, a value other than "r"/"rw"/"", too many patterns, or a
 * pattern longer than max_pattern_bytes). */
stoa_perms_t *stoa_perms_from_json(json_object *obj, size_t max_pattern_bytes, char *err, size_t errlen);
/* The same with another bound on the number of patterns (a set grown by
 * stoa_perms_grant, read back from the bus). */
stoa_perms_t *stoa_perms_from_json_max(json_object *obj, size_t max_pattern_bytes, size_t max_patterns, char *err,
                                       size_t errlen);
/* Same, from JSON text. */
stoa_perms_t *stoa_perms_parse(const char *text, size_t max_pattern_bytes, char *err, size_t errlen);
/* A copy owned by the caller. */
stoa_perms_t *stoa_perms_copy(const stoa_perms_t *perms);
/* Share perms: one more holder, who drops it with stoa_perms_free (any
 * thread). A shared set must not change (stoa_perms_grant). Returns perms. */
stoa_perms_t *stoa_perms_ref(stoa_perms_t *perms);
/* Drop the caller's hold; the last one frees the set. NULL is ignored. */
void stoa_perms_free(stoa_perms_t *perms);

/* Add an exact pattern for room with these rights, unless the set
 * already has an exact pattern for it (which then stays as it is). Only
 * on a set with one holder (not shared with stoa_perms_ref). */
void stoa_perms_grant(stoa_perms_t *perms, const char *room, unsigned rights);

/* STOA_RIGHT_* bits granted on room (0 when nothing matches). */
unsigned stoa_perms_rights(const stoa_perms_t *perms, const char *room);

/* The grant as a JSON object; a new object owned by the caller. */
json_object *stoa_perms_to_json(const stoa_perms_t *perms);

#endif
