// StoaClient (www/stoa.js) picks a transport that works: through a strict
// proxy it falls back by itself to long-poll, through a transparent one it
// uses WebSocket, and with WebSocket ruled out it uses SSE. On each, it
// exchanges presence and ephemeral messages with a peer on a direct WebSocket.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, sleep, waitFor, Client } from './lib/stoa.mjs';
import { startNginx } from './lib/nginx.mjs';
import { makeClient, serverSession } from './lib/publisher.mjs';

/**
 * The StoaClient `c` and the WebSocket peer `peer` are in `room` (c joined
 * after peer): each sees the other's presence and ephemeral messages, and a
 * burst larger than 8 KiB from `c` arrives whole and in order.
 */
async function exchange(c, peer, room) {
  const label = room;
  const seen = { presence: [], ephemeral: [], peer_joined: [] };
  for (const type of Object.keys(seen)) c.on(type, (m) => seen[type].push(m));

  const rs = await c.join(room, { name: label, cursor: 0 });
  assert.equal(rs.type, 'room_state');
  assert.deepEqual(rs.peers.map((p) => p.peer).sort(), [peer.peer, c.peer].sort(),
    'room_state lists the peer and the client');
  assert.deepEqual(rs.peers.find((p) => p.peer === c.peer).state, { name: label, cursor: 0 });

  const joined = await peer.next((m) => m.type === 'peer_joined' && m.peer === c.peer);
  assert.deepEqual(joined.state, { name: label, cursor: 0 });

  // client -> peer: presence (whole state after the merge-patch) and ephemeral
  c.setPresence(room, { cursor: 7 });
  const pres = await peer.next((m) => m.type === 'presence' && m.peer === c.peer);
  assert.deepEqual(pres.state, { name: label, cursor: 7 });
  c.send(room, { hello: label });
  const eph = await peer.next((m) => m.type === 'ephemeral' && m.from === c.peer);
  assert.deepEqual(eph.data, { hello: label });

  // peer -> client
  peer.send({ type: 'presence', room, state: { typing: true } });
  peer.send({ type: 'ephemeral', room, data: { reply: label } });
  const deadline = Date.now() + 5000;
  while ((!seen.presence.length || !seen.ephemeral.length) && Date.now() < deadline) await sleep(20);
  assert.deepEqual(seen.presence.map((m) => [m.peer, m.state]), [[peer.peer, { name: 'peer', typing: true }]]);
  assert.deepEqual(seen.ephemeral.map((m) => [m.from, m.data]), [[peer.peer, { reply: label }]]);

  // A burst of 20 messages of 1 KiB: over HTTP they go in several POSTs,
  // each under the strict proxy's 8 KiB body limit.
  const pad = 'x'.repeat(1024);
  for (let i = 0; i < 20; i++) c.send(room, { burst: i, pad });
  const burst = [];
  for (let i = 0; i < 20; i++) {
    const m = await peer.next((x) => x.type === 'ephemeral' && x.from === c.peer && x.data.burst !== undefined);
    burst.push(m.data.burst);
  }
  assert.deepEqual(burst, [...Array(20).keys()]);
  assert.equal(c.stats.gaps, 0);
}

