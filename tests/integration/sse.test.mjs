// The Server-Sent Events transport: GET /v1/sessions/{id}/sse, driven by a
// real EventSource implementation (npm `eventsource`) and by a raw reader
// that sees every byte.
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { EventSource } from 'eventsource';
import { useStoa, itStopsCleanly, sleep, waitFor } from './lib/stoa.mjs';
import {
  Inbox, SseStream, Poller, track, closeAll, createSession, deleteSession, getSession, postOk, postMessages, rawConn,
  transportCounts, observerSessions,
} from './lib/sessions.mjs';

/**
 * A fetch for EventSource over node:http, so that a test can see each
 * request's headers (log[i].headers) and cut a response's socket
 * (log[i].cut()), which the EventSource sees as the stream ending.
 */
function recordingFetch(log) {
  return (url, init = {}) => new Promise((resolve, reject) => {
    const headers = { ...(init.headers ?? {}) };
    const entry = { url: String(url), headers, cut: null };
    log.push(entry);
    const req = http.get(String(url), { headers }, (res) => {
      const body = new ReadableStream({
        start(ctrl) {
          let open = true;
          const fin = () => { if (open) { open = false; ctrl.close(); } };
          res.on('data', (c) => { if (open) ctrl.enqueue(new Uint8Array(c)); });
          res.on('end', fin);
          res.on('close', fin);
          res.on('error', fin);
        },
        cancel() { req.destroy(); },
      });
      const h = new Headers();
      for (const [k, v] of Object.entries(res.headers)) h.set(k, Array.isArray(v) ? v.join(', ') : v);
      resolve(new Response(body, { status: res.statusCode, headers: h }));
    });
    entry.cut = () => req.destroy();
    req.on('error', reject);
    init.signal?.addEventListener('abort', () => req.destroy());
  });
}

/** An EventSource whose JSON messages land in an Inbox; ids in seqOf(m). */
function eventSource(srv, id, { query = '' } = {}) {
  const log = [];
  const es = new EventSource(`${srv.url}/v1/sessions/${id}/sse${query}`, { fetch: recordingFetch(log) });
  const box = track(new Inbox());
  box.close = () => es.close();
  box.es = es;
  box.log = log;
  box.seqs = new Map();
  box.ids = [];
  box.errors = [];
  box.seqOf = (m) => box.seqs.get(m);
  es.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (ev.lastEventId !== '' && m.type !== 'welcome') {
      box.seqs.set(m, Number(ev.lastEventId));
      box.ids.push(Number(ev.lastEventId));
    }
    box.lastId = ev.lastEventId;
    box.push(m);
  };
  es.onerror = (ev) => box.errors.push(ev);
  return box;
}

const user = (name) => ({ sub: name.toLowerCase(), name, rooms: { 'doc:*': 'rw' } });

