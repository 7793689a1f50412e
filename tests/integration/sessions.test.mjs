// Sessions over REST (create, inspect, end), the transport a session is
// attached to, and moving a session between transports without losing or
// repeating a message.
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, Client, sleep, waitFor } from './lib/stoa.mjs';
import {
  closeAll, createSession, deleteSession, getSession, poll, postMessages, postOk, request, Poller, SseStream,
  transportCounts,
} from './lib/sessions.mjs';

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** Open a WebSocket on an existing session; resolves once welcome is in. */
async function wsResume(srv, id, lastSeq) {
  const q = lastSeq === undefined ? '' : `&last_seq=${lastSeq}`;
  const c = await srv.client({ path: `/v1/ws?session=${id}${q}` });
  return c;
}

/** Seq of each message a WebSocket client received after its welcome: welcome.seq + 1, + 2, ... */
function wsSeqs(c) {
  const i = c.received.findIndex((m) => m.type === 'welcome');
  return c.received.slice(i + 1).map((m, k) => ({ seq: c.received[i].seq + k + 1, m }));
}

describe('sessions over REST', () => {
  afterEach(closeAll);
  const srv = useStoa(['--poll-timeout-ms', '10000']);

  it('POST /v1/sessions: 201 with the welcome fields and the transports', async () => {
    const r = await request(srv, 'POST', '/v1/sessions');
    assert.equal(r.status, 201, r.text);
    assert.match(r.headers.get('content-type'), /^application\/json/);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    const b = r.body;
    assert.deepEqual(Object.keys(b).sort(), ['heartbeat_interval', 'heartbeat_timeout', 'limits', 'peer', 'resumed',
      'seq', 'session', 'transports', 'type', 'user'].sort());
    assert.equal(b.type, 'welcome');
    assert.match(b.session, /^[a-z0-9]{32}$/);
    assert.match(b.peer, /^[a-z0-9]{12}$/);
    assert.deepEqual([b.seq, b.resumed, b.user.anonymous], [0, false, true]);
    assert.deepEqual(b.transports, ['websocket', 'sse', 'longpoll']);
    await deleteSession(srv, b.session);
  });

  it('GET /v1/sessions/{id}: the session as the server sees it', async () => {
    const s = await createSession(srv);
    const g0 = await getSession(srv, s.session);
    assert.equal(g0.status, 200);
    assert.equal(g0.headers.get('cache-control'), 'no-store');
    assert.deepEqual(g0.body, { session: s.session, peer: s.peer, user: s.user, transport: null, rooms: [],
      seq: 0, delivered: 0, buffered: 0 });
    await postOk(srv, s.session, [{ type: 'join', room: 'doc:1' }, { type: 'join', room: 'doc:2' },
      { type: 'ping', id: 1 }]);
    const g1 = (await getSession(srv, s.session)).body;
    assert.deepEqual([g1.rooms.sort(), g1.seq, g1.delivered, g1.buffered], [['doc:1', 'doc:2'], 3, 0, 3]);
    await poll(srv, s.session, { after: 0 });
    const g2 = (await getSession(srv, s.session)).body;
    assert.deepEqual([g2.seq, g2.delivered, g2.buffered], [3, 3, 3], 'handed out, not yet acknowledged');
    await postOk(srv, s.session, { type: 'ping', id: 2 });
    await poll(srv, s.session, { after: 3 });
    const g3 = (await getSession(srv, s.session)).body;
    assert.deepEqual([g3.seq, g3.delivered, g3.buffered], [4, 4, 1], 'after=3 acknowledged 1..3');
    await deleteSession(srv, s.session);
  });

  it('DELETE /v1/sessions/{id}: 204; its peers get peer_left "leave"; then every endpoint answers 404', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:d');
    const lpPeer = await createSession(srv);
    await postOk(srv, lpPeer.session, { type: 'join', room: 'doc:d' });
    const lp = Poller.start(srv, lpPeer.session);
    await lp.next('room_state');
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:d' });
    await watcher.next('peer_joined');

    const r = await deleteSession(srv, s.session);
    assert.equal(r.status, 204);
    assert.equal(r.text, '');
    assert.deepEqual(await watcher.next('peer_left'), { type: 'peer_left', room: 'doc:d', peer: s.peer, reason: 'leave' });
    const atLp = await lp.next((m) => m.type === 'peer_left');
    assert.deepEqual([atLp.peer, atLp.reason], [s.peer, 'leave']);

    for (const [method, path] of [['GET', ''], ['DELETE', ''], ['GET', '/poll'], ['GET', '/sse'], ['POST', '/messages']]) {
      const x = await request(srv, method, `/v1/sessions/${s.session}${path}`,
        method === 'POST' ? { body: { type: 'ping' } } : {});
      assert.equal(x.status, 404, `${method} ${path}: ${x.text}`);
      assert.equal(x.body.error.code, 'SESSION_NOT_FOUND', `${method} ${path}`);
    }
    const ws = await Client.open(srv, { path: `/v1/ws?session=${s.session}` });
    assert.equal((await ws.next('error')).code, 'SESSION_NOT_FOUND');
    assert.equal((await ws.closed).code, 4004);
    await deleteSession(srv, lpPeer.session);
    await watcher.close();
  });

  it('a token, when sent, must name the session\'s user: another user gets 401 AUTH_FAILED', async () => {
    const ada = await srv.token({ sub: 'ada', name: 'Ada' });
    const bob = await srv.token({ sub: 'bob' });
    const s = await createSession(srv, { token: ada });
    assert.deepEqual([s.user.id, s.user.name, s.user.anonymous], ['ada', 'Ada', false]);
    for (const [method, path, body] of [['GET', ''], ['POST', '/messages', { type: 'ping' }], ['GET', '/poll?after=0'],
      ['GET', '/sse'], ['DELETE', '']]) {
      const x = await request(srv, method, `/v1/sessions/${s.session}${path}`, { token: bob, body });
      assert.equal(x.status, 401, `${method} ${path}: ${x.text}`);
      assert.equal(x.body.error.code, 'AUTH_FAILED');
    }
    const garbage = await getSession(srv, s.session, { token: 'not.a.token' });
    assert.equal(garbage.status, 401);
    assert.equal((await getSession(srv, s.session, { token: ada })).status, 200);
    assert.equal((await getSession(srv, s.session)).status, 200, 'the session id alone is enough');
    const bad = await request(srv, 'POST', '/v1/sessions', { token: 'not.a.token' });
    assert.equal(bad.status, 401);
    assert.equal(bad.body.error.code, 'AUTH_FAILED');
    assert.equal((await deleteSession(srv, s.session, { token: ada })).status, 204);
  });

  it('"transport" follows the attached connection: null, websocket, sse, longpoll, null between polls', async () => {
    const s = await createSession(srv);
    const transport = async () => (await getSession(srv, s.session)).body.transport;
    assert.equal(await transport(), null);

    const ws = await wsResume(srv, s.session, 0);
    assert.equal(ws.welcome.resumed, true);
    assert.equal(await transport(), 'websocket');
    assert.deepEqual(await transportCounts(srv), { websocket: 1 });

    const sse = await SseStream.open(srv, s.session, { lastSeq: 0 });
    await sse.next('welcome');
    assert.equal(await transport(), 'sse');
    assert.equal((await ws.closed).code, 4009, 'the WebSocket was superseded');

    const held = poll(srv, s.session, { after: 0 });
    await sse.closed;
    assert.equal(await transport(), 'longpoll');
    await postOk(srv, s.session, { type: 'ping', id: 'release' });
    const r = await held;
    assert.deepEqual(r.body, { first_seq: 1, last_seq: 1, messages: [{ type: 'pong', id: 'release' }] });
    assert.equal(await transport(), null);
    assert.deepEqual(await transportCounts(srv), { none: 1 });
    await deleteSession(srv, s.session);
    assert.deepEqual(await transportCounts(srv), {});
  });

  it('sends the pong of a POSTed ping on whichever transport is attached', async () => {
    const s = await createSession(srv);
    const ws = await wsResume(srv, s.session, 0);
    await postOk(srv, s.session, { type: 'ping', id: 'on-ws' });
    assert.equal((await ws.next('pong')).id, 'on-ws');
    const sse = await SseStream.open(srv, s.session, { lastSeq: 1 });
    await sse.next('welcome');
    await postOk(srv, s.session, { type: 'ping', id: 'on-sse' });
    const p = await sse.next('pong');
    assert.deepEqual([p.id, sse.seqOf(p)], ['on-sse', 2]);
    await deleteSession(srv, s.session);
  });

  itStopsCleanly(srv);
});

