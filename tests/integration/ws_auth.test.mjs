// Identity on the WebSocket: token carriers, bad tokens, anonymous peers,
// room rights and Origin checks.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { useStoa, itStopsCleanly, mintToken, sleep } from './lib/stoa.mjs';

const ANON_NAME = /^[A-Z][a-z]+ [A-Z][a-z]+$/;

/** The connection is refused: an AUTH_FAILED error, then close code 4001. */
async function expectAuthFailed(srv, opts) {
  const c = await srv.connect(opts);
  const err = await c.next('error');
  assert.equal(err.code, 'AUTH_FAILED');
  assert.equal(typeof err.message, 'string');
  assert.ok(err.message.length > 0);
  const { code } = await c.closed;
  assert.equal(code, 4001);
  assert.deepEqual(c.received.map((m) => m.type), ['error'], 'no welcome before AUTH_FAILED');
}

describe('tokens (jwt_leeway_s 0, allowed_origins http://good.example)', () => {
  const srv = useStoa(['--jwt-leeway-s', '0', '--allowed-origins', 'http://good.example, http://also.example']);
  let token;

  before(async () => {
    token = await srv.token({ sub: 'user-42', name: 'Grace', rooms: { 'doc:*': 'rw' } });
  });

  for (const via of ['query', 'header', 'cookie']) {
    it(`a token in the ${via} identifies the peer`, async () => {
      const c = await srv.client({ token, via });
      assert.equal(c.welcome.user.id, 'user-42');
      assert.equal(c.welcome.user.name, 'Grace');
      assert.equal(c.welcome.user.anonymous, false);
      await c.close();
    });
  }

  it('the query parameter wins over the header', async () => {
    const other = await srv.token({ sub: 'someone-else' });
    const c = await srv.client({ token, headers: { Authorization: `Bearer ${other}` } });
    assert.equal(c.welcome.user.id, 'user-42');
    await c.close();
  });

  it('an expired token: AUTH_FAILED, close 4001', async () => {
    const short = await srv.token({ sub: 'brief', ttl: 1 });
    const ok = await srv.client({ token: short });   // valid now
    assert.equal(ok.welcome.user.id, 'brief');
    await ok.close();
    await sleep(2500);
    await expectAuthFailed(srv, { token: short });
  });

  it('a token signed with another secret: AUTH_FAILED, close 4001', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'stoa-other-'));
    try {
      const forged = await mintToken({ sub: 'user-42', dataDir: dir,
                                       flags: ['--jwt-secret', 'another-secret-that-is-long-enough-0123456789'] });
      await expectAuthFailed(srv, { token: forged });
      await expectAuthFailed(srv, { token: forged, via: 'cookie' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a token whose signature was tampered with: AUTH_FAILED', async () => {
    const [h, p, s] = token.split('.');
    const claims = JSON.parse(Buffer.from(p, 'base64url'));
    claims.sub = 'admin';
    const forged = [h, Buffer.from(JSON.stringify(claims)).toString('base64url'), s].join('.');
    await expectAuthFailed(srv, { token: forged, via: 'header' });
  });

  it('an unsigned token (alg none): AUTH_FAILED', async () => {
    const [, p] = token.split('.');
    const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${p}.`;
    await expectAuthFailed(srv, { token: none });
  });

  it('a garbage token: AUTH_FAILED, close 4001', async () => {
    await expectAuthFailed(srv, { token: 'not-a-jwt' });
    await expectAuthFailed(srv, { token: 'a.b.c', via: 'header' });
  });

  it('no token: an anonymous peer with a generated name and read rights everywhere', async () => {
    const c = await srv.client();
    const u = c.welcome.user;
    assert.equal(u.anonymous, true);
    assert.match(u.id, /^anon-[a-z0-9]+$/);
    assert.match(u.name, ANON_NAME);
    assert.match(u.color, /^#[0-9a-f]{6}$/);
    // {"*":"r"}: any room may be joined and used.
    await c.join('doc:1', { anon: true });
    await c.join('record:abc');
    await c.join('eph:doc:1');
    c.send({ type: 'presence', room: 'record:abc', state: { a: 1 }, id: 'p' });
    assert.deepEqual(await c.next((m) => m.id === 'p'), { type: 'ack', id: 'p' });
    const d = await srv.client();
    assert.notEqual(d.welcome.user.id, u.id, 'each anonymous connection is its own user');
    await c.close();
    await d.close();
  });

  it('the anonymous rights are {"*":"r"} (as POST /v1/auth/anonymous reports them)', async () => {
    const r = await srv.fetch('/v1/auth/anonymous', { method: 'POST' });
    assert.equal(r.status, 200);
    const body = await r.json();
    assert.deepEqual(body.rooms, { '*': 'r' });
    const c = await srv.client({ token: body.token });
    assert.deepEqual(c.welcome.user, body.user);
    assert.match(c.welcome.user.name, ANON_NAME);
    await c.close();
  });

  describe('room rights', () => {
    let c;
    before(async () => {
      c = await srv.client({ token: await srv.token({ sub: 'reader', rooms: { 'doc:1': 'r' } }) });
    });

    it('joining a room without read right: PERMISSION_DENIED with the id, connection stays', async () => {
      c.send({ type: 'join', room: 'doc:2', id: 7 });
      const err = await c.next('error');
      assert.equal(err.code, 'PERMISSION_DENIED');
      assert.equal(err.id, 7);
      assert.equal(err.room, 'doc:2');
      c.send({ type: 'ping', id: 'still' });
      assert.deepEqual(await c.next('pong'), { type: 'pong', id: 'still' });
      assert.ok(c.isOpen);
    });

    it('a room with read right may be joined, and so may its eph: sidecar', async () => {
      const rs = await c.join('doc:1');
      assert.equal(rs.room, 'doc:1');
      const side = await c.join('eph:doc:1');
      assert.equal(side.room, 'eph:doc:1');
      c.send({ type: 'join', room: 'eph:doc:2', id: 'side2' });
      const err = await c.next('error');
      assert.equal(err.code, 'PERMISSION_DENIED');
      assert.equal(err.id, 'side2');
    });

    it('"" denies a room that a wildcard would allow', async () => {
      const d = await srv.client({ token: await srv.token({ sub: 'r2', rooms: { '*': 'r', 'doc:secret': '' } }) });
      await d.join('doc:open');
      d.send({ type: 'join', room: 'doc:secret', id: 's' });
      const err = await d.next('error');
      assert.equal(err.code, 'PERMISSION_DENIED');
      await d.close();
    });
  });

  describe('Origin', () => {
    it('a WebSocket from an Origin not allowed is refused during the handshake', async () => {
      await assert.rejects(srv.connect({ origin: 'http://evil.example' }));
      await assert.rejects(srv.connect({ origin: 'http://good.example.evil.example', token }));
    });

    it('a listed Origin is allowed', async () => {
      const c = await srv.client({ origin: 'http://good.example', token });
      assert.equal(c.welcome.user.id, 'user-42');
      await c.close();
      const d = await srv.client({ origin: 'http://also.example' });
      assert.equal(d.welcome.user.anonymous, true);
      await d.close();
    });

    it('the server\'s own origin is allowed', async () => {
      const c = await srv.client({ origin: `http://127.0.0.1:${srv.port}`, token });
      assert.equal(c.welcome.user.id, 'user-42');
      await c.close();
    });

    it('after refusals the server still serves', async () => {
      const r = await srv.fetch('/healthz');
      assert.equal(r.status, 200);
    });
  });

  itStopsCleanly(srv);
});

describe('anonymous access off (--no-allow-anonymous)', () => {
  const srv = useStoa(['--no-allow-anonymous']);

  it('no token: AUTH_FAILED, close 4001', async () => {
    await expectAuthFailed(srv, {});
  });

  it('a valid token still works', async () => {
    const c = await srv.client({ token: await srv.token({ sub: 'ada' }) });
    assert.equal(c.welcome.user.id, 'ada');
    await c.close();
  });

  itStopsCleanly(srv);
});

describe('custom anonymous_rights', () => {
  const srv = useStoa(['--anonymous-rights', '{"doc:*":"r"}']);

  it('anonymous peers get exactly the configured rights', async () => {
    const c = await srv.client();
    await c.join('doc:9');
    c.send({ type: 'join', room: 'project:1', id: 'p' });
    const err = await c.next('error');
    assert.equal(err.code, 'PERMISSION_DENIED');
    assert.equal(err.id, 'p');
    await c.close();
  });

  itStopsCleanly(srv);
});
