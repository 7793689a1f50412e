// The application API of www/stoa.js, from Node against the real server:
// connect() and its state events, enterDocument / leaveDocument with the
// local presence store and 'presence-changed', setPresence coalescing
// (never faster than the server's presence rate: no RATE_LIMITED), the
// bounded outgoing queue, sendEphemeral, and reconnection after the
// server restarts on the same port.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startStoa, sleep, waitFor, WebSocket } from './lib/stoa.mjs';
import { freePort } from './lib/pg.mjs';
import { connect, StoaClient } from '../../www/stoa.js';

const open = [];
async function client(url, opts = {}) {
  const c = await connect({ url, WebSocket, upgradeIntervalMs: 0, ...opts });
  open.push(c);
  return c;
}
const names = (peers) => peers.map((p) => p.user.name).sort();

describe('client API: connect, documents, presence store', () => {
  let srv;
  after(async () => {
    await Promise.all(open.splice(0).map((c) => c.close().catch(() => {})));
    await srv?.stop();
  });

  it('connect() resolves open, with states connecting -> open; close() ends in closed', async () => {
    srv = await startStoa([]);
    const states = [];
    const c = new StoaClient({ url: srv.url, WebSocket, upgradeIntervalMs: 0 });
    c.on('state', (s, { transport }) => states.push(`${s}:${transport}`));
    await c.connect();
    assert.equal(c.state, 'open');
    assert.equal(c.transport, 'websocket');
    await c.close();
    assert.equal(c.state, 'closed');
    assert.deepEqual(states, ['connecting:null', 'open:websocket', 'closed:null']);
  });

  for (const transport of ['websocket', 'sse', 'longpoll']) {
    it(`over ${transport}: the store follows joins, presence changes and leaves; presence-changed fires for each`, async () => {
      const room = `doc:api-${transport}`;
      const ada = await client(srv.url, { transports: [transport] });
      const bob = await client(srv.url);
      assert.equal(ada.transport, transport);
      const changes = [];
      ada.on('presence-changed', (r, peers) => { if (r === room) changes.push(peers); });

      const rs = await ada.enterDocument(room, { name: 'Ada' });
      assert.equal(rs.type, 'room_state');
      assert.deepEqual(ada.presence(room).map((p) => [p.peer, p.self, p.state]), [[ada.peer, true, { name: 'Ada' }]]);

      await bob.enterDocument(room, { name: 'Bob' });
      await waitFor(() => ada.presence(room).length === 2, { what: 'Ada to see Bob join' });
      const seenBob = ada.presence(room).find((p) => p.peer === bob.peer);
      assert.deepEqual(seenBob.state, { name: 'Bob' });
      assert.equal(seenBob.self, false);
      assert.equal(seenBob.user.name, bob.user.name);

      bob.setPresence(room, { cursor: { x: 0.25, y: 0.5 } });
      await waitFor(() => ada.presence(room).find((p) => p.peer === bob.peer)?.state.cursor?.x === 0.25,
        { what: "Bob's cursor in Ada's store" });
      assert.deepEqual(ada.presence(room).find((p) => p.peer === bob.peer).state,
        { name: 'Bob', cursor: { x: 0.25, y: 0.5 } }, 'the whole merged state');
      // Bob's own store shows his state as he set it, at once.
      assert.deepEqual(bob.presence(room).find((p) => p.self).state, { name: 'Bob', cursor: { x: 0.25, y: 0.5 } });

      // A deletion (null) travels too.
      bob.setPresence(room, { cursor: null });
      await waitFor(() => !('cursor' in ada.presence(room).find((p) => p.peer === bob.peer).state),
        { what: "Bob's cursor removed in Ada's store" });

      await bob.leaveDocument(room);
      await waitFor(() => ada.presence(room).length === 1, { what: 'Bob gone from the store' });
      assert.deepEqual(bob.presence(room), []);
      assert.ok(changes.length >= 4, `presence-changed fired ${changes.length} times`);
      assert.deepEqual(changes.at(-1).map((p) => p.peer), [ada.peer]);
      await ada.leaveDocument(room);
    });
  }

  it('setPresence 300 times at once: coalesced, the last state wins, and no RATE_LIMITED', async () => {
    const room = 'doc:api-coalesce';
    const ada = await client(srv.url);
    const bob = await client(srv.url);
    await ada.enterDocument(room, {});
    await bob.enterDocument(room, {});
    let received = 0;
    const errors = [];
    ada.on('presence', (m) => { if (m.peer === bob.peer) received++; });
    bob.on('error', (m) => errors.push(m.code));
    for (let i = 1; i <= 300; i++) {
      bob.setPresence(room, { cursor: { x: i / 300, y: 0 } });
      if (i % 50 === 0) await sleep(10);   // a few frames' worth of moves
    }
    await waitFor(() => ada.presence(room).find((p) => p.peer === bob.peer)?.state.cursor?.x === 1,
      { what: 'the last cursor position to arrive' });
    await sleep(300);
    assert.deepEqual(errors, [], 'no error (RATE_LIMITED) from the server');
    assert.ok(received >= 1 && received < 50, `presence messages received: ${received} for 300 setPresence calls`);
  });

  it('sendEphemeral reaches the others with the sender; the sender gets no echo', async () => {
    const room = 'eph:doc:api';
    const ada = await client(srv.url);
    const bob = await client(srv.url, { transports: ['sse'] });
    await ada.enterDocument(room);
    await bob.enterDocument(room);
    const got = [];
    const echo = [];
    bob.on('ephemeral', (m) => got.push(m));
    ada.on('ephemeral', (m) => echo.push(m));
    ada.sendEphemeral(room, { text: 'hello' });
    await waitFor(() => got.length === 1, { what: 'the ephemeral message' });
    assert.equal(got[0].room, room);
    assert.equal(got[0].from, ada.peer);
    assert.deepEqual(got[0].data, { text: 'hello' });
    await sleep(200);
    assert.deepEqual(echo, []);
  });

  it('the outgoing queue is bounded while disconnected: the oldest ephemeral messages are dropped', async () => {
    const room = 'doc:api-queue';
    const ada = await client(srv.url, { transports: ['longpoll'], maxQueuedMessages: 20 });
    await ada.enterDocument(room);
    const overflow = [];
    ada.on('overflow', (m) => overflow.push(m));
    // Nothing can go out while the queue is filled in one go. The queue
    // may already hold one message of the client's own (a heartbeat, which
    // is dropped first, or a request, which is not): 30 or 31 go.
    for (let n = 0; n < 50; n++) ada.sendEphemeral(room, { n });
    assert.equal(ada.stats.dropped, overflow.length);
    const eph = overflow.filter((m) => m.type === 'ephemeral').map((m) => m.data.n);
    assert.ok(eph.length === 30 || eph.length === 31, `${eph.length} ephemeral messages dropped`);
    assert.deepEqual(eph, Array.from({ length: eph.length }, (_, i) => i), 'the oldest ones go first');
    assert.deepEqual(overflow.filter((m) => m.type !== 'ephemeral' && m.type !== 'heartbeat'), []);
  });
});