describe('healthz counts sessions per transport', () => {
  afterEach(closeAll);
  const srv = useStoa(['--poll-timeout-ms', '10000']);

  it('none, websocket, sse and longpoll', async () => {
    assert.deepEqual(await transportCounts(srv), {});
    const detached = await createSession(srv);
    const onWs = await createSession(srv);
    const ws = await wsResume(srv, onWs.session, 0);
    const plainWs = await srv.client();
    const onSse = await createSession(srv);
    const sse = await SseStream.open(srv, onSse.session);
    await sse.next('welcome');
    const onLp = await createSession(srv);
    const held = poll(srv, onLp.session, { after: 0 });
    await waitFor(async () => (await getSession(srv, onLp.session)).body.transport === 'longpoll',
      { what: 'the poll to be held' });
    assert.deepEqual(await transportCounts(srv), { none: 1, websocket: 2, sse: 1, longpoll: 1 });
    const h = await (await srv.fetch('/healthz')).json();
    assert.equal(h.sessions, 5);

    for (const s of [detached, onWs, onSse, onLp]) assert.equal((await deleteSession(srv, s.session)).status, 204);
    assert.equal((await held).status, 409);
    assert.equal((await ws.closed).code, 4009);
    assert.equal(await sse.closed, 'end of stream');
    assert.deepEqual(await transportCounts(srv), { websocket: 1 });
    await plainWs.close();
    await waitFor(async () => (await (await srv.fetch('/healthz')).json()).sessions === 0, { what: 'no sessions' });
    assert.deepEqual(await transportCounts(srv), {});
  });

  itStopsCleanly(srv);
});

