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
//                             `token`) and the answer compared the same way
//
// Any other info string starting with "json " fails the test: the doc and
// this test must agree on what a block means.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, startStoa, waitFor } from './lib/stoa.mjs';

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
  if (info.startsWith('json ')) return { ...block, kind: 'unknown' };
  return { ...block, kind: 'other' };   // plain ```json, diagrams: not checked
}

function parseJson(block) {
  try {
    return { value: JSON.parse(block.body) };
  } catch (e) {
    return { error: e.message };
  }
}

const blocks = parseBlocks(readFileSync(DOC, 'utf8')).map(classify).map((b) => ({ ...b, ...parseJson(b) }));
const ofKind = (k) => blocks.filter((b) => b.kind === k);
const where = (b) => `docs/protocol.md:${b.line} (${b.info})`;

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

  it('has no json block with an info string this test does not understand', () => {
    assert.deepEqual(ofKind('unknown').map(where), []);
  });

  it('every checked block is valid JSON holding an object', () => {
    const bad = blocks.filter((b) => ['client', 'server', 'http'].includes(b.kind))
      .filter((b) => b.error || jtype(b.value) !== 'object')
      .map((b) => `${where(b)}: ${b.error ?? 'not an object'}`);
    assert.deepEqual(bad, []);
  });

  describe('against a server', () => {
    let srv;
    let rwToken;
    const open = new Set();

    before(async () => {
      srv = await startStoa();
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

    /** Close every client of the last scenario and wait for the hub to forget them. */
    async function cleanup() {
      await Promise.all([...open].map((c) => c.close()));
      open.clear();
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

    describe('json http blocks: a real answer has the same shape', () => {
      for (const b of usable('http')) {
        it(`${where(b)}`, async () => {
          try {
            const presence = /^\/v1\/rooms\/([^/]+)\/presence$/.exec(b.path);
            if (presence && b.value.peers?.length) {
              const c = await client({ token: rwToken });
              await c.join(decodeURIComponent(presence[1]), b.value.peers[0].state ?? {});
            }
            const headers = b.token ? { Authorization: `Bearer ${rwToken}` } : {};
            const r = await srv.fetch(b.path, { method: b.method, headers });
            const text = await r.text();
            if ('error' in b.value) assert.ok(r.status >= 400, `status ${r.status} for an error example: ${text}`);
            else assert.equal(r.status, 200, text);
            assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
            assertSameShape(b.value, JSON.parse(text), b);
          } finally {
            await cleanup();
          }
        });
      }
    });

    it('the server exits 0 on SIGTERM', async () => {
      const { code, signal } = await srv.stop();
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, srv.logs());
    });
  });
});
