// Several WebSocket service threads (ws_threads): connections are dealt to
// them in turn, and everything between connections of different threads
// behaves as on one: fan-out, presence, order, resuming a session on
// another thread, keepalive, shutdown.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, roomPresence, sleep } from './lib/stoa.mjs';

describe('ws_threads 3', () => {
  const srv = useStoa(['--ws-threads', '3', '--ephemeral-burst', '1000', '--session-grace-ms', '10000']);

  it('the start-up log says how many threads serve WebSockets', () => {
    assert.match(srv.logs(), /WebSocket at \/v1\/ws \(3 threads\)/);
  });

  it('nine peers on three threads: each message reaches the eight others once, in order', async () => {
    const peers = [];
    for (let i = 0; i < 9; i++) {
      const c = await srv.client();
      await c.join('doc:threads', { i });
      peers.push(c);
    }
    const body = await roomPresence(srv, 'doc:threads');
    assert.equal(body.peers.length, 9);
    // Every peer sends 20 numbered messages at once, from every thread.
    for (const c of peers) for (let n = 0; n < 20; n++) c.send({ type: 'ephemeral', room: 'doc:threads', data: { from: c.peer, n } });
    for (const c of peers) await c.sync();
    await Promise.all(peers.map((c) => c.sync()));
    for (const c of peers) {
      const got = c.received.filter((m) => m.type === 'ephemeral');
      assert.equal(got.length, 8 * 20, `peer ${c.peer} got ${got.length}`);
      assert.ok(got.every((m) => m.from !== c.peer), 'nothing comes back to its sender');
      for (const other of peers.filter((p) => p !== c)) {
        const ns = got.filter((m) => m.from === other.peer).map((m) => m.data.n);
        assert.deepEqual(ns, [...Array(20).keys()], `from ${other.peer} to ${c.peer}: once each, in order`);
      }
    }
    await Promise.all(peers.map((c) => c.close()));
  });

  it('a session resumed on a connection that lands on another thread keeps its numbering', async () => {
    const a = await srv.client();
    await a.join('doc:resume');
    const b = await srv.client();
    await b.join('doc:resume');
    await a.next('peer_joined');
    const session = a.welcome.session;
    assert.ok(session, 'the welcome names the session');
    // The last seq a client has (each message after the welcome numbered on).
    const lastSeq = (c) => c.welcome.seq + c.received.length - c.received.indexOf(c.welcome) - 1;
    await a.sync();
    let last = lastSeq(a);
    a.terminate();   // vanishes without a close frame: the session waits for it
    await a.closed;
    // The server may still write this to a's dead socket before it notices;
    // the resume's last_seq (below) gets it again.
    b.send({ type: 'ephemeral', room: 'doc:resume', data: 'while away' });
    await b.sync();
    // Connections go to the threads in turn: of the next three, at least
    // two are on another thread than a's was; resume on each of them.
    for (let k = 0; k < 3; k++) {
      const r = await srv.client({ path: `/v1/ws?session=${session}&last_seq=${last}` });
      assert.equal(r.welcome.resumed, true);
      assert.equal(r.peer, a.peer);
      if (k === 0) {
        const eph = await r.next('ephemeral');
        assert.equal(eph.data, 'while away');
      }
      b.send({ type: 'ephemeral', room: 'doc:resume', data: `after ${k}` });
      const m = await r.next((x) => x.type === 'ephemeral' && x.data === `after ${k}`);
      assert.equal(m.from, b.peer);
      await r.sync();
      last = lastSeq(r);
      r.terminate();
      await r.closed;
    }
    const body = await roomPresence(srv, 'doc:resume');
    assert.deepEqual(body.peers.map((p) => p.peer).sort(), [a.peer, b.peer].sort());
    await b.close();
  });

  itStopsCleanly(srv);
});

describe('a backlog goes out framed in batches', () => {
  // A buffer large enough that nothing is dropped for a resync.
  const srv = useStoa(['--max-message-bytes', '200000', '--ephemeral-burst', '100000', '--ephemeral-per-min', '6000000',
    '--session-buffer-msgs', '5000', '--session-buffer-bytes', '67108864']);

  /** Two peers in room: a (the reader) has seen b join. */
  async function pairIn(room) {
    const a = await srv.client();
    await a.join(room);
    const b = await srv.client();
    await b.join(room);
    await a.next('peer_joined');
    return [a, b];
  }

  it('3,000 messages sent at once, small and over 64 KiB mixed, arrive whole, once each, in order', async () => {
    const [a, b] = await pairIn('doc:burst');
    const big = (n) => `${n}:` + 'y'.repeat(100000);
    // a reads nothing while b sends: the messages wait in a's buffer and
    // go out as one backlog when a reads again.
    a.ws._socket.pause();
    try {
      for (let n = 0; n < 3000; n++) {
        b.send({ type: 'ephemeral', room: 'doc:burst', data: n % 500 === 7 ? big(n) : { n } });
      }
      await b.sync();
    } finally {
      a.ws._socket.resume();
    }
    await a.sync(30000);
    const got = a.received.filter((m) => m.type === 'ephemeral');
    assert.equal(got.length, 3000);
    got.forEach((m, n) => {
      if (n % 500 === 7) assert.equal(m.data, big(n), `message ${n}`);
      else assert.deepEqual(m.data, { n }, `message ${n}`);
    });
    assert.deepEqual(a.peek((m) => m.type === 'resync' || m.type === 'error'), []);
    await Promise.all([a.close(), b.close()]);
  });

  // When the socket fills partway through a backlog's batches, the
  // batches not yet written go back to the session and follow once lws
  // has sent what it kept (write_backlog).
  it('a backlog larger than the socket buffers: all arrive whole, once each, in order', async () => {
    const [a, b] = await pairIn('doc:flood');
    const N = 300;
    const text = (n) => `${n}:` + 'z'.repeat(30000);   // 9 MB in all, past what loopback buffers
    a.ws._socket.pause();
    try {
      for (let n = 0; n < N; n++) b.send({ type: 'ephemeral', room: 'doc:flood', data: text(n) });
      await b.sync();
      await sleep(200);   // let the server fill the socket
    } finally {
      a.ws._socket.resume();
    }
    await a.sync(30000);   // fails if the server dropped the connection
    const got = a.received.filter((m) => m.type === 'ephemeral');
    assert.equal(got.length, N);
    got.forEach((m, n) => assert.equal(m.data, text(n), `message ${n}`));
    assert.deepEqual(a.peek((m) => m.type === 'resync' || m.type === 'error'), []);
    await Promise.all([a.close(), b.close()]);
  });

  itStopsCleanly(srv);
});

describe('ws_threads out of range', () => {
  it('--ws-threads 65 is refused at start-up', async () => {
    const { startStoa } = await import('./lib/stoa.mjs');
    await assert.rejects(startStoa(['--ws-threads', '65']), /ws.threads|ws_threads/);
  });
});