describe('a session nobody attaches to', () => {
  const GRACE = 300;
  const srv = useStoa(['--session-grace-ms', String(GRACE)]);

  it('ends after session_grace_ms; its peers get peer_left "disconnect"', async () => {
    const watcher = await srv.client();
    await watcher.join('doc:g');
    const t0 = Date.now();
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:g' });
    assert.equal((await getSession(srv, s.session)).status, 200);
    const left = await watcher.next('peer_left', GRACE + 5000);
    assert.deepEqual([left.peer, left.reason], [s.peer, 'disconnect']);
    assert.ok(Date.now() - t0 >= GRACE);
    assert.equal((await getSession(srv, s.session)).status, 404);
    await watcher.close();
  });

  itStopsCleanly(srv);
});

describe('switching transports without loss or duplicates', () => {
  afterEach(closeAll);
  const srv = useStoa(['--poll-timeout-ms', '1000', '--sse-retry-ms', '100',
    '--ephemeral-burst', '1000', '--ephemeral-per-min', '600000']);

  /** A publisher in `room` sending {n} 0..count-1, paced; resolves when all are sent. */
  async function publish(room, count) {
    const pub = await srv.client();
    await pub.join(room);
    return {
      pub,
      sending: (async () => {
        for (let n = 0; n < count; n++) {
          pub.send({ type: 'ephemeral', room, data: { n } });
          await sleep(n % 5 === 4 ? 4 : 0);
        }
      })(),
    };
  }

  /**
   * Merge what two transports received, by seq: the same seq must carry the
   * same message on both; returns the ephemeral numbers in seq order.
   */
  function merge(...lists) {
    const bySeq = new Map();
    for (const list of lists) {
      for (const { seq, m } of list) {
        if (bySeq.has(seq)) assert.deepEqual(m, bySeq.get(seq), `seq ${seq} differs between transports`);
        else bySeq.set(seq, m);
      }
    }
    const seqs = [...bySeq.keys()].sort((a, b) => a - b);
    assert.deepEqual(seqs, range(seqs[0], seqs[seqs.length - 1]), 'no seq is missing');
    return seqs.map((s) => bySeq.get(s)).filter((m) => m.type === 'ephemeral').map((m) => m.data.n);
  }

  it('long-poll to WebSocket: finish the poll in flight, then open the WebSocket with last_seq', async () => {
    const N = 200;
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:s1' });
    const lp = Poller.start(srv, s.session);
    await lp.next('room_state');
    const { pub, sending } = await publish('doc:s1', N);
    await lp.next((m) => m.type === 'ephemeral' && m.data.n >= 40, 10000);
    await lp.stop({ abort: false });   // the poll in flight comes back with what it has
    const last = lp.last;
    const fromLp = lp.received.map((m) => ({ seq: lp.seqOf(m), m }));
    assert.equal(fromLp[fromLp.length - 1].seq, last);
    const ws = await wsResume(srv, s.session, last);
    assert.equal(ws.welcome.seq, last);
    await sending;
    await ws.next((m) => m.type === 'ephemeral' && m.data.n === N - 1, 10000);
    const fromWs = wsSeqs(ws);
    assert.equal(fromWs[0].seq, last + 1);
    // No duplicates to drop here: the two lists meet exactly.
    assert.deepEqual([...fromLp, ...fromWs].map((x) => x.seq), range(1, last + fromWs.length));
    assert.deepEqual(merge(fromLp, fromWs), range(0, N - 1));
    await deleteSession(srv, s.session);
    await pub.close();
  });

  it('WebSocket to SSE: open the stream with last_seq; the WebSocket is closed with 4009; drop seqs seen twice', async () => {
    const N = 200;
    const s = await createSession(srv);
    const ws = await wsResume(srv, s.session, 0);
    await postOk(srv, s.session, { type: 'join', room: 'doc:s2' });
    await ws.next('room_state');
    const { pub, sending } = await publish('doc:s2', N);
    await ws.next((m) => m.type === 'ephemeral' && m.data.n >= 40, 10000);
    const last = wsSeqs(ws).at(-1).seq;
    const sse = await SseStream.open(srv, s.session, { lastSeq: last });
    assert.equal((await sse.next('welcome')).seq, last);
    assert.equal((await ws.closed).code, 4009);
    await sending;
    await sse.next((m) => m.type === 'ephemeral' && m.data.n === N - 1, 10000);
    const fromSse = sse.received.filter((m) => m.type !== 'welcome').map((m) => ({ seq: sse.seqOf(m), m }));
    assert.equal(fromSse[0].seq, last + 1, 'the stream starts right after last_seq');
    assert.deepEqual(merge(wsSeqs(ws), fromSse), range(0, N - 1));
    await deleteSession(srv, s.session);
    await pub.close();
  });

  it('SSE to long-poll: stop reading the stream, then poll with after = the last id', async () => {
    const N = 200;
    const s = await createSession(srv);
    await postOk(srv, s.session, { type: 'join', room: 'doc:s3' });
    const sse = await SseStream.open(srv, s.session);
    await sse.next('room_state');
    const { pub, sending } = await publish('doc:s3', N);
    await sse.next((m) => m.type === 'ephemeral' && m.data.n >= 40, 10000);
    sse.cut();
    await sse.closed;
    const fromSse = sse.received.filter((m) => m.type !== 'welcome').map((m) => ({ seq: sse.seqOf(m), m }));
    const last = fromSse.at(-1).seq;
    const lp = Poller.start(srv, s.session, { after: last });
    await sending;
    await lp.next((m) => m.type === 'ephemeral' && m.data.n === N - 1, 10000);
    const fromLp = lp.received.map((m) => ({ seq: lp.seqOf(m), m }));
    assert.equal(fromLp[0].seq, last + 1);
    assert.deepEqual(merge(fromSse, fromLp), range(0, N - 1));
    await lp.stop();
    await deleteSession(srv, s.session);
    await pub.close();
  });

  itStopsCleanly(srv);
});

describe('anonymous access off', () => {
  const srv = useStoa(['--no-allow-anonymous']);

  it('POST /v1/sessions needs a token', async () => {
    const r = await request(srv, 'POST', '/v1/sessions');
    assert.equal(r.status, 401);
    assert.equal(r.body.error.code, 'AUTH_FAILED');
    const s = await createSession(srv, { token: await srv.token({ sub: 'ada' }) });
    assert.equal(s.user.id, 'ada');
    assert.equal((await postMessages(srv, s.session, { type: 'ping' })).status, 200, 'the session id is the credential');
    await deleteSession(srv, s.session);
  });

  itStopsCleanly(srv);
});
