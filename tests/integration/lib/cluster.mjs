// Several `stoa serve --database` instances on one PostgreSQL, for the
// tests of the instance bus (cluster.test.mjs).
//
//   const pg = await startPostgres();
//   const [a, b] = await startCluster(pg, 2, ['--bus-heartbeat-ms', '500']);
//   await waitForMesh([a, b]);            // each hears every other on the bus
//   const call = api(a, KEY);             // the integrator API of one instance
//   await pgDown(pg); ...; await pgUp(pg); // an outage of PostgreSQL
//
// Every instance gets the same flags (so tokens minted by one work on all),
// its own data dir and port. PostgreSQL is stopped and started again on the
// same port and socket directory as lib/pg.mjs started it.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { runStoa, startStoa, waitFor } from './stoa.mjs';

/** `stoa migrate` on pg's database; throws with stoa's output on failure. */
export async function migrate(pg) {
  const r = await runStoa(['migrate', '--database', pg.url]);
  assert.equal(r.code, 0, `stoa migrate failed:\n${r.stderr}${r.stdout}`);
}

/** Start n instances serving pg's database with the same flags; resolves them in order. */
export async function startCluster(pg, n, flags = []) {
  const all = [];
  try {
    for (let i = 0; i < n; i++) all.push(await startStoa(['--database', pg.url, ...flags]));
  } catch (e) {
    await Promise.all(all.map((s) => s.stop()));
    throw e;
  }
  return all;
}

/** GET /healthz of srv; resolves the parsed body. */
export async function healthz(srv) {
  const r = await srv.fetch('/healthz', { signal: AbortSignal.timeout(5000) });
  assert.equal(r.status, 200, `GET /healthz: ${r.status}`);
  return r.json();
}

/** The `bus` object of srv's /healthz (undefined when there is none). */
export async function busOf(srv) {
  return (await healthz(srv)).bus;
}

/** The instance id srv reports for itself on the bus. */
export async function instanceId(srv) {
  const bus = await busOf(srv);
  assert.ok(bus && typeof bus.instance === 'string' && bus.instance.length > 0,
    `/healthz has no bus.instance: ${JSON.stringify(bus)}`);
  return bus.instance;
}

/**
 * Wait until every server's bus is connected and lists every other server's
 * instance id among the instances it hears. Resolves the ids, in order.
 */
export async function waitForMesh(servers, { timeoutMs = 10000 } = {}) {
  const ids = await Promise.all(servers.map(instanceId));
  let last = [];
  try {
    await waitFor(async () => {
      last = await Promise.all(servers.map((s) => busOf(s).catch((e) => ({ error: e.message }))));
      return last.every((bus, i) => bus && bus.connected === true && Array.isArray(bus.instances) &&
        ids.every((id, j) => j === i || bus.instances.includes(id)));
    }, { timeoutMs, intervalMs: 100, what: 'every instance to hear every other on the bus' });
  } catch (e) {
    e.message += `; ids ${JSON.stringify(ids)}; last /healthz bus: ${JSON.stringify(last)}`;
    throw e;
  }
  return ids;
}

/**
 * The integrator API of srv with an API key: call(path, {method, body})
 * resolves {status, body (parsed or null), text}.
 */
export function api(srv, key) {
  return async (path, { method = 'GET', body } = {}) => {
    const r = await srv.fetch(path, {
      method,
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const text = await r.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { /* left null */ }
    return { status: r.status, body: parsed, text };
  };
}

/** The peer ids listed by GET /v1/rooms/{room}/presence on srv, sorted. */
export async function presencePeers(srv, room) {
  const r = await srv.fetch(`/v1/rooms/${room}/presence`, { signal: AbortSignal.timeout(5000) });
  const text = await r.text();
  assert.equal(r.status, 200, `GET /v1/rooms/${room}/presence: ${r.status} ${text}`);
  return JSON.parse(text).peers.map((p) => p.peer).sort();
}

/** The number of peers GET /v1/rooms on srv gives for room (0 when not listed). */
export async function roomCount(call, room) {
  const r = await call('/v1/rooms');
  assert.equal(r.status, 200, `GET /v1/rooms: ${r.status} ${r.text}`);
  const hit = r.body.rooms.find((x) => x.room === room);
  return hit ? hit.peers : 0;
}

// ---- stopping and starting PostgreSQL (same port, same socket directory) ----

const RUNUSER = ['/usr/sbin/runuser', '/sbin/runuser', '/usr/bin/runuser'].find((p) => existsSync(p));

function pgCtl(pg, args) {
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const bin = join(pg.bin, 'pg_ctl');
  const [file, argv] = asRoot ? [RUNUSER, ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  env.LC_ALL = 'C';
  return new Promise((resolve, reject) => {
    execFile(file, argv, { cwd: pg.dir, env, timeout: 60000 }, (err, stdout, stderr) => {
      if (err) {
        err.message = `pg_ctl ${args.join(' ')} failed (${err.code ?? err.signal}):\n${stderr}${stdout}\n` +
          `server log:\n${pg.log().slice(-4000)}`;
        return reject(err);
      }
      resolve(stdout);
    });
  });
}

/** Stop PostgreSQL (fast shutdown: every connection is broken at once). */
export function pgDown(pg) {
  return pgCtl(pg, ['-D', join(pg.dir, 'data'), '-m', 'fast', '-w', '-t', '30', 'stop']);
}

/** Start it again as lib/pg.mjs did (same port, socket directory and settings). */
export function pgUp(pg) {
  const opts = `-p ${pg.port} -k ${pg.dir} -c listen_addresses=127.0.0.1 -c fsync=off ` +
    '-c synchronous_commit=off -c full_page_writes=off -c max_connections=100';
  return pgCtl(pg, ['-D', join(pg.dir, 'data'), '-l', join(pg.dir, 'server.log'), '-o', opts, '-w', '-t', '30', 'start']);
}