describe('SSE: three transports in one room', () => {
  afterEach(closeAll);
  const srv = useStoa();

  it('an EventSource gets welcome, then what peers on WebSocket and long-poll do, numbered', async () => {
    const ws = await srv.client({ token: await srv.token(user('Wanda')) });
    await ws.join('doc:1', { via: 'ws' });

    const sB = await createSession(srv, { token: await srv.token(user('Sam')) });
    const sse = eventSource(srv, sB.session);
    const welcome = await sse.next('welcome');
    assert.equal(welcome.session, sB.session);
    assert.equal(welcome.peer, sB.peer);
    assert.equal(welcome.seq, 0);
    assert.equal(sse.lastId, '', 'the welcome has no id');
    await postOk(srv, sB.session, { type: 'join', room: 'doc:1', state: { via: 'sse' }, id: 'j-sse' });
    const rsB = await sse.next('room_state');
    assert.equal(rsB.id, 'j-sse');
    assert.deepEqual(rsB.peers.map((p) => [p.peer, p.state.via]), [[ws.peer, 'ws'], [sB.peer, 'sse']]);
    assert.equal(sse.seqOf(rsB), 1);
    const joinedB = await ws.next('peer_joined');
    assert.equal(joinedB.peer, sB.peer);
    assert.equal(joinedB.user.id, 'sam');

    const sC = await createSession(srv, { token: await srv.token(user('Lee')) });
    const lp = Poller.start(srv, sC.session);
    await postOk(srv, sC.session, { type: 'join', room: 'doc:1', state: { via: 'lp' }, id: 'j-lp' });
    const rsC = await lp.next('room_state');
    assert.deepEqual(rsC.peers.map((p) => p.state.via), ['ws', 'sse', 'lp']);
    assert.equal(lp.seqOf(rsC), 1);
    for (const c of [ws, sse]) {
      const j = await c.next('peer_joined');
      assert.deepEqual([j.peer, j.user.id, j.state], [sC.peer, 'lee', { via: 'lp' }]);
    }
    const joinedAtLp = lp.peek('peer_joined');
    assert.deepEqual(joinedAtLp, [], 'a peer is not told of peers that were there before it');

    // Presence, each transport in turn; the others see the whole state.
    ws.send({ type: 'presence', room: 'doc:1', state: { cursor: 1 } });
    await postOk(srv, sB.session, { type: 'presence', room: 'doc:1', state: { cursor: 2 }, id: 'p-sse' });
    await postOk(srv, sC.session, { type: 'presence', room: 'doc:1', state: { cursor: 3 } });
    // The server may coalesce changes made within one presence tick into a
    // presence_batch: the latest state of `from` is in one or the other.
    const latestState = (c, from) => {
      for (const m of [...c.received].reverse()) {
        if (m.room !== 'doc:1') continue;
        if (m.type === 'presence' && m.peer === from) return m.state;
        const e = m.type === 'presence_batch' ? m.peers.find((p) => p.peer === from) : null;
        if (e) return e.state;
      }
      return null;
    };
    const expectPresence = async (c, from, cursor, via) => {
      await waitFor(() => latestState(c, from)?.cursor === cursor, { what: `presence of ${via} (${cursor})` });
      assert.deepEqual(latestState(c, from), { via, cursor });
    };
    await expectPresence(sse, ws.peer, 1, 'ws');
    await expectPresence(lp, ws.peer, 1, 'ws');
    await expectPresence(ws, sB.peer, 2, 'sse');
    await expectPresence(lp, sB.peer, 2, 'sse');
    await expectPresence(ws, sC.peer, 3, 'lp');
    await expectPresence(sse, sC.peer, 3, 'lp');
    const ack = await sse.next('ack');
    assert.equal(ack.id, 'p-sse', 'the sender gets its ack on its own stream');

    // Ephemeral messages, each transport in turn.
    ws.send({ type: 'ephemeral', room: 'doc:1', data: { hi: 'from ws' } });
    await postOk(srv, sB.session, { type: 'ephemeral', room: 'doc:1', data: { hi: 'from sse' } });
    await postOk(srv, sC.session, { type: 'ephemeral', room: 'doc:1', data: { hi: 'from lp' } });
    const expectEph = async (c, from, uid, hi) => {
      const e = await c.next((m) => m.type === 'ephemeral' && m.from === from);
      assert.equal(e.user.id, uid);
      assert.deepEqual(e.data, { hi });
    };
    await expectEph(sse, ws.peer, 'wanda', 'from ws');
    await expectEph(lp, ws.peer, 'wanda', 'from ws');
    await expectEph(ws, sB.peer, 'sam', 'from sse');
    await expectEph(lp, sB.peer, 'sam', 'from sse');
    await expectEph(ws, sC.peer, 'lee', 'from lp');
    await expectEph(sse, sC.peer, 'lee', 'from lp');

    // Nobody hears its own relays; the SSE ids run 1, 2, 3... without a gap.
    await ws.sync();
    assert.deepEqual(ws.peek((m) => m.from === ws.peer || m.peer === ws.peer), []);
    assert.deepEqual(sse.peek((m) => m.from === sB.peer || (m.type === 'presence' && m.peer === sB.peer)), []);
    assert.deepEqual(sse.ids, sse.ids.map((_, i) => i + 1));
    assert.deepEqual(sse.errors, []);

    sse.es.close();
    await lp.stop();
    for (const s of [sB, sC]) assert.equal((await deleteSession(srv, s.session)).status, 204);
    const left = await ws.next((m) => m.type === 'peer_left' && m.peer === sB.peer);
    assert.equal(left.reason, 'leave');
    await ws.close();
  });

  itStopsCleanly(srv);
});

