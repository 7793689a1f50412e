// StoaClient (www/stoa.js) survives broken connections mid-stream: it
// reconnects and resumes its session with last_seq, on each transport,
// with no gap and no duplicate. The links are cut under it by a TCP relay
// that resets every connection (the client does not know it was a test),
// and once by the client's own dropConnection().
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, sleep, waitFor } from './lib/stoa.mjs';
import {
  FAST_EPHEMERAL, startPublisher, makeClient, record, waitForLast, assertComplete,
  waitForServerTransport, startRelay, serverSession,
} from './lib/publisher.mjs';

describe('StoaClient resuming after broken connections', () => {
  const srv = useStoa(FAST_EPHEMERAL);
  let relay;
  // Messages spend 20 ms in the relay: some are always in flight.
  before(async () => { relay = await startRelay(srv.port, { delayMs: 20 }); });
  after(async () => { await relay?.close(); });

  for (const transport of ['websocket', 'sse', 'longpoll']) {
    it(`over ${transport}: two cut links and a dropped connection, no gap and no duplicate`, async () => {
      const room = `doc:resume-${transport}`;
      const pub = await startPublisher(srv, { room });
      const c = makeClient(relay.url, { transports: [transport], upgradeIntervalMs: 0 });
      const rec = record(c);
      const disconnects = [];
      c.on('disconnect', (e) => disconnects.push(e.code ?? e.message));
      try {
        await c.connect();
        assert.equal(c.transport, transport);
        await c.join(room);
        const firstAtMost = pub.sent;
        const session = c.session;
        pub.client.drain();

        for (let round = 0; round < 3; round++) {
          const before = rec.got.length;
          await waitFor(() => rec.got.length >= before + 25, { what: `messages before cut ${round + 1}` });
          if (round < 2) {
            // What the server sends in the last 100 ms before the cut is
            // lost on the way: the server believes it delivered it.
            assert.ok(await relay.cut({ blackholeMs: 100 }) > 0, 'the relay had connections to cut');
          } else {
            c.dropConnection();
          }
          await waitFor(() => disconnects.length === round + 1, { what: `the client to notice cut ${round + 1}` });
          // It comes back on the same transport and the same session.
          await waitFor(() => c.transport === transport, { what: `the reconnect after cut ${round + 1}` });
          await waitForServerTransport(srv, session, transport);
        }
        const before = rec.got.length;
        await waitFor(() => rec.got.length >= before + 25, { what: 'messages after the last reconnect' });

        const last = await pub.stop();
        await waitForLast(rec, last);
        assertComplete(rec.got, { last, firstAtMost });
        assert.equal(c.session, session, 'the same session throughout');
        assert.equal((await serverSession(srv, session)).seq, c.lastSeq, 'the client counted as the server numbered');
        assert.ok(c.stats.reconnects >= 3, `reconnects: ${c.stats.reconnects}`);
        assert.equal(c.stats.gaps, 0);
        const seenByPub = pub.client.drain().filter((m) => m.peer === c.peer);
        assert.deepEqual(seenByPub, [], 'the publisher saw the client neither leave nor join again');
      } finally {
        await pub.stop();
        await c.close();
        await pub.client.close();
      }
    });
  }

  it('a session that ended while the client was away is replaced, and its rooms joined again', async () => {
    const pub = await startPublisher(srv, { room: 'doc:lost', everyMs: 50 });
    const c = makeClient(srv.url, { transports: ['websocket'], upgradeIntervalMs: 0 });
    const rec = record(c);
    const sessions = [];
    c.on('session', (w, previous) => sessions.push([previous, w.session]));
    try {
      await c.connect();
      await c.join('doc:lost', { name: 'returning' });
      const first = c.session;
      const firstPeer = c.peer;
      await waitFor(() => rec.got.length > 5, { what: 'messages' });
      // End the session under it (as the grace period running out would) and break the link.
      assert.equal((await srv.fetch(`/v1/sessions/${first}`, { method: 'DELETE' })).status, 204);
      await pub.client.next((m) => m.type === 'peer_left' && m.peer === firstPeer);
      c.dropConnection();
      await waitFor(() => sessions.length === 1, { what: 'a new session' });
      assert.equal(sessions[0][0], first);
      assert.notEqual(c.session, first);
      const joined = await pub.client.next((m) => m.type === 'peer_joined' && m.peer === c.peer);
      assert.deepEqual(joined.state, { name: 'returning' }, 'joined again with the state it had');
      const n = rec.got.length;
      await waitFor(() => rec.got.length > n + 5, { what: 'messages in the new session' });
      assert.equal(c.transport, 'websocket');
    } finally {
      await pub.stop();
      await c.close();
      await pub.client.close();
    }
  });

  itStopsCleanly(srv);
});

