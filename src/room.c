/* room.c - room name rules. */
#include "stoa/room.h"

#include <string.h>

#define KIND_MAX 32

static bool id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("._~@+=-:", c) != NULL;
}

static bool kind_char(char c, bool first)
{
    if (c >= 'a' && c <= 'z')
        return true;
    return !first && ((c >= '0' && c <= '9') || c == '_' || c == '-');
}

static bool valid_plain(const char *name, const char **why)
{
    const char *colon = strchr(name, ':');
    size_t kind_len;
    if (!colon) {
        *why = "a room name is kind:id, for example doc:123";
        return false;
    }
    kind_len = (size_t)(colon - name);
    if (kind_len == 0 || kind_len > KIND_MAX) {
        *why = "the kind before ':' must be 1 to 32 characters";
        return false;
    }
    for (size_t i = 0; i < kind_len; i++)
        if (!kind_char(name[i], i == 0)) {
            *why = "the kind must start with a-z and hold only a-z, 0-9, _ and -";
            return false;
        }
    if (colon[1] == '\0') {
        *why = "the id after ':' must not be empty";
        return false;
    }
    for (const char *p = colon + 1; *p; p++)
        if (!id_char(*p) || (*p == ':' && p[1] == '\0')) {
            *why = "the id may hold only A-Z, a-z, 0-9 and . _ ~ @ + = - : (not ending in :)";
            return false;
        }
    return true;
}

bool stoa_room_valid(const char *name, size_t max_len, const char **why)
{
    const char *dummy;
    const char *base;
    if (!why)
        why = &dummy;
    if (!name || strnlen(name, max_len + 1) > max_len) {
        *why = "the room name is too long";
        return false;
    }
    if (!valid_plain(name, why))
        return false;
    base = stoa_room_sidecar_base(name);
    if (base) {
        if (stoa_room_sidecar_base(base)) {
            *why = "a sidecar room cannot have a sidecar";
            return false;
        }
        return valid_plain(base, why);
    }
    return true;
}

const char *stoa_room_sidecar_base(const char *name)
{
    return strncmp(name, "eph:", 4) == 0 ? name + 4 : NULL;
}
