/* room.h - room names.
 *
 * A room is named "kind:id": kind is [a-z][a-z0-9_-]* (at most 32 bytes),
 * id is one or more of [A-Za-z0-9._~@+=-] and ':' (so "eph:doc:123" is the
 * sidecar of "doc:123"). The whole name is bounded by max_room_name_bytes.
 */
#ifndef STOA_ROOM_H
#define STOA_ROOM_H

#include <stdbool.h>
#include <stddef.h>

/* true when name is a valid room name of at most max_len bytes; otherwise
 * false with a static reason in *why (if why is not NULL). */
bool stoa_room_valid(const char *name, size_t max_len, const char **why);

/* For a sidecar room "eph:<base>", the base room name (a pointer into
 * name); NULL for any other room. */
const char *stoa_room_sidecar_base(const char *name);

#endif
