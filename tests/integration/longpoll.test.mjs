// The long-poll transport (GET /v1/sessions/{id}/poll?after=N) and the
// batch upstream (POST /v1/sessions/{id}/messages).
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, sleep, waitFor } from './lib/stoa.mjs';
import {
  closeAll, createSession, deleteSession, getSession, poll, postMessages, postOk, rawConn, request, Poller,
  transportCounts, observerSessions,
} from './lib/sessions.mjs';

/** A poll that is still held: resolves {settled} without waiting for it. */
function pending(p) {
  const state = { settled: false };
  p.then(() => { state.settled = true; }, () => { state.settled = true; });
  return state;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** Wait until the session's poll is held (attached as longpoll). */
const held = (srv, id) => waitFor(async () => (await getSession(srv, id)).body.transport === 'longpoll',
  { what: 'a held poll' });

describe('long-poll: held polls', () => {
  afterEach(closeAll);
  const TIMEOUT = 20000;
  const srv = useStoa(['--poll-timeout-ms', String(TIMEOUT)]);

  it('a held poll answers as soon as a message arrives', async () => {
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:1', id: 'j' });
    const first = await poll(srv, s.session, { after: 0 });
    assert.equal(first.status, 200);
    assert.deepEqual([first.body.first_seq, first.body.last_seq], [1, 1]);
    assert.equal(first.body.messages[0].type, 'room_state');
    assert.equal((await getSession(srv, s.session)).body.transport, null, 'detached between polls');

    const t0 = Date.now();
    const hold = poll(srv, s.session, { after: 1 });
    const st = pending(hold);
    await sleep(300);
    assert.equal(st.settled, false, 'nothing to send: the poll is held');
    assert.equal((await getSession(srv, s.session)).body.transport, 'longpoll');

    const peer = await srv.client();
    await peer.join('doc:1');
    const r = await hold;
    const elapsed = Date.now() - t0;
    assert.equal(r.status, 200, r.text);
    assert.ok(elapsed < TIMEOUT, `answered after ${elapsed} ms`);
    assert.deepEqual([r.body.first_seq, r.body.last_seq], [2, 2]);
    assert.deepEqual(r.body.messages.map((m) => [m.type, m.peer]), [['peer_joined', peer.peer]]);
    assert.equal((await getSession(srv, s.session)).body.transport, null);
    await deleteSession(srv, s.session);
    await peer.close();
  });

  it('a second poll releases the first with 409 SUPERSEDED and is held in its place', async () => {
    const s = await createSession(srv);
    const a = poll(srv, s.session, { after: 0 });
    await held(srv, s.session);
    const b = poll(srv, s.session, { after: 0 });
    const ra = await a;
    assert.equal(ra.status, 409);
    assert.equal(ra.body.error.code, 'SUPERSEDED');
    assert.equal(ra.headers.get('cache-control'), 'no-store');
    const st = pending(b);
    await sleep(200);
    assert.equal(st.settled, false, 'the second poll is held');
    assert.equal((await getSession(srv, s.session)).body.transport, 'longpoll');
    await postOk(srv, s.session, { type: 'ping', id: 'p' });
    const rb = await b;
    assert.equal(rb.status, 200);
    assert.deepEqual(rb.body, { first_seq: 1, last_seq: 1, messages: [{ type: 'pong', id: 'p' }] });
    await deleteSession(srv, s.session);
  });

  it('DELETE releases a held poll with 409 SUPERSEDED; later polls get 404', async () => {
    const s = await createSession(srv);
    const a = poll(srv, s.session, { after: 0 });
    await held(srv, s.session);
    assert.equal((await deleteSession(srv, s.session)).status, 204);
    const ra = await a;
    assert.equal(ra.status, 409);
    assert.equal(ra.body.error.code, 'SUPERSEDED');
    const rb = await poll(srv, s.session, { after: 0 });
    assert.equal(rb.status, 404);
    assert.equal(rb.body.error.code, 'SESSION_NOT_FOUND');
    assert.equal(rb.headers.get('cache-control'), 'no-store');
  });

  it('after=N replays from N+1, drops what is acknowledged, never repeats', async () => {
    const s = await createSession(srv);
    await postOk(srv, s.session, range(1, 5).map((id) => ({ type: 'ping', id })));
    const all = await poll(srv, s.session, { after: 0 });
    assert.deepEqual([all.body.first_seq, all.body.last_seq], [1, 5]);
    assert.deepEqual(all.body.messages.map((m) => m.id), range(1, 5));
    assert.equal(all.headers.get('cache-control'), 'no-store');
    assert.match(all.headers.get('content-type'), /^application\/json/);
    // The answer was lost: ask again after 2; 3..5 again, 1..2 not.
    const again = await poll(srv, s.session, { after: 2 });
    assert.deepEqual([again.body.first_seq, again.body.last_seq], [3, 5]);
    assert.deepEqual(again.body.messages.map((m) => m.id), [3, 4, 5]);
    assert.equal((await getSession(srv, s.session)).body.buffered, 3, 'after=2 dropped 1 and 2');
    await postOk(srv, s.session, { type: 'ping', id: 6 });
    const next = await poll(srv, s.session, { after: 5 });
    assert.deepEqual(next.body, { first_seq: 6, last_seq: 6, messages: [{ type: 'pong', id: 6 }] });
    // A poll without after goes on from what was handed out last.
    const noAfter = poll(srv, s.session);
    await held(srv, s.session);
    await postOk(srv, s.session, { type: 'ping', id: 7 });
    const seven = await noAfter;
    assert.deepEqual(seven.body, { first_seq: 7, last_seq: 7, messages: [{ type: 'pong', id: 7 }] });
    await deleteSession(srv, s.session);
  });

  it('after=N below what is buffered gets a resync (gap); above what was sent, a resync (unknown_seq)', async () => {
    const s = await createSession(srv);
    await postOk(srv, s.session, [{ type: 'join', room: 'doc:r' }, { type: 'ping', id: 2 }, { type: 'ping', id: 3 }]);
    assert.equal((await poll(srv, s.session, { after: 0 })).body.last_seq, 3);
    await postOk(srv, s.session, { type: 'ping', id: 4 });
    assert.deepEqual((await poll(srv, s.session, { after: 3 })).body.messages, [{ type: 'pong', id: 4 }]);
    // 1..3 were acknowledged and dropped: a client claiming to have only 1 missed them for good.
    const gap = await poll(srv, s.session, { after: 1 });
    assert.equal(gap.status, 200, gap.text);
    const [rs, state] = gap.body.messages;
    assert.deepEqual(rs, { type: 'resync', seq: gap.body.first_seq, reason: 'gap', rooms: ['doc:r'] });
    assert.equal(gap.body.first_seq, 5);
    assert.equal(state.type, 'room_state');
    assert.deepEqual(state.peers.map((p) => p.peer), [s.peer]);
    assert.equal(gap.body.messages.length, 2);
    assert.equal(gap.body.last_seq, 6);

    const unknown = await poll(srv, s.session, { after: 999 });
    assert.deepEqual(unknown.body.messages.map((m) => m.type), ['resync', 'room_state']);
    assert.equal(unknown.body.messages[0].reason, 'unknown_seq');
    assert.equal(unknown.body.first_seq, 7);

    const bad = await poll(srv, s.session, { after: 'abc' });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.code, 'BAD_MESSAGE');
    await deleteSession(srv, s.session);
  });

  it('a batch with valid and invalid messages: per-message errors with index and id; the valid ones take effect', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:b');
    const s = await createSession(srv);
    const batch = [
      { type: 'join', room: 'doc:b', state: { n: 0 }, id: 1 },
      { type: 'nope', id: 'x' },
      { type: 'presence', room: 'doc:other', state: { a: 1 }, id: 3 },
      'not a message',
      { type: 'ephemeral', room: 'doc:b', data: { hi: 1 }, id: 5 },
      { type: 'join', room: 'no room', id: 6 },
      { type: 'presence', room: 'doc:b', state: { n: 7 }, id: 7 },
      { type: 'ping', id: { bad: 'id' } },
    ];
    const r = await postMessages(srv, s.session, batch);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    assert.equal(r.body.accepted, 3);
    const errs = r.body.errors.map((e) => ({ ...e, message: typeof e.message }));
    assert.deepEqual(errs, [
      { index: 1, code: 'UNKNOWN_TYPE', message: 'string', id: 'x' },
      { index: 2, code: 'NOT_IN_ROOM', message: 'string', id: 3, room: 'doc:other' },
      { index: 3, code: 'BAD_MESSAGE', message: 'string' },
      { index: 5, code: 'BAD_ROOM', message: 'string', id: 6, room: 'no room' },
      { index: 7, code: 'BAD_MESSAGE', message: 'string' },
    ]);
    // Effects, in order, on the session's own stream and at the peer.
    const p = await poll(srv, s.session, { after: 0 });
    assert.deepEqual(p.body.messages.map((m) => [m.type, m.id]), [['room_state', 1], ['ack', 5], ['ack', 7]]);
    assert.deepEqual((await watcher.next('peer_joined')).state, { n: 0 });
    assert.deepEqual((await watcher.next('ephemeral')).data, { hi: 1 });
    assert.deepEqual((await watcher.next('presence')).state, { n: 7 });
    await watcher.sync();
    assert.deepEqual(watcher.peek('error'), []);
    await deleteSession(srv, s.session);
    await watcher.close();
  });

  it('a batch that is not JSON, too long or too large is refused whole', async () => {
    const s = await createSession(srv);
    const cases = [
      ['{"type":', 400, 'BAD_JSON'],
      ['', 400, 'BAD_JSON'],
      ['42', 400, 'BAD_MESSAGE'],
      [JSON.stringify(Array.from({ length: 257 }, () => ({ type: 'ping' }))), 413, 'MESSAGE_TOO_LARGE'],
      [JSON.stringify({ type: 'ping', id: 'x', pad: 'y'.repeat(70000) }), 413, 'MESSAGE_TOO_LARGE'],
    ];
    for (const [body, status, code] of cases) {
      const r = await request(srv, 'POST', `/v1/sessions/${s.session}/messages`, { body });
      assert.equal(r.status, status, `${body.slice(0, 40)}: ${r.text}`);
      assert.equal(r.body.error.code, code);
    }
    const ok = await postMessages(srv, s.session, Array.from({ length: 256 }, () => ({ type: 'heartbeat', room: 'doc:z' })));
    assert.equal(ok.status, 200, '256 messages are allowed');
    assert.equal(ok.body.errors.length, 256);
    assert.equal((await getSession(srv, s.session)).body.seq, 0, 'nothing was sent for the refused batches');
    const none = await postMessages(srv, 'q'.repeat(32), { type: 'ping' });
    assert.equal(none.status, 404);
    assert.equal(none.body.error.code, 'SESSION_NOT_FOUND');
    await deleteSession(srv, s.session);
  });

  itStopsCleanly(srv);
});

