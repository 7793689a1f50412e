/* hub_internal.h - the hub's data structures, shared by hub.c (rooms,
 * sessions, local operations) and hub_remote.c (the cross-instance side).
 * Not a public header: nothing outside those two files includes it.
 *
 * Everything here is guarded by stoa_hub.lock (hub_lock/hub_unlock) unless
 * a comment says otherwise.
 */
#ifndef STOA_HUB_INTERNAL_H
#define STOA_HUB_INTERNAL_H

#include "stoa/hub.h"
#include "stoa/ratelimit.h"

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <uthash.h>
#include <utlist.h>

#define STOA_PEER_ID_LEN 12

typedef struct room room_t;
typedef struct membership membership_t;

struct membership {
    /* room then sess: the key in hub->memberships (MEMBERSHIP_KEY_LEN
     * bytes). With room_next, what hub_broadcast's walk reads, in one
     * cache line. */
    room_t *room;
    stoa_session_t *sess;
    membership_t *room_next, *room_prev;   /* room->members, in join order (utlist) */
    json_object *state;          /* always an object */
    /* The state's plain JSON text, encoded once per change for the size
     * limit and reused by every presence message it goes into (valid when
     * state_text_ok; stoa_hub_presence's in-place merges keep it). */
    char *state_text;
    size_t state_len, state_cap;
    bool state_text_ok;
    /* state is this membership's own copy, which stoa_hub_presence merges
     * into in place; otherwise it may be shared (the hub's empty_state, an
     * object from a bus event) and is copied before the first change. */
    bool state_own;
    int64_t last_seen_ms;
    bool dirty;                  /* state changed since the room's last presence flush */
    bool observer;               /* receives the room's messages, but is not announced, not
                                  * listed and has no presence (join with "observe": true) */
    membership_t *sess_prev, *sess_next;   /* sess->rooms, in join order (utlist) */
    UT_hash_handle hh;           /* in hub->memberships, keyed by (room, sess) */
};
/* Memberships are found in one table of the hub's, by room and session,
 * rather than one table per room and per session (each a 64-byte header
 * and its buckets, for what is often a room of one). The key is the
 * record's first two fields, laid out as membership_key_t. */
typedef struct membership_key {
    room_t *room;
    stoa_session_t *sess;
} membership_key_t;
#define MEMBERSHIP_KEY_LEN sizeof(membership_key_t)
_Static_assert(offsetof(membership_t, room) == offsetof(membership_key_t, room) &&
                   offsetof(membership_t, sess) == offsetof(membership_key_t, sess),
               "a membership's key is its room and session pointers, as in membership_key_t");

/* Memberships are allocated in slabs of this many (hub.c). */
#define MEMBERSHIP_SLAB 64
typedef struct membership_slab {
    struct membership_slab *next;
    membership_t m[MEMBERSHIP_SLAB];
} membership_slab_t;

/* Mark memory that must not be read or written, under ASan. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define STOA_ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define STOA_ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define STOA_ASAN_POISON(p, n) ((void)(p), (void)(n))
#define STOA_ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct room {
    char *name;
    membership_t *members;       /* peers and observers, in join order (room_next) */
    unsigned npeers, nobservers;
    /* Presence coalescing (presence_tick_ms): members with a changed state
     * are flagged dirty, and the room is on the hub's dirty list until a
     * flush sends one presence (or presence_batch) message for them. */
    unsigned ndirty;
    int64_t last_flush_ms;
    room_t *dirty_prev, *dirty_next;
    bool dirty_listed;
    UT_hash_handle hh;
};

/* One numbered message in a session's buffer. */
typedef struct entry {
    uint64_t seq;
    stoa_msg_t *msg;
    int64_t at_ms;
} entry_t;

struct stoa_session {
    atomic_uint refs;
    stoa_hub_t *hub;
    /* The fields every delivery touches first, together (guarded by
     * hub->lock): whether it is open and local, where it is attached, and
     * its numbered buffer. */
    bool open;
    bool wake_queued;
    char *origin;
    const stoa_transport_ops_t *ops;   /* NULL: detached */
    void *transport;
    void *conn;
    entry_t *ring;               /* seqs ring[head].seq ... next_seq - 1, consecutive */
    size_t cap, head, len, bytes;   /* cap: 0 or a power of two */
    uint64_t next_seq;           /* the seq the next message gets */
    uint64_t cursor;             /* last seq handed to the attached connection */
    uint64_t resync_from, resync_to;   /* the latest resync block, kept until read */
    char peer[STOA_PEER_ID_LEN + 1];
    char id[STOA_SESSION_ID_LEN + 1];
    stoa_identity_t *ident;      /* immutable once open (a remote session's comes from its record) */
    char sidh[STOA_HUB_SIDH_LEN + 1];   /* hex digest of id: how other instances find it to move it */
    /* Everything below is guarded by hub->lock. */
    json_object *user;           /* {"id","name","color","anonymous"} */
    /* (ops, transport, conn and open: above) */
    int64_t detached_at_ms;
    /* Cross-instance (hub_remote.c). A remote session is one connected to
     * another instance, known from the bus: origin is that instance's id,
     * it has members but no id, buffer or transport, and nothing is ever
     * queued for it. A local session has origin NULL (origin: above). gen
     * counts moves between instances: a record with a lower gen is stale. */
    uint64_t gen;
    unsigned mark;               /* snapshot epoch that last listed it */
    membership_t *rooms;         /* its memberships, in join order (sess_next) */
    unsigned nrooms;
    stoa_bucket_t presence_bucket, ephemeral_bucket, join_bucket;
    UT_hash_handle hh;           /* in hub->sessions, keyed by peer */
    UT_hash_handle hh_id;        /* in hub->by_id, keyed by id */
};

