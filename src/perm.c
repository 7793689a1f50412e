/* perm.c - room patterns and rights. */
#include "stoa/perm.h"
#include "stoa/room.h"
#include "stoa/util.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *pattern;
    size_t prefix_len;   /* bytes before '*', or strlen for exact patterns */
    int wildcard;
    unsigned rights;
} grant_t;

struct stoa_perms {
    atomic_uint refs;    /* holders; stoa_perms_free drops one */
    size_t n;
    grant_t *grants;
};

static int parse_rights(const char *s, unsigned *out)
{
    if (strcmp(s, "") == 0) *out = 0;
    else if (strcmp(s, "r") == 0) *out = STOA_RIGHT_READ;
    else if (strcmp(s, "rw") == 0) *out = STOA_RIGHT_READ | STOA_RIGHT_WRITE;
    else return -1;
    return 0;
}

stoa_perms_t *stoa_perms_from_json(json_object *obj, size_t max_pattern_bytes, char *err, size_t errlen)
{
    return stoa_perms_from_json_max(obj, max_pattern_bytes, STOA_PERM_MAX_PATTERNS, err, errlen);
}

stoa_perms_t *stoa_perms_from_json_max(json_object *obj, size_t max_pattern_bytes, size_t max_patterns, char *err,
                                       size_t errlen)
{
    stoa_perms_t *p;
    size_t i = 0;
    if (!obj || !json_object_is_type(obj, json_type_object)) {
        snprintf(err, errlen, "rooms must be a JSON object of pattern -> \"r\" or \"rw\"");
        return NULL;
    }
    if ((size_t)json_object_object_length(obj) > max_patterns) {
        snprintf(err, errlen, "rooms holds more than %zu patterns", max_patterns);
        return NULL;
    }
    p = stoa_xcalloc(1, sizeof *p);
    atomic_init(&p->refs, 1);
    p->grants = stoa_xcalloc((size_t)json_object_object_length(obj) + 1, sizeof *p->grants);
    json_object_object_foreach(obj, key, val) {
        grant_t *g = &p->grants[i];
        size_t len = strlen(key);
        if (len == 0 || len > max_pattern_bytes) {
            snprintf(err, errlen, "room pattern \"%.40s\" is empty or too long", key);
            goto fail;
        }
        if (!json_object_is_type(val, json_type_string) ||
            parse_rights(json_object_get_string(val), &g->rights) < 0) {
            snprintf(err, errlen, "rights for \"%.40s\" must be \"r\", \"rw\" or \"\"", key);
            goto fail;
        }
        g->pattern = stoa_xstrdup(key);
        g->wildcard = key[len - 1] == '*';
        g->prefix_len = g->wildcard ? len - 1 : len;
        if (memchr(key, '*', g->prefix_len)) {
            free(g->pattern);
            snprintf(err, errlen, "room pattern \"%.40s\": '*' may only end a pattern", key);
            goto fail;
        }
        p->n = ++i;
    }
    return p;
fail:
    stoa_perms_free(p);
    return NULL;
}

stoa_perms_t *stoa_perms_parse(const char *text, size_t max_pattern_bytes, char *err, size_t errlen)
{
    json_object *obj = json_tokener_parse(text);
    stoa_perms_t *p;
    if (!obj) {
        snprintf(err, errlen, "rooms is not valid JSON");
        return NULL;
    }
    p = stoa_perms_from_json(obj, max_pattern_bytes, err, errlen);
    json_object_put(obj);
    return p;
}

stoa_perms_t *stoa_perms_copy(const stoa_perms_t *perms)
{
    stoa_perms_t *p = stoa_xcalloc(1, sizeof *p);
    atomic_init(&p->refs, 1);
    p->n = perms->n;
    p->grants = stoa_xcalloc(perms->n + 1, sizeof *p->grants);
    for (size_t i = 0; i < perms->n; i++) {
        p->grants[i] = perms->grants[i];
        p->grants[i].pattern = stoa_xstrdup(perms->grants[i].pattern);
    }
    return p;
}

void stoa_perms_grant(stoa_perms_t *perms, const char *room, unsigned rights)
{
    grant_t *g;
    for (size_t i = 0; i < perms->n; i++)
        if (!perms->grants[i].wildcard && strcmp(perms->grants[i].pattern, room) == 0)
            return;
    perms->grants = stoa_xrealloc(perms->grants, (perms->n + 2) * sizeof *perms->grants);
    g = &perms->grants[perms->n++];
    g->pattern = stoa_xstrdup(room);
    g->prefix_len = strlen(room);
    g->wildcard = 0;
    g->rights = rights;
}

stoa_perms_t *stoa_perms_ref(stoa_perms_t *perms)
{
    atomic_fetch_add_explicit(&perms->refs, 1, memory_order_relaxed);
    return perms;
}

void stoa_perms_free(stoa_perms_t *perms)
{
    if (!perms || atomic_fetch_sub_explicit(&perms->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < perms->n; i++)
        free(perms->grants[i].pattern);
    free(perms->grants);
    free(perms);
}

/* Rights from the patterns alone: the longest match, exact beating
 * wildcard. With sidecar_only, only patterns naming "eph:..." count. */
static unsigned match(const stoa_perms_t *perms, const char *room, bool sidecar_only)
{
    size_t room_len = strlen(room);
    long best = -1;
    unsigned rights = 0;
    for (size_t i = 0; i < perms->n; i++) {
        const grant_t *g = &perms->grants[i];
        long score;
        if (sidecar_only && (g->prefix_len < 4 || memcmp(g->pattern, "eph:", 4) != 0))
            continue;
        if (g->wildcard) {
            if (room_len < g->prefix_len || memcmp(room, g->pattern, g->prefix_len) != 0)
                continue;
            score = (long)g->prefix_len * 2;
        } else {
            if (strcmp(room, g->pattern) != 0)
                continue;
            score = (long)g->prefix_len * 2 + 1;
        }
        if (score > best) {
            best = score;
            rights = g->rights;
        }
    }
    return rights;
}

unsigned stoa_perms_rights(const stoa_perms_t *perms, const char *room)
{
    const char *base;
    unsigned rights;
    if (!perms)
        return 0;
    base = stoa_room_sidecar_base(room);
    if (!base)
        return match(perms, room, false);
    /* A sidecar: patterns written for sidecars decide; besides, reading the
     * base room lets one read its sidecar. A general pattern such as "*"
     * reaches a sidecar only through its base room, so denying a room
     * denies its sidecar too. */
    rights = match(perms, room, true);
    if (match(perms, base, false) & STOA_RIGHT_READ)
        rights |= STOA_RIGHT_READ;
    return rights;
}

json_object *stoa_perms_to_json(const stoa_perms_t *perms)
{
    json_object *obj = json_object_new_object();
    for (size_t i = 0; perms && i < perms->n; i++) {
        unsigned r = perms->grants[i].rights;
        json_object_object_add(obj, perms->grants[i].pattern,
                               json_object_new_string(r & STOA_RIGHT_WRITE ? "rw" : r ? "r" : ""));
    }
    return obj;
}
