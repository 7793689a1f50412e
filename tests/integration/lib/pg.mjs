// A throw-away PostgreSQL server for black-box tests.
//
//   const pg = await startPostgres();          // initdb + start on a free port
//   await runStoa(['migrate', '--database', pg.url]);
//   await pg.psql('SELECT 1');                  // -> '1'
//   const s = await pg.session();               // one open psql session
//   await s.run('BEGIN'); ...; s.close();
//   await pg.stop();                            // pg_ctl -m immediate, rm -rf
//
// Uses the server binaries of the Debian packages (/usr/lib/postgresql/N/bin;
// STOA_PG_BIN overrides), never the package's default cluster, which need
// not run. PostgreSQL refuses to run as root: as root, initdb and pg_ctl run
// as the `postgres` OS user (runuser) in a temp dir it owns. The server
// listens on 127.0.0.1 only, on a free port, with its unix socket inside the
// temp dir, trust authentication and fsync off (fast, and nothing to keep).
// Works without standard input (CI).
import { execFile, execFileSync, spawn } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';

const CMD_TIMEOUT = 60000;

/** The directory holding initdb, pg_ctl and psql, or null. */
export function findPgBin() {
  if (process.env.STOA_PG_BIN) return process.env.STOA_PG_BIN;
  const root = '/usr/lib/postgresql';
  let versions = [];
  try {
    versions = readdirSync(root).filter((v) => /^\d+(\.\d+)?$/.test(v)).sort((a, b) => Number(b) - Number(a));
  } catch { /* not installed */ }
  for (const v of versions) {
    const bin = join(root, v, 'bin');
    if (['initdb', 'pg_ctl', 'postgres', 'psql'].every((f) => existsSync(join(bin, f)))) return bin;
  }
  return null;
}

/** A free TCP port on 127.0.0.1 (free when asked; the caller retries on a race). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The environment for PostgreSQL's programs: no PG* variable of the caller leaks in. */
function pgEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  env.LC_ALL = 'C';
  env.LANG = 'C';
  env.PGCONNECT_TIMEOUT = '10';
  return env;
}

function postgresUser() {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error('running as root, but there is no `postgres` OS user to run PostgreSQL as ' +
    '(install the postgresql package: contrib/install-deps.sh --test)');
  const f = line.split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

const RUNUSER = ['/usr/sbin/runuser', '/sbin/runuser', '/usr/bin/runuser'].find((p) => existsSync(p));

/** [file, args] running bin with args as the postgres user when we are root. */
function asOwner(asRoot, bin, args) {
  if (!asRoot) return [bin, args];
  if (RUNUSER) return [RUNUSER, ['-u', 'postgres', '--', bin, ...args]];
  const quote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
  return ['su', ['-s', '/bin/sh', 'postgres', '-c', [bin, ...args].map(quote).join(' ')]];
}

/** Run a command; resolves stdout, rejects with its output on failure. Standard input: empty or `input`. */
function exec(file, args, { cwd, input, timeout = CMD_TIMEOUT } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { cwd, env: pgEnv(), timeout, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        err.message = `${file} ${args.join(' ')} failed (${err.code ?? err.signal}):\n${stderr}${stdout}`;
        err.stderr = stderr;
        return reject(err);
      }
      resolve(stdout);
    });
    child.stdin.end(input ?? '');
  });
}

const live = new Set();
process.on('exit', () => {
  for (const pg of live) pg.stopSync();
});

/**
 * Start a fresh PostgreSQL with one database (opts.database, default "stoa").
 * Resolves {url, port, host, bin, dir, database, urlFor(db), createDatabase(name),
 * psql(sql, {database}), session({database}), stop(), restart(), log()}.
 */
