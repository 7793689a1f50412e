// Helpers for the StoaClient tests (client_*.test.mjs): a publisher that
// numbers ephemeral messages, a recorder of what a StoaClient received,
// the no-gap/no-duplicate check, and a TCP relay whose connections can be
// cut as a network failure would.
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import { WebSocket, waitFor, sleep } from './stoa.mjs';
import { StoaClient } from '../../../www/stoa.js';

export { StoaClient };

/** Flags a server needs for a publisher sending every 10 ms. */
export const FAST_EPHEMERAL = ['--ephemeral-per-min', '600000', '--ephemeral-burst', '1000'];

/**
 * A direct WebSocket client in `room` sending {n: 0, 1, 2...} as ephemeral
 * messages every `everyMs` (with a `pad` string of padBytes, if given). stop() resolves the last n sent, once the server
 * has handled every one (a ping round trip after them).
 */
export async function startPublisher(srv, { room = 'doc:1', everyMs = 10, padBytes = 0 } = {}) {
  const client = await srv.client();
  await client.join(room);
  let n = 0;
  const pad = padBytes ? { pad: 'x'.repeat(padBytes) } : {};
  const timer = setInterval(() => client.send({ type: 'ephemeral', room, data: { n: n++, ...pad } }), everyMs);
  return {
    client,
    /** How many were sent so far (the next n). */
    get sent() { return n; },
    async stop() {
      clearInterval(timer);
      await client.sync();
      return n - 1;
    },
  };
}

/** A StoaClient for tests: `ws` for WebSocket, options merged in. */
export function makeClient(url, opts = {}) {
  return new StoaClient({ url, WebSocket, ...opts });
}

/** Record the publisher's numbers a StoaClient receives, and which transport brought each. */
export function record(c) {
  const got = [];
  const byTransport = { websocket: 0, sse: 0, longpoll: 0 };
  c.on('ephemeral', (m, meta) => {
    if (typeof m.data?.n !== 'number') return;
    got.push(m.data.n);
    byTransport[meta.transport]++;
  });
  return { got, byTransport };
}

/** Wait until the recorder has seen `last`. */
export async function waitForLast(rec, last, timeoutMs = 8000) {
  await waitFor(() => rec.got.includes(last), {
    timeoutMs,
    what: `number ${last} (received ${rec.got.length}, the latest ${rec.got.at(-1)})`,
  });
}

/**
 * The numbers received are every number from the first to `last`, once
 * each, in order; the first is no later than `firstAtMost` (numbers sent
 * before the client joined may be missing, nothing after).
 */
export function assertComplete(got, { last, firstAtMost }) {
  assert.ok(got.length > 0, 'nothing received');
  const seen = new Set();
  const dups = got.filter((n) => (seen.has(n) ? true : (seen.add(n), false)));
  assert.deepEqual(dups, [], `duplicates received: ${dups.slice(0, 20).join(', ')}`);
  const breaks = [];
  for (let i = 1; i < got.length; i++) if (got[i] !== got[i - 1] + 1) breaks.push(`${got[i - 1]} -> ${got[i]}`);
  assert.deepEqual(breaks, [], `gaps or disorder: ${breaks.slice(0, 20).join(', ')}`);
  assert.ok(got[0] <= firstAtMost, `the first number received is ${got[0]}, but ${firstAtMost} was sent after the join`);
  assert.equal(got.at(-1), last, 'the last number sent was not received');
}

/** GET /v1/sessions/{id} on the server itself. */
export async function serverSession(srv, session) {
  const r = await srv.fetch(`/v1/sessions/${session}`);
  assert.equal(r.status, 200, `GET /v1/sessions/${session}: ${r.status}`);
  return r.json();
}

/**
 * Wait until the server says the session is attached to `transport`. A
 * long-polling session is attached only while a poll is held, which under
 * a steady stream is hardly ever: for 'longpoll' it is enough that over
 * 300 ms the server reports long-poll or nothing (between polls), and
 * never another transport.
 */
export async function waitForServerTransport(srv, session, transport, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  const seen = [];
  if (transport === 'longpoll') {
    const end = Date.now() + 300;
    while (Date.now() < end) {
      seen.push((await serverSession(srv, session)).transport);
      await sleep(10);
    }
    const other = seen.filter((t) => t !== 'longpoll' && t !== null);
    assert.deepEqual(other, [], `the server reported ${other[0]} for a long-polling session`);
    return;
  }
  for (;;) {
    const t = (await serverSession(srv, session)).transport;
    if (t === transport) return;
    seen.push(t);
    if (Date.now() > deadline) {
      assert.fail(`the server did not report transport ${transport} within ${timeoutMs} ms; ` +
        `it reported: ${[...new Set(seen)].join(', ')}`);
    }
    await sleep(20);
  }
}

/**
 * A TCP relay to 127.0.0.1:targetPort, for breaking links under a client.
 * opts.delayMs: hold what the server sends this long before passing it on
 * (so that messages are always in flight). cut() first drops for
 * `blackholeMs` what the server sends (it believes it delivered), then
 * resets every connection through it, both sides, as a dead network link
 * would (closed, not RST: resetAndDestroy() made Node 20 spin at exit);
 * the relay keeps accepting new connections.
 */
export async function startRelay(targetPort, { delayMs = 0 } = {}) {
  const pairs = new Set();
  const server = createServer((down) => {
    const up = connect(targetPort, '127.0.0.1');
    const pair = { down, up, blackhole: false };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    // Server to client: each chunk, and the end of the stream, after delayMs
    // (in order: equal delays fire in the order they were set).
    const later = (fn) => (delayMs ? setTimeout(fn, delayMs) : fn());
    up.on('data', (chunk) => {
      if (!pair.blackhole) later(() => { if (!pair.blackhole && !down.destroyed) down.write(chunk); });
    });
    up.on('end', () => later(() => down.end()));
    up.on('close', () => later(end));
    up.on('error', () => later(end));
    // Client to server: at once.
    down.pipe(up);
    down.on('error', end).on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  const reset = (s) => s.destroy();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    get connections() { return pairs.size; },
    /** Resolves how many connections were cut. */
    async cut({ blackholeMs = 0 } = {}) {
      const victims = [...pairs];
      if (blackholeMs) {
        for (const p of victims) p.blackhole = true;
        await new Promise((r) => setTimeout(r, blackholeMs));
      }
      for (const { down, up } of victims) {
        reset(down);
        reset(up);
      }
      return victims.length;
    },
    /**
     * Stop reading what the server sends for `ms` (a client that reads too
     * slowly): the kernel's buffers fill, and the server's writes wait.
     */
    /** Stop reading from the server for ms, or until the async predicate
     * `until` holds (checked every 50 ms, for at most 20 s). */
    async stall(msOrUntil) {
      const victims = [...pairs];
      for (const p of victims) p.up.pause();
      if (typeof msOrUntil === 'function') {
        const deadline = Date.now() + 20000;
        while (!(await msOrUntil()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      } else {
        await new Promise((r) => setTimeout(r, msOrUntil));
      }
      for (const p of victims) if (!p.up.destroyed) p.up.resume();
      return victims.length;
    },
    async close() {
      await this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}
