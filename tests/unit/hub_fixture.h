/* hub_fixture.h - the fixture pieces shared by the hub-level unit tests
 * (check_hub.c, check_session.c, check_proto.c, check_remote.c): the
 * configuration and hub under test, identities, parsing queued messages
 * and reading fields of JSON messages. (peer_fixture.h adds the fake
 * transport and queue readers of check_hub.c and check_remote.c.)
 *
 * Each test file is one translation unit and includes this once, so the
 * helpers are static; those a file does not use are marked unused. */
#ifndef STOA_TESTS_UNIT_HUB_FIXTURE_H
#define STOA_TESTS_UNIT_HUB_FIXTURE_H

#include "stoa/config.h"
#include "stoa/hub.h"
#include "stoa/msg.h"
#include "stoa/perm.h"
#include "stoa/util.h"

#include <check.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define HUB_FIXTURE_UNUSED __attribute__((unused))

static stoa_config_t *cfg;
static stoa_hub_t *hub;

static HUB_FIXTURE_UNUSED void set(const char *name, const char *value)
{
    char err[256];
    ck_assert_msg(stoa_config_set(cfg, name, value, err, sizeof err) == 0, "%s=%s: %s", name, value, err);
}

/* A new configuration and hub (cfg, hub) for the tests of relay. These
 * check relay one change at a time, at the rates they were written for;
 * presence coalescing has its own tests (check_hub.c). */
static HUB_FIXTURE_UNUSED void fixture_hub_setup(void)
{
    cfg = stoa_config_new();
    cfg->presence_tick_ms = 0;
    cfg->presence_rate = 20;
    cfg->presence_burst = 5;
    hub = stoa_hub_new(cfg);
}

/* A named identity (name = sub) with the given colour and rights. */
static HUB_FIXTURE_UNUSED stoa_identity_t *fixture_ident(const char *sub, const char *rights, const char *color)
{
    char err[256];
    stoa_identity_t *id = stoa_identity_new(sub, sub, color);
    id->anonymous = false;
    id->perms = stoa_perms_parse(rights, 128, err, sizeof err);
    ck_assert_msg(id->perms != NULL, "rights %s: %s", rights, err);
    return id;
}

/* ---- fields of a JSON message ---- */

static HUB_FIXTURE_UNUSED const char *str_field(json_object *o, const char *key)
{
    json_object *v;
    ck_assert_msg(json_object_object_get_ex(o, key, &v), "no \"%s\" in %s", key,
                  json_object_to_json_string(o));
    ck_assert_msg(json_object_is_type(v, json_type_string), "\"%s\" is not a string in %s", key,
                  json_object_to_json_string(o));
    return json_object_get_string(v);
}

static HUB_FIXTURE_UNUSED int64_t int_field(json_object *o, const char *key)
{
    json_object *v;
    ck_assert_msg(json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_int),
                  "no integer \"%s\" in %s", key, json_object_to_json_string(o));
    return json_object_get_int64(v);
}

static HUB_FIXTURE_UNUSED json_object *obj_field(json_object *o, const char *key, json_type type)
{
    json_object *v;
    ck_assert_msg(json_object_object_get_ex(o, key, &v) && json_object_is_type(v, type),
                  "no \"%s\" of type %s in %s", key, json_type_to_name(type), json_object_to_json_string(o));
    return v;
}

static HUB_FIXTURE_UNUSED bool bool_field(json_object *o, const char *key)
{
    return json_object_get_boolean(obj_field(o, key, json_type_boolean));
}

static HUB_FIXTURE_UNUSED bool has_field(json_object *o, const char *key)
{
    return json_object_object_get_ex(o, key, NULL);
}

/* ---- queued messages ---- */

/* A queued message, parsed (the caller puts it): it must be JSON, with
 * no NUL within its length. */
static HUB_FIXTURE_UNUSED json_object *parse_msg(stoa_msg_t *m)
{
    json_object *o = json_tokener_parse(stoa_msg_text(m));
    ck_assert_msg(o != NULL, "message is not JSON: %s", stoa_msg_text(m));
    ck_assert_uint_eq(strlen(stoa_msg_text(m)), stoa_msg_len(m));
    return o;
}

/* m, the next message `who` was sent (its reference taken), which must be
 * there and of `type`; returns it parsed (the caller puts it). */
static HUB_FIXTURE_UNUSED json_object *msg_of_type(stoa_msg_t *m, const char *who, const char *type)
{
    json_object *o;
    ck_assert_msg(m != NULL, "%s: queue empty, expected %s", who, type);
    o = parse_msg(m);
    stoa_msg_unref(m);
    ck_assert_msg(strcmp(str_field(o, "type"), type) == 0, "%s: expected %s, got %s", who, type,
                  json_object_to_json_string(o));
    return o;
}

#endif
