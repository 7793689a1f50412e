// The REST API, static files, Origin and CORS, handshake timeout and shutdown.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { useStoa, itStopsCleanly, startStoa, roomPresence } from './lib/stoa.mjs';

/** Check a JSON error answer: status, code, headers; returns the body. */
async function expectHttpError(r, status, code) {
  const text = await r.text();
  assert.equal(r.status, status, `status of ${text}`);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  const body = JSON.parse(text);
  assert.deepEqual(Object.keys(body), ['error']);
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0);
  return body;
}

/** Send raw bytes on a new TCP connection; resolves everything read until the server closes. */
function rawRequest(port, text, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    const t = setTimeout(() => { s.destroy(); reject(new Error(`no close within ${timeoutMs} ms: ${out}`)); }, timeoutMs);
    s.setEncoding('utf8');
    s.on('data', (d) => { out += d; });
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(t); resolve(out); });
    s.on('connect', () => s.write(text));
  });
}

describe('REST', () => {
  const srv = useStoa(['--allowed-origins', 'http://good.example', '--max-message-bytes', '4096',
                       '--handshake-timeout-ms', '300']);
  let rwToken, readerToken;
  before(async () => {
    [rwToken, readerToken] = await Promise.all([
      srv.token({ sub: 'ada', name: 'Ada', rooms: { 'doc:*': 'rw' } }),
      srv.token({ sub: 'reader', rooms: { 'doc:1': 'r', 'project:*': 'r' } }),
    ]);
  });

  it('GET /healthz: status, version, sessions, rooms and transports', async () => {
    let r = await srv.fetch('/healthz');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^application\/json/);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    let body = await r.json();
    assert.deepEqual(Object.keys(body).sort(), ['rooms', 'sessions', 'status', 'transports', 'version']);
    assert.deepEqual(body.transports, {});
    assert.equal(body.status, 'ok');
    assert.match(body.version, /^\d+\.\d+\.\d+/);
    assert.equal(body.sessions, 0);
    assert.equal(body.rooms, 0);
    const c = await srv.client();
    await c.join('doc:h1');
    await c.join('doc:h2');
    body = await (await srv.fetch('/healthz')).json();
    assert.equal(body.sessions, 1);
    assert.equal(body.rooms, 2);
    assert.deepEqual(body.transports, { websocket: 1 });
    await c.close();
    // The session is gone once the server has seen the close.
    for (let i = 0; i < 100 && body.sessions !== 0; i++) {
      await new Promise((res) => setTimeout(res, 20));
      body = await (await srv.fetch('/healthz')).json();
    }
    assert.equal(body.sessions, 0);
    assert.equal(body.rooms, 0);
    r = await srv.fetch('/healthz', { method: 'HEAD' });
    assert.equal(r.status, 405);
  });

  it('GET /v1/auth/me with a Bearer token: user, rooms, expires_at', async () => {
    const r = await srv.fetch('/v1/auth/me', { headers: { Authorization: `Bearer ${rwToken}` } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    const body = await r.json();
    assert.equal(body.user.id, 'ada');
    assert.equal(body.user.name, 'Ada');
    assert.equal(body.user.anonymous, false);
    assert.match(body.user.color, /^#[0-9a-f]{6}$/);
    assert.deepEqual(body.rooms, { 'doc:*': 'rw' });
    const now = Date.now() / 1000;
    assert.ok(body.expires_at > now && body.expires_at < now + 86400 + 60, `expires_at ${body.expires_at}`);
    // The query parameter and the cookie work too.
    const q = await (await srv.fetch(`/v1/auth/me?token=${readerToken}`)).json();
    assert.equal(q.user.id, 'reader');
    const k = await (await srv.fetch('/v1/auth/me', { headers: { Cookie: `stoa_token=${readerToken}` } })).json();
    assert.deepEqual(k.rooms, { 'doc:1': 'r', 'project:*': 'r' });
  });

  it('GET /v1/auth/me without a token or with a bad one: 401 AUTH_FAILED', async () => {
    await expectHttpError(await srv.fetch('/v1/auth/me'), 401, 'AUTH_FAILED');
    await expectHttpError(await srv.fetch('/v1/auth/me', { headers: { Authorization: 'Bearer junk' } }), 401,
      'AUTH_FAILED');
  });

  it('POST /v1/auth/anonymous: a token that works on /v1/auth/me and the WebSocket', async () => {
    const r = await srv.fetch('/v1/auth/anonymous', { method: 'POST' });
    assert.equal(r.status, 200);
    const body = await r.json();
    assert.equal(typeof body.token, 'string');
    assert.equal(body.token.split('.').length, 3);
    assert.equal(body.user.anonymous, true);
    assert.match(body.user.id, /^anon-/);
    assert.deepEqual(body.rooms, { '*': 'r' });
    const now = Date.now() / 1000;
    assert.ok(Math.abs(body.expires_at - (now + 86400)) < 60, `expires_at ${body.expires_at}`);
    const me = await (await srv.fetch('/v1/auth/me', { headers: { Authorization: `Bearer ${body.token}` } })).json();
    assert.deepEqual(me.user, body.user);
    assert.deepEqual(me.rooms, body.rooms);
    assert.equal(me.expires_at, body.expires_at);
    const c = await srv.client({ token: body.token });
    assert.deepEqual(c.welcome.user, body.user);
    await c.join('doc:anon');
    await c.close();
    // GET is not the method.
    await expectHttpError(await srv.fetch('/v1/auth/anonymous'), 405, 'METHOD_NOT_ALLOWED');
  });

  it('GET /v1/rooms/{room}/presence shows who is in the room with their state', async () => {
    const empty = await roomPresence(srv, 'doc:1');
    assert.deepEqual(empty, { room: 'doc:1', peers: [] });
    const c = await srv.client({ token: rwToken });
    await c.join('doc:1', { cursor: { line: 3, ch: 14 } });
    const r = await srv.fetch('/v1/rooms/doc:1/presence', { headers: { Authorization: `Bearer ${readerToken}` } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    const body = await r.json();
    assert.deepEqual(body, { room: 'doc:1', peers: [{ peer: c.peer, user: c.welcome.user,
                                                          state: { cursor: { line: 3, ch: 14 } } }] });
    await c.close();
  });

  it('presence of a bad room name: 400 BAD_ROOM', async () => {
    await expectHttpError(await srv.fetch('/v1/rooms/nocolon/presence'), 400, 'BAD_ROOM');
    await expectHttpError(await srv.fetch('/v1/rooms/Doc:1/presence'), 400, 'BAD_ROOM');
  });

  it('presence without read right on the room: 403 PERMISSION_DENIED', async () => {
    await expectHttpError(
      await srv.fetch('/v1/rooms/doc:2/presence', { headers: { Authorization: `Bearer ${readerToken}` } }),
      403, 'PERMISSION_DENIED');
    // ...and with a bad token: 401, not the anonymous view.
    await expectHttpError(
      await srv.fetch('/v1/rooms/doc:1/presence', { headers: { Authorization: 'Bearer junk' } }), 401, 'AUTH_FAILED');
  });

  it('plain GET /v1/ws: 426 UPGRADE_REQUIRED with an Upgrade header', async () => {
    const r = await srv.fetch('/v1/ws');
    await expectHttpError(r, 426, 'UPGRADE_REQUIRED');
    assert.match(r.headers.get('upgrade') ?? '', /websocket/i);
  });

  it('unknown /v1/ path: 404 NOT_FOUND', async () => {
    await expectHttpError(await srv.fetch('/v1/nothing-here'), 404, 'NOT_FOUND');
    await expectHttpError(await srv.fetch('/v1/rooms/doc:1'), 404, 'NOT_FOUND');
    await expectHttpError(await srv.fetch('/no-such-file.html'), 404, 'NOT_FOUND');
  });

  it('static files from www_dir', async () => {
    const r = await srv.fetch('/');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^text\/html/);
    assert.match(await r.text(), /<html/i);
    await expectHttpError(await srv.fetch('/index.html', { method: 'POST' }), 405, 'METHOD_NOT_ALLOWED');
  });

  it('static files: content types, no-cache with an ETag, 304 when unchanged, nosniff', async () => {
    const types = { '/stoa.js': /^text\/javascript; charset=utf-8$/, '/index.html': /^text\/html; charset=utf-8$/,
      '/stoa.d.ts': /^application\/octet-stream$/ };
    for (const [path, type] of Object.entries(types)) {
      const r = await srv.fetch(path);
      assert.equal(r.status, 200, path);
      assert.match(r.headers.get('content-type'), type, path);
      assert.equal(r.headers.get('cache-control'), 'no-cache', path);
      assert.equal(r.headers.get('x-content-type-options'), 'nosniff', path);
      const etag = r.headers.get('etag');
      assert.match(etag, /^"[0-9a-f]+-[0-9a-f]+"$/, path);
      const body = await r.text();
      assert.ok(body.length > 0);
      const again = await srv.fetch(path, { headers: { 'If-None-Match': etag } });
      assert.equal(again.status, 304, path);
      assert.equal(again.headers.get('etag'), etag);
      assert.equal(await again.text(), '');
      const other = await srv.fetch(path, { headers: { 'If-None-Match': '"0-0"' } });
      assert.equal(other.status, 200, path);
      assert.equal(await other.text(), body);
    }
  });

  it('POST /healthz: 405 METHOD_NOT_ALLOWED with Allow', async () => {
    const r = await srv.fetch('/healthz', { method: 'POST' });
    await expectHttpError(r, 405, 'METHOD_NOT_ALLOWED');
    assert.equal(r.headers.get('allow'), 'GET');
    const d = await srv.fetch('/v1/auth/me', { method: 'DELETE' });
    await expectHttpError(d, 405, 'METHOD_NOT_ALLOWED');
    assert.equal(d.headers.get('allow'), 'GET');
  });

  it('an Origin not allowed: 403 ORIGIN_DENIED', async () => {
    const r = await srv.fetch('/healthz', { headers: { Origin: 'http://evil.example' } });
    await expectHttpError(r, 403, 'ORIGIN_DENIED');
    assert.equal(r.headers.get('access-control-allow-origin'), null);
  });

  it('an allowed Origin gets CORS headers; the server\'s own origin is allowed', async () => {
    const r = await srv.fetch('/healthz', { headers: { Origin: 'http://good.example' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('access-control-allow-origin'), 'http://good.example');
    assert.equal(r.headers.get('access-control-allow-credentials'), 'true');
    assert.match(r.headers.get('vary') ?? '', /Origin/);
    const own = await srv.fetch('/healthz', { headers: { Origin: srv.url } });
    assert.equal(own.status, 200);
  });

  it('OPTIONS preflight from an allowed Origin: 204 with CORS headers', async () => {
    const r = await srv.fetch('/v1/auth/me', {
      method: 'OPTIONS',
      headers: { Origin: 'http://good.example', 'Access-Control-Request-Method': 'GET',
                 'Access-Control-Request-Headers': 'authorization' },
    });
    assert.equal(r.status, 204);
    assert.equal(r.headers.get('access-control-allow-origin'), 'http://good.example');
    assert.match(r.headers.get('access-control-allow-methods') ?? '', /\bGET\b/);
    assert.match(r.headers.get('access-control-allow-headers') ?? '', /authorization/i);
    // Snapshots are saved conditionally and read with their ETag, cross-origin too.
    const snap = await srv.fetch('/v1/rooms/doc:1/snapshot', {
      method: 'OPTIONS',
      headers: { Origin: 'http://good.example', 'Access-Control-Request-Method': 'PUT' },
    });
    assert.equal(snap.status, 204);
    assert.match(snap.headers.get('access-control-allow-methods') ?? '', /\bPUT\b/);
    assert.match(snap.headers.get('access-control-allow-headers') ?? '', /\bIf-Match\b/);
    assert.match(snap.headers.get('access-control-allow-headers') ?? '', /\bIf-None-Match\b/);
    const got = await srv.fetch('/healthz', { headers: { Origin: 'http://good.example' } });
    assert.equal(got.headers.get('access-control-allow-origin'), 'http://good.example');
    assert.match(got.headers.get('access-control-expose-headers') ?? '', /\bETag\b/);
    const bad = await srv.fetch('/v1/auth/me', {
      method: 'OPTIONS', headers: { Origin: 'http://evil.example', 'Access-Control-Request-Method': 'GET' },
    });
    await expectHttpError(bad, 403, 'ORIGIN_DENIED');
  });

  it('a request body over max_message_bytes: 413 MESSAGE_TOO_LARGE', async () => {
    const r = await srv.fetch('/v1/auth/anonymous', { method: 'POST', body: 'x'.repeat(5000),
                                                       headers: { 'Content-Type': 'text/plain' } });
    await expectHttpError(r, 413, 'MESSAGE_TOO_LARGE');
    const ok = await srv.fetch('/v1/auth/anonymous', { method: 'POST', body: 'x'.repeat(100) });
    assert.equal(ok.status, 200);
  });

  it('a connection that sends no request head is closed after handshake_timeout_ms', async () => {
    const t0 = Date.now();
    const out = await rawRequest(srv.port, '', 5000);
    const elapsed = Date.now() - t0;
    assert.equal(out, '');
    assert.ok(elapsed >= 150, `closed after ${elapsed} ms, before the 300 ms timeout`);
    // A partial head is no better.
    const partial = await rawRequest(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x', 5000);
    assert.equal(partial, '');
    // A prompt request on a raw socket is answered.
    const full = await rawRequest(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(full, /^HTTP\/1\.1 200/);
  });

  itStopsCleanly(srv);
});

describe('anonymous access off over REST', () => {
  const srv = useStoa(['--no-allow-anonymous']);

  it('POST /v1/auth/anonymous: 403 ANONYMOUS_DISABLED', async () => {
    await expectHttpError(await srv.fetch('/v1/auth/anonymous', { method: 'POST' }), 403, 'ANONYMOUS_DISABLED');
  });

  it('presence without a token: 401 AUTH_FAILED', async () => {
    await expectHttpError(await srv.fetch('/v1/rooms/doc:1/presence'), 401, 'AUTH_FAILED');
    const tok = await srv.token({ sub: 'ada', rooms: { 'doc:1': 'r' } });
    const r = await srv.fetch('/v1/rooms/doc:1/presence', { headers: { Authorization: `Bearer ${tok}` } });
    assert.equal(r.status, 200);
  });

  itStopsCleanly(srv);
});

describe('shutdown', () => {
  it('SIGTERM: a connected peer gets a warn notice, then close 1001; the process exits 0', async () => {
    const srv = await startStoa();
    try {
      const c = await srv.client();
      const d = await srv.client();
      await c.join('doc:1');
      await d.join('doc:1');
      srv.proc.kill('SIGTERM');
      const notice = await c.next('notice');
      assert.equal(notice.level, 'warn');
      assert.equal(typeof notice.message, 'string');
      assert.ok(notice.message.length > 0);
      const { code } = await c.closed;
      assert.equal(code, 1001);
      assert.equal((await d.closed).code, 1001);
      const exit = await srv.exited;
      assert.deepEqual(exit, { code: 0, signal: null }, srv.logs());
    } finally {
      await srv.stop();
    }
  });
});
