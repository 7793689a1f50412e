// Peers that vanish: killed processes and silent peers evicted by heartbeat timeout.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { useStoa, itStopsCleanly, WS_MODULE, sleep, roomPresence, Client } from './lib/stoa.mjs';

// A client in its own process: connects, joins doc:1, prints "joined <peer>", waits.
const CHILD = `
const WebSocket = require(process.env.WS_MODULE);
const ws = new WebSocket(process.env.URL);
let peer;
ws.on('message', (d) => {
  const m = JSON.parse(d);
  if (m.type === 'welcome') { peer = m.peer; ws.send(JSON.stringify({type: 'join', room: 'doc:1', id: 1})); }
  if (m.type === 'room_state') console.log('joined ' + peer);
});
ws.on('error', (e) => { console.error(String(e)); process.exit(3); });
setInterval(() => {}, 1000);
`;

describe('a client process killed with SIGKILL', () => {
  // The session outlives the connection for session_grace_ms: then it ends.
  const srv = useStoa(['--session-grace-ms', '500']);

  it('its peers get peer_left reason "disconnect" once the grace period is over', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:1');
    const child = spawn(process.execPath, ['-e', CHILD], {
      env: { ...process.env, WS_MODULE, URL: srv.wsUrl },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    const gone = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
    try {
      const childPeer = await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`child never joined: ${out} ${err}`)), 10000);
        child.stdout.on('data', (d) => {
          out += d;
          const m = /joined (\S+)/.exec(out);
          if (m) { clearTimeout(t); resolve(m[1]); }
        });
        gone.then((x) => { clearTimeout(t); reject(new Error(`child exited ${JSON.stringify(x)}: ${err}`)); });
      });
      const joined = await watcher.next('peer_joined');
      assert.equal(joined.peer, childPeer);
      child.kill('SIGKILL');
      assert.equal((await gone).signal, 'SIGKILL');
      // Still present during the grace period: it may come back.
      await watcher.expectNone((m) => m.type === 'peer_left', 200);
      const left = await watcher.next('peer_left');
      assert.deepEqual(left, { type: 'peer_left', room: 'doc:1', peer: childPeer, reason: 'disconnect' });
      const body = await roomPresence(srv, 'doc:1');
      assert.deepEqual(body.peers.map((p) => p.peer), [watcher.peer]);
    } finally {
      child.kill('SIGKILL');
    }
  });

  itStopsCleanly(srv);
});

describe('heartbeat timeout', () => {
  const srv = useStoa(['--heartbeat-interval-s', '1', '--heartbeat-timeout-s', '2']);

  it('welcome announces the heartbeat timing', async () => {
    const c = await srv.client();
    assert.equal(c.welcome.heartbeat_interval, 1);
    assert.equal(c.welcome.heartbeat_timeout, 2);
    await c.close();
  });

  it('a silent peer is evicted (reason "timeout", told itself); a heartbeating one is kept', async () => {
    const silent = await srv.client();
    const keeper = await srv.client();
    const pinger = await srv.client();   // sends only ping, which is about no room
    await silent.join('doc:1', { who: 'silent' });
    await keeper.join('doc:1', { who: 'keeper' });
    await pinger.join('doc:1', { who: 'pinger' });
    let beats = 0;
    const timer = setInterval(() => {
      keeper.send({ type: 'heartbeat', room: 'doc:1', id: ++beats });
      pinger.send({ type: 'ping' });
    }, 500);
    try {
      const t0 = Date.now();
      // Eviction after 2 s of silence, checked about once a second.
      const aboutSilent = await keeper.next((m) => m.type === 'peer_left' && m.peer === silent.peer, 8000);
      assert.deepEqual(aboutSilent, { type: 'peer_left', room: 'doc:1', peer: silent.peer, reason: 'timeout' });
      assert.ok(Date.now() - t0 >= 1000, 'not evicted before the timeout');
      const self = await silent.next('peer_left');
      assert.deepEqual(self, { type: 'peer_left', room: 'doc:1', peer: silent.peer, reason: 'timeout' });
      // ping is not about a room: the pinger is evicted as well.
      const aboutPinger = await keeper.next((m) => m.type === 'peer_left' && m.peer === pinger.peer, 8000);
      assert.equal(aboutPinger.reason, 'timeout');

      // The evicted peer's connection stays open; it may join again.
      assert.ok(silent.isOpen);
      silent.send({ type: 'presence', room: 'doc:1', state: { x: 1 }, id: 'late' });
      const err = await silent.next('error');
      assert.equal(err.code, 'NOT_IN_ROOM');
      assert.equal(err.id, 'late');

      // The keeper heartbeats every 500 ms over about 4 s and stays.
      await sleep(Math.max(0, 4000 - (Date.now() - t0)));
      const n = beats;
      await keeper.next((m) => m.type === 'ack' && m.id === n);
      assert.ok(beats >= 7, `keeper sent ${beats} heartbeats`);
      assert.deepEqual(keeper.peek('error'), []);
      assert.deepEqual(keeper.peek((m) => m.type === 'peer_left' && m.peer === keeper.peer), []);
      const body = await roomPresence(srv, 'doc:1');
      assert.deepEqual(body.peers.map((p) => p.peer), [keeper.peer]);

      const back = await silent.join('doc:1');
      assert.deepEqual(back.peers.map((p) => p.peer), [keeper.peer, silent.peer]);
    } finally {
      clearInterval(timer);
    }
  });

  itStopsCleanly(srv);
});