describe('SSE: resume with Last-Event-ID', () => {
  afterEach(closeAll);
  const srv = useStoa(['--sse-retry-ms', '100', '--ephemeral-burst', '1000', '--ephemeral-per-min', '600000']);

  it('an EventSource cut mid-flow reconnects with Last-Event-ID and gets every message once, in order', async () => {
    const N = 300;
    const pub = await srv.client();
    await pub.join('doc:2');
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:2' });
    const sse = eventSource(srv, s.session);
    await sse.next('room_state');
    assert.equal(sse.log.length, 1);
    assert.equal(sse.log[0].headers['Last-Event-ID'], undefined, 'the first request has no Last-Event-ID');

    let cutAt = null;
    let idAtReconnect = null;
    const got = [];
    const all = (async () => {
      for (;;) {
        const m = await sse.next('ephemeral', 10000);
        got.push(m.data.n);
        if (got.length === 50 && !cutAt) {
          cutAt = sse.lastId;
          // When the EventSource asks again, note the last id it had dispatched.
          const wrapped = sse.log.push;
          sse.log.push = (e) => { idAtReconnect = sse.lastId; return wrapped.call(sse.log, e); };
          sse.log[0].cut();
        }
        if (m.data.n === N - 1) return;
      }
    })();
    for (let n = 0; n < N; n++) {
      pub.send({ type: 'ephemeral', room: 'doc:2', data: { n } });
      if (n % 10 === 9) await sleep(5);
    }
    await all;
    assert.ok(cutAt, 'the stream was cut');
    assert.ok(sse.log.length >= 2, `the EventSource reconnected (${sse.log.length} requests)`);
    assert.equal(sse.log[1].headers['Last-Event-ID'], idAtReconnect,
      'the reconnect names the last id the EventSource had received');
    assert.ok(Number(idAtReconnect) >= Number(cutAt));
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i), 'every number exactly once, in order');
    // Ids: the welcome of the second stream has none; ids continue without a gap or repeat.
    assert.deepEqual(sse.ids, sse.ids.map((_, i) => i + 1));
    const welcomes = sse.received.filter((m) => m.type === 'welcome');
    assert.equal(welcomes.length, sse.log.length);
    assert.equal(welcomes[1].resumed, true);
    assert.equal(welcomes[1].seq, Number(idAtReconnect), 'the second welcome states the seq resumed after');
    assert.equal(welcomes[1].peer, s.peer);

    sse.es.close();
    await deleteSession(srv, s.session);
    await pub.close();
  });

  it('a raw request: Last-Event-ID resumes after that seq, and wins over ?last_seq=', async () => {
    const s = await createSession(srv);
    await postOk(srv, s.session, [1, 2, 3, 4].map((id) => ({ type: 'ping', id })));
    const a = await SseStream.open(srv, s.session, { lastSeq: 0 });
    for (let id = 1; id <= 4; id++) assert.equal(a.seqOf(await a.next((m) => m.id === id)), id);
    a.cut();
    const b = await SseStream.open(srv, s.session, { lastSeq: 1, lastEventId: 2 });
    const w = await b.next('welcome');
    assert.deepEqual([w.seq, w.resumed], [2, true]);
    const p3 = await b.next('pong');
    assert.deepEqual([p3.id, b.seqOf(p3)], [3, 3]);
    const p4 = await b.next('pong');
    assert.deepEqual([p4.id, b.seqOf(p4)], [4, 4]);
    b.cut();
    // Without the header, the query decides.
    const c = await SseStream.open(srv, s.session, { lastSeq: 3 });
    assert.equal((await c.next('welcome')).seq, 3);
    const again = await c.next('pong');
    assert.deepEqual([again.id, c.seqOf(again)], [4, 4]);
    c.cut();
    await deleteSession(srv, s.session);
  });

  it('a second stream on the session ends the first; the second goes on', async () => {
    const s = await createSession(srv);
    const a = await SseStream.open(srv, s.session);
    await a.next('welcome');
    const b = await SseStream.open(srv, s.session, { lastSeq: 0 });
    await b.next('welcome');
    assert.equal(await a.closed, 'end of stream');
    await postOk(srv, s.session, { type: 'ping', id: 'after' });
    assert.equal(b.seqOf(await b.next('pong')), 1);
    assert.deepEqual(a.peek('pong'), []);
    await deleteSession(srv, s.session);
    assert.equal(await b.closed, 'end of stream', 'DELETE ends the stream');
  });

  itStopsCleanly(srv);
});

