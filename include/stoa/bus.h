/* bus.h - the cross-instance bus: PostgreSQL LISTEN/NOTIFY between Stoa
 * instances sharing one database (only with --database).
 *
 * The bus is the hub's fourth adapter. It owns one thread and one libpq
 * connection (never shared): the connection LISTENs on channel stoa_bus
 * and also sends this instance's NOTIFYs, up to bus_notify_batch payloads
 * per autocommit statement, outside any application transaction. The thread runs a
 * poll() loop over that connection's socket (PQsocket, libpq's
 * asynchronous API with at most one statement in flight) and an eventfd.
 *
 * Outbound: the hub appends encoded events to the bus queue under its lock
 * (stoa_hub_bus_ops_t) in the order they happen (waking the thread only
 * when the queue was empty); the thread packs as many as fit into one
 * NOTIFY payload {"o":instance,"s":seq,"e":[events]} below PostgreSQL's
 * 8000-byte limit, and up to bus_notify_batch payloads into one statement. An event too large for that goes
 * alone into table stoa_bus_payloads, and only {"o","s","x":row id}
 * travels in the notification. seq numbers every payload of an instance
 * (1, 2, 3...); a payload is sent at least every bus_heartbeat_ms (empty
 * when there is nothing to say): that is the heartbeat. The queue holds at
 * most bus_queue_bytes; beyond that (or while disconnected) events are
 * dropped and a full snapshot of local sessions is sent instead, so
 * presence converges while the dropped ephemeral messages are lost.
 *
 * Inbound: payloads from other instances are applied in the order each
 * one sent them (one sender connection, one receiver queue; a payload in
 * the table is fetched before anything after it is applied); own echoes
 * are ignored unread (by the notifying backend's pid). A payload in the
 * form the bus writes is scanned, not parsed: ephemeral messages and
 * publishes go to the hub as text (stoa_hub_remote_apply_events), other
 * events are parsed one by one. A seq that skips (or the first payload heard from an
 * instance) asks that instance for a snapshot. An instance not heard for
 * bus_dead_ms is dead: its peers are announced as having left.
 *
 * When the connection breaks the thread reconnects (backoff 100 ms doubling
 * to 5 s, full jitter), LISTENs again, sends a snapshot of its own sessions
 * and asks every instance for theirs. Local rooms work throughout. On stop
 * it sends what is queued (for up to a second) and a "bye", so the others
 * drop its peers at once.
 */
#ifndef STOA_BUS_H
#define STOA_BUS_H

#include <json-c/json.h>

#include "stoa/config.h"
#include "stoa/db.h"
#include "stoa/hub.h"

/* The NOTIFY channel. */
#define STOA_BUS_CHANNEL "stoa_bus"
/* Largest payload sent inline (PostgreSQL refuses 8000 bytes and more). */
#define STOA_BUS_PAYLOAD_MAX 7900
#define STOA_BUS_INSTANCE_LEN 12

typedef struct stoa_bus stoa_bus_t;

/* Start the bus on db (ownership taken: an open connection from
 * stoa_db_open_checked), connected to hub (borrowed; it must outlive the
 * bus). LISTENs and registers the instance in stoa_instances before
 * returning (blocking the caller for those two statements), then connects
 * the hub (stoa_hub_set_bus) and starts the thread. Returns the bus, or
 * NULL with a message in err (db is closed then). */
stoa_bus_t *stoa_bus_start(const stoa_config_t *cfg, stoa_hub_t *hub, stoa_db_t *db, char *err, size_t errlen);
/* Disconnect the hub, send what is queued and a "bye", stop the thread,
 * close the connection and free the bus (NULL is fine). */
void stoa_bus_stop(stoa_bus_t *bus);
/* This instance's id (random per process). */
const char *stoa_bus_instance(const stoa_bus_t *bus);
/* Whether the bus connection is up now. Any thread. */
bool stoa_bus_connected(stoa_bus_t *bus);
/* {"instance","connected","instances":[ids heard from]}: a new object
 * owned by the caller. Any thread. */
json_object *stoa_bus_status(stoa_bus_t *bus);

#endif