/* A wakeup collected under the lock, delivered after it. */
typedef struct wake {
    const stoa_transport_ops_t *ops;
    void *transport;
    void *conn;
    stoa_session_t *sess;        /* a reference */
} wake_t;

struct stoa_hub {
    pthread_mutex_t lock;
    const stoa_config_t *cfg;
    room_t *rooms;
    stoa_session_t *sessions;
    stoa_session_t *by_id;
    wake_t *wakes;
    size_t nwakes, capwakes;
    json_object *limits;
    /* The bus (NULL without a database). Events are appended to its queue
     * under the lock, in the order they happen; bus_kick is set when the
     * bus needs waking after the lock is released. */
    const stoa_hub_bus_ops_t *bus_ops;
    void *bus;
    char *instance;              /* this instance's id on the bus */
    bool bus_kick;
    unsigned snap_epoch;
    room_t *dirty_rooms;         /* rooms with presence waiting for a flush */
    char *scratch;               /* a state's text being encoded (stoa_hub_presence), */
    size_t scratch_cap;          /* swapped with the membership's once it fits */
    char *emit_buf;              /* the text of the bus event being emitted (hub_emit) */
    stoa_session_t **fan;        /* hub_broadcast's recipients in a big room, capfan of them */
    size_t capfan;
    membership_t *memberships;   /* every membership, keyed by (room, sess) */
    membership_slab_t *mslabs;   /* every membership record (hub.c) */
    membership_t *mfree;         /* the free ones, linked through their first bytes */
    size_t emit_cap;
    json_object *empty_state;    /* {} shared by every member without a state
                                  * (only a membership's own copy, state_own,
                                  * is ever changed in place) */
};

/* Lock the hub; unlock it and then deliver the wakeups (and the bus kick)
 * collected meanwhile. */
void hub_lock(stoa_hub_t *hub);
void hub_unlock(stoa_hub_t *hub);
/* Queue msg (a reference taken) for a local session; no-op for a remote
 * or closed one. */
void hub_enqueue(stoa_session_t *s, stoa_msg_t *msg);
/* Queue msg for every local member of room but except (one clock read and
 * one reference count update for the whole fan-out). */
void hub_broadcast(room_t *room, stoa_session_t *except, stoa_msg_t *msg);
/* [{"peer","user","state"}...] of room (NULL: none), a new array. */
json_object *hub_room_peers(room_t *room);
membership_t *hub_find_membership(stoa_session_t *s, const char *room);
/* Add s to room_name (created if needed) with state (ownership taken),
 * telling the room's other local members (peer_joined). */
membership_t *hub_add_membership(stoa_hub_t *hub, stoa_session_t *s, const char *room_name, json_object *state,
                                 bool observer);
/* Remove a membership and tell the room; a local session's removal goes
 * on the bus too. Frees the room with its last member. */
void hub_remove_membership(stoa_hub_t *hub, membership_t *m, stoa_left_reason_t reason);
/* Replace a member's state (ownership taken; it may be shared, and is
 * never changed in place) and tell the room's other local members
 * (presence). */
void hub_set_state(membership_t *m, json_object *state);
/* m->state was changed (in place, or replaced by the caller, who keeps
 * state_own, state_text and state_text_ok true to it): the same telling,
 * without a replacement. */
void hub_state_changed(membership_t *m);
/* Send the room's pending presence now (one message for every member
 * whose state changed), so that what follows is not overtaken by it. */
void hub_flush_room(stoa_hub_t *hub, room_t *room, int64_t now);
void hub_close_locked(stoa_session_t *s, stoa_left_reason_t reason);
void hub_resync(stoa_session_t *s, const char *reason);
void hub_drop_buffer(stoa_session_t *s);
/* Put a wakeup for conn of this session on the list (the caller has
 * made the session unreachable for conn, so the transport finds it gone). */
void hub_add_wake(stoa_hub_t *hub, const stoa_transport_ops_t *ops, void *transport, void *conn, stoa_session_t *s);

/* The bus side (hub_remote.c). Under the hub lock: encode ev (ownership
 * taken; into hub->emit_buf) and append it to the bus queue; a no-op
 * without a bus. ev must be encoded at once:
 * what it holds references to (a membership's state, which
 * stoa_hub_presence changes in place) may change after the call. */
void hub_emit(stoa_hub_t *hub, json_object *ev);
/* Under the hub lock: emit {"t":"eph","p":peer,"room":room,"data":data}
 * as hub_emit would encode it, from data already encoded (data_len bytes,
 * as stoa_json_encode writes it); room is a valid room name (nothing in it
 * to escape), peer a peer id. A no-op without a bus. */
void hub_emit_ephemeral(stoa_hub_t *hub, const char *peer, const char *room, const char *data, size_t data_len);
/* {"t":"sess",...}: everything another instance needs to know of a local
 * session s (and to take it over): a new object. */
json_object *hub_session_record(stoa_session_t *s);

#endif
