// Helpers for black-box tests: run the real `stoa` binary, mint tokens with
// `stoa token`, and drive it with real WebSocket clients.
//
//   const srv = await startStoa(['--max-state-bytes', '128']);
//   const tok = await srv.token({ sub: 'ada', name: 'Ada', rooms: { 'doc:*': 'rw' } });
//   const a = await srv.client({ token: tok });      // resolves after `welcome`
//   a.send({ type: 'join', room: 'doc:1', id: 1 });
//   const rs = await a.next((m) => m.type === 'room_state');
//   await srv.stop();
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { before, after, it } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

export { WebSocket };

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const STOA_BIN = process.env.STOA_BIN || join(REPO, 'build', 'stoa');
export const WWW_DIR = join(REPO, 'www');
/** Absolute path of the `ws` package, for child scripts (`node -e`). */
export const WS_MODULE = createRequire(import.meta.url).resolve('ws');

export const DEFAULT_TIMEOUT = 5000;
/** Start-up and shutdown get more: sanitizer builds are slow. */
const START_TIMEOUT = 15000;
const STOP_KILL_AFTER = 5000;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Children still running when this process exits (a crash, an assertion
// escaping after()) must not outlive it.
const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** Run a command; resolves {code, signal, stdout, stderr}, never rejects on exit status. */
export function run(bin, args, { env, timeout = 15000, input } = {}) {
  return new Promise((resolveRun, reject) => {
    const child = execFile(bin, args, { env: env ?? process.env, timeout, maxBuffer: 4 << 20 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number' && !err.signal) return reject(err);
        resolveRun({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0,
                     signal: err?.signal ?? null, stdout, stderr });
      });
    if (input !== undefined) child.stdin.end(input);
  });
}

/** Run `stoa ARGS...`. */
export const runStoa = (args, opts) => run(STOA_BIN, args, opts);

/** Flags that must be the same for `stoa token` as for the server it mints for. */
const SIGNING_FLAGS = new Set(['--jwt-secret', '--jwt-issuer', '--jwt-audience', '--jwt-alg',
  '--jwt-private-key-file', '--jwt-public-key-file']);

function signingFlags(flags) {
  const out = [];
  for (let i = 0; i < flags.length; i++) {
    const f = flags[i];
    const name = f.includes('=') ? f.slice(0, f.indexOf('=')) : f;
    if (!SIGNING_FLAGS.has(name)) continue;
    if (f.includes('=')) out.push(f);
    else out.push(f, flags[++i]);
  }
  return out;
}

/**
 * Mint a token with `stoa token`. opts: sub (required), name, color, rooms
 * (object or JSON text), ttl (seconds), anon, dataDir, flags (more settings,
 * e.g. ['--jwt-secret', S]).
 */
export async function mintToken({ sub, name, color, rooms, ttl, anon, dataDir, flags = [] }) {
  const args = ['token'];
  if (sub !== undefined) args.push('--sub', sub);
  if (name !== undefined) args.push('--name', name);
  if (color !== undefined) args.push('--color', color);
  if (rooms !== undefined) args.push('--rooms', typeof rooms === 'string' ? rooms : JSON.stringify(rooms));
  if (ttl !== undefined) args.push('--ttl', String(ttl));
  if (anon) args.push('--anon');
  if (dataDir) args.push('--data-dir', dataDir);
  args.push(...flags);
  const r = await runStoa(args);
  if (r.code !== 0) throw new Error(`stoa ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.trim();
}

/**
 * Start `stoa serve` on a free port with a fresh data dir.
 * opts.listen: the --listen value ('127.0.0.1:0'); null leaves the flag out.
 * opts.env: extra environment variables.
 * opts.dataDir: use this data dir (kept on stop) instead of a fresh one (removed on stop).
 * Resolves {port, url, wsUrl, dataDir, proc, exited, logs(), stop(), token(), client(), connect()}.
 */
export async function startStoa(flags = [], { listen = '127.0.0.1:0', env = {}, wwwDir = WWW_DIR, dataDir: ownDir } = {}) {
  const dataDir = ownDir ?? mkdtempSync(join(tmpdir(), 'stoa-it-'));
  const removeDataDir = () => { if (!ownDir) rmSync(dataDir, { recursive: true, force: true }); };
  const args = ['serve'];
  if (listen !== null) args.push('--listen', listen);
  args.push('--data-dir', dataDir, '--www-dir', wwwDir, ...flags);
  const proc = spawn(STOA_BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let stderr = '';
  let stdout = '';
  const clients = new Set();
  const exited = new Promise((r) => proc.on('exit', (code, signal) => { live.delete(proc); r({ code, signal }); }));
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.setEncoding('utf8');

  const port = await new Promise((resolvePort, reject) => {
    const timer = setTimeout(() => reject(new Error(`stoa did not report its port within ${START_TIMEOUT} ms:\n${stderr}`)),
      START_TIMEOUT);
    proc.stderr.on('data', (d) => {
      stderr += d;
      const m = /\(port (\d+)\)/.exec(stderr);
      if (m) { clearTimeout(timer); resolvePort(Number(m[1])); }
    });
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`stoa exited (${code ?? signal}) before listening:\n${stderr}`));
    });
  }).catch((e) => { proc.kill('SIGKILL'); removeDataDir(); throw e; });

  const srv = {
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/v1/ws`,
    dataDir,
    proc,
    flags,
    exited,
    logs: () => stderr,
    stdout: () => stdout,
    /** Mint a token this server accepts (same data dir, same signing flags). */
    token: (opts) => mintToken({ dataDir, ...opts, flags: [...signingFlags(flags), ...(opts.flags ?? [])] }),
    /** Open a WebSocket; resolves once open (no wait for welcome). See Client.open. */
    connect: async (opts = {}) => {
      const c = await Client.open(srv, opts);
      clients.add(c);
      return c;
    },
    /** Open a WebSocket and wait for `welcome` (kept in c.welcome, removed from the inbox). */
    client: async (opts = {}) => {
      const c = await srv.connect(opts);
      c.welcome = await c.next((m) => m.type === 'welcome');
      c.peer = c.welcome.peer;
      return c;
    },
    /** fetch() against this server: path like '/healthz'. */
    fetch: (path, init) => fetch(srv.url + path, init),
    /** SIGTERM, wait for exit (SIGKILL after 5 s); remove the data dir. Resolves {code, signal}. */
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), STOP_KILL_AFTER);
        await exited;
        clearTimeout(t);
      }
      for (const c of clients) c.terminate();
      removeDataDir();
      return exited;   // the same {code, signal} however often stop() is called
    },
  };
  return srv;
}

