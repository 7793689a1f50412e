/* config.c - table-driven settings: defaults, INI file (inih), environment, flags. */
#include "stoa/config.h"
#include "stoa/util.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_STR, T_INT, T_BOOL, T_DOUBLE } setting_type_t;

typedef struct {
    const char *name;
    setting_type_t type;
    size_t offset;
    const char *def;
    double min, max;      /* numeric bounds, inclusive */
    const char *help;
} setting_t;

#define S(n, d, h) {#n, T_STR, offsetof(stoa_config_t, n), d, 0, 0, h}
#define I(n, d, lo, hi, h) {#n, T_INT, offsetof(stoa_config_t, n), d, lo, hi, h}
#define B(n, d, h) {#n, T_BOOL, offsetof(stoa_config_t, n), d, 0, 0, h}
#define D(n, d, lo, hi, h) {#n, T_DOUBLE, offsetof(stoa_config_t, n), d, lo, hi, h}

static const setting_t settings[] = {
    S(config_file, "", "INI file to read settings from (keys as named here)"),
    S(listen, "127.0.0.1:8080", "address:port of the one public port (HTTP, SSE, long-poll, WebSocket)"),
    S(data_dir, "./stoa-data", "directory of the embedded store (generated development secret, snapshots)"),
    S(database_url, "", "PostgreSQL connection URL (postgresql://user:password@host:5432/db; also --database); stoa migrate creates the schema; empty: the embedded single-instance default, no database"),
    S(www_dir, "./www", "directory served at / (the browser client); empty disables"),
    S(log_level, "info", "error, warn, info or debug"),
    S(jwt_alg, "HS256", "the one JWT algorithm accepted: HS256, RS256 or ES256 (never none)"),
    S(jwt_secret, "", "HS256 secret; empty: generated once into data_dir/jwt-secret"),
    S(jwt_public_key_file, "", "PEM public key verifying RS256/ES256 tokens"),
    S(jwt_private_key_file, "", "PEM private key for minting RS256/ES256 tokens (stoa token, anonymous tokens)"),
    S(jwt_issuer, "stoa", "required iss claim (empty: not checked)"),
    S(jwt_audience, "stoa", "required aud claim (empty: not checked)"),
    I(jwt_leeway_s, "30", 0, 600, "clock skew allowed on exp/nbf/iat, seconds"),
    I(token_ttl_s, "86400", 60, 31536000, "lifetime of minted tokens, seconds"),
    B(allow_anonymous, "true", "let clients without a token in as anonymous peers"),
    S(anonymous_rights, "{\"*\":\"r\"}", "room rights of anonymous peers, JSON object pattern -> r|rw"),
    S(allowed_origins, "", "browser Origins allowed, comma-separated; * for any; same-origin always allowed"),
    S(token_cookie, "stoa_token", "name of the cookie that may carry the token"),
    S(api_keys, "", "integrator API keys (Authorization: Bearer <key>), comma-separated, each at least 24 characters; empty disables the integrator API"),
    I(heartbeat_interval_s, "30", 1, 3600, "interval clients are told to heartbeat each room at, seconds"),
    I(heartbeat_timeout_s, "75", 2, 7200, "silence in a room after which a peer is evicted, seconds"),
    I(max_message_bytes, "65536", 256, 16777216, "largest client message, bytes"),
    I(max_state_bytes, "2048", 64, 1048576, "largest presence state of a peer in a room (encoded JSON), bytes"),
    I(max_room_name_bytes, "128", 8, 1024, "longest room name, bytes"),
    I(max_rooms_per_conn, "32", 1, 10000, "rooms one connection may be in at once"),
    I(max_peers_per_room, "256", 1, 1000000, "peers one room may hold"),
    I(max_observers_per_room, "10000", 0, 1000000, "observers (joins with \"observe\": true: receive, not announced) one room may hold"),
    I(max_connections, "10000", 1, 1000000, "open WebSocket connections; separately, HTTP connections being served, and open SSE streams plus held polls"),
    I(session_buffer_msgs, "1024", 8, 1000000, "messages a session keeps for delivery and resume (older ones are dropped; a client that missed them gets a resync)"),
    I(session_buffer_bytes, "4194304", 65536, 1073741824, "bytes of messages a session keeps for delivery and resume"),
    I(session_buffer_age_s, "1800", 1, 86400, "age after which a session's buffered message is dropped, seconds"),
    I(session_grace_ms, "10000", 0, 3600000, "time a session without a connection is kept before its peers leave, ms"),
    D(presence_rate, "60", 0.1, 100000, "presence updates per second per connection (token bucket rate)"),
    I(presence_burst, "30", 1, 100000, "presence updates allowed in a burst"),
    I(presence_tick_ms, "50", 0, 1000, "presence coalescing: a room sends its peers at most one presence message per tick, ms (0: each change at once)"),
    D(ephemeral_per_min, "600", 1, 6000000, "ephemeral messages per minute per connection"),
    I(ephemeral_burst, "30", 1, 10000000, "ephemeral messages allowed in a burst"),
    D(join_rate, "10", 0.1, 100000, "joins and leaves per second per connection"),
    I(join_burst, "40", 1, 100000, "joins and leaves allowed in a burst"),
    I(sse_heartbeat_s, "15", 1, 3600, "interval of the comment heartbeat on an idle SSE stream, seconds"),
    I(sse_retry_ms, "2000", 100, 600000, "reconnect delay an SSE stream tells EventSource (retry:), ms"),
    I(sse_padding_bytes, "2048", 0, 65536, "comment padding sent first on an SSE stream opened with ?pad=1, for proxies that hold the first bytes"),
    I(poll_timeout_ms, "25000", 100, 600000, "time a long-poll is held when there is nothing to send (keep under proxy timeouts), ms"),
    I(poll_max_bytes, "1048576", 4096, 67108864, "messages one long-poll answer carries at most, bytes (at least one message)"),
    I(handshake_timeout_ms, "5000", 100, 120000, "time a new connection has to send its request head"),
    I(max_pending_handshakes, "1024", 1, 100000, "connections waiting for their request head at once"),
    I(http_memory_limit, "16384", 4096, 1048576, "memory per HTTP connection (bounds request headers), bytes"),
    I(http_idle_timeout_s, "60", 5, 3600, "an HTTP connection with no request, or an SSE stream or held poll whose client takes no bytes, is closed after this long, seconds"),
    I(ws_ping_interval_s, "20", 1, 3600, "idle WebSocket time before the server pings, seconds"),
    I(ws_idle_timeout_s, "60", 2, 7200, "idle WebSocket time (no pong, no data) before it is closed, seconds"),
    I(ws_threads, "0", 0, 64, "WebSocket service threads; connections are dealt to them in turn (0: one per CPU, at most 16)"),
    I(shutdown_timeout_ms, "5000", 0, 600000, "time open connections get to close on shutdown"),
    I(snapshot_max_bytes, "1048576", 1024, 67108864, "largest document snapshot (PUT /v1/rooms/{room}/snapshot body), bytes"),
    I(snapshot_warn_bytes, "524288", 1024, 67108864, "snapshot size above which a save is logged as a warning, bytes"),
    I(snapshot_keep, "10", 1, 10000, "snapshot versions kept per room (older ones are pruned on save)"),
    I(outbox_batch, "500", 1, 100000, "stoa_outbox rows delivered per drain query at most (with --database)"),
    I(outbox_poll_ms, "100", 10, 60000, "time between drains of stoa_outbox when it was empty, ms (with --database)"),
    I(bus_heartbeat_ms, "1000", 50, 60000, "longest time between two bus payloads of an instance (empty ones are heartbeats), ms (with --database)"),
    I(bus_dead_ms, "3000", 200, 600000, "an instance not heard on the bus for this long is dead: its peers leave, ms (with --database)"),
    I(bus_queue_bytes, "33554432", 65536, 1073741824, "bus events waiting to be sent, bytes at most; beyond, a snapshot replaces them (with --database)"),
    I(bus_payload_keep_s, "60", 5, 86400, "age at which payloads too large for NOTIFY are deleted from stoa_bus_payloads, seconds (with --database)"),
    I(bus_notify_batch, "16", 1, 64, "bus payloads sent in one statement (one transaction) at most (with --database)"),
};

