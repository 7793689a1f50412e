// Document snapshots over REST (docs/snapshots.md): save with preconditions,
// read the latest and older versions, list, prune, size limits, rights, and
// survival across a restart on the same data dir.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, useStoa, itStopsCleanly, startStoa, runStoa } from './lib/stoa.mjs';
import { startPostgres } from './lib/pg.mjs';

const MAX = 10000;
const KEEP = 3;
const WARN = 2000;
const MAX_MESSAGE = 4096;

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');
const path = (room, rest = 'snapshot') => `/v1/rooms/${encodeURIComponent(room)}/${rest}`;

/** Check a JSON error answer: status and code; returns the body. */
async function expectError(r, status, code) {
  const text = await r.text();
  assert.equal(r.status, status, `status of ${text}`);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  const body = JSON.parse(text);
  assert.equal(body.error?.code, code, text);
  assert.ok(body.error.message.length > 0);
  return body;
}

function auth(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** PUT a snapshot; precondition is {ifMatch} (a version or raw header), {ifNoneMatch}, or {}. */
function put(srv, room, body, { token, type = 'text/plain', ifMatch, ifNoneMatch, headers = {} } = {}) {
  const h = { ...auth(token), ...headers };
  if (type !== null) h['Content-Type'] = type;
  if (ifMatch !== undefined) h['If-Match'] = typeof ifMatch === 'number' ? `"${ifMatch}"` : ifMatch;
  if (ifNoneMatch !== undefined) h['If-None-Match'] = ifNoneMatch;
  return srv.fetch(path(room), { method: 'PUT', headers: h, body });
}

/** PUT that must create `version`; checks the 201 answer. */
async function putOk(srv, room, body, version, opts) {
  const r = await put(srv, room, body, opts);
  const text = await r.text();
  assert.equal(r.status, 201, text);
  assert.equal(r.headers.get('etag'), `"${version}"`);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  assert.deepEqual(JSON.parse(text), { room, version });
}

/** GET a snapshot (latest, or a version); resolves {status, etag, type, bytes}. */
async function get(srv, room, { token, version } = {}) {
  const r = await srv.fetch(version === undefined ? path(room) : path(room, `snapshots/${version}`),
    { headers: auth(token) });
  const copy = r.clone();   // r stays unread, for expectError
  return { r, status: r.status, etag: r.headers.get('etag'), type: r.headers.get('content-type'),
           bytes: Buffer.from(await copy.arrayBuffer()) };
}

async function list(srv, room, token) {
  const r = await srv.fetch(path(room, 'snapshots'), { headers: auth(token) });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text);
}

