// PostgreSQL: `stoa migrate`, the start-up checks of `stoa serve --database`
// and the table semantics of stoa_publish, against a real PostgreSQL
// (lib/pg.mjs) and the real stoa binary. The bus itself comes later.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runStoa, startStoa, waitFor, WWW_DIR } from './lib/stoa.mjs';
import { startPostgres, freePort } from './lib/pg.mjs';

const NEWEST = 1;   // the newest migration in sql/ (001_init.sql)
const TABLES = ['stoa_schema_migrations', 'stoa_instances', 'stoa_bus_payloads', 'stoa_snapshots', 'stoa_outbox'];

/** `stoa serve` that is expected to exit by itself (refusals); resolves {code, signal, stdout, stderr, ms}. */
async function serveOnce(flags, { env, timeout = 20000 } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'stoa-db-'));
  const t0 = Date.now();
  try {
    const r = await runStoa(['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--www-dir', WWW_DIR, ...flags],
      { env: env ? { ...process.env, ...env } : undefined, timeout });
    return { ...r, ms: Date.now() - t0 };
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** A TCP proxy to PostgreSQL that forwards everything except NotificationResponse
 * messages: LISTEN succeeds but notifications never arrive, as behind a
 * transaction-pooling pgbouncer. Needs sslmode=disable&gssencmode=disable (so
 * every server message is framed: type byte, int32 length). */
async function notificationEatingProxy(targetPort) {
  const sockets = new Set();
  const proxy = { dropped: 0, connections: 0 };
  const server = net.createServer((client) => {
    proxy.connections++;
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
    client.pipe(upstream);
    let buf = Buffer.alloc(0);
    upstream.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const out = [];
      while (buf.length >= 5) {
        const len = buf.readUInt32BE(1);
        if (buf.length < 1 + len) break;
        const msg = buf.subarray(0, 1 + len);
        buf = buf.subarray(1 + len);
        if (msg[0] === 0x41) proxy.dropped++;   // 'A': NotificationResponse
        else out.push(msg);
      }
      if (out.length) client.write(Buffer.concat(out));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  proxy.port = server.address().port;
  proxy.close = () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); });
  return proxy;
}

