/* peer_fixture.h - the fake transport and queue readers shared by the
 * unit tests that drive local sessions as peers (check_hub.c,
 * check_remote.c): a pool of peers, each a session and the fake transport
 * connection attached to it, and reading what each is sent.
 *
 * A file sets MAX_PEERS (the size of its pool) before including this, if
 * it needs other than the default. Like hub_fixture.h (included here), the
 * helpers are static; those a file does not use are marked unused. */
#ifndef STOA_TESTS_UNIT_PEER_FIXTURE_H
#define STOA_TESTS_UNIT_PEER_FIXTURE_H

#include "hub_fixture.h"

#include "stoa/hub.h"
#include "stoa/msg.h"

#include <check.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#ifndef MAX_PEERS
#define MAX_PEERS 8
#endif

/* ---- fake transport ---- */

/* One peer: its session, and the fake transport connection attached to
 * it (the peer struct is both the transport and the conn). */
typedef struct peer {
    stoa_session_t *s;
    const char *name;
    int wakes;
    stoa_session_t *woken;
    void *woken_conn;
    uint64_t seq;                /* the last seq delivered */
} peer_t;

static HUB_FIXTURE_UNUSED void fake_wake(void *transport, stoa_session_t *sess, void *conn)
{
    peer_t *p = transport;
    ck_assert_ptr_eq(transport, conn);
    p->wakes++;
    p->woken = sess;
    p->woken_conn = conn;
}

static HUB_FIXTURE_UNUSED const stoa_transport_ops_t fake_ops = {.name = "fake", .wake = fake_wake};

/* ---- the pool of peers ---- */

static peer_t peers[MAX_PEERS];
static int npeers;

/* Empty the pool (in setup). */
static HUB_FIXTURE_UNUSED void peers_reset(void)
{
    memset(peers, 0, sizeof peers);
    npeers = 0;
}

/* The next peer of the pool, named `name`, with no session yet. */
static HUB_FIXTURE_UNUSED peer_t *new_peer(const char *name)
{
    peer_t *p;
    ck_assert_int_lt(npeers, MAX_PEERS);
    p = &peers[npeers++];
    memset(p, 0, sizeof *p);
    p->name = name;
    return p;
}

/* Close every peer's session and drop its reference (in teardown). */
static HUB_FIXTURE_UNUSED void peers_close(void)
{
    for (int i = 0; i < npeers; i++) {
        if (peers[i].s) {
            stoa_hub_close(peers[i].s, STOA_LEFT_DISCONNECT);
            stoa_session_unref(peers[i].s);
        }
    }
}

static HUB_FIXTURE_UNUSED const char *peer_id(peer_t *p)
{
    return stoa_session_peer(p->s);
}

/* ---- reading the queue ---- */

/* The next message for p's connection (NULL when there is none), which
 * must still be attached; seqs must run on from the last one delivered. */
static HUB_FIXTURE_UNUSED stoa_msg_t *next_msg(peer_t *p)
{
    uint64_t seq = 0;
    bool gone = true;
    stoa_msg_t *m = stoa_session_next(p->s, p, &seq, &gone);
    ck_assert_msg(!gone, "%s: the connection is no longer the session's", p->name);
    if (m) {
        ck_assert_msg(seq == p->seq + 1, "%s: seq %llu after %llu", p->name, (unsigned long long)seq,
                      (unsigned long long)p->seq);
        p->seq = seq;
    }
    return m;
}

/* The next message, which must be of `type`; returns it parsed (the
 * caller puts it). */
static HUB_FIXTURE_UNUSED json_object *expect_msg(peer_t *p, const char *type)
{
    return msg_of_type(next_msg(p), p->name, type);
}

static HUB_FIXTURE_UNUSED void expect_empty(peer_t *p)
{
    stoa_msg_t *m = next_msg(p);
    ck_assert_msg(m == NULL, "%s: expected an empty queue, got %s", p->name, m ? stoa_msg_text(m) : "");
}

/* p's connection is no longer the session's (superseded, or closed):
 * asked without a seq, and with one, which must be left untouched. */
static HUB_FIXTURE_UNUSED void expect_gone(peer_t *p)
{
    uint64_t seq = 12345;
    bool gone = false;
    stoa_msg_t *m = stoa_session_next(p->s, p, NULL, &gone);
    ck_assert_msg(m == NULL, "%s: expected nothing, got %s", p->name, m ? stoa_msg_text(m) : "");
    ck_assert_msg(gone, "%s: expected its connection to be gone", p->name);
    gone = false;
    m = stoa_session_next(p->s, p, &seq, &gone);
    ck_assert_msg(m == NULL, "%s: expected nothing, got %s", p->name, m ? stoa_msg_text(m) : "");
    ck_assert_msg(gone, "%s: expected its connection to be gone", p->name);
    ck_assert_uint_eq(seq, 12345);   /* untouched */
}

static HUB_FIXTURE_UNUSED void drain(peer_t *p)
{
    stoa_msg_t *m;
    while ((m = next_msg(p)))
        stoa_msg_unref(m);
}

#endif