describe('SSE: the stream itself', () => {
  afterEach(closeAll);
  const srv = useStoa(['--sse-heartbeat-s', '1', '--sse-retry-ms', '1500', '--sse-padding-bytes', '700']);

  it('headers, then retry:, then the welcome without id, then numbered events', async () => {
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:4', id: 9 });
    const x = await SseStream.open(srv, s.session);
    assert.equal(x.status, 200);
    assert.match(x.headers['content-type'], /^text\/event-stream/);
    assert.match(x.headers['cache-control'], /no-cache/);
    assert.match(x.headers['cache-control'], /no-store/);
    assert.equal(x.headers['x-accel-buffering'], 'no');
    const rs = await x.next('room_state');
    assert.equal(rs.id, 9);
    assert.ok(x.raw.startsWith('retry: 1500\n\ndata: {"type":"welcome",'), JSON.stringify(x.raw.slice(0, 80)));
    assert.deepEqual(x.events.map((e) => [e.id, e.data && JSON.parse(e.data).type, e.retry]),
      [[undefined, undefined, 1500], [undefined, 'welcome', undefined], [1, 'room_state', undefined]]);
    x.cut();
    await deleteSession(srv, s.session);
  });

  it('?pad=1 puts a comment of sse_padding_bytes spaces before the welcome', async () => {
    const s = await createSession(srv);
    const x = await SseStream.open(srv, s.session, { pad: true });
    await x.next('welcome');
    const expect = `retry: 1500\n\n:${' '.repeat(700)}\n\ndata: {"type":"welcome",`;
    assert.equal(x.raw.slice(0, expect.length), expect);
    x.cut();
    await deleteSession(srv, s.session);
  });

  it('an idle stream gets a ": hb" comment every sse_heartbeat_s', async () => {
    const s = await createSession(srv);
    const x = await SseStream.open(srv, s.session);
    await x.next('welcome');
    await waitFor(() => x.events.filter((e) => e.comments.includes(' hb')).length >= 2,
      { timeoutMs: 6000, what: 'two heartbeat comments' });
    const hb = x.events.filter((e) => e.comments.length);
    assert.ok(hb.every((e) => e.data === undefined && e.id === undefined && e.comments[0] === ' hb'));
    // The stream is still alive: a message still gets through.
    await postOk(srv, s.session, { type: 'ping', id: 'alive' });
    assert.equal(x.seqOf(await x.next('pong')), 1);
    x.cut();
    await deleteSession(srv, s.session);
  });

  it('an unknown session: 404 SESSION_NOT_FOUND as JSON; EventSource does not retry', async () => {
    const x = await SseStream.open(srv, 'x'.repeat(32));
    assert.equal(x.status, 404);
    assert.match(x.headers['content-type'], /^application\/json/);
    assert.equal(JSON.parse(await x.text()).error.code, 'SESSION_NOT_FOUND');
    const es = eventSource(srv, 'nosuchsession');
    await waitFor(() => es.errors.length > 0, { what: 'an error event' });
    assert.equal(es.es.readyState, EventSource.CLOSED);
    await sleep(300);
    assert.equal(es.log.length, 1, 'no reconnect after a 404');
  });

  it('a bad last_seq: 400 BAD_MESSAGE; a token naming another user: 401 AUTH_FAILED', async () => {
    const s = await createSession(srv, { token: await srv.token({ sub: 'ada' }) });
    const bad = await SseStream.open(srv, s.session, { lastSeq: 'x1' });
    assert.equal(bad.status, 400);
    assert.equal(JSON.parse(await bad.text()).error.code, 'BAD_MESSAGE');
    const other = await SseStream.open(srv, s.session, { token: await srv.token({ sub: 'bob' }) });
    assert.equal(other.status, 401);
    assert.equal(JSON.parse(await other.text()).error.code, 'AUTH_FAILED');
    const same = await SseStream.open(srv, s.session, { token: await srv.token({ sub: 'ada' }) });
    assert.equal(same.status, 200);
    await same.next('welcome');
    same.cut();
    await deleteSession(srv, s.session);
  });

  itStopsCleanly(srv);
});