/** The same tests against each store: the directory one and the PostgreSQL one (--database). */
for (const backend of ['dir', 'pg']) {
  describe(backend === 'dir' ? 'snapshots' : 'snapshots (PostgreSQL store)', () => {
    // The PostgreSQL store: a fresh database, migrated, named by --database
    // (the flags are read when the server starts, after the database is up).
    const flags = [];
    let pg;
    if (backend === 'pg') {
      before(async () => {
        pg = await startPostgres();
        const m = await runStoa(['migrate', '--database', pg.url]);
        assert.equal(m.code, 0, m.stderr);
        flags.push('--database', pg.url);
      });
    }
    flags.push('--snapshot-max-bytes', String(MAX), '--snapshot-keep', String(KEEP),
               '--snapshot-warn-bytes', String(WARN), '--max-message-bytes', String(MAX_MESSAGE));
    const srv = useStoa(flags);
    after(async () => { if (pg) await pg.stop(); });   // after the server has stopped
    let writer, reader, outsider;
    before(async () => {
      [writer, reader, outsider] = await Promise.all([
        srv.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } }),
        srv.token({ sub: 'reader', rooms: { 'doc:*': 'r' } }),
        srv.token({ sub: 'outsider', rooms: { 'doc:*': '', 'other:*': 'rw' } }),
      ]);
    });

    it('round trip: the bytes, the Content-Type and the ETag as saved', async () => {
      const room = 'doc:rt';
      const first = JSON.stringify({ title: 'hello', body: [1, 2, 3] });
      await putOk(srv, room, first, 1, { token: writer, type: 'application/json', ifNoneMatch: '*' });
      let g = await get(srv, room, { token: writer });
      assert.equal(g.status, 200);
      assert.equal(g.etag, '"1"');
      assert.equal(g.type, 'application/json');
      assert.equal(g.r.headers.get('cache-control'), 'no-store');
      assert.equal(g.bytes.toString(), first);

      // binary, every byte value, a new type
      const bin = Buffer.alloc(512);
      for (let i = 0; i < bin.length; i++) bin[i] = (i * 7) & 0xff;
      await putOk(srv, room, bin, 2, { token: writer, type: 'application/x-yjs-update', ifMatch: 1 });
      g = await get(srv, room, { token: reader });
      assert.equal(g.etag, '"2"');
      assert.equal(g.type, 'application/x-yjs-update');
      assert.ok(g.bytes.equals(bin), 'binary round trip');

      // no Content-Type: stored as application/octet-stream
      await putOk(srv, room, new Uint8Array([1, 2, 3]), 3, { token: writer, type: null, ifMatch: '"2"' });
      g = await get(srv, room, { token: writer });
      assert.equal(g.type, 'application/octet-stream');
      assert.deepEqual([...g.bytes], [1, 2, 3]);
    });

    it('a room name with punctuation is its own room', async () => {
      const room = 'doc:a.b~c@d+e=f:g';
      await putOk(srv, room, 'punct', 1, { token: writer, ifNoneMatch: '*' });
      assert.equal((await get(srv, room, { token: writer })).bytes.toString(), 'punct');
      assert.equal((await get(srv, 'doc:a.b~c@d+e=f', { token: writer })).status, 404);
      assert.equal((await list(srv, room, writer)).room, room);
    });

    it('404 NOT_FOUND before the first save; the listing is empty', async () => {
      await expectError((await get(srv, 'doc:none', { token: writer })).r, 404, 'NOT_FOUND');
      await expectError((await get(srv, 'doc:none', { token: writer, version: 1 })).r, 404, 'NOT_FOUND');
      assert.deepEqual(await list(srv, 'doc:none', writer), { room: 'doc:none', versions: [] });
    });

    it('412 PRECONDITION_FAILED when someone saved first; the latest is unchanged', async () => {
      const room = 'doc:stale';
      await putOk(srv, room, 'v1', 1, { token: writer, ifNoneMatch: '*' });
      await putOk(srv, room, 'v2', 2, { token: writer, ifMatch: 1 });
      let r = await put(srv, room, 'lost update', { token: writer, ifMatch: 1 });
      await expectError(r, 412, 'PRECONDITION_FAILED');
      assert.equal(r.headers.get('etag'), '"2"', 'the 412 names the latest version');
      r = await put(srv, room, 'second first', { token: writer, ifNoneMatch: '*' });
      await expectError(r, 412, 'PRECONDITION_FAILED');
      assert.equal(r.headers.get('etag'), '"2"');
      await expectError(await put(srv, room, 'future', { token: writer, ifMatch: 3 }), 412, 'PRECONDITION_FAILED');
      await expectError(await put(srv, room, 'zero', { token: writer, ifMatch: 0 }), 412, 'PRECONDITION_FAILED');
      r = await put(srv, 'doc:stale-empty', 'x', { token: writer, ifMatch: 1 });
      await expectError(r, 412, 'PRECONDITION_FAILED');
      assert.equal(r.headers.get('etag'), null);
      const g = await get(srv, room, { token: writer });
      assert.equal(g.etag, '"2"');
      assert.equal(g.bytes.toString(), 'v2');
      assert.deepEqual((await list(srv, room, writer)).versions.map((v) => v.version), [2, 1]);
    });

    it('two saves over the same version at once: exactly one wins', async () => {
      const room = 'doc:race';
      await putOk(srv, room, 'base', 1, { token: writer, ifNoneMatch: '*' });
      const rs = await Promise.all(['a', 'b', 'c', 'd'].map((b) => put(srv, room, b, { token: writer, ifMatch: 1 })));
      const statuses = rs.map((r) => r.status).sort();
      await Promise.all(rs.map((r) => r.text()));
      assert.deepEqual(statuses, [201, 412, 412, 412]);
      const winner = ['a', 'b', 'c', 'd'][rs.findIndex((r) => r.status === 201)];
      const g = await get(srv, room, { token: writer });
      assert.equal(g.etag, '"2"');
      assert.equal(g.bytes.toString(), winner);
    });

    it('428 PRECONDITION_REQUIRED without If-Match or If-None-Match (or with If-Match: *); 400 on bad ones', async () => {
      const room = 'doc:pre';
      await expectError(await put(srv, room, 'x', { token: writer }), 428, 'PRECONDITION_REQUIRED');
      await expectError(await put(srv, room, 'x', { token: writer, ifMatch: '*' }), 428, 'PRECONDITION_REQUIRED');
      await expectError(await put(srv, room, 'x', { token: writer, ifMatch: '1' }), 400, 'BAD_MESSAGE');
      await expectError(await put(srv, room, 'x', { token: writer, ifMatch: 'W/"1"' }), 400, 'BAD_MESSAGE');
      await expectError(await put(srv, room, 'x', { token: writer, ifMatch: '"1", "2"' }), 400, 'BAD_MESSAGE');
      await expectError(await put(srv, room, 'x', { token: writer, ifNoneMatch: '"1"' }), 400, 'BAD_MESSAGE');
      await expectError(await put(srv, room, 'x', { token: writer, ifMatch: 1, ifNoneMatch: '*' }), 400, 'BAD_MESSAGE');
      await expectError(await put(srv, room, 'x', { token: writer, type: 'text/caf\u00e9', ifNoneMatch: '*' }),
        400, 'BAD_MESSAGE');
      await expectError((await get(srv, room, { token: writer })).r, 404, 'NOT_FOUND');   // nothing was saved
    });

    it('GET /snapshots lists the kept versions, newest first, with size, type, time and sha256', async () => {
      const room = 'doc:list';
      const t0 = Math.floor(Date.now() / 1000);
      const a = 'first version';
      const b = JSON.stringify({ second: true });
      await putOk(srv, room, a, 1, { token: writer, ifNoneMatch: '*' });
      await putOk(srv, room, b, 2, { token: writer, type: 'application/json', ifMatch: 1 });
      const body = await list(srv, room, reader);
      assert.deepEqual(Object.keys(body).sort(), ['room', 'versions']);
      assert.equal(body.room, room);
      assert.equal(body.versions.length, 2);
      const [v2, v1] = body.versions;
      for (const v of body.versions) {
        assert.deepEqual(Object.keys(v).sort(), ['content_type', 'created_at', 'sha256', 'size', 'version']);
        assert.ok(v.created_at >= t0 - 1 && v.created_at <= Math.floor(Date.now() / 1000) + 1, String(v.created_at));
      }
      assert.deepEqual({ ...v2, created_at: 0 },
        { version: 2, size: b.length, content_type: 'application/json', created_at: 0, sha256: sha256(b) });
      assert.deepEqual({ ...v1, created_at: 0 },
        { version: 1, size: a.length, content_type: 'text/plain', created_at: 0, sha256: sha256(a) });
    });

    it('GET /snapshots/{version} serves an older version; 400 for a non-number', async () => {
      const room = 'doc:older';
      await putOk(srv, room, 'old text', 1, { token: writer, type: 'text/markdown', ifNoneMatch: '*' });
      await putOk(srv, room, 'new text', 2, { token: writer, ifMatch: 1 });
      const g = await get(srv, room, { token: reader, version: 1 });
      assert.equal(g.status, 200);
      assert.equal(g.etag, '"1"');
      assert.equal(g.type, 'text/markdown');
      assert.equal(g.bytes.toString(), 'old text');
      assert.equal((await get(srv, room, { token: reader, version: 2 })).bytes.toString(), 'new text');
      await expectError((await get(srv, room, { token: reader, version: 3 })).r, 404, 'NOT_FOUND');
      for (const bad of ['abc', '0', '01', '-1', '99999999999999999999999']) {
        await expectError((await get(srv, room, { token: reader, version: bad })).r, 400, 'BAD_MESSAGE');
      }
    });

    it(`keeps the last ${KEEP} versions (snapshot_keep), pruning older ones`, async () => {
      const room = 'doc:prune';
      for (let v = 1; v <= KEEP + 2; v++) {
        await putOk(srv, room, `text ${v}`, v, v === 1 ? { token: writer, ifNoneMatch: '*' } : { token: writer, ifMatch: v - 1 });
      }
      const versions = (await list(srv, room, writer)).versions.map((v) => v.version);
      assert.deepEqual(versions, [5, 4, 3]);
      await expectError((await get(srv, room, { token: writer, version: 1 })).r, 404, 'NOT_FOUND');
      await expectError((await get(srv, room, { token: writer, version: 2 })).r, 404, 'NOT_FOUND');
      assert.equal((await get(srv, room, { token: writer, version: 3 })).bytes.toString(), 'text 3');
      assert.equal((await get(srv, room, { token: writer })).bytes.toString(), 'text 5');
      if (backend === 'dir') {
        const files = readdirSync(join(srv.dataDir, 'snapshots', 'doc%3Aprune')).sort();
        assert.deepEqual(files, ['3.z', '4.z', '5.z']);
      } else {
        assert.equal(await pg.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM stoa_snapshots WHERE room = 'doc:prune'"), '3,4,5');
        assert.ok(!existsSync(join(srv.dataDir, 'snapshots')), 'no snapshot directory with --database');
      }
    });

    it(`413 MESSAGE_TOO_LARGE above snapshot_max_bytes (${MAX}); other routes keep max_message_bytes`, async () => {
      const room = 'doc:big';
      const r = await put(srv, room, 'x'.repeat(MAX + 1), { token: writer, ifNoneMatch: '*' });
      const body = await expectError(r, 413, 'MESSAGE_TOO_LARGE');
      assert.match(body.error.message, new RegExp(String(MAX)));
      await expectError((await get(srv, room, { token: writer })).r, 404, 'NOT_FOUND');
      // exactly the limit, and well above max_message_bytes, is fine
      const full = Buffer.alloc(MAX, 'y');
      await putOk(srv, room, full, 1, { token: writer, ifNoneMatch: '*' });
      assert.ok((await get(srv, room, { token: writer })).bytes.equals(full));
      // the raised cap is only for this route
      const other = await srv.fetch('/v1/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ pad: 'z'.repeat(MAX_MESSAGE + 100) }) });
      const err = await expectError(other, 413, 'MESSAGE_TOO_LARGE');
      assert.match(err.error.message, new RegExp(String(MAX_MESSAGE)));
    });

    it(`logs a warning above snapshot_warn_bytes (${WARN})`, async () => {
      const room = 'doc:warned';
      const quiet = 'doc:quiet';
      await putOk(srv, quiet, 'q'.repeat(WARN), 1, { token: writer, ifNoneMatch: '*' });
      await putOk(srv, room, 'w'.repeat(WARN + 1), 1, { token: writer, ifNoneMatch: '*' });
      const lines = srv.logs().split('\n').filter((l) => / warn /.test(l) && /snapshot_warn_bytes/.test(l));
      assert.ok(lines.some((l) => l.includes(room) && l.includes(String(WARN + 1)) && l.includes('ada')), srv.logs());
      assert.ok(!lines.some((l) => l.includes(quiet)), 'no warning at exactly the limit');
    });

    it('403 PERMISSION_DENIED: PUT without the write right, GET without the read right', async () => {
      const room = 'doc:rights';
      await putOk(srv, room, 'secret plans', 1, { token: writer, ifNoneMatch: '*' });
      await expectError(await put(srv, room, 'x', { token: reader, ifMatch: 1 }), 403, 'PERMISSION_DENIED');
      await expectError(await put(srv, room, 'x', { ifMatch: 1 }), 403, 'PERMISSION_DENIED');   // anonymous: "r"
      await expectError(await put(srv, room, 'x', { token: outsider, ifMatch: 1 }), 403, 'PERMISSION_DENIED');
      await expectError((await get(srv, room, { token: outsider })).r, 403, 'PERMISSION_DENIED');
      await expectError((await get(srv, room, { token: outsider, version: 1 })).r, 403, 'PERMISSION_DENIED');
      await expectError(await srv.fetch(path(room, 'snapshots'), { headers: auth(outsider) }), 403, 'PERMISSION_DENIED');
      await expectError(await put(srv, room, 'x', { token: 'not.a.token', ifMatch: 1 }), 401, 'AUTH_FAILED');
      // none of that changed anything; anonymous rights ({"*":"r"}) may read
      const g = await get(srv, room);
      assert.equal(g.status, 200);
      assert.equal(g.etag, '"1"');
      assert.equal(g.bytes.toString(), 'secret plans');
      // the outsider may write where it has the right
      await putOk(srv, 'other:1', 'mine', 1, { token: outsider, ifNoneMatch: '*' });
    });

    it('400 BAD_ROOM for a bad room name; 405 with Allow for another method', async () => {
      await expectError(await srv.fetch('/v1/rooms/nocolon/snapshot', { headers: auth(writer) }), 400, 'BAD_ROOM');
      await expectError(await put(srv, 'Bad:1', 'x', { token: writer, ifNoneMatch: '*' }), 400, 'BAD_ROOM');
      const r = await srv.fetch(path('doc:1'), { method: 'DELETE', headers: auth(writer) });
      await expectError(r, 405, 'METHOD_NOT_ALLOWED');
      assert.equal(r.headers.get('allow'), 'GET, PUT');
    });

    itStopsCleanly(srv);
  });
}