describe('a connection cut without a close frame, resumed within the grace period', () => {
  const srv = useStoa(['--session-grace-ms', '5000']);

  it('keeps the peer in its rooms and replays what it missed, in order, without duplicates', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:1');
    const a = await srv.client();
    await a.join('doc:1', { cursor: 1 });
    await watcher.next('peer_joined');
    const session = a.welcome.session;
    assert.match(session, /^[a-z0-9]{32}$/);
    await a.sync();
    const seen = a.welcome.seq + a.received.length - 1;   // welcome itself is not numbered
    a.terminate();
    for (let i = 0; i < 5; i++) watcher.send({ type: 'ephemeral', room: 'doc:1', data: { i } });
    await watcher.sync();
    const b = await Client.open(srv, { path: `/v1/ws?session=${session}&last_seq=${seen}` });
    const welcome = await b.next('welcome');
    assert.equal(welcome.resumed, true);
    assert.equal(welcome.session, session);
    assert.equal(welcome.peer, a.welcome.peer);
    assert.equal(welcome.seq, seen);
    for (let i = 0; i < 5; i++) {
      const m = await b.next();
      assert.deepEqual([m.type, m.data], ['ephemeral', { i }]);
    }
    await b.sync();
    assert.deepEqual(b.peek((m) => m.type === 'ephemeral'), [], 'no duplicates');
    assert.deepEqual(watcher.peek('peer_left'), [], 'never announced as left');
    const body = await roomPresence(srv, 'doc:1');
    assert.deepEqual(body.peers.map((p) => p.peer).sort(), [watcher.peer, a.welcome.peer].sort());
    await Promise.all([b.close(), watcher.close()]);
  });

  it('a resume from before what is buffered gets a resync and fresh room_state', async () => {
    const a = await srv.client();
    await a.join('doc:2', { x: 1 });
    await a.sync();
    const session = a.welcome.session;
    a.terminate();
    const b = await Client.open(srv, { path: `/v1/ws?session=${session}&last_seq=9999` });
    const welcome = await b.next('welcome');
    const resync = await b.next();
    assert.equal(resync.type, 'resync');
    assert.equal(resync.reason, 'unknown_seq');
    assert.equal(resync.seq, welcome.seq + 1);
    assert.deepEqual(resync.rooms, ['doc:2']);
    const state = await b.next();
    assert.equal(state.type, 'room_state');
    assert.deepEqual(state.peers.map((p) => [p.peer, p.state]), [[a.welcome.peer, { x: 1 }]]);
    await b.close();
  });

  it('a second connection to the session supersedes the first (close 4009)', async () => {
    const a = await srv.client();
    const b = await Client.open(srv, { path: `/v1/ws?session=${a.welcome.session}` });
    await b.next('welcome');
    const { code } = await a.closed;
    assert.equal(code, 4009);
    await b.sync();
    await b.close();
  });

  it('an unknown session is refused with SESSION_NOT_FOUND and close 4004', async () => {
    const c = await Client.open(srv, { path: `/v1/ws?session=${'x'.repeat(32)}` });
    const err = await c.next('error');
    assert.equal(err.code, 'SESSION_NOT_FOUND');
    assert.equal((await c.closed).code, 4004);
  });

  it('a clean close (close frame) ends the session at once', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:3');
    const a = await srv.client();
    await a.join('doc:3');
    await watcher.next('peer_joined');
    await a.close();
    const left = await watcher.next('peer_left', 2000);   // well before the 5 s grace
    assert.equal(left.reason, 'disconnect');
    await watcher.close();
  });

  itStopsCleanly(srv);
});
