// The instance bus: several `stoa serve --database` instances on one
// PostgreSQL act as one server. Presence, ephemeral messages, the
// integrator API, notices and stoa_publish rows reach peers wherever they
// are connected; an instance that dies has its peers announced as left
// within 5 s; a PostgreSQL outage is survived and presence converges after
// it; a session moves from one instance to another without its peers
// seeing it leave. Real PostgreSQL (lib/pg.mjs) and real stoa binaries.
import { describe, it, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startStoa, waitFor, sleep } from './lib/stoa.mjs';
import { startPostgres } from './lib/pg.mjs';
import { closeAll, createSession, deleteSession, getSession, poll, postMessages, postOk, Poller } from './lib/sessions.mjs';
import {
  api, busOf, migrate, pgDown, pgUp, presencePeers, roomCount, startCluster, waitForMesh,
} from './lib/cluster.mjs';

const SECRET = 'cluster-test-jwt-secret-0123456789abcdef';
const KEY = 'cluster-integrator-key-0123456789abcdef';
const GRACE = 1000;           // session_grace_ms
const DEAD_MS = 2000;         // bus_dead_ms
const KILL_LIMIT = 5000;      // the spec: a dead instance's peers leave within 5 s
const BURST = 50000;
const FLAGS = [
  '--jwt-secret', SECRET,
  '--api-keys', KEY,
  '--bus-heartbeat-ms', '500',
  '--bus-dead-ms', String(DEAD_MS),
  '--session-grace-ms', String(GRACE),
  '--ephemeral-per-min', '6000000',
  '--ephemeral-burst', '100000',
  '--session-buffer-msgs', String(4 * BURST),
  '--session-buffer-bytes', String(1024 * BURST),   // the burst may all wait in the receiver's buffer
];

/** Matches a message of `type` whose fields equal those given. */
const is = (type, fields = {}) => {
  const f = (m) => m.type === type && Object.entries(fields).every(([k, v]) => m[k] === v);
  f.toString = () => `${type} ${JSON.stringify(fields)}`;   // for Inbox.next's timeout message
  return f;
};
const sorted = (xs) => [...xs].sort();
const byPeer = (peers) => [...peers].sort((x, y) => (x.peer < y.peer ? -1 : x.peer > y.peer ? 1 : 0));

/** The last seq a WebSocket client has received: welcome.seq plus the messages after it (no resync among them). */
function lastSeqOf(c) {
  const i = c.received.findIndex((m) => m.type === 'welcome');
  assert.ok(i >= 0, 'no welcome received');
  const after = c.received.slice(i + 1);
  assert.deepEqual(after.filter((m) => m.type === 'resync'), [], 'unexpected resync before the move');
  return c.received[i].seq + after.length;
}