describe('snapshots survive a restart', () => {
  it('the same data dir: same versions, same bytes, the counter goes on, compressed on disk', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'stoa-it-snap-'));
    const room = 'doc:durable';
    const big = JSON.stringify(Array.from({ length: 400 }, (_, i) => ({ line: i, text: 'the same words again' })));
    let a;
    let b;
    try {
      a = await startStoa([], { dataDir });
      const token = await a.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } });
      await putOk(a, room, 'first', 1, { token, ifNoneMatch: '*' });
      await putOk(a, room, big, 2, { token, type: 'application/json', ifMatch: 1 });
      // a second server cannot use the same snapshot directory at once
      await assert.rejects(startStoa([], { dataDir }), /in use by another process/);
      assert.deepEqual(await a.stop(), { code: 0, signal: null });
      assert.ok(existsSync(dataDir), 'startStoa kept the data dir it was given');
      const file = join(dataDir, 'snapshots', 'doc%3Adurable', '2.z');
      assert.ok(statSync(file).size < big.length / 4, `${file}: ${statSync(file).size} bytes for ${big.length}`);

      b = await startStoa([], { dataDir });
      const g = await get(b, room, { token });   // same data dir: same signing secret
      assert.equal(g.status, 200);
      assert.equal(g.etag, '"2"');
      assert.equal(g.type, 'application/json');
      assert.equal(g.bytes.toString(), big);
      assert.equal((await get(b, room, { token, version: 1 })).bytes.toString(), 'first');
      assert.deepEqual((await list(b, room, token)).versions.map((v) => v.version), [2, 1]);
      await expectError(await put(b, room, 'x', { token, ifNoneMatch: '*' }), 412, 'PRECONDITION_FAILED');
      await putOk(b, room, 'third', 3, { token, ifMatch: 2 });
      assert.deepEqual(await b.stop(), { code: 0, signal: null });
    } finally {
      if (a) await a.stop();
      if (b) await b.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('snapshots in PostgreSQL (--database)', () => {
  const SECRET = 'a-shared-signing-secret-for-two-instances';
  let pg;
  let url;
  before(async () => {
    pg = await startPostgres();
    url = pg.url;
    const m = await runStoa(['migrate', '--database', url]);
    assert.equal(m.code, 0, m.stderr);
  });
  after(async () => { if (pg) await pg.stop(); });

  const flags = () => ['--database', url, '--jwt-secret', SECRET, '--snapshot-keep', '5'];

  it('survive a restart of Stoa with a new data dir: same versions, same bytes, the counter goes on, compressed', async () => {
    const room = 'doc:pg-durable';
    const big = JSON.stringify(Array.from({ length: 400 }, (_, i) => ({ line: i, text: 'the same words again' })));
    let a;
    let b;
    try {
      a = await startStoa(flags());
      const token = await a.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } });
      await putOk(a, room, 'first', 1, { token, ifNoneMatch: '*' });
      await putOk(a, room, big, 2, { token, type: 'application/json', ifMatch: 1 });
      assert.deepEqual(await a.stop(), { code: 0, signal: null });
      const [size, stored] = (await pg.psql(`SELECT size, length(data) FROM stoa_snapshots
        WHERE room = '${room}' AND version = 2`)).split('|').map(Number);
      assert.equal(size, big.length);
      assert.ok(stored < big.length / 4, `${stored} bytes stored for ${big.length}`);

      b = await startStoa(flags());   // a fresh data dir: everything comes from the database
      const g = await get(b, room, { token });
      assert.equal(g.status, 200);
      assert.equal(g.etag, '"2"');
      assert.equal(g.type, 'application/json');
      assert.equal(g.bytes.toString(), big);
      assert.equal((await get(b, room, { token, version: 1 })).bytes.toString(), 'first');
      const listing = (await list(b, room, token)).versions;
      assert.deepEqual(listing.map((v) => [v.version, v.sha256]), [[2, sha256(big)], [1, sha256('first')]]);
      await expectError(await put(b, room, 'x', { token, ifNoneMatch: '*' }), 412, 'PRECONDITION_FAILED');
      await putOk(b, room, 'third', 3, { token, ifMatch: 2 });
      assert.deepEqual(await b.stop(), { code: 0, signal: null });
    } finally {
      if (a) await a.stop();
      if (b) await b.stop();
    }
  });

  it('two instances on one database: a save on one is seen on the other; racing saves: exactly one 201', async () => {
    let a;
    let b;
    try {
      [a, b] = await Promise.all([startStoa(flags()), startStoa(flags())]);
      assert.notEqual(a.port, b.port);
      assert.notEqual(a.dataDir, b.dataDir);
      const token = await a.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } });
      const room = 'doc:pg-shared';
      await putOk(a, room, 'from a', 1, { token, ifNoneMatch: '*' });
      let g = await get(b, room, { token });
      assert.equal(g.status, 200);
      assert.equal(g.etag, '"1"');
      assert.equal(g.bytes.toString(), 'from a');
      await putOk(b, room, 'from b', 2, { token, ifMatch: 1 });
      assert.equal((await get(a, room, { token })).bytes.toString(), 'from b');
      await expectError(await put(a, room, 'stale', { token, ifMatch: 1 }), 412, 'PRECONDITION_FAILED');

      // Races: the same If-Match on both instances at once, again and again.
      let latest = 2;
      for (let round = 0; round < 10; round++) {
        const rs = await Promise.all([put(a, room, `a${round}`, { token, ifMatch: latest }),
                                      put(b, room, `b${round}`, { token, ifMatch: latest })]);
        const texts = await Promise.all(rs.map((r) => r.text()));
        assert.deepEqual(rs.map((r) => r.status).sort(), [201, 412], `round ${round}: ${texts.join(' | ')}`);
        const won = rs.findIndex((r) => r.status === 201);
        latest++;
        assert.equal(rs[won].headers.get('etag'), `"${latest}"`);
        assert.equal(rs[1 - won].headers.get('etag'), `"${latest}"`, 'the 412 names the new latest');
        const seen = await get(won === 0 ? b : a, room, { token });
        assert.equal(seen.etag, `"${latest}"`);
        assert.equal(seen.bytes.toString(), `${won === 0 ? 'a' : 'b'}${round}`);
      }
      // pruned to snapshot_keep (5) in the database, whoever saved
      assert.deepEqual((await list(b, room, token)).versions.map((v) => v.version),
        [latest, latest - 1, latest - 2, latest - 3, latest - 4]);
      assert.equal(await pg.psql(`SELECT count(*) FROM stoa_snapshots WHERE room = '${room}'`), '5');
      assert.deepEqual(await a.stop(), { code: 0, signal: null });
      assert.deepEqual(await b.stop(), { code: 0, signal: null });
    } finally {
      if (a) await a.stop();
      if (b) await b.stop();
    }
  });

  it("a save holds the room's lock until it commits: a save waits while another transaction holds it", async () => {
    let a;
    const holder = await pg.session();
    try {
      a = await startStoa(flags());
      const token = await a.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } });
      const room = 'doc:pg-locked';
      await putOk(a, room, 'one', 1, { token, ifNoneMatch: '*' });
      assert.equal((await holder.run('BEGIN')).err, '');
      assert.equal((await holder.run(`SELECT pg_advisory_xact_lock(1400139619, hashtext('${room}'))`)).err, '');
      let done = false;
      const pending = put(a, room, 'two', { token, ifMatch: 1 }).then((r) => { done = true; return r; });
      await new Promise((r) => setTimeout(r, 400));
      assert.equal(done, false, 'the save waits for the lock');
      assert.equal((await holder.run('COMMIT')).err, '');
      const r = await pending;
      assert.equal(r.status, 201, await r.text());
      assert.equal(r.headers.get('etag'), '"2"');
    } finally {
      await holder.close();
      if (a) await a.stop();
    }
  });

  it('a lost database connection is re-established on the next call', async () => {
    let a;
    try {
      a = await startStoa(flags());
      const token = await a.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } });
      const room = 'doc:pg-reconnect';
      await putOk(a, room, 'before', 1, { token, ifNoneMatch: '*' });
      await pg.restart();   // every connection breaks
      const g = await get(a, room, { token });
      assert.equal(g.status, 200, g.bytes.toString());
      assert.equal(g.bytes.toString(), 'before');
      await pg.restart();
      await putOk(a, room, 'after', 2, { token, ifMatch: 1 });
      assert.match(a.logs(), /database connection was lost/);
    } finally {
      if (a) await a.stop();
    }
  });

  it('the database gone: 500 INTERNAL with a clear message, details only in the log; Stoa still stops cleanly', async () => {
    let a;
    try {
      a = await startStoa(flags());
      const token = await a.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } });
      await pg.stop();   // for good: the last test of this group
      const g = await get(a, 'doc:pg-gone', { token });
      const body = await expectError(g.r, 500, 'INTERNAL');
      assert.match(body.error.message, /snapshot store cannot reach the database/);
      assert.doesNotMatch(body.error.message, /127\.0\.0\.1|user=|postgres/);
      await expectError(await put(a, 'doc:pg-gone', 'x', { token, ifNoneMatch: '*' }), 500, 'INTERNAL');
      assert.match(a.logs(), /store: cannot connect to the database/);
      assert.deepEqual(await a.stop(), { code: 0, signal: null });
    } finally {
      if (a) await a.stop();
    }
  });
});