/**
 * In a describe(): start a server before its tests and stop it after.
 * Returns an object filled in by before() with the server's fields.
 * End the describe() with itStopsCleanly(srv) to check the exit.
 */
export function useStoa(flags = [], opts = {}) {
  const holder = {};
  before(async () => { Object.assign(holder, await startStoa(flags, opts)); });
  after(async () => { if (holder.stop) await holder.stop(); });
  return holder;
}

/**
 * A test (so that it is counted) that stops the server of useStoa() with
 * SIGTERM and expects exit status 0: a crash, a sanitizer report or a hung
 * shutdown fails it, printing the server's log.
 */
export function itStopsCleanly(holder) {
  it('the server exits 0 on SIGTERM', async () => {
    const { code, signal } = await holder.stop();
    assert.deepEqual({ code, signal }, { code: 0, signal: null },
      `stoa ${holder.flags.join(' ')} did not exit cleanly; its log:\n${holder.logs()}`);
  });
}

function describeMsg(m) {
  const s = JSON.stringify(m);
  return s.length > 300 ? s.slice(0, 300) + '…' : s;
}

/** Parsed messages in arrival order: next(pred), peek, drain, expectNone. Client, SseStream and Poller extend it. */
export class Inbox {
  constructor() {
    this.inbox = [];
    this.received = [];
    this.waiters = [];
    this.ended = null;   // a reason once no more messages can come
  }

  push(m) {
    this.received.push(m);
    this.inbox.push(m);
    for (const w of [...this.waiters]) {
      const i = this.inbox.findIndex(w.pred);
      if (i >= 0) {
        const [hit] = this.inbox.splice(i, 1);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.done(hit);
      }
    }
  }

  end(reason) {
    if (this.ended) return;
    this.ended = reason;
    for (const w of this.waiters.splice(0)) w.fail(new Error(`stream ended (${reason}) while waiting`));
  }

