/* presence.c - RFC 7386 JSON merge-patch. */
#include "stoa/presence.h"

#include <string.h>

static json_object *copy(json_object *v)
{
    json_object *out = NULL;
    if (!v)
        return NULL;
    if (json_object_deep_copy(v, &out, NULL) != 0)
        return NULL;
    return out;
}

/* Merge patch into target, which this function owns (and may replace). */
static json_object *merge_into(json_object *target, json_object *patch)
{
    if (!json_object_is_type(patch, json_type_object)) {
        json_object_put(target);
        return copy(patch);
    }
    if (!target || !json_object_is_type(target, json_type_object)) {
        json_object_put(target);
        target = json_object_new_object();
    }
    json_object_object_foreach(patch, key, val) {
        if (!val || json_object_is_type(val, json_type_null)) {
            json_object_object_del(target, key);
        } else {
            json_object *cur = NULL;
            json_object_object_get_ex(target, key, &cur);
            cur = merge_into(cur ? json_object_get(cur) : NULL, val);
            json_object_object_add(target, key, cur);   /* takes cur, drops the old value */
        }
    }
    return target;
}

json_object *stoa_presence_merge(json_object *target, json_object *patch)
{
    json_object *base = target ? copy(target) : json_object_new_object();
    return merge_into(base, patch);
}

size_t stoa_presence_size(json_object *state)
{
    size_t len = 0;
    if (!state)
        return 2;   /* {} */
    json_object_to_json_string_length(state, JSON_C_TO_STRING_PLAIN, &len);
    return len;
}
