// The outbox drainer: rows an application queues with stoa_publish(room, data)
// inside its own transaction reach the room's peers after COMMIT, never after
// ROLLBACK, in id order; bad rows are dropped; PostgreSQL restarts are survived.
// Real PostgreSQL (lib/pg.mjs) and the real stoa binary.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { runStoa, startStoa, waitFor, sleep } from './lib/stoa.mjs';
import { startPostgres } from './lib/pg.mjs';

const ROOM = 'record:abc';
const isMsg = (pred = () => true) => (m) => m.type === 'message' && m.room === ROOM && pred(m.data);

describe('outbox: stoa_publish reaches the room after COMMIT', () => {
  let pg;
  let srv;
  let c;
  let markers = 0;

  /** Publish a committed marker and wait for it: everything committed before has been drained. */
  async function marker() {
    const tag = `m${++markers}`;
    await pg.psql(`BEGIN; SELECT stoa_publish('${ROOM}', '{"marker":"${tag}"}'); COMMIT;`);
    await c.next(isMsg((d) => d && d.marker === tag), 10000);
  }

  before(async () => {
    pg = await startPostgres();
    const r = await runStoa(['migrate', '--database', pg.url]);
    assert.equal(r.code, 0, r.stderr);
    srv = await startStoa(['--database', pg.url]);
    c = await srv.client();
    await c.join(ROOM);
  });
  after(async () => {
    if (srv) await srv.stop();
    if (pg) await pg.stop();
  });

  it('a committed stoa_publish arrives as {"type":"message","room","data"}', async () => {
    await pg.psql(`BEGIN; SELECT stoa_publish('${ROOM}', '{"n":1}'); COMMIT;`);
    const m = await c.next(isMsg(), 5000);
    assert.equal(m.type, 'message');
    assert.equal(m.room, ROOM);
    assert.deepEqual(m.data, { n: 1 });
  });

  it('a rolled-back stoa_publish never arrives (a later committed marker does)', async () => {
    await pg.psql(`BEGIN; SELECT stoa_publish('${ROOM}', '{"rolled":"back"}'); ROLLBACK;`);
    await marker();
    assert.deepEqual(c.peek(isMsg((d) => d && d.rolled)), []);
    assert.equal(await pg.psql('SELECT count(*) FROM stoa_outbox'), '0');
  });

  it('a message in an open transaction arrives only after that transaction commits', async () => {
    const s = pg.session();
    try {
      let r = await s.run(`BEGIN; SELECT stoa_publish('${ROOM}', '{"held":true}')`);
      assert.equal(r.err, '');
      await marker();   // drains happened while the transaction was open
      await sleep(400);
      assert.deepEqual(c.peek(isMsg((d) => d && d.held)), []);
      r = await s.run('COMMIT');
      assert.equal(r.err, '');
      const m = await c.next(isMsg((d) => d && d.held), 5000);
      assert.deepEqual(m.data, { held: true });
    } finally {
      await s.close();
    }
  });

  it('1000 rows published in one transaction all arrive, in id order', async () => {
    c.drain();
    await pg.psql(`BEGIN; SELECT stoa_publish('${ROOM}', jsonb_build_object('seq', i)) FROM generate_series(1, 1000) AS i; COMMIT;`);
    const got = [];
    while (got.length < 1000) {
      const m = await c.next(isMsg((d) => d && typeof d.seq === 'number'), 10000);
      got.push(m.data.seq);
    }
    assert.deepEqual(got, Array.from({ length: 1000 }, (_, i) => i + 1));
  });

  it('a row with an invalid room is dropped (and logged); later rows still arrive', async () => {
    await pg.psql("BEGIN; SELECT stoa_publish('not a valid room!', '{\"x\":1}'); COMMIT;");
    await pg.psql(`BEGIN; SELECT stoa_publish('${ROOM}', '{"after":"bad-room"}'); COMMIT;`);
    const m = await c.next(isMsg((d) => d && d.after === 'bad-room'), 5000);
    assert.deepEqual(m.data, { after: 'bad-room' });
    await waitFor(() => /outbox: row \d+ dropped: invalid room/.test(srv.logs()), { what: 'the drop logged' });
    assert.equal(await pg.psql('SELECT count(*) FROM stoa_outbox'), '0');
  });

  it('a row whose data exceeds max_message_bytes is dropped (and logged); later rows still arrive', async () => {
    await pg.psql(`BEGIN; SELECT stoa_publish('${ROOM}', jsonb_build_object('big', repeat('x', 70000))); COMMIT;`);
    await marker();
    assert.deepEqual(c.peek(isMsg((d) => d && d.big)), []);
    assert.match(srv.logs(), /outbox: row \d+ for record:abc dropped: its data is \d+ bytes, above max_message_bytes/);
  });

  it('after PostgreSQL restarts, new rows are delivered again', { timeout: 60000 }, async () => {
    await pg.restart();   // every connection breaks
    await waitFor(() => /outbox: lost the database connection/.test(srv.logs()),
      { timeoutMs: 15000, what: 'the drainer noticing the restart' });
    let got = null;
    const deadline = Date.now() + 30000;
    // The first publishes may race the drainer's reconnect: keep publishing until one arrives.
    for (let i = 1; !got && Date.now() < deadline; i++) {
      await pg.psql(`BEGIN; SELECT stoa_publish('${ROOM}', '{"restarted":${i}}'); COMMIT;`);
      got = await c.next(isMsg((d) => d && d.restarted), 2000).catch(() => null);
    }
    assert.ok(got, `nothing delivered after the restart; log:\n${srv.logs()}`);
    assert.match(srv.logs(), /outbox: connected to the database again/);
    await marker();
  });

  it('the server exits 0 on SIGTERM', async () => {
    const { code, signal } = await srv.stop();
    assert.deepEqual({ code, signal }, { code: 0, signal: null }, srv.logs());
  });
});