describe('client API: a server restart', () => {
  let srv;
  let dataDir;
  after(async () => {
    await Promise.all(open.splice(0).map((c) => c.close().catch(() => {})));
    await srv?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('reconnects by itself (reconnecting -> open), gets a new session, re-enters its documents', async () => {
    const port = await freePort();
    dataDir = mkdtempSync(join(tmpdir(), 'stoa-api-'));
    const opts = { listen: `127.0.0.1:${port}`, dataDir };
    srv = await startStoa([], opts);
    const room = 'doc:api-restart';
    const ada = await client(srv.url, { reconnectMaxDelayMs: 1000 });
    const bob = await client(srv.url, { reconnectMaxDelayMs: 1000, transports: ['sse'] });
    const states = [];
    ada.on('state', (s) => states.push(s));
    await ada.enterDocument(room, { name: 'Ada' });
    await bob.enterDocument(room, { name: 'Bob' });
    await waitFor(() => ada.presence(room).length === 2, { what: 'both in the room' });
    const before = ada.session;

    await srv.stop();
    srv = await startStoa([], opts);
    await waitFor(() => ada.state === 'open' && ada.session !== before, { what: 'Ada back on a new session', timeoutMs: 15000 });
    await waitFor(() => names(ada.presence(room)).length === 2 && names(bob.presence(room)).length === 2,
      { what: 'both back in the room, seeing each other', timeoutMs: 15000 });
    assert.ok(states.includes('reconnecting'), `states: ${states.join(' ')}`);
    assert.deepEqual(ada.presence(room).find((p) => !p.self).state, { name: 'Bob' });
  });
});
