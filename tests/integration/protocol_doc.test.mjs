// docs/protocol.md is a contract: every example block in it is checked
// against a running server.
//
//   ```json client            a client message: sent on a session that has
//                             joined its room; no `error` may result
//   ```json server            a server message: a live server is made to
//                             produce one of the same type, which must have
//                             exactly the same keys (recursively) and value types
//   ```json http METHOD PATH [token]
//                             a REST answer body: the request is made (with a
//                             token whose rooms are {"doc:*":"rw"} when tagged
//                             `token`) and the answer compared the same way.
//                             `{session}` in PATH: a session made for the
//                             block and set up as the example shows (its
//                             transport attached, its rooms joined, the
//                             messages of a poll example waiting)
//   ```json request POST PATH the body of that request (a message or an
//                             array): sent for the `json http` block of the
//                             same METHOD PATH, whose answer must then match
//                             it exactly (but for the `message` texts)
//   ```text sse               an SSE stream: valid lines in the server's
//                             order (retry, welcome without id, numbered
//                             events, `: hb`), each message shaped like the
//                             `json server` example of its type; its start is
//                             compared with a real stream's
//   ```sh curl                curl commands (one per line, `\` continues a
//                             line), run one by one with $STOA the server's
//                             URL and $SESSION a session made for the block:
//                             each must print JSON (an /sse URL: an SSE stream
//                             holding a welcome; DELETE: nothing), and the
//                             last one's JSON must have the shape of the
//                             `json http` block right after (json request
//                             blocks skipped), when that is for the same
//                             method and path
//
// Any other info string starting with "json ", and any "sh" block but
// `sh curl`, fails the test: the doc and this test must agree on what a
// block means.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, startStoa, waitFor, run } from './lib/stoa.mjs';
import {
  SseStream, closeAll, createSession, deleteSession, getSession, poll, postOk, sseEvents, parseSseLines,
} from './lib/sessions.mjs';

const API_KEY = 'protocol-doc-test-api-key-0123456789';

// STOA_PROTOCOL_DOC: check another copy (to see this test fail on a wrong doc).
const DOC = process.env.STOA_PROTOCOL_DOC || join(REPO, 'docs', 'protocol.md');

// ---- parsing the doc ----

function parseBlocks(text) {
  const blocks = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(.*)$/.exec(lines[i]);
    if (!open) continue;
    const start = i;
    const body = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]); i++) body.push(lines[i]);
    if (i >= lines.length) throw new Error(`${DOC}:${start + 1}: unterminated code block`);
    blocks.push({ info: open[1].trim(), body: body.join('\n'), line: start + 1 });
  }
  return blocks;
}

function classify(block) {
  const { info } = block;
  if (info === 'json client') return { ...block, kind: 'client' };
  if (info === 'json server') return { ...block, kind: 'server' };
  const http = /^json http (GET|POST) (\/\S*)( token)?$/.exec(info);
  if (http) return { ...block, kind: 'http', method: http[1], path: http[2], token: Boolean(http[3]) };
  const request = /^json request (POST) (\/\S*)$/.exec(info);
  if (request) return { ...block, kind: 'request', method: request[1], path: request[2] };
  if (info === 'text sse') return { ...block, kind: 'sse' };
  if (info === 'sh curl') return { ...block, kind: 'curl' };
  if (info.startsWith('json ') || /^(sh|bash|shell|console)(\s|$)/.test(info)) return { ...block, kind: 'unknown' };
  return { ...block, kind: 'other' };   // plain ```json, diagrams: not checked
}

const JSON_KINDS = ['client', 'server', 'http', 'request'];

function parseJson(block) {
  if (!JSON_KINDS.includes(block.kind)) return {};
  try {
    return { value: JSON.parse(block.body) };
  } catch (e) {
    return { error: e.message };
  }
}

const blocks = parseBlocks(readFileSync(DOC, 'utf8')).map(classify).map((b) => ({ ...b, ...parseJson(b) }));
const ofKind = (k) => blocks.filter((b) => b.kind === k);
const where = (b) => `docs/protocol.md:${b.line} (${b.info})`;