/* Flag-only short names: --database is --database-url. */
static const struct { const char *flag, *name; } flag_aliases[] = {{"database", "database_url"}};

static void *field(stoa_config_t *cfg, const setting_t *s)
{
    return (char *)cfg + s->offset;
}

static const setting_t *find_setting(const char *name, size_t len)
{
    for (size_t i = 0; i < STOA_ARRAY_LEN(settings); i++) {
        const char *n = settings[i].name;
        size_t j = 0;
        for (; j < len && n[j]; j++) {
            char c = name[j] == '-' ? '_' : (char)tolower((unsigned char)name[j]);
            if (c != n[j])
                break;
        }
        if (j == len && n[j] == '\0')
            return &settings[i];
    }
    return NULL;
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) { *out = true; return 0; }
        if (strcasecmp(v, no[i]) == 0) { *out = false; return 0; }
    }
    return -1;
}

static int apply(stoa_config_t *cfg, const setting_t *s, const char *value, char *err, size_t errlen)
{
    char *end;
    switch (s->type) {
    case T_STR: {
        char **slot = field(cfg, s);
        free(*slot);
        *slot = stoa_xstrdup(value);
        return 0;
    }
    case T_BOOL:
        if (parse_bool(value, field(cfg, s)) < 0) {
            snprintf(err, errlen, "%s: expected true or false, got \"%s\"", s->name, value);
            return -1;
        }
        return 0;
    case T_INT: {
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < (long long)s->min || v > (long long)s->max) {
            snprintf(err, errlen, "%s: expected an integer from %.0f to %.0f, got \"%s\"",
                     s->name, s->min, s->max, value);
            return -1;
        }
        *(int *)field(cfg, s) = (int)v;
        return 0;
    }
    case T_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v) || v < s->min || v > s->max) {
            snprintf(err, errlen, "%s: expected a number from %g to %g, got \"%s\"",
                     s->name, s->min, s->max, value);
            return -1;
        }
        *(double *)field(cfg, s) = v;
        return 0;
    }
    }
    return -1;
}

