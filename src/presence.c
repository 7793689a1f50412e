/* presence.c - RFC 7386 JSON merge-patch. */
#include "stoa/presence.h"
#include "stoa/util.h"

#include <stdbool.h>
#include <stdint.h>
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

/* A scalar patch value set into cur in place when both are the same kind
 * of scalar that json-c can overwrite without a change of encoding. */
static bool set_scalar(json_object *cur, json_object *val)
{
    if (!cur || json_object_get_type(cur) != json_object_get_type(val))
        return false;
    switch (json_object_get_type(val)) {
    case json_type_boolean:
        return json_object_set_boolean(cur, json_object_get_boolean(val)) != 0;
    case json_type_int: {
        /* json-c keeps integers above INT64_MAX unsigned: copy those */
        int64_t v = json_object_get_int64(val);
        return v != INT64_MAX && json_object_set_int64(cur, v) != 0;
    }
    default:
        return false;
    }
}

static void merge_inplace(json_object *target, json_object *patch)
{
    json_object_object_foreach(patch, key, val) {
        json_object *cur = NULL;
        bool has = json_object_object_get_ex(target, key, &cur);
        if (!val || json_object_is_type(val, json_type_null)) {
            if (has)
                json_object_object_del(target, key);
        } else if (json_object_is_type(val, json_type_object)) {
            if (has && json_object_is_type(cur, json_type_object)) {
                merge_inplace(cur, val);
            } else {
                json_object *fresh = json_object_new_object();
                merge_inplace(fresh, val);   /* drops its null members, as RFC 7386 says */
                json_object_object_add(target, key, fresh);
            }
        } else if (!(has && set_scalar(cur, val))) {
            json_object_object_add(target, key, copy(val));
        }
    }
}

void stoa_presence_merge_inplace(json_object **target, json_object *patch)
{
    if (!json_object_is_type(patch, json_type_object)) {
        json_object_put(*target);
        *target = copy(patch);
        return;
    }
    if (!*target || !json_object_is_type(*target, json_type_object)) {
        json_object_put(*target);
        *target = json_object_new_object();
    }
    merge_inplace(*target, patch);
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
