/* store.h - durable document snapshots, one numbered series per room.
 *
 * A room's snapshots are versions 1, 2, 3, ...: every save makes the next
 * version, and only the newest `keep` versions are kept (the newest one is
 * never pruned). A save names the version the caller saw as the latest (or
 * STOA_STORE_IF_NONE for the first one), so of two writers that saw the
 * same version exactly one wins; the other gets STOA_ERR_PRECONDITION_FAILED.
 * Versions are never reused while the newest one survives.
 *
 * The store is an ops table over a backend, made with stoa_store_new: the
 * directory backend (stoa_store_open_dir: zlib-compressed files under
 * <data_dir>/snapshots) and the PostgreSQL backend (src/store_pg.c: rows
 * of stoa_snapshots, zlib-compressed alike, on a connection of its own).
 * The generic layer checks arguments and computes the metadata every
 * backend keeps (size, created_at, content_type, sha256).
 *
 * Every function is thread-safe. Error messages (err) name rooms and
 * versions and are safe to log and to show to the client that asked.
 */
#ifndef STOA_STORE_H
#define STOA_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "stoa/config.h"
#include "stoa/error.h"

/* Longest content type kept with a snapshot (printable ASCII). */
#define STOA_STORE_TYPE_MAX 255
/* Largest snapshot any backend accepts, whatever snapshot_max_bytes says. */
#define STOA_STORE_HARD_MAX_BYTES (256u << 20)
/* The precondition of a save that creates a room's first snapshot. */
#define STOA_STORE_IF_NONE 0

/* What a backend keeps about one version. A plain record. */
typedef struct stoa_snapshot_info {
    uint64_t version;                           /* 1, 2, ... */
    size_t size;                                /* bytes of the snapshot (uncompressed) */
    int64_t created_at;                         /* epoch seconds of the save */
    char content_type[STOA_STORE_TYPE_MAX + 1]; /* as given when saved */
    char sha256[65];                            /* lowercase hex of the snapshot's bytes */
} stoa_snapshot_info_t;

/* A backend. impl is its state; room is a valid room name (stoa_room_valid,
 * checked by the caller). Each function returns STOA_OK or an error with a
 * message in err:
 *   get:   version 0 means the latest. Fills *info and sets *data (a
 *          malloc'd buffer of info->size bytes plus a NUL, owned by the
 *          caller). NOT_FOUND when the room has no such version; INTERNAL
 *          when it is damaged or unreadable.
 *   list:  *infos (malloc'd, owned by the caller; NULL when *count is 0)
 *          newest first. A room without snapshots is STOA_OK with 0.
 *          Damaged versions are left out.
 *   put:   info holds size, created_at, content_type and sha256 of data;
 *          the backend sets info->version. if_match is the latest version
 *          the caller saw, or STOA_STORE_IF_NONE. PRECONDITION_FAILED, with
 *          the latest version in *latest (0: none), when it is not the
 *          latest. Must be durable when it returns STOA_OK, atomic (a crash
 *          leaves the old latest or the new one, whole) and serialized per
 *          room. Prunes to the newest `keep` versions.
 *   close: frees impl. */
typedef struct stoa_store_ops {
    const char *name;
    stoa_err_t (*get)(void *impl, const char *room, uint64_t version, stoa_snapshot_info_t *info, void **data,
                      char *err, size_t errlen);
    stoa_err_t (*list)(void *impl, const char *room, stoa_snapshot_info_t **infos, size_t *count, char *err,
                       size_t errlen);
    stoa_err_t (*put)(void *impl, const char *room, uint64_t if_match, stoa_snapshot_info_t *info,
                      const void *data, uint64_t *latest, char *err, size_t errlen);
    void (*close)(void *impl);
} stoa_store_ops_t;

typedef struct stoa_store stoa_store_t;

/* A store over a backend: ops must be static, impl passes to the store
 * (ops->close frees it). Never NULL. */
stoa_store_t *stoa_store_new(const stoa_store_ops_t *ops, void *impl);

/* The directory backend: snapshots of room R live in dir/<escaped R>/ as
 * <version>.z (a small text header, then the zlib-compressed bytes). dir is
 * created (one level) if missing, and locked against a second process.
 * keep >= 1. NULL with a message in err on failure. */
stoa_store_t *stoa_store_open_dir(const char *dir, unsigned keep, char *err, size_t errlen);

/* The store the configuration asks for, keeping snapshot_keep versions:
 * with database_url set, the PostgreSQL backend (connects before
 * returning; the schema must be migrated); otherwise the directory backend
 * in <data_dir>/snapshots (data_dir is created if missing). cfg is read
 * only during the call. */
stoa_store_t *stoa_store_open(const stoa_config_t *cfg, char *err, size_t errlen);

/* Close the backend and free. NULL is ignored. No call may be running. */
void stoa_store_close(stoa_store_t *store);

/* "dir" or "postgresql" (static). */
const char *stoa_store_backend(const stoa_store_t *store);

/* See stoa_store_ops_t. get/list/put validate their arguments first
 * (BAD_ROOM for an empty room, BAD_MESSAGE for a content type that is
 * empty, too long or not printable ASCII, MESSAGE_TOO_LARGE above
 * STOA_STORE_HARD_MAX_BYTES). put fills *info (may be NULL) with what was
 * saved; latest may be NULL. */
stoa_err_t stoa_store_get(stoa_store_t *store, const char *room, uint64_t version, stoa_snapshot_info_t *info,
                          void **data, char *err, size_t errlen);
stoa_err_t stoa_store_list(stoa_store_t *store, const char *room, stoa_snapshot_info_t **infos, size_t *count,
                           char *err, size_t errlen);
stoa_err_t stoa_store_put(stoa_store_t *store, const char *room, uint64_t if_match, const char *content_type,
                          const void *data, size_t len, stoa_snapshot_info_t *info, uint64_t *latest, char *err,
                          size_t errlen);

/* Lowercase hex SHA-256 of data into out (65 bytes with the NUL). */
void stoa_store_sha256_hex(const void *data, size_t len, char out[65]);

#endif