  next(pred = () => true, timeoutMs = DEFAULT_TIMEOUT) {
    const f = typeof pred === 'string' ? (m) => m.type === pred : pred;
    const i = this.inbox.findIndex(f);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
    if (this.ended) return Promise.reject(new Error(`stream already ended (${this.ended})`));
    return new Promise((resolve, reject) => {
      const w = {
        pred: f,
        done: (m) => { clearTimeout(w.timer); resolve(m); },
        fail: (e) => {
          clearTimeout(w.timer);
          e.message += `; waiting for ${pred.toString()}; inbox: ${this.inbox.map(describeMsg).join(' | ')}`;
          reject(e);
        },
      };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.fail(new Error(`no matching message within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  peek(pred = () => true) {
    const f = typeof pred === 'string' ? (m) => m.type === pred : pred;
    return this.inbox.filter(f);
  }

  drain() {
    return this.inbox.splice(0);
  }

  async expectNone(pred, ms = 300) {
    const f = typeof pred === 'string' ? (m) => m.type === pred : pred;
    await sleep(ms);
    const hits = this.inbox.filter(f);
    if (hits.length) throw new Error(`unexpected message(s): ${hits.map(describeMsg).join(' | ')}`);
  }
}

/** A WebSocket client with an inbox of parsed messages. */
export class Client extends Inbox {
  /**
   * opts: token, via ('query' | 'header' | 'cookie'; default 'query'),
   * origin, headers, path (default '/v1/ws'), protocol.
   * Resolves when the WebSocket is open; rejects if the handshake fails.
   */
  static open(srv, { token, via = 'query', origin, headers = {}, path = '/v1/ws', protocol } = {}) {
    let url = `ws://127.0.0.1:${srv.port}${path}`;
    const h = { ...headers };
    if (token !== undefined) {
      if (via === 'query') url += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
      else if (via === 'header') h.Authorization = `Bearer ${token}`;
      else if (via === 'cookie') h.Cookie = `theme=dark; stoa_token=${token}; other=1`;
      else throw new Error(`unknown via ${via}`);
    }
    const wsOpts = { headers: h, handshakeTimeout: DEFAULT_TIMEOUT };
    if (origin !== undefined) wsOpts.origin = origin;
    const ws = protocol ? new WebSocket(url, protocol, wsOpts) : new WebSocket(url, wsOpts);
    const c = new Client(ws, srv);
    return new Promise((resolveOpen, reject) => {
      ws.once('open', () => resolveOpen(c));
      ws.once('error', (e) => reject(e));
      ws.once('unexpected-response', (req, res) => {
        const err = new Error(`handshake refused: HTTP ${res.statusCode}`);
        err.statusCode = res.statusCode;
        req.destroy();
        reject(err);
      });
    });
  }

  constructor(ws, srv) {
    super();
    this.ws = ws;
    this.srv = srv;
    this.nonText = [];      // binary frames, if any
    this.closeInfo = null;
    this.closed = new Promise((r) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        r(this.closeInfo);
        this.end(`connection closed (${code})`);
      });
    });
    ws.on('error', () => { /* surfaces as close */ });
    ws.on('message', (data, isBinary) => {
      if (isBinary) { this.nonText.push(data); return; }
      let m;
      try { m = JSON.parse(data.toString()); } catch { m = { type: '<unparseable>', raw: data.toString() }; }
      this.push(m);
    });
  }

  /**
   * Round trip: send a ping with a fresh id and wait for its pong. Anything
   * the server queued for this connection before handling the ping is then
   * in the inbox (one connection's messages are delivered in order).
   */
  async sync(timeoutMs = DEFAULT_TIMEOUT) {
    const id = `sync-${++Client.seq}`;
    this.send({ type: 'ping', id });
    await this.next((m) => m.type === 'pong' && m.id === id, timeoutMs);
  }

  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  sendRaw(data, opts) {
    this.ws.send(data, opts);
  }

  /** Send and wait for the answer carrying the same id (any type). */
  async request(obj, timeoutMs) {
    if (obj.id === undefined) obj = { ...obj, id: `req-${++Client.seq}` };
    this.send(obj);
    return this.next((m) => m.id === obj.id, timeoutMs);
  }

  /** Join a room; resolves the room_state (rejects with the error otherwise). */
  async join(room, state) {
    const msg = { type: 'join', room, id: `join-${++Client.seq}` };
    if (state !== undefined) msg.state = state;
    const r = await this.request(msg);
    if (r.type !== 'room_state') throw new Error(`join ${room} failed: ${describeMsg(r)}`);
    return r;
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Close with a close frame and wait until closed. */
  async close(code = 1000) {
    if (this.ws.readyState === WebSocket.CLOSED) return this.closeInfo;
    if (this.ws.readyState !== WebSocket.CLOSING) this.ws.close(code);
    const t = setTimeout(() => this.ws.terminate(), DEFAULT_TIMEOUT);
    const info = await this.closed;
    clearTimeout(t);
    return info;
  }

  terminate() {
    this.ws.terminate();
  }
}
Client.seq = 0;

/** Poll fn until it returns a truthy value; returns it, or throws after timeoutMs. */
export async function waitFor(fn, { timeoutMs = DEFAULT_TIMEOUT, intervalMs = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** GET a room's presence over REST; resolves the parsed body. */
export async function roomPresence(srv, room, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await srv.fetch(`/v1/rooms/${room}/presence`, { headers });
  if (r.status !== 200) throw new Error(`GET presence of ${room}: ${r.status} ${await r.text()}`);
  return r.json();
}