describe('cluster: two instances on one database', () => {
  let pg;
  let a;
  let b;
  let idA;
  let idB;
  let callA;
  let callB;
  let rooms = 0;
  const open = [];
  /** A fresh room name for a test. */
  const freshRoom = (kind = 'doc') => `${kind}:c${++rooms}`;

  /** A WebSocket client on srv (welcome received), closed after the test. */
  async function peer(srv, opts) {
    const c = await srv.client(opts);
    open.push(c);
    return c;
  }

  /** A client on srv that joined room; c.rs is its room_state. */
  async function joined(srv, room, { state, token } = {}) {
    const c = await peer(srv, token ? { token } : {});
    c.rs = await c.join(room, state);
    return c;
  }

  before(async () => {
    pg = await startPostgres();
    await migrate(pg);
    [a, b] = await startCluster(pg, 2, FLAGS);
    callA = api(a, KEY);
    callB = api(b, KEY);
  });
  after(async () => {
    await closeAll();
    for (const c of open) c.terminate();
    await Promise.all([a, b].filter(Boolean).map((s) => s.stop()));
    if (pg) await pg.stop();
  });
  beforeEach(async () => {
    [idA, idB] = await waitForMesh([a, b]);
  });
  afterEach(async () => {
    await closeAll();
    await Promise.all(open.splice(0).map((c) => (c.isOpen ? c.close() : null)));
  });

  it('GET /healthz has "bus": its own instance id, connected, the other instance; none without --database', async () => {
    const busA = await busOf(a);
    const busB = await busOf(b);
    for (const [bus, self, other] of [[busA, idA, idB], [busB, idB, idA]]) {
      assert.ok(bus && ['connected', 'instance', 'instances'].every((k) => k in bus), JSON.stringify(bus));
      assert.ok(Array.isArray(bus.instances), JSON.stringify(bus));
      assert.equal(bus.instance, self);
      assert.equal(bus.connected, true);
      assert.ok(bus.instances.includes(other), JSON.stringify(bus));
      assert.ok(!bus.instances.includes(self), `an instance lists itself among the others: ${JSON.stringify(bus)}`);
    }
    assert.notEqual(idA, idB, 'two instances with the same id');
    const plain = await startStoa([]);
    try {
      const h = await (await plain.fetch('/healthz')).json();
      assert.equal(h.bus, undefined, `a server without --database reports a bus: ${JSON.stringify(h)}`);
    } finally {
      await plain.stop();
    }
  });

  it('shared presence: peer_joined crosses both ways; room_state lists peers of both instances', async () => {
    const room = freshRoom();
    const adaToken = await a.token({ sub: 'ada', name: 'Ada', rooms: { 'doc:*': 'rw' } });
    const graceToken = await a.token({ sub: 'grace', name: 'Grace', rooms: { 'doc:*': 'rw' } });
    const ada = await joined(a, room, { token: adaToken, state: { name: 'Ada', cursor: { line: 1, ch: 1 } } });
    // A token minted for A works on B (same jwt_secret).
    await waitFor(async () => (await presencePeers(b, room)).includes(ada.peer), { what: `B to list Ada in ${room}` });
    const grace = await joined(b, room, { token: graceToken, state: { cursor: { line: 2 } } });
    assert.equal(grace.welcome.user.id, 'grace');
    assert.deepEqual(byPeer(grace.rs.peers), byPeer([
      { peer: ada.peer, user: ada.welcome.user, state: { name: 'Ada', cursor: { line: 1, ch: 1 } } },
      { peer: grace.peer, user: grace.welcome.user, state: { cursor: { line: 2 } } },
    ]), 'the room_state of a joiner on B lists the peer on A');
    assert.deepEqual(await ada.next(is('peer_joined', { peer: grace.peer })),
      { type: 'peer_joined', room, peer: grace.peer, user: grace.welcome.user, state: { cursor: { line: 2 } } });

    const carol = await joined(a, room);
    assert.deepEqual(await grace.next(is('peer_joined', { peer: carol.peer })),
      { type: 'peer_joined', room, peer: carol.peer, user: carol.welcome.user, state: {} });
    assert.deepEqual(sorted(carol.rs.peers.map((p) => p.peer)), sorted([ada.peer, grace.peer, carol.peer]));
    await ada.next(is('peer_joined', { peer: carol.peer }));
    // Each joined once: nobody got a second peer_joined for anyone.
    await Promise.all([ada.sync(), grace.sync(), carol.sync()]);
    await grace.expectNone('peer_joined', 200);
    await ada.expectNone('peer_joined', 0);
  });

  it('presence patches cross both ways; the receiver gets the whole merged state', async () => {
    const room = freshRoom();
    const ada = await joined(a, room, { state: { name: 'Ada', cursor: { line: 1, ch: 1 }, selection: [1, 2] } });
    const grace = await joined(b, room, { state: { cursor: { line: 2, ch: 0 } } });
    await ada.next(is('peer_joined', { peer: grace.peer }));
    await waitFor(async () => (await presencePeers(b, room)).length === 2, { what: 'B to list both peers' });

    ada.send({ type: 'presence', room, state: { cursor: { line: 4 }, selection: null }, id: 'p1' });
    assert.deepEqual(await ada.next(is('ack', { id: 'p1' })), { type: 'ack', id: 'p1' });
    assert.deepEqual(await grace.next(is('presence', { peer: ada.peer })),
      { type: 'presence', room, peer: ada.peer, state: { name: 'Ada', cursor: { line: 4, ch: 1 } } });

    grace.send({ type: 'presence', room, state: { cursor: { ch: 9 }, mood: 'ok' } });
    assert.deepEqual(await ada.next(is('presence', { peer: grace.peer })),
      { type: 'presence', room, peer: grace.peer, state: { cursor: { line: 2, ch: 9 }, mood: 'ok' } });
    await ada.sync();
    assert.deepEqual(ada.peek(is('presence', { peer: ada.peer })), [], 'the sender got its own presence back');

    // Both instances' REST presence shows the merged states.
    const want = byPeer([
      { peer: ada.peer, user: ada.welcome.user, state: { name: 'Ada', cursor: { line: 4, ch: 1 } } },
      { peer: grace.peer, user: grace.welcome.user, state: { cursor: { line: 2, ch: 9 }, mood: 'ok' } },
    ]);
    for (const srv of [a, b]) {
      let got;
      await waitFor(async () => {
        got = byPeer((await (await srv.fetch(`/v1/rooms/${room}/presence`)).json()).peers);
        return JSON.stringify(got) === JSON.stringify(want);
      }, { what: `merged presence on ${srv === a ? 'A' : 'B'}` }).catch(() => assert.deepEqual(got, want));
    }
  });

  it('ephemeral messages cross both ways, stamped with the sender, exactly once, not echoed', async () => {
    const room = freshRoom();
    const ada = await joined(a, room);
    const grace = await joined(b, room);
    await ada.next(is('peer_joined', { peer: grace.peer }));
    await waitFor(async () => (await presencePeers(b, room)).includes(ada.peer), { what: 'B to list Ada' });

    ada.send({ type: 'ephemeral', room, data: { kind: 'reaction', emoji: '🎉' }, id: 'e1' });
    assert.deepEqual(await ada.next(is('ack', { id: 'e1' })), { type: 'ack', id: 'e1' });
    assert.deepEqual(await grace.next(is('ephemeral', { from: ada.peer })),
      { type: 'ephemeral', room, from: ada.peer, user: ada.welcome.user, data: { kind: 'reaction', emoji: '🎉' } });
    grace.send({ type: 'ephemeral', room, data: ['typing', 1] });
    assert.deepEqual(await ada.next(is('ephemeral', { from: grace.peer })),
      { type: 'ephemeral', room, from: grace.peer, user: grace.welcome.user, data: ['typing', 1] });

    // A later message from the same origin: once it is in, an earlier duplicate would be too.
    ada.send({ type: 'ephemeral', room, data: 'marker' });
    await grace.next((m) => m.type === 'ephemeral' && m.data === 'marker');
    await grace.expectNone('ephemeral', 200);
    await ada.sync();
    assert.deepEqual(ada.peek(is('ephemeral', { from: ada.peer })), [], 'the sender got its own message back');
  });

  it('leave crosses as peer_left "leave"; a close frame as "disconnect"; a cut connection as "disconnect" after the grace period', async () => {
    const room = freshRoom();
    const watcher = await joined(a, room);
    const leaver = await joined(b, room);
    const closer = await joined(b, room);
    const cut = await joined(b, room);
    for (const p of [leaver, closer, cut]) await watcher.next(is('peer_joined', { peer: p.peer }));

    leaver.send({ type: 'leave', room, id: 'l' });
    await leaver.next(is('ack', { id: 'l' }));
    assert.deepEqual(await watcher.next(is('peer_left', { peer: leaver.peer })),
      { type: 'peer_left', room, peer: leaver.peer, reason: 'leave' });

    await closer.close();
    assert.deepEqual(await watcher.next(is('peer_left', { peer: closer.peer })),
      { type: 'peer_left', room, peer: closer.peer, reason: 'disconnect' });

    const t0 = Date.now();
    cut.terminate();
    const left = await watcher.next(is('peer_left', { peer: cut.peer }), GRACE + 5000);
    const ms = Date.now() - t0;
    assert.deepEqual(left, { type: 'peer_left', room, peer: cut.peer, reason: 'disconnect' });
    assert.ok(ms >= GRACE - 100, `peer_left came ${ms} ms after the cut, before the grace period (${GRACE} ms)`);

    for (const srv of [a, b]) {
      await waitFor(async () => JSON.stringify(await presencePeers(srv, room)) === JSON.stringify([watcher.peer]),
        { what: `only the watcher listed in ${room} on ${srv === a ? 'A' : 'B'}` });
    }
    await watcher.expectNone('peer_left', 200);
  });

  it('GET /v1/rooms and GET /v1/rooms/{room}/presence on either instance count and list peers of both', async () => {
    const room = freshRoom('project');
    const p1 = await joined(a, room);
    const p2 = await joined(a, room);
    const p3 = await joined(b, room);
    const want = sorted([p1.peer, p2.peer, p3.peer]);
    for (const [name, srv, call] of [['A', a, callA], ['B', b, callB]]) {
      let count;
      let listed;
      await waitFor(async () => {
        count = await roomCount(call, room);
        listed = await presencePeers(srv, room);
        return count === 3 && JSON.stringify(listed) === JSON.stringify(want);
      }, { what: `${name} to count and list the 3 peers of ${room}` }).catch(() => {
        assert.equal(count, 3, `GET /v1/rooms on ${name}`);
        assert.deepEqual(listed, want, `GET /v1/rooms/${room}/presence on ${name}`);
      });
    }
    // And when one leaves, both count it out.
    await p3.close();
    for (const call of [callA, callB]) {
      await waitFor(async () => (await roomCount(call, room)) === 2, { what: `${room} counted 2 after a leave` });
    }
  });

  it('POST /v1/notices on A reaches sessions on A and on B (WebSocket and long-poll)', async () => {
    const onA = await peer(a);
    const onB = await peer(b);
    const inRoom = await joined(b, freshRoom());
    const s = await createSession(b);
    const lp = Poller.start(b, s.session);
    const r = await callA('/v1/notices', { method: 'POST', body: { message: 'Maintenance in 5 minutes', level: 'warn' } });
    assert.equal(r.status, 202, r.text);
    const notice = { type: 'notice', level: 'warn', message: 'Maintenance in 5 minutes' };
    for (const c of [onA, onB, inRoom, lp]) assert.deepEqual(await c.next('notice'), notice);
    await Promise.all([onA, onB, inRoom].map((c) => c.sync()));
    for (const c of [onA, onB, inRoom]) await c.expectNone('notice', 0);
    await lp.stop();
    await deleteSession(b, s.session);
  });

  it('POST /v1/rooms/{room}/publish on B reaches peers on A (and on B), only in that room', async () => {
    const room = freshRoom('record');
    const onA = await joined(a, room);
    const onB = await joined(b, room);
    const outsider = await joined(a, freshRoom('record'));
    await waitFor(async () => (await presencePeers(b, room)).includes(onA.peer), { what: 'B to list the peer on A' });
    const r = await callB(`/v1/rooms/${room}/publish`, { method: 'POST', body: { data: { kind: 'record_updated', id: 'abc' } } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.room, room);
    const msg = { type: 'message', room, data: { kind: 'record_updated', id: 'abc' } };
    assert.deepEqual(await onA.next('message'), msg);
    assert.deepEqual(await onB.next('message'), msg);
    await Promise.all([onA.sync(), onB.sync(), outsider.sync()]);
    await onA.expectNone('message', 200);
    await onB.expectNone('message', 0);
    assert.deepEqual(outsider.peek('message'), []);
  });

  it('DELETE /v1/rooms/{room}/peers/{peer} on B removes a peer connected to A ("kicked", told to everyone)', async () => {
    const room = freshRoom();
    const victim = await joined(a, room);
    const watchA = await joined(a, room);
    const watchB = await joined(b, room);
    await watchA.next(is('peer_joined', { peer: watchB.peer }));
    await victim.next(is('peer_joined', { peer: watchB.peer }));
    await waitFor(async () => (await presencePeers(b, room)).includes(victim.peer), { what: 'B to list the victim' });

    const r = await callB(`/v1/rooms/${room}/peers/${victim.peer}`, { method: 'DELETE' });
    assert.equal(r.status, 204, r.text);
    const left = { type: 'peer_left', room, peer: victim.peer, reason: 'kicked' };
    for (const [who, c] of [['the kicked peer (on A)', victim], ['a peer on A', watchA], ['a peer on B', watchB]]) {
      const m = await c.next(is('peer_left', { peer: victim.peer })).catch((e) => {
        e.message = `${who} got no peer_left "kicked": ${e.message}`;
        throw e;
      });
      assert.deepEqual(m, left, who);
    }
    for (const srv of [a, b]) {
      await waitFor(async () => !(await presencePeers(srv, room)).includes(victim.peer),
        { what: `the kicked peer gone from ${srv === a ? 'A' : 'B'}'s presence` });
    }
    // Its session stays open: it may join again, and B sees it.
    victim.send({ type: 'join', room, id: 'again' });
    assert.equal((await victim.next(is('room_state', { id: 'again' }))).room, room);
    await watchB.next(is('peer_joined', { peer: victim.peer }));
    // A peer in no instance: 404 NOT_FOUND.
    const none = await callB(`/v1/rooms/${room}/peers/zzzzzzzzzzzz`, { method: 'DELETE' });
    assert.equal(none.status, 404, none.text);
    assert.equal(none.body.error.code, 'NOT_FOUND');
  });

  it('stoa_publish rows reach the room\'s peers on both instances, exactly once each, in order', async () => {
    const room = freshRoom('record');
    const onA = await joined(a, room);
    const onB = await joined(b, room);
    const isRow = (m) => m.type === 'message' && m.room === room;
    await waitFor(async () => (await presencePeers(a, room)).length === 2 && (await presencePeers(b, room)).length === 2,
      { what: 'both instances to list both peers' });

    await pg.psql(`BEGIN; SELECT stoa_publish('${room}', '{"one": 1}'); COMMIT;`);
    for (const c of [onA, onB]) assert.deepEqual(await c.next(isRow, 5000), { type: 'message', room, data: { one: 1 } });

    await pg.psql(`BEGIN; SELECT stoa_publish('${room}', jsonb_build_object('seq', i)) FROM generate_series(1, 50) AS i; COMMIT;`);
    await pg.psql(`BEGIN; SELECT stoa_publish('${room}', '{"marker": true}'); COMMIT;`);
    for (const [name, c] of [['A', onA], ['B', onB]]) {
      await c.next((m) => isRow(m) && m.data.marker === true, 10000);
      const got = c.received.filter(isRow).map((m) => m.data);
      assert.deepEqual(got, [{ one: 1 }, ...Array.from({ length: 50 }, (_, i) => ({ seq: i + 1 })), { marker: true }],
        `the rows the peer on ${name} received`);
      c.drain();
    }
    await onA.expectNone(isRow, 300);
    await onB.expectNone(isRow, 0);
    assert.equal(await pg.psql('SELECT count(*) FROM stoa_outbox'), '0');
  });

  it('a message larger than 8000 bytes (a NOTIFY payload) crosses intact, both ways', async () => {
    const room = freshRoom();
    const ada = await joined(a, room);
    const grace = await joined(b, room);
    await ada.next(is('peer_joined', { peer: grace.peer }));
    await waitFor(async () => (await presencePeers(b, room)).includes(ada.peer), { what: 'B to list Ada' });
    const big = (tag) => ({
      tag,
      blob: randomBytes(15000).toString('base64'),   // 20,000 characters
      text: 'héllo wörld 🎉 "quotes" \\ back\nslash\ttab',
      nested: { list: Array.from({ length: 50 }, (_, i) => ({ i, s: `item-${i}` })), nul: null, t: true, f: 1.5 },
    });
    const fromA = big('from-a');
    const fromB = big('from-b');
    assert.ok(JSON.stringify(fromA).length > 20000);
    ada.send({ type: 'ephemeral', room, data: fromA });
    const gotB = await grace.next(is('ephemeral', { from: ada.peer }));
    assert.deepEqual(gotB.data, fromA);
    grace.send({ type: 'ephemeral', room, data: fromB });
    const gotA = await ada.next(is('ephemeral', { from: grace.peer }));
    assert.deepEqual(gotA.data, fromB);
    // And a small one after it still arrives (the large path does not block the bus).
    ada.send({ type: 'ephemeral', room, data: 'small' });
    assert.equal((await grace.next(is('ephemeral', { from: ada.peer }))).data, 'small');
  });

  it(`per-origin order: ${BURST} ephemeral messages sent at once on A all reach B, in order`, { timeout: 60000 }, async () => {
    const room = freshRoom();
    const sender = await joined(a, room);
    const receiver = await joined(b, room);
    await sender.next(is('peer_joined', { peer: receiver.peer }));
    await waitFor(async () => (await presencePeers(b, room)).includes(sender.peer), { what: 'B to list the sender' });
    const isN = (m) => m.type === 'ephemeral' && m.room === room && m.from === sender.peer;

    const t0 = Date.now();
    for (let i = 0; i < BURST; i++) sender.send({ type: 'ephemeral', room, data: { n: i } });
    let count = 0;
    await waitFor(() => {
      count = receiver.received.filter(isN).length;
      return count >= BURST || receiver.received.some((m) => m.type === 'resync' || m.type === 'error');
    }, { timeoutMs: 45000, intervalMs: 100, what: `${BURST} messages on B` }).catch((e) => {
      e.message += ` (received ${count}; last n ${receiver.received.filter(isN).at(-1)?.data?.n})`;
      throw e;
    });
    const ms = Date.now() - t0;
    assert.deepEqual(receiver.received.filter((m) => m.type === 'resync' || m.type === 'error'), [],
      'the receiver got a resync or an error');
    await sender.sync(15000);
    assert.deepEqual(sender.peek('error'), [], 'the sender got errors (a limit?)');
    const ns = receiver.received.filter(isN).map((m) => m.data.n);
    const breaks = [];
    for (let i = 0; i < ns.length; i++) if (ns[i] !== i) breaks.push(`at ${i}: ${ns[i]}`);
    assert.deepEqual(breaks.slice(0, 10), [], `gaps, repeats or disorder in ${ns.length} messages`);
    assert.equal(ns.length, BURST);
    await sleep(300);
    assert.equal(receiver.received.filter(isN).length, BURST, 'more messages came after the last one (duplicates)');
    console.log(`# ${BURST} ephemeral messages A -> B in ${ms} ms`);
  });

  it('ephemeral messages in two rooms and publishes among them, data with escapes, cross in order with their user', { timeout: 30000 }, async () => {
    const plain = freshRoom();
    const odd = `${freshRoom()}.~@+=-:x`;
    const N = 2000;
    const sender = await peer(a);
    const receiver = await peer(b);
    for (const r of [plain, odd]) {
      await sender.join(r);
      await receiver.join(r);
    }
    await waitFor(async () => (await presencePeers(b, odd)).includes(sender.peer), { what: 'B to list the sender' });
    for (let i = 0; i < N; i++) {
      sender.send({ type: 'ephemeral', room: i % 3 === 0 ? odd : plain, data: { n: i, s: 'ü/"\\' } });
      if (i % 500 === 0) {
        await sender.sync(10000);   // message i is in the hub: the publish comes after it
        const r = await callA(`/v1/rooms/${encodeURIComponent(odd)}/publish`, { method: 'POST', body: { data: { pub: i, s: '"\\/\u0001' } } });
        assert.equal(r.status, 200, r.text);
      }
    }
    const mine = (m) => (m.type === 'ephemeral' && m.from === sender.peer) || (m.type === 'message' && m.data.pub !== undefined);
    await waitFor(() => receiver.received.filter(mine).length >= N + 4, { timeoutMs: 20000, what: `${N + 4} messages on B` });
    const got = receiver.received.filter(mine);
    const eph = got.filter((m) => m.type === 'ephemeral');
    assert.deepEqual(eph.map((m) => m.data.n), Array.from({ length: N }, (_, i) => i));
    for (const m of eph) {
      assert.equal(m.room, m.data.n % 3 === 0 ? odd : plain);
      assert.equal(m.data.s, 'ü/"\\');
      assert.equal(m.user.id, sender.received.find((x) => x.type === 'welcome').user.id);
    }
    // each publish comes after the ephemeral messages sent before it
    const order = got.map((m) => (m.type === 'message' ? `p${m.data.pub}` : m.data.n));
    for (const i of [0, 500, 1000, 1500]) {
      assert.equal(order.indexOf(`p${i}`), order.indexOf(i) + 1, `publish ${i} right after message ${i}`);
      assert.equal(got[order.indexOf(`p${i}`)].room, odd);
    }
  });

  it('payloads not in the usual form are still read; malformed ones are ignored and the bus goes on', async () => {
    const room = freshRoom();
    const onB = await joined(b, room);
    // hand-written payloads from an instance that does not exist: spaces, another key order
    await pg.psql(`SELECT pg_notify('stoa_bus', '{ "s": 1, "o": "zzzzzzzzzzz1", "e": [ { "message": "spaced", "t": "notice", "level": "info" } ] }')`);
    assert.deepEqual(await onB.next('notice', 5000), { type: 'notice', level: 'info', message: 'spaced' });
    for (const bad of ['{"o":"zzzzzzzzzzz1","s":2,"e":[{"t":"notice","level":"info","message":"x"}', 'not json',
      '{"o":"zzzzzzzzzzz1","s":2,"e":[{"t":"eph","p":"zzzzzzzzzzz2","room":"doc:x","data":{]}]}',
      '{"o":"zzzzzzzzzzz1","s":2,"e":[1,]}']) {
      await pg.psql(`SELECT pg_notify('stoa_bus', '${bad}')`);
    }
    // the bus still works both ways
    const onA = await joined(a, room);
    await onB.next(is('peer_joined', { peer: onA.peer }));
    onA.send({ type: 'ephemeral', room, data: 'after' });
    assert.equal((await onB.next(is('ephemeral', { from: onA.peer }))).data, 'after');
    await onB.expectNone((m) => m.type === 'notice', 0);
  });

  it('a WebSocket session moves from A to B: resync "moved", room_state of both rooms, no peer_left; it goes on from B', async () => {
    const room = freshRoom();
    const room2 = freshRoom();
    const watchA = await joined(a, room);
    const watchB = await joined(b, room);
    await watchA.next(is('peer_joined', { peer: watchB.peer }));   // as in the long-poll move below
    const token = await a.token({ sub: 'mover', name: 'Mover', rooms: { 'doc:*': 'rw' } });
    const mover = await peer(a, { token });
    await mover.join(room, { cursor: 1 });
    await mover.join(room2, { here: true });
    await watchA.next(is('peer_joined', { peer: mover.peer }));
    await watchB.next(is('peer_joined', { peer: mover.peer }));
    await waitFor(async () => sorted((await getSession(b, mover.welcome.session)).body.rooms ?? []).join() === sorted([room, room2]).join(),
      { what: 'B to know both rooms of the session' });
    await mover.sync();
    const last = lastSeqOf(mover);

    mover.terminate();   // no close frame: the session waits for a resume
    await mover.closed;
    const moved = await peer(b, { path: `/v1/ws?session=${mover.welcome.session}&last_seq=${last}&token=${token}` });
    assert.equal(moved.welcome.resumed, true, JSON.stringify(moved.welcome));
    assert.equal(moved.welcome.session, mover.welcome.session);
    assert.equal(moved.peer, mover.peer, 'the session kept its peer id');
    assert.deepEqual(moved.welcome.user, mover.welcome.user);

    const resync = await moved.next();
    assert.equal(resync.type, 'resync', `the first message after the welcome: ${JSON.stringify(resync)}`);
    assert.equal(resync.reason, 'moved');
    assert.deepEqual(sorted(resync.rooms), sorted([room, room2]));
    assert.ok(Number.isInteger(resync.seq) && resync.seq > last, `resync seq ${resync.seq} after last_seq ${last}`);
    const states = [await moved.next(), await moved.next()];
    assert.deepEqual(states.map((m) => m.type), ['room_state', 'room_state'], JSON.stringify(states));
    const rs = Object.fromEntries(states.map((m) => [m.room, m]));
    assert.deepEqual(sorted(Object.keys(rs)), sorted([room, room2]));
    assert.deepEqual(byPeer(rs[room].peers), byPeer([
      { peer: watchA.peer, user: watchA.welcome.user, state: {} },
      { peer: watchB.peer, user: watchB.welcome.user, state: {} },
      { peer: mover.peer, user: mover.welcome.user, state: { cursor: 1 } },
    ]), 'room_state after the move lists the peers of both instances and keeps the mover\'s state');
    assert.deepEqual(rs[room2].peers, [{ peer: mover.peer, user: mover.welcome.user, state: { here: true } }]);

    // Past A's grace period for the old connection: nobody saw the mover leave.
    await watchA.expectNone(is('peer_left', { peer: mover.peer }), GRACE + 1500);
    await watchB.expectNone(is('peer_left', { peer: mover.peer }), 0);
    for (const srv of [a, b]) {
      assert.deepEqual(await presencePeers(srv, room), sorted([watchA.peer, watchB.peer, mover.peer]),
        `${srv === a ? 'A' : 'B'} lists the moved peer once`);
    }

    // It goes on from B: presence and ephemeral reach the peer on A.
    moved.send({ type: 'presence', room, state: { cursor: 2 }, id: 'mp' });
    await moved.next(is('ack', { id: 'mp' }));
    assert.deepEqual(await watchA.next(is('presence', { peer: mover.peer })),
      { type: 'presence', room, peer: mover.peer, state: { cursor: 2 } });
    moved.send({ type: 'ephemeral', room, data: { after: 'move' } });
    assert.deepEqual(await watchA.next(is('ephemeral', { from: mover.peer })),
      { type: 'ephemeral', room, from: mover.peer, user: mover.welcome.user, data: { after: 'move' } });
    await moved.close();
    assert.deepEqual(await watchA.next(is('peer_left', { peer: mover.peer })),
      { type: 'peer_left', room, peer: mover.peer, reason: 'disconnect' });
  });

  it('a long-poll session moves from A to B: the poll on B gets resync "moved" then room_state; no peer_left', async () => {
    const room = freshRoom();
    const room2 = freshRoom();
    const watchA = await joined(a, room);
    const watchB = await joined(b, room);
    // A has heard of B's peer before the session joins on A: else the
    // session's first poll could also hold a peer_joined for it
    await watchA.next(is('peer_joined', { peer: watchB.peer }));
    const s = await createSession(a);
    await postOk(a, s.session, [{ type: 'join', room, state: { lp: 1 }, id: 1 }, { type: 'join', room: room2, id: 2 }]);
    const first = await poll(a, s.session, { after: 0 });
    assert.equal(first.status, 200, first.text);
    assert.deepEqual(first.body.messages.map((m) => m.type), ['room_state', 'room_state']);
    const last = first.body.last_seq;
    await watchA.next(is('peer_joined', { peer: s.peer }));
    await watchB.next(is('peer_joined', { peer: s.peer }));
    // B has heard of both joins (they may come in two bus payloads): a move
    // takes the rooms B knows of.
    await waitFor(async () => sorted((await getSession(b, s.session)).body.rooms ?? []).join() === sorted([room, room2]).join(),
      { what: 'B to know both rooms of the session' });

    const lp = Poller.start(b, s.session, { after: last });
    const resync = await lp.next();
    assert.equal(resync.type, 'resync', `the first message polled on B: ${JSON.stringify(resync)}; ` +
      `answers: ${JSON.stringify(lp.answers)}`);
    assert.equal(resync.reason, 'moved');
    assert.deepEqual(sorted(resync.rooms), sorted([room, room2]));
    assert.ok(resync.seq > last, `resync seq ${resync.seq} after ${last}`);
    assert.equal(lp.seqOf(resync), resync.seq, 'the resync is numbered with its own seq');
    const states = [await lp.next(), await lp.next()];
    assert.deepEqual(states.map((m) => m.type), ['room_state', 'room_state'], JSON.stringify(states));
    const rs = Object.fromEntries(states.map((m) => [m.room, m]));
    assert.deepEqual(sorted(rs[room].peers.map((p) => p.peer)), sorted([watchA.peer, watchB.peer, s.peer]));
    assert.deepEqual(rs[room].peers.find((p) => p.peer === s.peer).state, { lp: 1 });
    assert.deepEqual(rs[room2].peers.map((p) => p.peer), [s.peer]);

    // It sends through B; a peer on A gets it.
    await postOk(b, s.session, [{ type: 'presence', room, state: { lp: 2 } }, { type: 'ephemeral', room, data: 'via B' }]);
    assert.deepEqual(await watchA.next(is('presence', { peer: s.peer })), { type: 'presence', room, peer: s.peer, state: { lp: 2 } });
    assert.equal((await watchA.next(is('ephemeral', { from: s.peer }))).data, 'via B');

    await watchA.expectNone(is('peer_left', { peer: s.peer }), GRACE + 1500);
    await watchB.expectNone(is('peer_left', { peer: s.peer }), 0);
    assert.equal(lp.ended, null, `the poller on B stopped: ${lp.ended}`);

    await lp.stop();
    const del = await deleteSession(b, s.session);
    assert.equal(del.status, 204, del.text);
    assert.deepEqual(await watchA.next(is('peer_left', { peer: s.peer })),
      { type: 'peer_left', room, peer: s.peer, reason: 'leave' });
  });

  it(`an instance killed with SIGKILL: its peers leave on the others ("disconnect") within ${KILL_LIMIT} ms`, { timeout: 30000 }, async () => {
    const c = await startStoa(['--database', pg.url, ...FLAGS]);
    let idC;
    try {
      [idA, idB, idC] = await waitForMesh([a, b, c]);
      const room = freshRoom();
      const room2 = freshRoom();
      const watchA = await joined(a, room);
      const watchB = await joined(b, room);
      const watchA2 = await joined(a, room2);
      const doomed1 = await joined(c, room);
      const doomed2 = await joined(c, room);
      await doomed1.join(room2);
      for (const w of [watchA, watchB]) {
        for (const d of [doomed1, doomed2]) await w.next(is('peer_joined', { peer: d.peer }));
      }
      await watchA2.next(is('peer_joined', { peer: doomed1.peer }));

      let t0 = 0;
      const when = (w, r, p) => w.next(is('peer_left', { peer: p.peer, room: r }), KILL_LIMIT + 5000)
        .then((m) => ({ m, ms: Date.now() - t0 }));
      const waits = [
        ['A', when(watchA, room, doomed1)], ['A', when(watchA, room, doomed2)],
        ['B', when(watchB, room, doomed1)], ['B', when(watchB, room, doomed2)],
        ['A', when(watchA2, room2, doomed1)],
      ];
      t0 = Date.now();
      c.proc.kill('SIGKILL');
      const { signal } = await c.exited;
      assert.equal(signal, 'SIGKILL');
      const results = await Promise.all(waits.map(([where, p]) => p.then((r) => ({ where, ...r }), (error) => ({ where, error }))));
      for (const { where, m, ms, error } of results) {
        if (error) throw error;
        assert.equal(m.reason, 'disconnect', JSON.stringify(m));
        assert.ok(ms < KILL_LIMIT, `peer_left for ${m.peer} in ${m.room} on ${where} came ${ms} ms after the kill`);
      }
      console.log(`# peers of the killed instance left within ${Math.max(...results.map((x) => x.ms))} ms`);

      for (const srv of [a, b]) {
        assert.deepEqual(await presencePeers(srv, room), sorted([watchA.peer, watchB.peer]));
        assert.deepEqual(await presencePeers(srv, room2), [watchA2.peer]);
      }
      await waitFor(async () => {
        const [ba, bb] = await Promise.all([busOf(a), busOf(b)]);
        return !ba.instances.includes(idC) && !bb.instances.includes(idC) && ba.instances.includes(idB) &&
          bb.instances.includes(idA);
      }, { timeoutMs: 10000, what: 'the killed instance dropped from both /healthz bus.instances' });
    } finally {
      await c.stop();
    }
  });

  it('PostgreSQL stopped and started during traffic: both instances recover; presence converges; messages cross again',
    { timeout: 90000 }, async () => {
      const room = freshRoom();
      const stayA = await joined(a, room);
      const stayB = await joined(b, room);
      const leaveA = await joined(a, room);
      const leaveB = await joined(b, room);
      const all = [stayA, stayB, leaveA, leaveB].map((c) => c.peer);
      for (const srv of [a, b]) {
        await waitFor(async () => JSON.stringify(await presencePeers(srv, room)) === JSON.stringify(sorted(all)),
          { what: `${srv === a ? 'A' : 'B'} to list the 4 peers` });
      }
      // Traffic: an ephemeral message from A every 20 ms throughout.
      let n = 0;
      const traffic = setInterval(() => { if (stayA.isOpen) stayA.send({ type: 'ephemeral', room, data: { t: n++ } }); }, 20);
      let joinA;
      let joinB;
      try {
        await stayB.next((m) => m.type === 'ephemeral' && m.data?.t !== undefined);
        const down = Date.now();
        await pgDown(pg);
        try {
          let seen = [];
          await waitFor(async () => {
            seen = await Promise.all([busOf(a), busOf(b)]);
            return seen.every((bus) => bus.connected === false);
          }, { timeoutMs: 5000, what: 'both /healthz to say bus.connected false' }).catch((e) => {
            e.message += `: ${JSON.stringify(seen)}`;
            throw e;
          });
          // During the outage: one peer of each instance leaves, one joins on each.
          await leaveA.close();
          leaveB.send({ type: 'leave', room, id: 'gone' });
          await leaveB.next(is('ack', { id: 'gone' }));
          joinA = await joined(a, room);
          joinB = await joined(b, room);
          const held = Date.now() - down;
          if (held < DEAD_MS + 1000) await sleep(DEAD_MS + 1000 - held);   // an outage longer than bus_dead_ms
        } finally {
          await pgUp(pg);
        }
        [idA, idB] = await waitForMesh([a, b], { timeoutMs: 30000 });

        const want = sorted([stayA.peer, stayB.peer, joinA.peer, joinB.peer]);
        for (const [name, srv] of [['A', a], ['B', b]]) {
          let got = [];
          await waitFor(async () => {
            got = await presencePeers(srv, room);
            return JSON.stringify(got) === JSON.stringify(want);
          }, { timeoutMs: 30000, intervalMs: 200, what: `presence on ${name} to converge` }).catch(() => {
            assert.deepEqual(got, want, `GET /v1/rooms/${room}/presence on ${name} after the outage ` +
              `(left during it: ${leaveA.peer}, ${leaveB.peer}; joined during it: ${joinA.peer} on A, ${joinB.peer} on B)`);
          });
        }
        // And it stays converged (no ghost comes back with a late heartbeat).
        await sleep(DEAD_MS);
        for (const srv of [a, b]) assert.deepEqual(await presencePeers(srv, room), want);
      } finally {
        clearInterval(traffic);
      }

      // New ephemeral messages cross again, both ways.
      for (const [from, to] of [[stayA, stayB], [joinB, joinA]]) {
        const tag = `after-${from.peer}`;
        from.send({ type: 'ephemeral', room, data: { tag } });
        const m = await to.next((x) => x.type === 'ephemeral' && x.data?.tag === tag, 10000);
        assert.equal(m.from, from.peer);
      }
      // The peers on A hear the peer that joined on B during the outage, and the other way round.
      await stayA.next(is('peer_joined', { peer: joinB.peer }), 30000);
      await stayB.next(is('peer_joined', { peer: joinA.peer }), 30000);
      // ... and the peers that left during it, leave.
      await stayA.next(is('peer_left', { peer: leaveB.peer }), 30000);
      await stayB.next(is('peer_left', { peer: leaveA.peer }), 30000);
      for (const srv of [a, b]) assert.equal(srv.proc.exitCode, null, 'an instance exited during the outage');
    });

  it('requests for a session on the other instance: GET answers from the bus, POST and DELETE are forwarded; a wrong token is refused first', async () => {
    const room = freshRoom();
    const watchA = await joined(a, room);
    const adaToken = await a.token({ sub: 'ada-fwd', name: 'Ada', rooms: { 'doc:*': 'rw' } });
    const bobToken = await a.token({ sub: 'bob-fwd', name: 'Bob', rooms: { 'doc:*': 'rw' } });
    const s = await createSession(a, { token: adaToken });
    const lp = Poller.start(a, s.session);
    await waitFor(async () => (await getSession(b, s.session)).status === 200, { what: 'B to know the session' });

    const g = await getSession(b, s.session);
    assert.equal(g.body.peer, s.peer);
    assert.equal(g.body.transport, null);
    assert.equal(g.body.instance, idA, 'B says the session is on A');
    assert.equal((await getSession(a, s.session)).body.instance, idA);

    // A token for another user: refused on B before anything is forwarded or moved.
    const wrong = await postMessages(b, s.session, [{ type: 'join', room }], { token: bobToken });
    assert.equal(wrong.status, 401, wrong.text);
    assert.equal(wrong.body.error.code, 'AUTH_FAILED');
    const wrongWs = await b.connect({ path: `/v1/ws?session=${s.session}&last_seq=0&token=${bobToken}` });
    const closed = await wrongWs.closed;
    assert.equal(closed.code, 4001, 'a WebSocket resume with another user\'s token is refused');
    assert.equal((await getSession(a, s.session)).body.instance, idA, 'the session did not move');

    // Forwarded: 202, handled on A, in order; the session stays there.
    const fwd = await postMessages(b, s.session, [{ type: 'join', room, state: { via: 'B' }, id: 'j' }], { token: adaToken });
    assert.equal(fwd.status, 202, fwd.text);
    assert.deepEqual(fwd.body, { accepted: 1, errors: [], forwarded: true });
    assert.equal((await lp.next((m) => m.type === 'room_state')).id, 'j');
    assert.deepEqual((await watchA.next(is('peer_joined', { peer: s.peer }))).state, { via: 'B' });
    // An error of a forwarded message comes on the stream.
    await postMessages(b, s.session, [{ type: 'presence', room: 'doc:nowhere', state: {}, id: 'bad' }]);
    assert.equal((await lp.next((m) => m.type === 'error')).code, 'NOT_IN_ROOM');
    assert.equal((await getSession(a, s.session)).body.transport, 'longpoll', 'still on A');

    // DELETE on B ends it on A: its peers see it leave.
    const del = await deleteSession(b, s.session);
    assert.equal(del.status, 204, del.text);
    assert.equal((await watchA.next(is('peer_left', { peer: s.peer }))).reason, 'leave');
    await waitFor(async () => (await getSession(a, s.session)).status === 404, { what: 'the session gone on A' });
    await waitFor(async () => (await getSession(b, s.session)).status === 404, { what: 'the session gone on B' });
  });

  it('both instances exit 0 on SIGTERM', async () => {
    for (const srv of [a, b]) {
      const { code, signal } = await srv.stop();
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, srv.logs());
    }
  });
});
