/* park.h - libmicrohttpd connections parked (suspended) while they wait:
 * SSE streams between messages, long-polls until a message or a deadline.
 *
 * libmicrohttpd does not time out a suspended connection nor notice its
 * client going away, resuming one that is not suspended is undefined, and
 * stopping the daemon with one suspended aborts. This module keeps that
 * state: every parked connection is registered, suspended only from inside
 * MHD's callbacks (stoa_park_suspend), resumed from any thread only while
 * registered and suspended (stoa_park_wake), resumed when its deadline
 * passes (stoa_park_tick), and all resumed at shutdown (stoa_park_close).
 *
 * One mutex guards the registry; MHD_resume_connection (which only flags
 * the connection and signals MHD's thread) is called under it, so a
 * connection cannot be unregistered and freed between the check and the
 * resume.
 */
#ifndef STOA_PARK_H
#define STOA_PARK_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct stoa_park stoa_park_t;
typedef struct stoa_parked stoa_parked_t;

/* A registry owned by the caller. */
stoa_park_t *stoa_park_new(void);
/* Free the registry; every parked connection must have been removed. */
void stoa_park_free(stoa_park_t *park);

/* Register conn (MHD's thread). The handle is owned by the registry until
 * stoa_park_remove. */
stoa_parked_t *stoa_park_add(stoa_park_t *park, struct MHD_Connection *conn);
/* Unregister and free (MHD's thread, when the request completes). */
void stoa_park_remove(stoa_park_t *park, stoa_parked_t *p);

/* From inside one of MHD's callbacks for this connection: suspend it until
 * a wake, deadline_ms (monotonic; 0 for none) or shutdown. Returns false,
 * without suspending, when a wake came since the last call (look again) or
 * the registry is closing. */
bool stoa_park_suspend(stoa_park_t *park, stoa_parked_t *p, int64_t deadline_ms);
/* Any thread: resume p if it is still registered and suspended, or make
 * its next stoa_park_suspend return false. `p` may be stale. */
void stoa_park_wake(stoa_park_t *park, void *p);
/* Any thread: resume every suspended connection whose deadline passed. */
void stoa_park_tick(stoa_park_t *park, int64_t now_ms);
/* Any thread: refuse further suspension and resume every connection.
 * Returns how many are still registered. */
size_t stoa_park_close(stoa_park_t *park);
bool stoa_park_closing(stoa_park_t *park);
size_t stoa_park_count(stoa_park_t *park);

#endif