int stoa_config_set(stoa_config_t *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    const setting_t *s = find_setting(name, strlen(name));
    if (!s) {
        snprintf(err, errlen, "unknown setting \"%s\" (see stoa serve --help)", name);
        return -1;
    }
    return apply(cfg, s, value, err, errlen);
}

stoa_config_t *stoa_config_new(void)
{
    stoa_config_t *cfg = stoa_xcalloc(1, sizeof *cfg);
    char err[256];
    for (size_t i = 0; i < STOA_ARRAY_LEN(settings); i++)
        if (apply(cfg, &settings[i], settings[i].def, err, sizeof err) < 0)
            abort();   /* a bad built-in default is a programming error */
    return cfg;
}

void stoa_config_free(stoa_config_t *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < STOA_ARRAY_LEN(settings); i++)
        if (settings[i].type == T_STR)
            free(*(char **)field(cfg, &settings[i]));
    free(cfg);
}

struct ini_ctx {
    stoa_config_t *cfg;
    char *err;
    size_t errlen;
    int failed;
};

static int on_ini_entry(void *user, const char *section, const char *name, const char *value)
{
    struct ini_ctx *ctx = user;
    char msg[256];
    (void)section;
    if (stoa_config_set(ctx->cfg, name, value, msg, sizeof msg) < 0) {
        snprintf(ctx->err, ctx->errlen, "%s: %s", ctx->cfg->config_file, msg);
        ctx->failed = 1;
        return 0;
    }
    return 1;
}

/* Split "--name=value" / "--name value" / "--no-name"; returns the number
 * of argv entries consumed, or -1 with err set. */
static int parse_flag(stoa_config_t *cfg, int argc, char **argv, int i, int only_config,
                      char *err, size_t errlen)
{
    const char *arg = argv[i];
    const char *name, *eq, *value = NULL;
    const setting_t *s;
    size_t len;
    int used = 1;
    bool negate = false;

    if (strncmp(arg, "--", 2) != 0) {
        snprintf(err, errlen, "unexpected argument \"%s\"", arg);
        return -1;
    }
    name = arg + 2;
    eq = strchr(name, '=');
    len = eq ? (size_t)(eq - name) : strlen(name);
    s = find_setting(name, len);
    for (size_t a = 0; !s && a < STOA_ARRAY_LEN(flag_aliases); a++)
        if (strlen(flag_aliases[a].flag) == len && strncmp(name, flag_aliases[a].flag, len) == 0)
            s = find_setting(flag_aliases[a].name, strlen(flag_aliases[a].name));
    if (!s && strncmp(name, "no-", 3) == 0 && !eq) {
        s = find_setting(name + 3, len - 3);
        if (s && s->type == T_BOOL)
            negate = true;
        else
            s = NULL;
    }
    if (!s) {
        snprintf(err, errlen, "unknown flag \"%.*s\" (see --help)", (int)len + 2, arg);
        return -1;
    }
    if (eq)
        value = eq + 1;
    else if (s->type == T_BOOL)
        value = negate ? "false" : "true";
    else if (i + 1 < argc) {
        value = argv[i + 1];
        used = 2;
    } else {
        snprintf(err, errlen, "flag --%s needs a value", s->name);
        return -1;
    }
    if (only_config && strcmp(s->name, "config_file") != 0)
        return used;
    if (apply(cfg, s, value, err, errlen) < 0)
        return -1;
    return used;
}

