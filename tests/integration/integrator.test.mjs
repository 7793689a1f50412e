// The integrator API: an application's backend, with an API key, lists
// rooms, publishes into them, removes peers and sends notices.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly } from './lib/stoa.mjs';

const KEY = 'integrator-key-0123456789abcdef';
const OTHER = 'second-integrator-key-0123456789';

describe('integrator API with api_keys', () => {
  const srv = useStoa(['--api-keys', `${KEY}, ${OTHER}`]);
  const call = (path, { method = 'GET', key = KEY, body } = {}) => srv.fetch(path, {
    method,
    headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });

  it('refuses requests without a valid key (401 AUTH_FAILED)', async () => {
    for (const key of [null, 'wrong-key-wrong-key-wrong-key', KEY.slice(0, -1), KEY + 'x']) {
      const r = await call('/v1/rooms', { key });
      assert.equal(r.status, 401, `key ${key}`);
      assert.equal((await r.json()).error.code, 'AUTH_FAILED');
    }
    // a user's JWT is not an API key
    const r = await call('/v1/rooms', { key: await srv.token({ sub: 'ada', rooms: { '*': 'rw' } }) });
    assert.equal(r.status, 401);
  });

  it('GET /v1/rooms lists rooms with their peer counts; either key works', async () => {
    const a = await srv.client();
    const b = await srv.client();
    await a.join('doc:1');
    await b.join('doc:1');
    await b.join('project:7');
    for (const key of [KEY, OTHER]) {
      const r = await call('/v1/rooms', { key });
      assert.equal(r.status, 200);
      const body = await r.json();
      const counts = Object.fromEntries(body.rooms.map((x) => [x.room, x.peers]));
      assert.deepEqual(counts, { 'doc:1': 2, 'project:7': 1 });
    }
    await Promise.all([a.close(), b.close()]);
  });

  it('POST /v1/rooms/{room}/publish reaches every peer of the room, and only them', async () => {
    const a = await srv.client();
    const b = await srv.client();
    const outsider = await srv.client();
    await a.join('record:abc');
    await b.join('record:abc');
    await outsider.join('record:other');
    const r = await call('/v1/rooms/record:abc/publish', { method: 'POST', body: { data: { kind: 'record_updated', id: 'abc' } } });
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { room: 'record:abc', delivered: 2 });
    for (const c of [a, b]) {
      assert.deepEqual(await c.next('message'), { type: 'message', room: 'record:abc', data: { kind: 'record_updated', id: 'abc' } });
    }
    await outsider.sync();
    assert.deepEqual(outsider.peek('message'), []);
    const empty = await call('/v1/rooms/record:nobody/publish', { method: 'POST', body: { data: 1 } });
    assert.deepEqual(await empty.json(), { room: 'record:nobody', delivered: 0 });
    await Promise.all([a.close(), b.close(), outsider.close()]);
  });

  it('publish refuses bad input with clear errors', async () => {
    const cases = [
      ['/v1/rooms/record:abc/publish', 'not json', 400, 'BAD_JSON'],
      ['/v1/rooms/record:abc/publish', [1, 2], 400, 'BAD_MESSAGE'],
      ['/v1/rooms/record:abc/publish', { nodata: true }, 400, 'BAD_MESSAGE'],
      ['/v1/rooms/bad room/publish', { data: 1 }, 400, 'BAD_ROOM'],
    ];
    for (const [path, body, status, code] of cases) {
      const r = await call(path.replace(' ', '%20'), { method: 'POST', body });
      assert.equal(r.status, status, `${path} ${JSON.stringify(body)}`);
      assert.equal((await r.json()).error.code, code);
    }
  });

  it('DELETE /v1/rooms/{room}/peers/{peer} removes the peer with reason "kicked", telling it too', async () => {
    const a = await srv.client();
    const b = await srv.client();
    await a.join('doc:k');
    await b.join('doc:k');
    await a.next('peer_joined');
    const r = await call(`/v1/rooms/doc:k/peers/${b.peer}`, { method: 'DELETE' });
    assert.equal(r.status, 204);
    const left = { type: 'peer_left', room: 'doc:k', peer: b.peer, reason: 'kicked' };
    assert.deepEqual(await a.next('peer_left'), left);
    assert.deepEqual(await b.next('peer_left'), left);
    const again = await call(`/v1/rooms/doc:k/peers/${b.peer}`, { method: 'DELETE' });
    assert.equal(again.status, 404);
    assert.equal((await again.json()).error.code, 'NOT_FOUND');
    await Promise.all([a.close(), b.close()]);
  });

  it('POST /v1/notices reaches every session', async () => {
    const a = await srv.client();
    const b = await srv.client();
    await a.join('doc:n');
    const r = await call('/v1/notices', { method: 'POST', body: { message: 'Maintenance in 5 minutes', level: 'warn' } });
    assert.equal(r.status, 202);
    for (const c of [a, b]) {
      assert.deepEqual(await c.next('notice'), { type: 'notice', level: 'warn', message: 'Maintenance in 5 minutes' });
    }
    for (const body of [{}, { message: '' }, { message: 'x'.repeat(1025) }, { message: 'hi', level: 'loud' }]) {
      const bad = await call('/v1/notices', { method: 'POST', body });
      assert.equal(bad.status, 400, JSON.stringify(body));
      assert.equal((await bad.json()).error.code, 'BAD_MESSAGE');
    }
    await Promise.all([a.close(), b.close()]);
  });

  itStopsCleanly(srv);
});

describe('integrator API without api_keys', () => {
  const srv = useStoa();
  it('is off: 501 NOT_SUPPORTED, whatever the key', async () => {
    const r = await srv.fetch('/v1/rooms', { headers: { Authorization: `Bearer ${KEY}` } });
    assert.equal(r.status, 501);
    assert.equal((await r.json()).error.code, 'NOT_SUPPORTED');
  });
  itStopsCleanly(srv);
});

describe('api_keys validation', () => {
  it('a key shorter than 24 characters is refused at start (exit 2)', async () => {
    const { runStoa } = await import('./lib/stoa.mjs');
    const r = await runStoa(['serve', '--api-keys', 'short-key', '--listen', '127.0.0.1:0']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /api_keys: every key must have at least 24 characters/);
  });
});