describe('StoaClient resuming after missing more than the server keeps', () => {
  // 50 messages of buffer: a link dead for a second loses more than that.
  const srv = useStoa([...FAST_EPHEMERAL, '--session-buffer-msgs', '50']);
  let relay;
  before(async () => { relay = await startRelay(srv.port); });
  after(async () => { await relay?.close(); });

  for (const transport of ['websocket', 'sse', 'longpoll']) {
    it(`over ${transport}: it gets a resync, re-anchors its count there, and goes on without gap or duplicate`, async () => {
      const room = `doc:resync-${transport}`;
      const pub = await startPublisher(srv, { room });
      const c = makeClient(relay.url, { transports: [transport], upgradeIntervalMs: 0 });
      const rec = record(c);
      const resyncs = [];
      const states = [];
      c.on('resync', (m, meta) => resyncs.push({ ...m, at: rec.got.length, metaSeq: meta.seq }));
      c.on('room_state', (m) => states.push(m));
      try {
        await c.connect();
        await c.join(room);
        await waitFor(() => rec.got.length > 20, { what: 'messages' });
        // 1 s of messages (about 100) vanish, then the link breaks.
        await relay.cut({ blackholeMs: 1000 });
        await waitFor(() => resyncs.length === 1, { what: 'a resync' });
        const [rs] = resyncs;
        assert.equal(rs.reason, 'gap');
        assert.deepEqual(rs.rooms, [room]);
        assert.equal(rs.metaSeq, rs.seq, 'the resync is delivered under its own seq');
        await waitFor(() => states.length === 2, { what: 'the room_state after the resync' });
        assert.deepEqual(states[1].peers.map((p) => p.peer).sort(), [pub.client.peer, c.peer].sort());

        await waitFor(() => rec.got.length > rs.at + 20, { what: 'messages after the resync' });
        const last = await pub.stop();
        await waitForLast(rec, last);
        const before = rec.got.slice(0, rs.at);
        const afterResync = rec.got.slice(rs.at);
        // Whole runs before and after the resync; the gap is only at it.
        assertComplete(before, { last: before.at(-1), firstAtMost: before[0] });
        assertComplete(afterResync, { last, firstAtMost: afterResync[0] });
        assert.ok(afterResync[0] - before.at(-1) > 50, 'more was missed than the buffer holds');
        assert.equal((await serverSession(srv, c.session)).seq, c.lastSeq, 'the client counted as the server numbered');
      } finally {
        await pub.stop();
        await c.close();
        await pub.client.close();
      }
    });
  }

  it('over websocket, reading too slowly: a resync mid-connection, no reconnect, and the count goes on from it', async () => {
    // 16 KB messages, and a client that stops reading (until the server holds
    // more than its buffer keeps): the
    // socket buffers fill, the session's buffer overflows, and the server
    // sends a resync once the client reads again. Over WebSocket the
    // messages carry no seq: the client must take the resync's.
    const room = 'doc:slow';
    const pub = await startPublisher(srv, { room, padBytes: 16000 });
    const c = makeClient(relay.url, { transports: ['websocket'], upgradeIntervalMs: 0 });
    const rec = record(c);
    const resyncs = [];
    c.on('resync', (m) => resyncs.push({ ...m, at: rec.got.length }));
    try {
      await c.connect();
      await c.join(room);
      await waitFor(() => rec.got.length > 20, { what: 'messages' });
      // Until the server holds more undelivered messages than its buffer
      // keeps (however large the kernel's socket buffers are).
      await relay.stall(async () => {
        const s = await serverSession(srv, c.session);
        return s.seq - s.delivered > 60;
      });
      await waitFor(() => resyncs.length === 1, { what: 'a resync' });
      const [rs] = resyncs;
      assert.equal(rs.reason, 'gap');
      await waitFor(() => rec.got.length > rs.at + 20, { what: 'messages after the resync' });
      const last = await pub.stop();
      await waitForLast(rec, last);
      assert.equal(c.stats.reconnects, 0, 'it stayed connected');
      assert.equal(c.transport, 'websocket');
      const before = rec.got.slice(0, rs.at);
      const afterResync = rec.got.slice(rs.at);
      assertComplete(before, { last: before.at(-1), firstAtMost: before[0] });
      assertComplete(afterResync, { last, firstAtMost: afterResync[0] });
      assert.equal((await serverSession(srv, c.session)).seq, c.lastSeq, 'the client counted as the server numbered');
    } finally {
      await pub.stop();
      await c.close();
      await pub.client.close();
    }
  });

  itStopsCleanly(srv);
});