describe('StoaClient chooses its transport', () => {
  const srv = useStoa();
  let strict;
  let transparent;
  before(async () => {
    strict = await startNginx(srv.port, { mode: 'strict', cache: true });
    transparent = await startNginx(srv.port, { mode: 'transparent' });
  });
  after(async () => {
    await strict?.stop();
    await transparent?.stop();
  });

  it('the strict proxy answers a WebSocket handshake with 426 and holds an SSE stream back', async () => {
    // The premises of the fallback test, checked without the client.
    await assert.rejects(Client.open({ port: strict.port }), { statusCode: 426 });
    const direct426 = await Client.open(srv);   // directly, the same handshake works
    direct426.terminate();
    const s = await (await fetch(`${strict.url}/v1/sessions`, { method: 'POST' })).json();
    const direct = await fetch(`${srv.url}/v1/sessions/${s.session}/sse?last_seq=0`);
    const reader = direct.body.getReader();
    const first = await reader.read();
    assert.match(new TextDecoder().decode(first.value), /^retry: /, 'directly, the stream starts at once');
    await reader.cancel();
    const abort = new AbortController();
    const t = setTimeout(() => abort.abort(), 1500);
    const proxied = fetch(`${strict.url}/v1/sessions/${s.session}/sse?last_seq=0`, { signal: abort.signal })
      .then(async (r) => (await r.body.getReader().read()).value);
    await assert.rejects(proxied, { name: 'AbortError' }, 'through the proxy, nothing arrives within 1.5 s');
    clearTimeout(t);
    // Two identical GETs get the same cached answer: the reason for unique poll URLs.
    const a = await (await fetch(`${strict.url}/v1/sessions/${s.session}`)).json();
    await fetch(`${strict.url}/v1/sessions/${s.session}`, { method: 'DELETE' });
    const b = await fetch(`${strict.url}/v1/sessions/${s.session}`);
    assert.equal(b.status, 200, 'the proxy answered from its cache');
    assert.deepEqual(await b.json(), a);
  });

  it('through the strict proxy it falls back to long-poll by itself and talks with a WebSocket peer', async () => {
    const peer = await srv.client();
    await peer.join('doc:strict', { name: 'peer' });
    const c = makeClient(strict.url);
    const failures = [];
    c.on('transport_error', (name, e) => failures.push([name, e.code, e.message]));
    const t0 = Date.now();
    await c.connect();
    const took = Date.now() - t0;
    try {
      assert.equal(c.transport, 'longpoll');
      assert.deepEqual(failures.map((f) => f[0]), ['websocket', 'sse'], JSON.stringify(failures));
      assert.match(failures[0][2], /426/, 'WebSocket was refused with an HTTP answer');
      assert.equal(failures[1][1], 'TIMEOUT', 'SSE gave no first event');
      assert.ok(took < 6000, `fallback took ${took} ms`);
      // Nothing to send: the poll is held, and the server shows it attached.
      await waitFor(async () => (await serverSession(srv, c.session)).transport === 'longpoll',
        { what: 'the server to report transport longpoll' });
      await exchange(c, peer, 'doc:strict');
      assert.equal(c.transport, 'longpoll');
      assert.ok(c.stats.delivered.longpoll > 0);
      assert.equal(c.stats.delivered.websocket + c.stats.delivered.sse, 0);
    } finally {
      await c.close();
    }
    // close() ends the session: the peer sees it leave.
    const left = await peer.next((m) => m.type === 'peer_left' && m.peer === c.peer);
    assert.equal(left.reason, 'leave');
    assert.equal((await srv.fetch(`/v1/sessions/${c.session}`)).status, 404);
    await peer.close();
  });

  it('through the transparent proxy it uses WebSocket', async () => {
    const peer = await srv.client();
    await peer.join('doc:transparent', { name: 'peer' });
    const c = makeClient(transparent.url);
    const failures = [];
    c.on('transport_error', (name, e) => failures.push([name, e.message]));
    await c.connect();
    try {
      assert.equal(c.transport, 'websocket');
      assert.deepEqual(failures, []);
      assert.equal((await serverSession(srv, c.session)).transport, 'websocket');
      await exchange(c, peer, 'doc:transparent');
      assert.equal(c.stats.delivered.sse + c.stats.delivered.longpoll, 0);
    } finally {
      await c.close();
    }
    const left = await peer.next((m) => m.type === 'peer_left' && m.peer === c.peer);
    assert.equal(left.reason, 'leave');
    await peer.close();
  });

  it('directly, with transports ["sse", "longpoll"], it uses SSE', async () => {
    const peer = await srv.client();
    await peer.join('doc:sse', { name: 'peer' });
    const c = makeClient(srv.url, { transports: ['sse', 'longpoll'] });
    await c.connect();
    try {
      assert.equal(c.transport, 'sse');
      assert.equal((await serverSession(srv, c.session)).transport, 'sse');
      await exchange(c, peer, 'doc:sse');
      assert.equal(c.stats.delivered.websocket + c.stats.delivered.longpoll, 0);
      assert.equal((await serverSession(srv, c.session)).transport, 'sse', 'still on SSE');
    } finally {
      await c.close();
    }
    const left = await peer.next((m) => m.type === 'peer_left' && m.peer === c.peer);
    assert.equal(left.reason, 'leave');
    await peer.close();
  });

  itStopsCleanly(srv);
});

describe('StoaClient heartbeats', () => {
  // Told to heartbeat every second, evicted after two silent seconds.
  const srv = useStoa(['--heartbeat-interval-s', '1', '--heartbeat-timeout-s', '2']);

  it('keep it in its rooms on every transport, at the interval the welcome gives', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:hb');
    const beat = setInterval(() => watcher.send({ type: 'heartbeat', room: 'doc:hb' }), 500);
    const clients = [];
    try {
      for (const t of ['websocket', 'sse', 'longpoll']) {
        const c = makeClient(srv.url, { transports: [t], upgradeIntervalMs: 0 });
        await c.connect();
        assert.equal(c.transport, t);
        await c.join('doc:hb', { t });
        clients.push(c);
      }
      // A control: a peer that never heartbeats is evicted in the same time.
      const silent = await srv.client();
      await silent.join('doc:hb');
      await watcher.next((m) => m.type === 'peer_left' && m.peer === silent.peer && m.reason === 'timeout', 5000);
      await sleep(1500);
      const left = watcher.drain().filter((m) => m.type === 'peer_left');
      assert.deepEqual(left, [], 'no StoaClient was evicted');
      const body = await (await srv.fetch('/v1/rooms/doc:hb/presence')).json();
      assert.deepEqual(body.peers.map((p) => p.state.t).filter(Boolean).sort(), ['longpoll', 'sse', 'websocket']);
      await silent.close();
    } finally {
      clearInterval(beat);
      for (const c of clients) await c.close();
      await watcher.close();
    }
  });

  itStopsCleanly(srv);
});