describe('docs/snapshots.md', () => {
  const doc = readFileSync(join(REPO, 'docs', 'snapshots.md'), 'utf8');

  it('names the four endpoints and the two new error codes with their statuses', () => {
    for (const e of ['GET /v1/rooms/{room}/snapshot`', 'GET /v1/rooms/{room}/snapshots`',
      'GET /v1/rooms/{room}/snapshots/{version}`', 'PUT /v1/rooms/{room}/snapshot`']) {
      assert.ok(doc.includes(`### \`${e}`), `no section for ${e}`);
    }
    assert.match(doc, /\| `PRECONDITION_FAILED` \| 412 \|/);
    assert.match(doc, /\| `PRECONDITION_REQUIRED` \| 428 \|/);
  });

  it('gives the defaults `stoa serve --help` gives', async () => {
    const help = (await runStoa(['serve', '--help'])).stdout;
    const rows = [...doc.matchAll(/^\| `(snapshot_\w+)` \| (\d+) \|/gm)];
    assert.deepEqual(rows.map((m) => m[1]).sort(), ['snapshot_keep', 'snapshot_max_bytes', 'snapshot_warn_bytes']);
    for (const [, name, def] of rows) {
      const m = new RegExp(`, ${name}\\)\\n.*\\n\\s*default: (\\S+)`).exec(help);
      assert.ok(m, `${name} not in --help`);
      assert.equal(def, m[1], `${name}: the doc says ${def}, --help says ${m[1]}`);
    }
  });
});