static int apply_flags(stoa_config_t *cfg, int argc, char **argv, int only_config, char *err, size_t errlen)
{
    for (int i = 0; i < argc;) {
        int used = parse_flag(cfg, argc, argv, i, only_config, err, errlen);
        if (used < 0)
            return -1;
        i += used;
    }
    return 0;
}

static int apply_env(stoa_config_t *cfg, char **envp, int only_config, char *err, size_t errlen)
{
    for (char **e = envp; e && *e; e++) {
        const char *kv = *e, *eq;
        const setting_t *s;
        char msg[256];
        if (strncmp(kv, "STOA_", 5) != 0 || !(eq = strchr(kv, '=')))
            continue;
        s = find_setting(kv + 5, (size_t)(eq - kv - 5));
        if (!s)
            continue;   /* other STOA_ variables (test harness, future settings) are not ours */
        if (only_config != (strcmp(s->name, "config_file") == 0))
            continue;
        if (apply(cfg, s, eq + 1, msg, sizeof msg) < 0) {
            snprintf(err, errlen, "environment %.*s: %s", (int)(eq - kv), kv, msg);
            return -1;
        }
    }
    return 0;
}

int stoa_config_load(stoa_config_t *cfg, int argc, char **argv, char **envp, char *err, size_t errlen)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    /* The file's name may come from the environment or a flag: find it first. */
    if (apply_env(cfg, envp, 1, err, errlen) < 0 || apply_flags(cfg, argc, argv, 1, err, errlen) < 0)
        return -1;
    if (cfg->config_file[0]) {
        struct ini_ctx ctx = {cfg, err, errlen, 0};
        int rc = ini_parse(cfg->config_file, on_ini_entry, &ctx);
        if (ctx.failed)
            return -1;
        if (rc < 0) {
            snprintf(err, errlen, "cannot read config file %s: %s", cfg->config_file, strerror(errno));
            return -1;
        }
        if (rc > 0) {
            snprintf(err, errlen, "%s:%d: syntax error", cfg->config_file, rc);
            return -1;
        }
    }
    if (apply_env(cfg, envp, 0, err, errlen) < 0 || apply_flags(cfg, argc, argv, 0, err, errlen) < 0)
        return -1;
    if (cfg->heartbeat_timeout_s <= cfg->heartbeat_interval_s) {
        snprintf(err, errlen, "heartbeat_timeout_s (%d) must be greater than heartbeat_interval_s (%d)",
                 cfg->heartbeat_timeout_s, cfg->heartbeat_interval_s);
        return -1;
    }
    {
        const char *cursor = cfg->api_keys, *key;
        size_t len;
        while ((key = stoa_list_next(&cursor, &len)))
            if (len < 24) {
                snprintf(err, errlen, "api_keys: every key must have at least 24 characters (one has %zu)", len);
                return -1;
            }
    }
    if (cfg->bus_dead_ms < 2 * cfg->bus_heartbeat_ms) {
        snprintf(err, errlen, "bus_dead_ms (%d) must be at least twice bus_heartbeat_ms (%d)", cfg->bus_dead_ms,
                 cfg->bus_heartbeat_ms);
        return -1;
    }
    if (cfg->max_message_bytes < cfg->max_state_bytes) {
        snprintf(err, errlen, "max_message_bytes must be at least max_state_bytes");
        return -1;
    }
    return 0;
}

void stoa_config_print_help(FILE *out)
{
    fprintf(out, "Settings (flag, environment variable, config file key; flags beat environment beat file beat defaults):\n\n");
    for (size_t i = 0; i < STOA_ARRAY_LEN(settings); i++) {
        const setting_t *s = &settings[i];
        char flag[64], env[64];
        size_t j;
        for (j = 0; s->name[j] && j < sizeof flag - 1; j++)
            flag[j] = s->name[j] == '_' ? '-' : s->name[j];
        flag[j] = '\0';
        for (j = 0; s->name[j] && j < sizeof env - 1; j++)
            env[j] = (char)toupper((unsigned char)s->name[j]);
        env[j] = '\0';
        fprintf(out, "  --%s  (STOA_%s, %s)\n      %s\n      default: %s\n", flag, env,
                s->name, s->help, s->def[0] ? s->def : "(empty)");
    }
}
