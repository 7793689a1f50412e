/* outbox.h - the outbox drainer: delivers the rows applications queue
 * with stoa_publish(room, data) (sql/001_init.sql, table stoa_outbox)
 * into the hub's rooms.
 *
 * It runs on its own thread with its own libpq connection (never shared):
 *   DELETE FROM stoa_outbox WHERE id IN (SELECT id FROM stoa_outbox
 *     ORDER BY id LIMIT outbox_batch FOR UPDATE SKIP LOCKED)
 *   RETURNING id, room, data::text
 * then publishes each row, in id order, with stoa_hub_publish. When a
 * drain finds nothing it sleeps outbox_poll_ms (woken at once by stop).
 * Rows are delivered only after the DELETE has committed: at most once.
 * A row whose room is invalid, whose data does not parse or whose data
 * text exceeds max_message_bytes is logged and dropped.
 *
 * When the connection is lost it reconnects with backoff (100 ms doubling
 * to 5 s, with jitter). Connecting blocks for at most the connect timeout
 * (stoa_db_connect), so stopping during a connect attempt may wait that long.
 */
#ifndef STOA_OUTBOX_H
#define STOA_OUTBOX_H

#include "stoa/config.h"
#include "stoa/hub.h"

typedef struct stoa_outbox stoa_outbox_t;

/* Start draining cfg->database_url into hub (both borrowed; they must
 * outlive the drainer). The first connection is made on the drainer's
 * thread: a database that is down is retried, not an error. NULL with a
 * message in err when the thread cannot be started. */
stoa_outbox_t *stoa_outbox_start(const stoa_config_t *cfg, stoa_hub_t *hub, char *err, size_t errlen);
/* Stop the thread (promptly), close its connection and free ob (NULL is fine). */
void stoa_outbox_stop(stoa_outbox_t *ob);

#endif