/** The path without its query, with `{session}` for a session id. */
const endpoint = (path) => path.split('?')[0];

/** The `json request` block that goes with a `json http` block, if any. */
const requestFor = (b) => ofKind('request').find((r) => r.method === b.method && r.path === b.path);

// ---- the commands of `sh curl` blocks ----

/** Split a block into commands: one a line, a trailing backslash continues it; # comments skipped. */
function curlCommands(body) {
  const out = [];
  let cur = '';
  for (const line of body.split('\n')) {
    if (!cur && (/^\s*$/.test(line) || /^\s*#/.test(line))) continue;
    if (/\\\s*$/.test(line)) {
      cur += line.replace(/\\\s*$/, ' ');
      continue;
    }
    out.push((cur + line).trim());
    cur = '';
  }
  if (cur) out.push(cur.trim());
  return out;
}

/** Shell-like words of a command line (quotes removed, $VARS kept). */
function words(cmd) {
  const out = [];
  const re = /'([^']*)'|"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let m;
  while ((m = re.exec(cmd))) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

/** {method, path, url, sse, maxTime} of a curl command, or an error text. */
function curlRequest(cmd) {
  const w = words(cmd);
  if (w[0] !== 'curl') return { error: 'not a curl command' };
  let method = null;
  let url = null;
  let data = false;
  let maxTime = false;
  for (let i = 1; i < w.length; i++) {
    if (w[i] === '-X' || w[i] === '--request') method = w[++i];
    else if (/^(-d|--data|--data-raw|--data-binary|--json)$/.test(w[i])) { data = true; i++; }
    else if (w[i] === '--max-time' || w[i] === '-m') { maxTime = true; i++; }
    else if (w[i].startsWith('$STOA')) url = w[i];
  }
  if (!url) return { error: 'no URL starting with $STOA' };
  const path = url.slice('$STOA'.length).replaceAll('$SESSION', '{session}');
  method ??= data ? 'POST' : 'GET';
  return { method, path, url, sse: endpoint(path).endsWith('/sse'), maxTime };
}

/** The `json http` block right after block b (json request blocks skipped), if any. */
function httpAfter(b) {
  const i = blocks.indexOf(b);
  for (let j = i + 1; j < blocks.length; j++) {
    if (blocks[j].kind === 'request') continue;
    return blocks[j].kind === 'http' ? blocks[j] : null;
  }
  return null;
}

/** Problems with SSE text as this server sends it: [] when fine. */
function sseProblems(text, { needWelcome = true } = {}) {
  const problems = [];
  const { bad } = parseSseLines(text);
  for (const l of bad) problems.push(`not an SSE line this server sends: ${JSON.stringify(l.slice(0, 80))}`);
  if (bad.length) return problems;
  const events = sseEvents(text);
  if (events[0]?.retry === undefined) problems.push('the stream does not start with retry:');
  let lastId = null;
  let welcome = null;
  for (const e of events) {
    if (e.data === undefined) continue;
    let m;
    try { m = JSON.parse(e.data); } catch { problems.push(`data is not JSON: ${e.data.slice(0, 80)}`); continue; }
    if (m.type === 'welcome') {
      if (e.id !== undefined) problems.push('the welcome has an id');
      welcome = m;
      lastId = m.seq;
    } else if (e.id === undefined) {
      problems.push(`a ${m.type} without id`);
    } else if (lastId !== null && e.id !== lastId + 1) {
      problems.push(`id ${e.id} after ${lastId}`);
    }
    if (e.id !== undefined) lastId = e.id;
  }
  if (needWelcome && !welcome) problems.push('no welcome');
  return problems;
}

// ---- comparing shapes ----

function jtype(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

/** Differences in keys and value types between the example and a real message. */
function shapeDiff(example, real, path = '$', out = []) {
  const te = jtype(example);
  const tr = jtype(real);
  if (te !== tr) {
    out.push(`${path}: the doc has ${te}, the server sent ${tr} (${JSON.stringify(real)?.slice(0, 80)})`);
    return out;
  }
  if (te === 'object') {
    for (const k of Object.keys(example)) {
      if (!(k in real)) out.push(`${path}.${k}: in the doc, not sent by the server`);
      else shapeDiff(example[k], real[k], `${path}.${k}`, out);
    }
    for (const k of Object.keys(real)) {
      if (!(k in example)) out.push(`${path}.${k}: sent by the server, not in the doc`);
    }
  } else if (te === 'array' && example.length > 0 && real.length > 0) {
    shapeDiff(example[0], real[0], `${path}[0]`, out);
  }
  return out;
}

function assertSameShape(example, real, block) {
  const diff = shapeDiff(example, real);
  assert.deepEqual(diff, [], `${where(block)} does not match the server:\n  ${diff.join('\n  ')}\n` +
    `server sent: ${JSON.stringify(real)}`);
}

// ---- the tests ----

describe('docs/protocol.md', () => {
  it('has json client, json server and json http blocks', () => {
    assert.ok(ofKind('client').length > 0, 'no ```json client blocks');
    assert.ok(ofKind('server').length > 0, 'no ```json server blocks');
    assert.ok(ofKind('http').length > 0, 'no ```json http blocks');
  });

  it('has no json or sh block with an info string this test does not understand', () => {
    assert.deepEqual(ofKind('unknown').map(where), []);
  });

  it('every checked block is valid JSON holding an object (a request: or an array)', () => {
    const bad = blocks.filter((b) => JSON_KINDS.includes(b.kind))
      .filter((b) => b.error || !(jtype(b.value) === 'object' || (b.kind === 'request' && jtype(b.value) === 'array')))
      .map((b) => `${where(b)}: ${b.error ?? 'not an object'}`);
    assert.deepEqual(bad, []);
  });

  it('every json request block has a json http answer, and every POST with a body its request', () => {
    const lonely = ofKind('request').filter((r) => !ofKind('http').some((h) => h.method === r.method && h.path === r.path));
    assert.deepEqual(lonely.map(where), []);
    const bodiless = ofKind('http').filter((h) => /\/messages$/.test(endpoint(h.path)) && !requestFor(h));
    assert.deepEqual(bodiless.map(where), []);
  });

  it('has text sse and sh curl blocks; each sh curl block holds only curl commands, each with a $STOA URL', () => {
    assert.ok(ofKind('sse').length > 0, 'no ```text sse blocks');
    assert.ok(ofKind('curl').length > 0, 'no ```sh curl blocks');
    const bad = [];
    for (const b of ofKind('curl')) {
      const cmds = curlCommands(b.body);
      if (!cmds.length) bad.push(`${where(b)}: no command`);
      for (const c of cmds) {
        const r = curlRequest(c);
        if (r.error) bad.push(`${where(b)}: ${r.error}: ${c}`);
      }
    }
    assert.deepEqual(bad, []);
  });

  describe('text sse blocks: the stream as the server sends it', () => {
    for (const b of ofKind('sse')) {
      it(`${where(b)}`, () => {
        assert.ok(b.body.endsWith('\n'), 'the example must end with a blank line (the end of its last event)');
        assert.deepEqual(sseProblems(b.body), []);
        const events = sseEvents(b.body);
        // retry first; an optional padding comment; then the welcome.
        assert.deepEqual(Object.keys(events[0]).filter((k) => events[0][k] !== undefined && k !== 'comments' && k !== 'data'),
          ['retry']);
        const rest = events.slice(1);
        if (rest[0]?.comments.length && /^ +$/.test(rest[0].comments[0])) rest.shift();
        assert.equal(rest[0]?.data && JSON.parse(rest[0].data).type, 'welcome', 'the welcome comes after retry:');
        for (const e of rest) {
          if (e.data === undefined) {
            assert.deepEqual(e.comments, [' hb'], `a comment-only event is the heartbeat ": hb": ${JSON.stringify(e)}`);
            continue;
          }
          const m = JSON.parse(e.data);
          const doc = ofKind('server').find((s) => !s.error && s.value.type === m.type);
          assert.ok(doc, `no json server example of type ${m.type} to compare with`);
          assertSameShape(doc.value, m, b);
        }
      });
    }
  });

  describe('against a server', () => {
    let srv;
    let rwToken;
    const open = new Set();

    before(async () => {
      // Short polls and heartbeats keep the curl examples quick; nothing
      // in the examples depends on these two.
      srv = await startStoa(['--poll-timeout-ms', '1000', '--sse-heartbeat-s', '1', '--api-keys', API_KEY]);
      rwToken = await srv.token({ sub: 'ada', name: 'Ada', rooms: { 'doc:*': 'rw' } });
    });
    after(async () => {
      if (srv) await srv.stop();
    });

    async function client(opts) {
      const c = await srv.client(opts);
      open.add(c);
      return c;
    }

    const sessions = new Set();   // REST sessions to end after the scenario

    /** Close every client of the last scenario and wait for the hub to forget them. */
    async function cleanup() {
      await Promise.all([...open].map((c) => c.close()));
      open.clear();
      await closeAll();
      await Promise.all([...sessions].map((id) => deleteSession(srv, id)));
      sessions.clear();
      await waitFor(async () => (await (await srv.fetch('/healthz')).json()).sessions === 0,
        { what: 'all sessions closed' });
    }

    const usable = (k) => ofKind(k).filter((b) => !b.error && jtype(b.value) === 'object');

    describe('json client blocks: accepted without error', () => {
      const msgs = usable('client');
      const joins = msgs.filter((b) => b.value.type === 'join');
      const rest = msgs.filter((b) => b.value.type !== 'join');
      // leave last, so that the others run while joined
      rest.sort((x, y) => (x.value.type === 'leave') - (y.value.type === 'leave'));

      after(cleanup);

      for (const b of joins) {
        it(`${where(b)}: ${b.value.type} (fresh session)`, async () => {
          const c = await client({ token: rwToken });
          c.send(b.value);
          const rs = await c.next((m) => m.type === 'room_state' || m.type === 'error');
          assert.equal(rs.type, 'room_state', JSON.stringify(rs));
          assert.equal(rs.room, b.value.room);
          if (b.value.id !== undefined) assert.deepEqual(rs.id, b.value.id);
          await c.sync();
          assert.deepEqual(c.peek('error'), []);
        });
      }

      let session;
      for (const b of rest) {
        it(`${where(b)}: ${b.value.type}`, async () => {
          if (!session) {
            session = await client({ token: rwToken });
            const rooms = new Set(rest.map((x) => x.value.room).filter((r) => typeof r === 'string'));
            if (rooms.size === 0) rooms.add('doc:1');
            for (const room of rooms) await session.join(room);
          }
          const m = b.value;
          session.send(m);
          if (m.type === 'ping') {
            const pong = await session.next((x) => x.type === 'pong' || x.type === 'error');
            assert.equal(pong.type, 'pong', JSON.stringify(pong));
            if (m.id !== undefined) assert.deepEqual(pong.id, m.id);
          } else if (m.id !== undefined) {
            const answer = await session.next((x) => x.id !== undefined && JSON.stringify(x.id) === JSON.stringify(m.id));
            assert.equal(answer.type, 'ack', JSON.stringify(answer));
          }
          await session.sync();
          assert.deepEqual(session.peek('error'), []);
        });
      }
    });

    describe('json server blocks: a real message has the same shape', () => {
      // Each scenario makes the server send a message of the example's type,
      // feeding in the example's own inputs (room, id, state, data).
      const scenarios = {
        async welcome() {
          const c = await client();
          return c.welcome;
        },
        async room_state(ex) {
          const c = await client({ token: rwToken });
          const msg = { type: 'join', room: ex.room };
          if (ex.peers?.[0]?.state) msg.state = ex.peers[0].state;
          if ('id' in ex) msg.id = ex.id;
          c.send(msg);
          return c.next('room_state');
        },
        async peer_joined(ex) {
          const a = await client({ token: rwToken });
          await a.join(ex.room);
          const b = await client({ token: await srv.token({ sub: 'grace', name: 'Grace' }) });
          b.send({ type: 'join', room: ex.room, state: ex.state ?? {} });
          return a.next('peer_joined');
        },
        async presence(ex) {
          const a = await client({ token: rwToken });
          await a.join(ex.room);
          const b = await client({ token: rwToken });
          await b.join(ex.room);
          b.send({ type: 'presence', room: ex.room, state: ex.state });
          return a.next('presence');
        },
        async presence_batch(ex) {
          // Two peers change within one tick (after a first change that
          // went out at once): the room's next message is one batch.
          const a = await client({ token: rwToken });
          await a.join(ex.room);
          const b = await client({ token: rwToken });
          await b.join(ex.room);
          const c = await client({ token: rwToken });
          await c.join(ex.room);
          b.send({ type: 'presence', room: ex.room, state: {} });
          await a.next('presence');
          b.send({ type: 'presence', room: ex.room, state: ex.peers[0].state });
          c.send({ type: 'presence', room: ex.room, state: ex.peers[1].state });
          return a.next('presence_batch');
        },
        async ephemeral(ex) {
          const a = await client({ token: rwToken });
          await a.join(ex.room);
          const b = await client({ token: rwToken });
          await b.join(ex.room);
          b.send({ type: 'ephemeral', room: ex.room, data: ex.data });
          return a.next('ephemeral');
        },
        async peer_left(ex) {
          const a = await client({ token: rwToken });
          await a.join(ex.room);
          const b = await client({ token: rwToken });
          await b.join(ex.room);
          if (ex.reason === 'leave') b.send({ type: 'leave', room: ex.room });
          else if (ex.reason === 'disconnect') await b.close();
          else throw new Error(`no scenario for peer_left reason ${ex.reason}`);
          const m = await a.next('peer_left');
          assert.equal(m.reason, ex.reason);
          return m;
        },
        async ack(ex) {
          const c = await client({ token: rwToken });
          await c.join('doc:1');
          const msg = { type: 'presence', room: 'doc:1', state: { x: 1 } };
          if ('id' in ex) msg.id = ex.id;
          c.send(msg);
          return c.next('ack');
        },
        async pong(ex) {
          const c = await client();
          const msg = { type: 'ping' };
          if ('id' in ex) msg.id = ex.id;
          c.send(msg);
          return c.next('pong');
        },
        async error(ex) {
          const room = ex.room ?? 'doc:secret';
          let c;
          let msg;
          if (ex.code === 'PERMISSION_DENIED') {
            c = await client({ token: await srv.token({ sub: 'ada', rooms: { '*': 'r', [room]: '' } }) });
            msg = { type: 'join', room };
          } else if (ex.code === 'NOT_IN_ROOM') {
            c = await client();
            msg = { type: 'heartbeat', room };
          } else {
            throw new Error(`no scenario for error code ${ex.code}`);
          }
          if ('id' in ex) msg.id = ex.id;
          c.send(msg);
          const m = await c.next('error');
          assert.equal(m.code, ex.code);
          return m;
        },
        async resync(ex) {
          const a = await client({ token: rwToken });
          for (const room of ex.rooms ?? ['doc:1']) await a.join(room);
          // Resume claiming a seq the session never sent.
          const path = `/v1/ws?session=${a.welcome.session}&last_seq=99999`;
          const b = await client({ token: rwToken, path });
          const m = await b.next('resync');
          assert.equal(m.seq, b.welcome.seq + 1);
          return m;
        },
        async message(ex) {
          const c = await client();   // anonymous: read on every room
          await c.join(ex.room);
          const r = await srv.fetch(`/v1/rooms/${ex.room}/publish`, {
            method: 'POST',
            headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
            body: JSON.stringify({ data: ex.data }),
          });
          assert.equal(r.status, 200, await r.text());
          return c.next('message');
        },
        async notice() {
          const own = await startStoa();
          try {
            const c = await own.client();
            own.proc.kill('SIGTERM');
            const m = await c.next('notice');
            assert.equal((await own.exited).code, 0, own.logs());
            return m;
          } finally {
            await own.stop();
          }
        },
      };

      for (const b of usable('server')) {
        it(`${where(b)}: ${b.value.type}`, async () => {
          const scenario = scenarios[b.value.type];
          assert.ok(scenario, `no scenario makes the server send a "${b.value.type}"`);
          try {
            const real = await scenario(b.value);
            assert.equal(real.type, b.value.type);
            assertSameShape(b.value, real, b);
          } finally {
            await cleanup();
          }
        });
      }
    });

    /** Client messages that make the server send these (for a poll example). */
    function upstreamFor(messages) {
      return messages.map((m) => {
        if (m.type === 'room_state') {
          const msg = { type: 'join', room: m.room };
          const state = m.peers?.[0]?.state;
          if (state && Object.keys(state).length) msg.state = state;
          if ('id' in m) msg.id = m.id;
          return msg;
        }
        if (m.type === 'pong') return 'id' in m ? { type: 'ping', id: m.id } : { type: 'ping' };
        throw new Error(`no scenario makes a poll answer hold a "${m.type}"`);
      });
    }

    /** Make a session for a `{session}` example and set it up as the example shows. */
    async function sessionFor(b, token) {
      const s = await createSession(srv, { token });
      sessions.add(s.session);
      const ex = b.value;
      const ep = endpoint(b.path);
      if (ep === '/v1/sessions/{session}') {
        if (ex.rooms?.length) await postOk(srv, s.session, ex.rooms.map((room) => ({ type: 'join', room })), { token });
        if (ex.transport === 'websocket') {
          await client({ token, path: `/v1/ws?session=${s.session}&last_seq=0` });
        } else if (ex.transport === 'sse') {
          const x = await SseStream.open(srv, s.session, { lastSeq: 0, token });
          await x.next('welcome');
          if (ex.rooms?.length) await x.next('room_state');
        } else if (ex.transport === 'longpoll') {
          const first = await poll(srv, s.session, { after: 0, token });
          poll(srv, s.session, { after: first.body.last_seq, token }).catch(() => {});
          await waitFor(async () => (await getSession(srv, s.session, { token })).body.transport === 'longpoll',
            { what: 'a held poll' });
        } else if (ex.transport !== null) {
          throw new Error(`no scenario attaches a transport named ${JSON.stringify(ex.transport)}`);
        }
      } else if (ep === '/v1/sessions/{session}/poll' && ex.messages?.length) {
        await postOk(srv, s.session, upstreamFor(ex.messages), { token });
      }
      return s;
    }

    const withoutMessages = (o) => JSON.parse(JSON.stringify(o, (k, v) => (k === 'message' ? '…' : v)));

    describe('json http blocks: a real answer has the same shape', () => {
      for (const b of usable('http')) {
        it(`${where(b)}`, async () => {
          try {
            const presence = /^\/v1\/rooms\/([^/]+)\/presence$/.exec(b.path);
            if (presence && b.value.peers?.length) {
              const c = await client({ token: rwToken });
              await c.join(decodeURIComponent(presence[1]), b.value.peers[0].state ?? {});
            }
            let path = b.path;
            if (path.includes('{session}')) {
              const s = await sessionFor(b, b.token ? rwToken : undefined);
              path = path.replaceAll('{session}', s.session);
            }
            const headers = b.token ? { Authorization: `Bearer ${rwToken}` } : {};
            const init = { method: b.method, headers };
            const req = requestFor(b);
            if (req) {
              init.body = JSON.stringify(req.value);
              headers['Content-Type'] = 'application/json';
            }
            const r = await srv.fetch(path, init);
            const text = await r.text();
            const created = b.method === 'POST' && b.path === '/v1/sessions';
            if ('error' in b.value) assert.ok(r.status >= 400, `status ${r.status} for an error example: ${text}`);
            else assert.equal(r.status, created ? 201 : 200, text);
            assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
            const real = JSON.parse(text);
            if (created) sessions.add(real.session);
            assertSameShape(b.value, real, b);
            if (req) {
              assert.deepEqual(withoutMessages(real), withoutMessages(b.value),
                `${where(b)} is not what the server answers to ${where(req)}`);
            }
            if (Array.isArray(b.value.messages)) {
              assert.equal(real.messages.length, b.value.messages.length, text);
              b.value.messages.forEach((m, i) => assertSameShape(m, real.messages[i], b));
            }
          } finally {
            await cleanup();
          }
        });
      }
    });

    describe('text sse blocks: a real stream starts the same way', () => {
      for (const b of ofKind('sse')) {
        it(`${where(b)}`, async () => {
          try {
            const s = await createSession(srv);
            sessions.add(s.session);
            const x = await SseStream.open(srv, s.session);
            await x.next('welcome');
            const [retry, welcome] = sseEvents(x.raw.slice(0, x.raw.indexOf('\n\n', x.raw.indexOf('data:')) + 2));
            const ex = sseEvents(b.body);
            assert.equal(ex[0].retry, retry.retry, 'retry: is sse_retry_ms, 2000 by default');
            const exWelcome = JSON.parse(ex.find((e) => e.data !== undefined).data);
            const realWelcome = JSON.parse(welcome.data);
            assert.equal(welcome.id, undefined);
            assertSameShape(exWelcome, realWelcome, b);
            assert.equal(exWelcome.resumed, realWelcome.resumed, 'resumed');
          } finally {
            await cleanup();
          }
        });
      }
    });

    describe('sh curl blocks: run against the server', () => {
      for (const b of ofKind('curl')) {
        it(`${where(b)}`, async () => {
          try {
            const s = await createSession(srv);
            sessions.add(s.session);
            const env = { ...process.env, STOA: srv.url, SESSION: s.session };
            const cmds = curlCommands(b.body);
            let lastJson;
            let lastReq;
            for (const cmd of cmds) {
              const req = curlRequest(cmd);
              assert.ok(!req.error, `${req.error}: ${cmd}`);
              const r = await run('sh', ['-c', cmd], { env, timeout: 15000 });
              const ok = r.code === 0 || (r.code === 28 && req.sse && req.maxTime);
              assert.ok(ok, `${cmd}\nexited ${r.code ?? r.signal}: ${r.stderr}`);
              if (req.sse) {
                assert.deepEqual(sseProblems(r.stdout), [], `${cmd} printed:\n${r.stdout.slice(0, 400)}`);
                lastJson = undefined;
              } else if (req.method === 'DELETE') {
                assert.equal(r.stdout, '', `${cmd} printed something`);
                if (req.path.includes('{session}')) {
                  const g = await request404(req.path.replaceAll('{session}', s.session));
                  assert.equal(g, 404, 'after the DELETE, the session is gone');
                }
                lastJson = undefined;
              } else {
                try {
                  lastJson = JSON.parse(r.stdout);
                } catch (e) {
                  assert.fail(`${cmd} did not print JSON (${e.message}):\n${r.stdout.slice(0, 400)}`);
                }
                if (req.method === 'POST' && endpoint(req.path) === '/v1/sessions' && lastJson.session) {
                  sessions.add(lastJson.session);   // made by the example: ended by cleanup()
                }
              }
              lastReq = req;
            }
            const answer = httpAfter(b);
            const sameRequest = answer && answer.method === lastReq.method &&
              endpoint(answer.path) === endpoint(lastReq.path);
            if (lastJson !== undefined && !(sameRequest && 'error' in answer.value)) {
              assert.ok(!('error' in lastJson), `the last command answered an error: ${JSON.stringify(lastJson)}`);
            }
            if (sameRequest && lastJson !== undefined && !answer.error) assertSameShape(answer.value, lastJson, b);
          } finally {
            await cleanup();
          }
        });
      }
    });

    /** GET a path; resolves the status. */
    async function request404(path) {
      const r = await srv.fetch(path);
      await r.text();
      return r.status;
    }

    it('the server exits 0 on SIGTERM', async () => {
      const { code, signal } = await srv.stop();
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, srv.logs());
    });
  });
});