export async function startPostgres({ database = 'stoa' } = {}) {
  const bin = findPgBin();
  if (!bin) {
    throw new Error('no PostgreSQL server binaries in /usr/lib/postgresql/*/bin ' +
      '(install the postgresql package: contrib/install-deps.sh --test; or set STOA_PG_BIN)');
  }
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const owner = asRoot ? postgresUser() : null;
  // The postgres user must reach the dir: fall back to /tmp when TMPDIR is private.
  let base = tmpdir();
  if (asRoot && (statSync(base).mode & 0o001) === 0) base = '/tmp';
  const dir = mkdtempSync(join(base, 'stoa-pg-'));
  if (owner) chownSync(dir, owner.uid, owner.gid);
  const data = join(dir, 'data');
  const logFile = join(dir, 'server.log');
  const run = (tool, args, opts = {}) => {
    const [file, argv] = asOwner(asRoot, join(bin, tool), args);
    return exec(file, argv, { cwd: dir, ...opts });
  };
  const log = () => { try { return readFileSync(logFile, 'utf8'); } catch { return ''; } };

  let port;
  let stopped = false;
  const pg = {
    bin, dir, database, host: '127.0.0.1',
    get port() { return port; },
    get url() { return pg.urlFor(database); },
    urlFor: (db) => `postgresql://postgres@127.0.0.1:${port}/${db}`,
    log,
    /** Run SQL (several statements allowed) with psql; resolves its unaligned, tuples-only output, trimmed. */
    psql: async (sql, { database: db = database } = {}) => {
      const out = await exec(join(bin, 'psql'), ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
        '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', db, '-f', '-'], { input: sql });
      return out.trim();
    },
    createDatabase: async (name) => {
      await pg.psql(`CREATE DATABASE "${name}"`, { database: 'postgres' });
      return pg.urlFor(name);
    },
    /** An open psql session: run(sql) resolves {out, err} once psql has handled it. */
    session: ({ database: db = database } = {}) => openSession(bin, port, db),
    /** Stop at once (no checkpoint) and remove everything. Idempotent. */
    stop: async () => {
      if (stopped) return;
      stopped = true;
      live.delete(pg);
      try { await run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']); } catch { /* not running */ }
      rmSync(dir, { recursive: true, force: true });
    },
    stopSync: () => {
      if (stopped) return;
      stopped = true;
      const [file, argv] = asOwner(asRoot, join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']);
      try { execFileSync(file, argv, { cwd: dir, env: pgEnv(), stdio: 'ignore', timeout: 20000 }); } catch { /* gone */ }
      rmSync(dir, { recursive: true, force: true });
    },
    /** Restart (fast shutdown, same port and settings); existing connections break. */
    restart: async () => {
      await run('pg_ctl', ['-D', data, '-l', logFile, '-m', 'fast', '-w', '-t', '30', 'restart']);
    },
  };

  try {
    await run('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync']);
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off ` +
        '-c synchronous_commit=off -c full_page_writes=off -c max_connections=100';
      try {
        await run('pg_ctl', ['-D', data, '-l', logFile, '-o', opts, '-w', '-t', '30', 'start']);
        break;
      } catch (e) {
        // Another process may have taken the port in between: try another.
        if (attempt >= 3) throw new Error(`${e.message}\nserver log:\n${log()}`);
      }
    }
    live.add(pg);
    if (database !== 'postgres') await pg.createDatabase(database);
  } catch (e) {
    live.add(pg);
    await pg.stop();
    throw e;
  }
  return pg;
}

let sessionSeq = 0;

function openSession(bin, port, db) {
  const proc = spawn(join(bin, 'psql'), ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=0',
    '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', db],
  { env: pgEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let waiter = null;
  const check = () => {
    if (!waiter) return;
    const o = out.indexOf(waiter.mark);
    const e = err.indexOf(waiter.mark);
    if (o < 0 || e < 0) return;
    const w = waiter;
    waiter = null;
    const res = { out: out.slice(0, o).trim(), err: err.slice(0, e).trim() };
    out = out.slice(o + w.mark.length);
    err = err.slice(e + w.mark.length);
    clearTimeout(w.timer);
    w.resolve(res);
  };
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; check(); });
  proc.stderr.on('data', (d) => { err += d; check(); });
  const exited = new Promise((r) => proc.on('exit', (code) => {
    if (waiter) { clearTimeout(waiter.timer); waiter.reject(new Error(`psql exited (${code}): ${err}`)); waiter = null; }
    r(code);
  }));
  return {
    /** Send sql (';' added when missing); resolves {out, err}: what psql printed on stdout and stderr for it. */
    run(sql, timeoutMs = 10000) {
      if (waiter) return Promise.reject(new Error('one statement at a time'));
      const mark = `__stoa_session_${++sessionSeq}__`;
      return new Promise((resolve, reject) => {
        waiter = { mark, resolve, reject };
        waiter.timer = setTimeout(() => {
          waiter = null;
          reject(new Error(`psql did not finish within ${timeoutMs} ms: ${sql}\nstdout: ${out}\nstderr: ${err}`));
        }, timeoutMs);
        // psql runs a statement at its ';': add one, or the marker would come first.
        const text = /;\s*$/.test(sql) ? sql : `${sql};`;
        proc.stdin.write(`${text}\n\\echo ${mark}\n\\warn ${mark}\n`);
      });
    },
    async close() {
      proc.stdin.end();
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}