describe('long-poll: timeouts and vanished pollers', () => {
  afterEach(closeAll);
  const TIMEOUT = 500;
  const GRACE = 500;
  const srv = useStoa(['--poll-timeout-ms', String(TIMEOUT), '--session-grace-ms', String(GRACE)]);

  it('an empty poll is answered after poll_timeout_ms with first_seq = last_seq + 1', async () => {
    const s = await createSession(srv);
    let t0 = Date.now();
    const r = await poll(srv, s.session, { after: 0 });
    assert.ok(Date.now() - t0 >= TIMEOUT - 50, `answered after ${Date.now() - t0} ms`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { first_seq: 1, last_seq: 0, messages: [] });
    assert.equal(r.headers.get('cache-control'), 'no-store');
    await postOk(srv, s.session, [{ type: 'ping', id: 1 }, { type: 'ping', id: 2 }]);
    assert.equal((await poll(srv, s.session, { after: 0 })).body.last_seq, 2);
    t0 = Date.now();
    const empty = await poll(srv, s.session, { after: 2 });
    assert.ok(Date.now() - t0 >= TIMEOUT - 50);
    assert.deepEqual(empty.body, { first_seq: 3, last_seq: 2, messages: [] });
    await deleteSession(srv, s.session);
  });

  it('a poller that vanishes is announced peer_left "disconnect" after poll timeout + grace', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:v');
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:v' });
    const got = await poll(srv, s.session, { after: 0 });
    assert.equal(got.body.messages[0].type, 'room_state');
    await watcher.next((m) => m.type === 'peer_joined' && m.peer === s.peer);

    const ctl = new AbortController();
    const hold = poll(srv, s.session, { after: got.body.last_seq, signal: ctl.signal });
    await held(srv, s.session);
    const t0 = Date.now();
    ctl.abort();
    await assert.rejects(hold);
    const left = await watcher.next((m) => m.type === 'peer_left', TIMEOUT + GRACE + 6000);
    const elapsed = Date.now() - t0;
    assert.deepEqual(left, { type: 'peer_left', room: 'doc:v', peer: s.peer, reason: 'disconnect' });
    assert.ok(elapsed >= GRACE, `announced after ${elapsed} ms, within the grace period of ${GRACE} ms`);
    assert.equal((await getSession(srv, s.session)).status, 404);
    await watcher.close();
  });

  it('a poller that keeps polling stays in its rooms past the grace period', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:k');
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:k' });
    let after = 0;
    const end = Date.now() + TIMEOUT + GRACE * 4;
    while (Date.now() < end) after = (await poll(srv, s.session, { after })).body.last_seq;
    await watcher.sync();
    assert.deepEqual(watcher.peek('peer_left'), []);
    assert.deepEqual((await getSession(srv, s.session)).body.rooms, ['doc:k']);
    await deleteSession(srv, s.session);
    assert.equal((await watcher.next('peer_left')).reason, 'leave');
    await watcher.close();
  });

  itStopsCleanly(srv);
});