describe('PostgreSQL', () => {
  let pg;
  before(async () => { pg = await startPostgres(); });
  after(async () => { if (pg) await pg.stop(); });

  describe('stoa migrate', () => {
    it('applies 001_init in a transaction and records it; a second run applies nothing and says so', async () => {
      const url = await pg.createDatabase('mig_basic');
      const first = await runStoa(['migrate', '--database', url]);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /applied 001_init/);
      assert.match(first.stdout, new RegExp(`now at version ${NEWEST}\\b`));

      const rows = await pg.psql('SELECT version, name FROM stoa_schema_migrations ORDER BY version', { database: 'mig_basic' });
      assert.equal(rows, '1|init');
      for (const t of TABLES) {
        assert.equal(await pg.psql(`SELECT to_regclass('${t}') IS NOT NULL`, { database: 'mig_basic' }), 't', `${t} exists`);
      }
      assert.equal(await pg.psql("SELECT pg_get_function_result('stoa_publish(text, jsonb)'::regprocedure)",
        { database: 'mig_basic' }), 'bigint');
      // The snapshot table's primary key is (room, version).
      assert.equal(await pg.psql(`SELECT string_agg(a.attname, ',' ORDER BY array_position(i.indkey, a.attnum))
        FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = 'stoa_snapshots'::regclass AND i.indisprimary`, { database: 'mig_basic' }), 'room,version');
      const appliedAt = await pg.psql('SELECT applied_at FROM stoa_schema_migrations', { database: 'mig_basic' });

      // Again, with the long flag form: nothing to do, nothing touched.
      const second = await runStoa(['migrate', `--database-url=${url}`]);
      assert.equal(second.code, 0, second.stderr);
      assert.doesNotMatch(second.stdout, /applied 001/);
      assert.match(second.stdout, /up to date \(version 1\): nothing to apply/);
      assert.equal(await pg.psql('SELECT count(*) FROM stoa_schema_migrations', { database: 'mig_basic' }), '1');
      assert.equal(await pg.psql('SELECT applied_at FROM stoa_schema_migrations', { database: 'mig_basic' }), appliedAt);
    });

    it('takes the URL from STOA_DATABASE_URL; without any URL it exits 2 and says how to give one', async () => {
      const url = await pg.createDatabase('mig_env');
      const r = await runStoa(['migrate'], { env: { ...process.env, STOA_DATABASE_URL: url } });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /applied 001_init/);
      assert.equal(await pg.psql('SELECT max(version) FROM stoa_schema_migrations', { database: 'mig_env' }), '1');

      const env = { ...process.env };
      delete env.STOA_DATABASE_URL;
      const none = await runStoa(['migrate'], { env });
      assert.equal(none.code, 2);
      assert.match(none.stderr, /--database URL/);
      assert.match(none.stderr, /STOA_DATABASE_URL/);
    });

    it('two concurrent runs wait for each other on the migration lock and apply 001 exactly once', async () => {
      const url = await pg.createDatabase('mig_race');
      // Hold the lock stoa migrate takes, so that both runs are surely waiting at once.
      const holder = await pg.session({ database: 'mig_race' });
      try {
        await holder.run('BEGIN');
        assert.equal((await holder.run('SELECT pg_advisory_xact_lock(1400139617, 1)')).err, '');
        const runs = Promise.all([runStoa(['migrate', '--database', url]), runStoa(['migrate', '--database', url])]);
        await waitFor(async () => (await pg.psql(`SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
          WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = 'stoa'`, { database: 'mig_race' })) === '2',
        { what: 'both stoa migrate runs waiting for the lock', timeoutMs: 10000 });
        await holder.run('COMMIT');
        const [a, b] = await runs;
        assert.equal(a.code, 0, a.stderr);
        assert.equal(b.code, 0, b.stderr);
        const applied = [a, b].filter((r) => /applied 001_init \(/.test(r.stdout));
        assert.equal(applied.length, 1, `exactly one run applies 001:\n${a.stdout}\n---\n${b.stdout}`);
        const other = a === applied[0] ? b : a;
        assert.match(other.stdout, /already applied by another stoa migrate|nothing to apply/);
        assert.equal(await pg.psql('SELECT count(*) FROM stoa_schema_migrations', { database: 'mig_race' }), '1');
      } finally {
        await holder.close();
      }
    });

    it('a failing migration leaves nothing of itself behind and exits 1', async () => {
      const url = await pg.createDatabase('mig_conflict');
      // A table of the same name already exists: 001 fails part-way through.
      await pg.psql('CREATE TABLE stoa_snapshots (x int)', { database: 'mig_conflict' });
      const r = await runStoa(['migrate', '--database', url]);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, /migration 001_init failed, nothing of it was applied/);
      assert.match(r.stderr, /stoa_snapshots/);
      // Tables created before the failing statement were rolled back.
      assert.equal(await pg.psql("SELECT to_regclass('stoa_instances') IS NULL", { database: 'mig_conflict' }), 't');
      assert.equal(await pg.psql('SELECT count(*) FROM stoa_schema_migrations', { database: 'mig_conflict' }), '0');
    });

    it('refuses to touch a database newer than this stoa: exit 2, nothing applied', async () => {
      const url = await pg.createDatabase('mig_newer');
      assert.equal((await runStoa(['migrate', '--database', url])).code, 0);
      await pg.psql("INSERT INTO stoa_schema_migrations (version, name) VALUES (999, 'from_the_future')",
        { database: 'mig_newer' });
      const r = await runStoa(['migrate', '--database', url]);
      assert.equal(r.code, 2, r.stdout + r.stderr);
      assert.match(r.stderr, /version 999, newer than this stoa knows/);
      assert.match(r.stderr, /nothing applied/);
    });

    it('survives a server restart: the schema persists', async () => {
      const url = await pg.createDatabase('mig_restart');
      assert.equal((await runStoa(['migrate', '--database', url])).code, 0);
      await pg.restart();
      const r = await runStoa(['migrate', '--database', url]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /nothing to apply/);
    });
  });

  describe('stoa serve --database', () => {
    it('refuses an unmigrated database (URL from STOA_DATABASE_URL): exit 2, names the versions and `stoa migrate`', async () => {
      const url = await pg.createDatabase('serve_empty');
      const r = await serveOnce([], { env: { STOA_DATABASE_URL: url } });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /no Stoa schema \(version 0; this stoa needs version 1\)/);
      assert.match(r.stderr, /stoa migrate/);
      assert.doesNotMatch(r.stderr, /listening on/, 'it must not start serving');
      // Refusing did not create anything.
      assert.equal(await pg.psql("SELECT to_regclass('stoa_schema_migrations') IS NULL", { database: 'serve_empty' }), 't');
    });

    it('refuses a database whose recorded version is newer than the binary knows: exit 2', async () => {
      const url = await pg.createDatabase('serve_newer');
      assert.equal((await runStoa(['migrate', '--database', url])).code, 0);
      await pg.psql("INSERT INTO stoa_schema_migrations (version, name) VALUES (7, 'later')", { database: 'serve_newer' });
      const r = await serveOnce(['--database', url]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /schema is at version 7, newer than this stoa knows \(its newest migration is 1/);
      assert.match(r.stderr, /upgrade stoa/);
      assert.doesNotMatch(r.stderr, /listening on/);
    });

    it('starts on a migrated database: self-test passes, /healthz answers, three named connections held until shutdown', async () => {
      const url = await pg.createDatabase('serve_ok');
      assert.equal((await runStoa(['migrate', '--database', url])).code, 0);
      const srv = await startStoa(['--database', url]);
      try {
        assert.match(srv.logs(), /schema version 1, LISTEN\/NOTIFY self-test passed/);
        const r = await srv.fetch('/healthz');
        assert.equal(r.status, 200);
        // The self-test's second connection is gone; the kept ones stay, one
        // per role, each named (never shared): the bus (LISTEN/NOTIFY), the
        // snapshot store, the outbox drainer.
        const names = () => pg.psql("SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_activity "
          + "WHERE datname = 'serve_ok' AND application_name LIKE 'stoa%'", { database: 'postgres' });
        const count = async () => String((await names()).split(',').filter(Boolean).length);
        await waitFor(async () => (await names()) === 'stoa-bus,stoa-outbox,stoa-store',
          { what: 'exactly three stoa connections: stoa-bus, stoa-outbox, stoa-store' });
        // The bus connection listens on stoa_bus: a NOTIFY there reaches it
        // (an ill-formed payload is logged and ignored).
        await pg.psql("NOTIFY stoa_bus, 'not json'", { database: 'serve_ok' });
        await waitFor(async () => /bus: ignored a malformed notification/.test(srv.logs()),
          { what: 'the bus to log the malformed notification' });
        const { code, signal } = await srv.stop();
        assert.deepEqual({ code, signal }, { code: 0, signal: null }, srv.logs());
        await waitFor(async () => (await count()) === '0', { what: 'the connection closed at shutdown' });
      } finally {
        await srv.stop();
      }
    });

    it('an unreachable database fails fast and clearly, without printing the password', async () => {
      const port = await freePort();   // nothing listens there
      const r = await serveOnce(['--database', `postgresql://stoa:sekrit-pw@127.0.0.1:${port}/stoa`]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /cannot connect to the database \(host=127\.0\.0\.1 port=\d+ dbname=stoa user=stoa\)/);
      assert.match(r.stderr, /refused/i);
      assert.doesNotMatch(r.stderr + r.stdout, /sekrit-pw/);
      assert.doesNotMatch(r.stderr, /listening on/);
      assert.ok(r.ms < 5000, `took ${r.ms} ms`);
    });

    it('a server that never answers: gives up after connect_timeout', async () => {
      const held = new Set();
      const mute = net.createServer((s) => { held.add(s); s.on('error', () => {}); });
      await new Promise((r) => mute.listen(0, '127.0.0.1', r));
      try {
        const url = `postgresql://stoa:sekrit-pw@127.0.0.1:${mute.address().port}/stoa?connect_timeout=1`;
        const r = await serveOnce(['--database', url]);
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /cannot connect to the database .*no answer within 1 s/);
        assert.doesNotMatch(r.stderr, /sekrit-pw/);
        assert.ok(held.size >= 1, 'stoa did reach the mute server');
        assert.ok(r.ms >= 900 && r.ms < 6000, `took ${r.ms} ms`);
        // The same bound for stoa migrate.
        const m = await runStoa(['migrate', '--database', url]);
        assert.equal(m.code, 1);
        assert.match(m.stderr, /no answer within 1 s/);
      } finally {
        for (const s of held) s.destroy();
        await new Promise((r) => mute.close(r));
      }
    });

    it('an unparsable URL: exit 1 with libpq\'s reason', async () => {
      const r = await serveOnce(['--database', 'postgresql://127.0.0.1:5432/stoa?no_such_option=1']);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /database URL cannot be parsed: .*no_such_option/);
    });

    it('fails clearly when LISTEN/NOTIFY does not work on the URL (a transaction-pooling proxy)', async () => {
      const proxy = await notificationEatingProxy(pg.port);
      try {
        const direct = await pg.createDatabase('serve_proxy');
        assert.equal((await runStoa(['migrate', '--database', direct])).code, 0);
        const url = `postgresql://postgres@127.0.0.1:${proxy.port}/serve_proxy?sslmode=disable&gssencmode=disable`;
        const r = await serveOnce(['--database', url]);
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /LISTEN\/NOTIFY does not work on this database URL \(a transaction-pooling proxy\?\)/);
        assert.doesNotMatch(r.stderr, /listening on/);
        assert.ok(proxy.dropped >= 1, 'the notification was sent (and eaten by the proxy)');
        assert.ok(proxy.connections >= 2, 'two connections: the listener and the notifier');
        assert.ok(r.ms >= 1900 && r.ms < 10000, `took ${r.ms} ms`);
      } finally {
        await proxy.close();
      }
    });

    it('without a database nothing changes: no connection is attempted', async () => {
      const env = { ...process.env };
      delete env.STOA_DATABASE_URL;
      const srv = await startStoa([], { env });
      try {
        assert.doesNotMatch(srv.logs(), /database/i);
        assert.equal((await srv.fetch('/healthz')).status, 200);
      } finally {
        const { code } = await srv.stop();
        assert.equal(code, 0, srv.logs());
      }
    });
  });

  describe('stoa_publish (table semantics; delivery into rooms: outbox.test.mjs)', () => {
    let url;
    before(async () => {
      url = await pg.createDatabase('publish');
      const r = await runStoa(['migrate', '--database', url]);
      assert.equal(r.code, 0, r.stderr);
    });
    const count = (room) => pg.psql(`SELECT count(*) FROM stoa_outbox WHERE room = '${room}'`, { database: 'publish' });

    it('a row queued inside a transaction is visible to others only after COMMIT', async () => {
      const app = await pg.session({ database: 'publish' });
      try {
        assert.equal((await app.run('BEGIN')).err, '');
        const r = await app.run(`SELECT stoa_publish('doc:1', '{"saved": true, "by": "ada"}')`);
        assert.equal(r.err, '');
        const id = Number(r.out);
        assert.ok(Number.isInteger(id) && id > 0, `stoa_publish returns the outbox id, got ${r.out}`);
        // Inside the transaction the application sees its row; nobody else does.
        assert.equal((await app.run("SELECT count(*) FROM stoa_outbox WHERE room = 'doc:1'")).out, '1');
        assert.equal(await count('doc:1'), '0');
        assert.equal((await app.run('COMMIT')).err, '');
        assert.equal(await count('doc:1'), '1');
        const row = await pg.psql(`SELECT id, room, data->>'by', data->'saved', created_at IS NOT NULL FROM stoa_outbox WHERE id = ${id}`,
          { database: 'publish' });
        assert.equal(row, `${id}|doc:1|ada|true|t`);
      } finally {
        await app.close();
      }
    });

    it('a row queued in a transaction that rolls back never appears', async () => {
      const app = await pg.session({ database: 'publish' });
      try {
        await app.run('BEGIN');
        const r = await app.run(`SELECT stoa_publish('doc:2', '{"n": 1}')`);
        assert.equal(r.err, '');
        assert.equal((await app.run('ROLLBACK')).err, '');
        assert.equal(await count('doc:2'), '0');
      } finally {
        await app.close();
      }
    });

    it('is a plain insert into stoa_outbox, with no NOTIFY (no commit lock in the caller\'s transaction)', async () => {
      const body = await pg.psql("SELECT prosrc FROM pg_proc WHERE oid = 'stoa_publish(text, jsonb)'::regprocedure",
        { database: 'publish' });
      assert.match(body, /INSERT INTO stoa_outbox/i);
      assert.doesNotMatch(body, /notify/i);
    });

    it('rejects a NULL or empty room and NULL data', async () => {
      await assert.rejects(pg.psql(`SELECT stoa_publish(NULL, '{}')`, { database: 'publish' }), /null value in column "room"/);
      await assert.rejects(pg.psql(`SELECT stoa_publish('', '{}')`, { database: 'publish' }), /check constraint/);
      await assert.rejects(pg.psql(`SELECT stoa_publish('doc:4', NULL)`, { database: 'publish' }), /null value in column "data"/);
      assert.equal(await count('doc:4'), '0');
    });
  });
});
