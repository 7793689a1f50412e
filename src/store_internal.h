/* store_internal.h - what the snapshot store's backends share (store.c):
 * the at-rest compression every backend applies (zlib, compress2 at the
 * default level) and the PostgreSQL backend's constructor. Not public. */
#ifndef STOA_STORE_INTERNAL_H
#define STOA_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stoa/store.h"

/* Compress len bytes of data (NULL allowed when len is 0) into *out
 * (malloc'd, *outlen bytes). false with a message in err. */
bool stoa_store_deflate(const void *data, size_t len, void **out, size_t *outlen, char *err, size_t errlen);

/* Uncompress zlen bytes of z that must give exactly size bytes, into *out
 * (malloc'd, size bytes plus a NUL). false with the reason in *why
 * (static text: "wrong length", "truncated or too long", "bad data"). */
bool stoa_store_inflate(const void *z, size_t zlen, size_t size, void **out, const char **why);

/* A save's precondition against the room's latest version (0: none yet):
 * STOA_OK, or STOA_ERR_PRECONDITION_FAILED with the reason in err.
 * if_match is a version or STOA_STORE_IF_NONE. */
stoa_err_t stoa_store_precondition(const char *room, uint64_t if_match, uint64_t latest, char *err,
                                   size_t errlen);

/* The PostgreSQL backend (store_pg.c): rows of stoa_snapshots on its own
 * connection to url, keeping `keep` versions. NULL with a message in err. */
stoa_store_t *stoa_store_open_pg(const char *url, unsigned keep, char *err, size_t errlen);

#endif