describe('long-poll: poll_max_bytes', () => {
  afterEach(closeAll);
  const srv = useStoa(['--poll-max-bytes', '4096', '--poll-timeout-ms', '500']);

  it('an answer stops once it holds poll_max_bytes; the next polls carry the rest, in order', async () => {
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:m' });
    const pub = await srv.client();
    await pub.join('doc:m');
    for (let n = 0; n < 12; n++) pub.send({ type: 'ephemeral', room: 'doc:m', data: { n, pad: 'p'.repeat(1000) } });
    await pub.sync();
    const seen = [];
    let after = 0;
    const sizes = [];
    while (seen.length < 12) {
      const r = await poll(srv, s.session, { after });
      assert.equal(r.status, 200);
      assert.ok(r.body.messages.length > 0, 'a poll with messages waiting carries at least one');
      const bytes = r.body.messages.map((m) => JSON.stringify(m).length);
      sizes.push(bytes.length);
      // Messages are added while the answer is under the limit.
      assert.ok(bytes.slice(0, -1).reduce((a, b) => a + b, 0) < 4096, `${bytes}`);
      for (const m of r.body.messages) if (m.type === 'ephemeral') seen.push(m.data.n);
      after = r.body.last_seq;
    }
    assert.deepEqual(seen, range(0, 11));
    assert.ok(sizes.length >= 3, `12 messages of 1 KiB in ${sizes.length} answers (${sizes})`);
    await deleteSession(srv, s.session);
    await pub.close();
  });

  itStopsCleanly(srv);
});

