// StoaClient (www/stoa.js) changes transport under a steady stream without
// losing or repeating a message: on request (long-poll -> WebSocket -> SSE),
// by itself when WebSocket becomes possible, and not at all (but without
// loss) when its upgrade attempts fail behind a strict proxy.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, sleep, waitFor, WebSocket } from './lib/stoa.mjs';
import { startNginx } from './lib/nginx.mjs';
import {
  FAST_EPHEMERAL, startPublisher, makeClient, record, waitForLast, assertComplete,
  waitForServerTransport, startRelay, serverSession,
} from './lib/publisher.mjs';

describe('StoaClient switching transports under a 10 ms stream', () => {
  const srv = useStoa(FAST_EPHEMERAL);
  // Clients reach the server through a relay that holds what the server
  // sends for 30 ms, so that a switch always has messages in flight.
  let relay;
  before(async () => { relay = await startRelay(srv.port, { delayMs: 30 }); });
  after(async () => { await relay?.close(); });

  it('long-poll -> WebSocket -> SSE on request: every number once, in order; each transport carried some', async () => {
    const pub = await startPublisher(srv, { room: 'doc:1' });
    const left = [];
    const c = makeClient(relay.url, { transports: ['longpoll', 'websocket', 'sse'], upgradeIntervalMs: 0 });
    const rec = record(c);
    const changes = [];
    c.on('transport', (name) => changes.push(name));
    try {
      await c.connect();
      assert.equal(c.transport, 'longpoll');
      await c.join('doc:1');
      const firstAtMost = pub.sent;
      pub.client.drain();
      const session = c.session;

      const carried = async (name, n = 30) => {
        const before = rec.byTransport[name];
        await waitFor(() => rec.byTransport[name] >= before + n, { what: `${n} messages over ${name}` });
      };
      await carried('longpoll');
      await waitForServerTransport(srv, session, 'longpoll');

      assert.equal(await c.switchTo('websocket'), true);
      assert.equal(c.transport, 'websocket');
      await waitForServerTransport(srv, session, 'websocket');
      await carried('websocket');

      assert.equal(await c.switchTo('sse'), true);
      assert.equal(c.transport, 'sse');
      await waitForServerTransport(srv, session, 'sse');
      await carried('sse');

      const last = await pub.stop();
      await waitForLast(rec, last);
      assertComplete(rec.got, { last, firstAtMost });
      assert.deepEqual(changes, ['longpoll', 'websocket', 'sse']);
      for (const t of ['longpoll', 'websocket', 'sse']) assert.ok(rec.byTransport[t] > 0, `nothing came over ${t}`);
      assert.equal(c.session, session, 'one session throughout');
      assert.equal(c.stats.gaps, 0);
      assert.equal(c.stats.reconnects, 0, 'the switches needed no reconnect');
      assert.ok(c.stats.duplicates > 0, 'the switches overlapped: messages came over two transports at once');
      assert.equal((await serverSession(srv, session)).seq, c.lastSeq, 'the client counted as the server numbered');
      left.push(...pub.client.drain().filter((m) => m.type === 'peer_left'));
      assert.deepEqual(left, [], 'the publisher never saw the client leave');
    } finally {
      await pub.stop();
      await c.close();
      await pub.client.close();
    }
  });

  it('upgrades by itself from SSE to WebSocket once a WebSocket gets through', async () => {
    const gate = { open: false };
    // A WebSocket that cannot get through until the gate opens (the server
    // answers 404 to the handshake, as a proxy might answer 426).
    class GatedWebSocket extends WebSocket {
      constructor(url, protocols, opts) {
        super(gate.open ? url : url.replace('/v1/ws', '/v1/no-websocket-here'), protocols, opts);
      }
    }
    const pub = await startPublisher(srv, { room: 'doc:2' });
    const c = makeClient(relay.url, { WebSocket: GatedWebSocket, upgradeIntervalMs: 300 });
    const rec = record(c);
    const wsFailures = [];
    c.on('transport_error', (name) => { if (name === 'websocket') wsFailures.push(Date.now()); });
    try {
      await c.connect();
      assert.equal(c.transport, 'sse');
      await c.join('doc:2');
      const firstAtMost = pub.sent;
      await sleep(1000);
      assert.ok(wsFailures.length >= 2, `upgrade attempts while blocked: ${wsFailures.length - 1}`);
      assert.equal(c.transport, 'sse');
      gate.open = true;
      await waitFor(() => c.transport === 'websocket', { timeoutMs: 6000, what: 'the upgrade to WebSocket' });
      await waitForServerTransport(srv, c.session, 'websocket');
      const before = rec.byTransport.websocket;
      await waitFor(() => rec.byTransport.websocket > before + 20, { what: 'messages over WebSocket' });
      const last = await pub.stop();
      await waitForLast(rec, last);
      assertComplete(rec.got, { last, firstAtMost });
      assert.ok(rec.byTransport.sse > 0 && rec.byTransport.websocket > 0, JSON.stringify(rec.byTransport));
    } finally {
      await pub.stop();
      await c.close();
      await pub.client.close();
    }
  });

  it('with a browser-like WebSocket (no terminate()): switches and a dropped link lose nothing and never end the session', async () => {
    // Only what browsers have: closing always sends a close frame, which
    // would end the session if it reached the server on the session's
    // current connection.
    class BrowserWebSocket {
      constructor(url, protocols) {
        const ws = new WebSocket(url, protocols);
        this._ws = ws;
        ws.onopen = (ev) => this.onopen?.(ev);
        ws.onmessage = (ev) => this.onmessage?.({ data: ev.data });
        ws.onerror = () => this.onerror?.({ type: 'error' });
        ws.onclose = (ev) => this.onclose?.({ code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
      }
      get readyState() { return this._ws.readyState; }
      send(data) { this._ws.send(data); }
      close(code, reason) { this._ws.close(code, reason); }
    }
    const pub = await startPublisher(srv, { room: 'doc:4' });
    const c = makeClient(relay.url, { WebSocket: BrowserWebSocket, upgradeIntervalMs: 0 });
    const rec = record(c);
    try {
      await c.connect();
      assert.equal(c.transport, 'websocket');
      await c.join('doc:4');
      const firstAtMost = pub.sent;
      pub.client.drain();
      const step = async (what) => {
        const n = rec.got.length;
        await waitFor(() => rec.got.length >= n + 20, { what: `messages ${what}` });
      };
      await step('over WebSocket');
      assert.equal(await c.switchTo('sse'), true);
      await step('over SSE');
      assert.equal(await c.switchTo('websocket'), true);
      await step('over WebSocket again');
      c.dropConnection();   // a browser cannot drop it quietly: the next connection supersedes it
      await waitFor(() => c.stats.reconnects === 1 && c.transport === 'websocket', { what: 'the reconnect' });
      await step('after the reconnect');
      const last = await pub.stop();
      await waitForLast(rec, last);
      assertComplete(rec.got, { last, firstAtMost });
      const session = await serverSession(srv, c.session);
      assert.equal(session.transport, 'websocket');
      assert.equal(session.seq, c.lastSeq);
      assert.deepEqual(pub.client.drain().filter((m) => m.peer === c.peer), [],
        'the publisher saw the client neither leave nor join again');
    } finally {
      await pub.stop();
      await c.close();
      await pub.client.close();
    }
  });

  describe('behind a strict proxy', () => {
    let strict;
    before(async () => { strict = await startNginx(srv.port, { mode: 'strict' }); });
    after(async () => { await strict?.stop(); });

    it('its upgrade attempts fail, it stays on long-poll, and loses nothing while trying', async () => {
      const pub = await startPublisher(srv, { room: 'doc:3' });
      const c = makeClient(strict.url, { upgradeIntervalMs: 600, sseFirstEventTimeoutMs: 800 });
      const rec = record(c);
      const failures = [];
      const changes = [];
      try {
        await c.connect();
        assert.equal(c.transport, 'longpoll');
        c.on('transport_error', (name) => failures.push(name));
        c.on('transport', (name) => changes.push(name));
        await c.join('doc:3');
        const firstAtMost = pub.sent;
        await waitFor(() => failures.includes('websocket') && failures.includes('sse'),
          { timeoutMs: 8000, what: 'an upgrade attempt at WebSocket and at SSE' });
        await sleep(300);
        const last = await pub.stop();
        await waitForLast(rec, last);
        assertComplete(rec.got, { last, firstAtMost });
        assert.deepEqual(changes, [], 'it never left long-poll');
        assert.equal(c.transport, 'longpoll');
        assert.equal(rec.byTransport.longpoll, rec.got.length);
      } finally {
        await pub.stop();
        await c.close();
        await pub.client.close();
      }
    });
  });

  itStopsCleanly(srv);
});