describe('SSE: a client that vanishes', () => {
  const GRACE = 1000;
  const HB = 1000;
  afterEach(closeAll);
  const srv = useStoa(['--session-grace-ms', String(GRACE), '--sse-heartbeat-s', String(HB / 1000)]);

  it('is announced peer_left "disconnect" after the grace period', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:3');
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:3' });
    await watcher.next((m) => m.type === 'peer_joined' && m.peer === s.peer);

    const sock = net.connect(srv.port, '127.0.0.1');
    let head = '';
    await new Promise((resolve, reject) => {
      sock.on('error', reject);
      sock.on('data', (d) => {
        head += d;
        if (head.includes('"type":"welcome"')) resolve();
      });
      sock.write(`GET /v1/sessions/${s.session}/sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`);
    });
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.equal((await getSession(srv, s.session)).body.transport, 'sse');
    const t0 = Date.now();
    sock.destroy();

    const left = await watcher.next((m) => m.type === 'peer_left', GRACE + HB + 8000);
    const elapsed = Date.now() - t0;
    assert.deepEqual(left, { type: 'peer_left', room: 'doc:3', peer: s.peer, reason: 'disconnect' });
    assert.ok(elapsed >= GRACE, `announced after ${elapsed} ms, before the grace period of ${GRACE} ms`);
    assert.equal((await getSession(srv, s.session)).status, 404);
    const r = await postMessages(srv, s.session, { type: 'ping' });
    assert.equal(r.body.error.code, 'SESSION_NOT_FOUND');
    await watcher.close();
  });

  itStopsCleanly(srv);
});