/** The complete HTTP responses (Content-Length bodies) in text: [{head, body}]. */
function responses(text) {
  const out = [];
  let at = 0;
  for (;;) {
    const end = text.indexOf('\r\n\r\n', at);
    if (end < 0) return out;
    const head = text.slice(at, end);
    const len = Number((head.match(/\r\ncontent-length: *(\d+)/i) ?? [])[1] ?? 0);
    if (text.length < end + 4 + len) return out;
    out.push({ head, body: text.slice(end + 4, end + 4 + len) });
    at = end + 4 + len;
  }
}

const pollReq = (id, after, extra = '') =>
  `GET /v1/sessions/${id}/poll?after=${after} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n`;

describe('long-poll: held polls outside libmicrohttpd', () => {
  afterEach(closeAll);
  const TIMEOUT = 1500;
  const srv = useStoa(['--poll-timeout-ms', String(TIMEOUT), '--ephemeral-burst', '1000',
    '--ephemeral-per-min', '600000']);

  it('1,000 pollers in one room each get every message once, in order', async () => {
    const N = 1000;
    const M = 20;
    const sessions = await observerSessions(srv, N, 'doc:many');
    const pollers = sessions.map((s) => Poller.start(srv, s.session));
    await Promise.all(pollers.map((p) => p.next('room_state', 20000)));
    await waitFor(async () => ((await transportCounts(srv)).longpoll ?? 0) > N / 2,
      { timeoutMs: 20000, what: 'polls held' });
    const pub = await srv.client();
    await pub.join('doc:many');
    for (let k = 0; k < M; k++) {
      pub.send({ type: 'ephemeral', room: 'doc:many', data: { k } });
      if (k % 5 === 4) await sleep(50);   // some arrive on held polls, some between polls
    }
    await Promise.all(pollers.map(async (p) => {
      for (let k = 0; k < M; k++) {
        const m = await p.next((e) => e.type === 'ephemeral', 30000);
        assert.equal(m.data.k, k, 'in order');
      }
    }));
    for (const p of pollers) {
      const seqs = p.received.map((m) => p.seqOf(m));
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'seqs 1, 2, 3... once each');
    }
    await Promise.all(pollers.map((p) => p.stop()));
    await pub.close();
  });

  it('a poll answered, then the next poll on the same connection is held and answered too', async () => {
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:ka' });
    const c = rawConn(srv);
    c.sock.write(pollReq(s.session, 0));   // answered at once: room_state
    await c.until((d) => responses(d).length === 1, 'the first answer');
    c.sock.write(pollReq(s.session, 1));   // held
    await waitFor(async () => (await getSession(srv, s.session)).body.transport === 'longpoll',
      { what: 'the second poll held' });
    await postOk(srv, s.session, { type: 'ping', id: 'p1' });
    await c.until((d) => responses(d).length === 2, 'the held poll answered');
    c.sock.write(pollReq(s.session, 2));   // held again, on the same connection, after the handoff
    await waitFor(async () => (await getSession(srv, s.session)).body.transport === 'longpoll',
      { what: 'the third poll held' });
    await postOk(srv, s.session, { type: 'ping', id: 'p2' });
    await c.until((d) => responses(d).length === 3, 'the third answer');
    c.sock.write(pollReq(s.session, 3));   // nothing comes: answered empty at the timeout
    await c.until((d) => responses(d).length === 4, 'the timeout answer', TIMEOUT + 5000);
    const rs = responses(c.data);
    for (const r of rs) {
      assert.match(r.head, /^HTTP\/1\.1 200 OK\r\n/);
      assert.match(r.head, /\r\nContent-Type: application\/json(\r\n|$)/);
      assert.match(r.head, /\r\nCache-Control: no-store(\r\n|$)/);
      assert.doesNotMatch(r.head, /Connection: close/i);
    }
    const bodies = rs.map((r) => JSON.parse(r.body));
    assert.deepEqual(bodies.map((b) => [b.first_seq, b.last_seq]), [[1, 1], [2, 2], [3, 3], [4, 3]]);
    assert.deepEqual(bodies.map((b) => b.messages.map((m) => m.type)), [['room_state'], ['pong'], ['pong'], []]);
    assert.equal(c.closed, false, 'kept alive');
    c.close();
    await deleteSession(srv, s.session);
  });

  it('a held poll with Connection: close is answered, then the connection closes', async () => {
    const s = await createSession(srv);
    const c = rawConn(srv);
    c.sock.write(pollReq(s.session, 0, 'Connection: close\r\n'));
    await waitFor(async () => (await getSession(srv, s.session)).body.transport === 'longpoll',
      { what: 'the poll held' });
    await postOk(srv, s.session, { type: 'ping', id: 'p' });
    await c.until((d) => responses(d).length === 1, 'the answer');
    assert.match(responses(c.data)[0].head, /\r\nConnection: close(\r\n|$)/i);
    await waitFor(() => c.closed, { timeoutMs: 3000, what: 'the connection closed' });
    await deleteSession(srv, s.session);
  });

  it('a held poll whose client goes away detaches the session at once', async () => {
    const s = await createSession(srv);
    const c = rawConn(srv);
    c.sock.write(pollReq(s.session, 0));
    await waitFor(async () => (await getSession(srv, s.session)).body.transport === 'longpoll',
      { what: 'the poll held' });
    c.close();
    await waitFor(async () => (await getSession(srv, s.session)).body.transport === null,
      { timeoutMs: TIMEOUT - 500, what: 'the session detached before the poll timeout' });
    // What comes meanwhile waits for the next poll.
    await postOk(srv, s.session, { type: 'ping', id: 'p' });
    const r = await poll(srv, s.session, { after: 0 });
    assert.deepEqual(r.body.messages.map((m) => m.type), ['pong']);
    await deleteSession(srv, s.session);
  });

  itStopsCleanly(srv);
});
