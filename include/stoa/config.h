/* config.h - every setting of the daemon, from flags, environment and file.
 *
 * Precedence: command-line flags beat STOA_* environment variables, which
 * beat the INI file named by --config-file / STOA_CONFIG_FILE, which beats the
 * built-in defaults. Each setting has one name: `max_state_bytes` is the
 * flag --max-state-bytes, the variable STOA_MAX_STATE_BYTES and the file
 * key max_state_bytes (in any section, or none).
 *
 * stoa_config_t is a plain record read by every module after loading; it
 * is never written after stoa_config_load returns, so any thread may read
 * it without locking.
 */
#ifndef STOA_CONFIG_H
#define STOA_CONFIG_H

#include <stdbool.h>
#include <stdio.h>

typedef struct stoa_config {
    /* server */
    char *listen;               /* host:port */
    char *data_dir;
    char *www_dir;
    char *log_level;
    char *config_file;
    char *database_url;         /* PostgreSQL URL; empty: the embedded default, no database */
    /* identity */
    char *jwt_alg;              /* HS256, RS256 or ES256: the only one accepted */
    char *jwt_secret;           /* HS256 secret; empty: a generated one in data_dir */
    char *jwt_public_key_file;  /* RS256/ES256 verification key (PEM) */
    char *jwt_private_key_file; /* RS256/ES256 signing key, for minting only */
    char *jwt_issuer;
    char *jwt_audience;
    int jwt_leeway_s;
    int token_ttl_s;
    bool allow_anonymous;
    char *anonymous_rights;     /* JSON object of room pattern -> "r"/"rw" */
    char *allowed_origins;      /* comma-separated; "*" allows any */
    char *token_cookie;
    char *api_keys;             /* integrator API keys, comma-separated */
    /* presence */
    int heartbeat_interval_s;
    int heartbeat_timeout_s;
    /* limits */
    int max_message_bytes;
    int max_state_bytes;
    int max_room_name_bytes;
    int max_rooms_per_conn;
    int max_peers_per_room;
    int max_observers_per_room;
    int max_connections;
    int session_buffer_msgs;
    int session_buffer_bytes;
    int session_buffer_age_s;
    int session_grace_ms;
    double presence_rate;       /* per second */
    int presence_tick_ms;       /* presence coalescing; 0: relay each change at once */
    int presence_burst;
    double ephemeral_per_min;
    int ephemeral_burst;
    double join_rate;           /* joins plus leaves per second */
    int join_burst;
    int sse_heartbeat_s;
    int sse_retry_ms;
    int sse_padding_bytes;
    int poll_timeout_ms;
    int poll_max_bytes;
    int handshake_timeout_ms;
    int max_pending_handshakes;
    int http_memory_limit;
    int http_idle_timeout_s;
    int ws_ping_interval_s;
    int ws_idle_timeout_s;
    int ws_threads;
    int shutdown_timeout_ms;
    /* snapshots */
    int snapshot_max_bytes;
    int snapshot_warn_bytes;
    int snapshot_keep;
    /* outbox (stoa_publish) */
    int outbox_batch;
    int outbox_poll_ms;
    /* the bus between instances */
    int bus_heartbeat_ms;
    int bus_dead_ms;
    int bus_queue_bytes;
    int bus_payload_keep_s;
    int bus_notify_batch;
} stoa_config_t;

/* A new configuration holding the defaults. The caller owns it and frees
 * it with stoa_config_free. */
stoa_config_t *stoa_config_new(void);
void stoa_config_free(stoa_config_t *cfg);

/* Apply file, environment (envp, NULL-terminated "K=V" strings) and the
 * flags in argv[0..argc-1] (no program name) over the defaults.
 * Returns 0 on success, 1 when --help was asked for (nothing else done),
 * -1 on a bad setting with a message in err. */
int stoa_config_load(stoa_config_t *cfg, int argc, char **argv, char **envp,
                     char *err, size_t errlen);

/* Set one setting by name from text (used by the loader and tests).
 * Returns 0, or -1 with a message in err. */
int stoa_config_set(stoa_config_t *cfg, const char *name, const char *value,
                    char *err, size_t errlen);

/* List every setting with its flag, variable, default and meaning. */
void stoa_config_print_help(FILE *out);

#endif
