/* util.h - allocation, clocks and randomness shared by every module.
 *
 * Out-of-memory policy: every allocation goes through stoa_xmalloc and
 * friends, which abort the process with a message. Stoa holds only
 * ephemeral state, so a crash and restart is safer than limping on.
 */
#ifndef STOA_UTIL_H
#define STOA_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Allocate or abort. The caller owns the result and frees it with free(). */
void *stoa_xmalloc(size_t n);
void *stoa_xcalloc(size_t nmemb, size_t size);
void *stoa_xrealloc(void *p, size_t n);
char *stoa_xstrdup(const char *s);
char *stoa_xstrndup(const char *s, size_t n);

/* Milliseconds on the monotonic clock (for deadlines and rates). */
int64_t stoa_now_ms(void);
/* Seconds since the epoch on the wall clock (for JWT exp/nbf/iat). */
int64_t stoa_wall_s(void);

/* Fill buf with n cryptographically random bytes (getrandom). */
void stoa_random_bytes(void *buf, size_t n);
/* Write a random identifier of `chars` characters from [a-z0-9] plus a
 * terminating NUL into out (which must hold chars + 1 bytes). */
void stoa_random_id(char *out, size_t chars);
/* Uniform random number in [0, bound). */
uint32_t stoa_random_below(uint32_t bound);
/* The first hexlen/2 bytes of SHA-256(data) (libcrypto) as lowercase hex
 * in out (hexlen + 1 bytes, NUL-terminated); hexlen <= 64, even. */
void stoa_digest_hex(const void *data, size_t len, char *out, size_t hexlen);

/* Give the whole free pages inside the heap back to the system (glibc's
 * malloc_trim, every arena), at most once a second for the process: after
 * a burst of connections, the handshake buffers freed between long-lived
 * allocations would otherwise stay resident. Any thread; returns whether
 * it trimmed (false: another call did within the last second). */
bool stoa_heap_trim(void);

/* Walk a comma-separated list: the next item (spaces around it trimmed,
 * possibly empty) with its length in *len, advancing *cursor; NULL when
 * the list is done. The item points into the list; it is not terminated. */
const char *stoa_list_next(const char **cursor, size_t *len);

#define STOA_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