describe('SSE: streams outside libmicrohttpd', () => {
  afterEach(closeAll);
  const srv = useStoa(['--sse-heartbeat-s', '30', '--ephemeral-burst', '1000', '--ephemeral-per-min', '600000']);

  it('1,000 streams in one room each get every message once, in order', async () => {
    const N = 1000;
    const M = 20;
    const sessions = await observerSessions(srv, N, 'doc:many');
    const streams = [];
    for (let i = 0; i < N; i += 100) {
      streams.push(...await Promise.all(sessions.slice(i, i + 100).map(async (s) => {
        const x = await SseStream.open(srv, s.session);
        assert.equal(x.status, 200);
        await x.next('room_state');
        return x;
      })));
    }
    const pub = await srv.client();
    await pub.join('doc:many');
    for (let k = 0; k < M; k++) pub.send({ type: 'ephemeral', room: 'doc:many', data: { k } });
    await Promise.all(streams.map(async (x) => {
      for (let k = 0; k < M; k++) {
        const m = await x.next((e) => e.type === 'ephemeral', 20000);
        assert.equal(m.data.k, k, 'in order');
      }
    }));
    assert.equal((await transportCounts(srv)).sse ?? 0, N, 'all still attached');
    for (const x of streams) {
      const ids = x.ids;
      assert.deepEqual(ids, Array.from({ length: ids.length }, (_, i) => i + 1), 'ids 1, 2, 3... once each');
      x.cut();
    }
    await waitFor(async () => ((await transportCounts(srv)).sse ?? 0) === 0,
      { timeoutMs: 5000, what: 'every cut stream detached' });
    await pub.close();
  });

  it('a client that closes mid-stream is detached at once, not at the next heartbeat', async () => {
    const s = await createSession(srv);
    const x = await SseStream.open(srv, s.session);
    await x.next('welcome');
    assert.equal((await getSession(srv, s.session)).body.transport, 'sse');
    x.cut();
    await waitFor(async () => (await getSession(srv, s.session)).body.transport === null,
      { timeoutMs: 3000, what: 'the session detached (heartbeat is 30 s)' });
    // The session resumes on a new stream with nothing lost.
    await postOk(srv, s.session, { type: 'ping', id: 'p' });
    const y = await SseStream.open(srv, s.session, { lastSeq: 0 });
    assert.equal(y.seqOf(await y.next('pong')), 1);
    y.cut();
    await deleteSession(srv, s.session);
  });

  it('a stream on a keep-alive connection after a POST; once it ends, the connection serves the next request', async () => {
    const c = rawConn(srv);
    c.sock.write('POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n');
    await c.until((d) => /"session":"[0-9a-zA-Z]+"/.test(d), 'the session');
    const id = c.data.match(/"session":"([0-9a-zA-Z]+)"/)[1];
    const mark = c.data.length;
    c.sock.write(`GET /v1/sessions/${id}/sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`);
    await c.until((d) => d.slice(mark).includes('"type":"welcome"'), 'the welcome');
    const head = c.data.slice(mark, c.data.indexOf('\r\n\r\n', mark));
    assert.match(head, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(head, /\r\nTransfer-Encoding: chunked(\r\n|$)/i);
    assert.match(head, /\r\nContent-Type: text\/event-stream; charset=utf-8(\r\n|$)/);
    assert.doesNotMatch(head, /Connection: close/i);
    // A second stream supersedes this one: it ends with the last chunk...
    const other = await SseStream.open(srv, id);
    await other.next('welcome');
    await c.until((d) => d.endsWith('\r\n0\r\n\r\n'), 'the end of the chunked stream');
    // ...and the same connection is served again.
    const mark2 = c.data.length;
    c.sock.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await c.until((d) => d.slice(mark2).includes('"status":"ok"'), 'healthz on the same connection');
    assert.match(c.data.slice(mark2), /^HTTP\/1\.1 200/);
    assert.equal(c.closed, false);
    other.cut();
    c.close();
    await deleteSession(srv, id);
  });

  it('Connection: close: the stream ends by closing the connection (no chunking)', async () => {
    const s = await createSession(srv);
    const c = rawConn(srv);
    c.sock.write(`GET /v1/sessions/${s.session}/sse HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    await c.until((d) => d.includes('"type":"welcome"'), 'the welcome');
    assert.match(c.data, /\r\nConnection: close\r\n/i);
    assert.doesNotMatch(c.data, /Transfer-Encoding/i);
    await deleteSession(srv, s.session);   // the stream ends
    await waitFor(() => c.closed, { timeoutMs: 3000, what: 'the connection closed' });
  });

  itStopsCleanly(srv);
});
