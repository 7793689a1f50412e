// stoa.js - a client for Stoa, the realtime presence server.
//
// A dependency-free ES module for browsers and Node >= 18. One session,
// three transports: WebSocket when the network allows it, Server-Sent
// Events (plus POST for what the client sends) when it does not, long-poll
// (plus POST) when even SSE is held back by a buffering proxy. The session
// outlives any one connection; every numbered message is delivered once,
// in order, whatever the transport and however often it changes.
//
//   import { StoaClient } from '/stoa.js';
//   const c = new StoaClient({ url: 'https://presence.example.com', token });
//   c.on('presence', (m) => render(m.peer, m.state));
//   await c.connect();
//   await c.join('doc:1', { name: 'Ada' });
//   c.setPresence('doc:1', { cursor: { line: 3 } });
//   c.send('doc:1', { kind: 'reaction', emoji: '🎉' });
//
// In Node, give it a WebSocket implementation (the `ws` package):
//   new StoaClient({ url, WebSocket: (await import('ws')).default })
//
// docs/client.md explains the options, the events, and the fallback and
// upgrade algorithm; docs/protocol.md is the wire contract.

/** Transport names, best first. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'longpoll']);

const DEFAULTS = Object.freeze({
  transports: TRANSPORTS,
  /** The SSE welcome event must arrive within this (a buffering proxy delivers nothing at all). */
  sseFirstEventTimeoutMs: 3000,
  /** An SSE stream silent this long is dead (the server sends a comment every 15 s). */
  sseIdleTimeoutMs: 45000,
  /** Ask for ?pad=1 on SSE: a padding comment first, for proxies that hold the first bytes. */
  ssePadding: false,
  /** The WebSocket welcome must arrive within this. */
  wsOpenTimeoutMs: 5000,
  /** On WebSocket, send a `ping` after this much silence; give up after twice as much. */
  wsPingIntervalMs: 25000,
  /** A long-poll request is abandoned after this (the server holds one at most 25 s). */
  pollRequestTimeoutMs: 40000,
  /** Try to move to a better transport this often; 0: never. */
  upgradeIntervalMs: 30000,
  /** Reconnect delays: first, then doubling (with jitter) up to the maximum. */
  reconnectDelayMs: 250,
  reconnectMaxDelayMs: 15000,
  /** Client-to-server POST batches stay under this many bytes (strict proxies refuse 8 KiB bodies). */
  maxBatchBytes: 7168,
  /** Messages in one POST batch, at most (the server takes 256). */
  maxBatchMessages: 256,
  /** join / leave / requests with an id are rejected if unanswered after this. */
  requestTimeoutMs: 20000,
  /** Join again when the server evicts us from a room for want of a heartbeat (not when kicked). */
  autoRejoin: true,
  /** `credentials` for fetch (browsers: 'include' to send cookies cross-origin). */
  credentials: undefined,
  /** Outgoing messages queued while disconnected, at most; beyond, the oldest
   * presence or ephemeral message is dropped (joins and leaves never are). */
  maxQueuedMessages: 1000,
  /** Outside a browser, presence patches are coalesced over this interval
   * (in a browser: one animation frame). */
  presenceIntervalMs: 16,
  /** Hold presence updates while the page is hidden; send the fresh state when shown. */
  pauseWhenHidden: true,
  /** In a browser, end the session when the page goes away (pagehide), so
   * its peers see it leave at once (SSE and long-poll have no close frame). */
  leaveOnPageHide: true,
});

/** An error with a Stoa error code (`SESSION_NOT_FOUND`, `AUTH_FAILED`, ...). */
export class StoaError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'StoaError';
    this.code = code;
    Object.assign(this, extra);
  }
}

/** A tiny event emitter: on() returns a function that removes the listener. */
class Emitter {
  constructor() { this._listeners = new Map(); }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  once(event, fn) {
    const off = this.on(event, (...args) => { off(); fn(...args); });
    return off;
  }

  off(event, fn) { this._listeners.get(event)?.delete(fn); }

  emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug must not break delivery; report it asynchronously.
        setTimeout(() => { throw e; });
      }
    }
  }
}

let uniqueCounter = 0;
/** A value no earlier request used: defeats caches that merge identical GETs. */
function unique() {
  uniqueCounter = (uniqueCounter + 1) % 1e9;
  return `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}${uniqueCounter.toString(36)}`;
}

const utf8 = new TextEncoder();
const byteLength = (s) => utf8.encode(s).length;

/** JSON merge-patch (RFC 7386), as the server applies presence patches. */
/** One merge-patch doing what `a` then `b` do (null deletes survive). */
function composePatch(a, b) {
  if (a === undefined || a === null || typeof a !== 'object' || Array.isArray(a) ||
      b === null || typeof b !== 'object' || Array.isArray(b)) return b;
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) {
    out[k] = v !== null && typeof v === 'object' && !Array.isArray(v) && out[k] !== null && typeof out[k] === 'object'
      ? composePatch(out[k], v) : v;
  }
  return out;
}

function mergePatch(target, patch) {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** An error from a failed HTTP answer, with the server's code when it gave one. */
async function httpError(res, what) {
  let code = `HTTP_${res.status}`;
  let message = `${what}: HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body?.error?.code) {
      code = body.error.code;
      message = `${what}: ${body.error.code}: ${body.error.message}`;
    }
  } catch { /* not JSON: a proxy's page */ }
  return new StoaError(code, message, { status: res.status });
}

// ---------------------------------------------------------------------------
// Connections. Each is one attempt at one transport. start() resolves once
// the server has attached the session to it (the welcome arrived), or
// rejects; after that, it reports to the client through _deliver() and,
// once, _lost(). retire() silences it for good.
// ---------------------------------------------------------------------------

class Conn {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.ready = false;     // attached: the welcome arrived
    this.retired = false;   // silenced by the client
    this.dead = false;      // failed after being ready
  }

  /** Report a failure after start() resolved (once; never after retire()). */
  _lost(err) {
    if (this.retired || this.dead) return;
    this.dead = true;
    this._cleanup();
    this.client._onConnLost(this, err);
  }

  _deliver(seq, msg) {
    if (!this.retired) this.client._deliver(this, seq, msg);
  }

  pause() {}
  resume() {}
  _cleanup() {}
}

/**
 * WebSocket: the welcome anchors the count; every later message is the
 * next seq, except `resync`, which states its own.
 */
class WsConn extends Conn {
  constructor(client) {
    super(client, 'websocket');
    this.seq = 0;
    this.lastRx = Date.now();
  }

  start(url) {
    const opts = this.client.options;
    return new Promise((resolve, reject) => {
      let settled = false;
      let refusal = null;   // an `error` the server sent before closing
      const fail = (err) => {
        if (settled) return;
        settled = true;
        this.retire();
        reject(err);
      };
      try {
        this.ws = new this.client._WebSocket(url, 'stoa.v1');
      } catch (e) {
        fail(e);
        return;
      }
      const ws = this.ws;
      this.openTimer = setTimeout(() => fail(new StoaError('TIMEOUT', `WebSocket: no welcome within ${opts.wsOpenTimeoutMs} ms`)),
        opts.wsOpenTimeoutMs);
      ws.onmessage = (ev) => {
        if (this.retired) return;
        this.lastRx = Date.now();
        let m;
        try {
          m = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data));
        } catch {
          return;   // not ours to judge; the server sends JSON text only
        }
        if (!this.ready) {
          if (m.type !== 'welcome') {
            refusal = m;   // e.g. SESSION_NOT_FOUND, then a close
            return;
          }
          this.ready = true;
          settled = true;
          clearTimeout(this.openTimer);
          this.seq = m.seq;
          this._startKeepalive();
          this.client._onWelcome(this, m);
          resolve();
          return;
        }
        this.seq = m.type === 'resync' && Number.isInteger(m.seq) ? m.seq : this.seq + 1;
        this._deliver(this.seq, m);
      };
      let errorText = '';
      ws.onerror = (ev) => { errorText = ev?.message ?? ''; /* a close follows */ };
      ws.onclose = (ev) => {
        if (this.retired) return;
        const code = refusal?.code ?? closeCodeName(ev.code);
        const err = new StoaError(code,
          `WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})` +
          (refusal ? `: ${refusal.message}` : errorText ? `: ${errorText}` : ''),
          { closeCode: ev.code });
        if (!this.ready) fail(err);
        else this._lost(err);
      };
      // Node's `ws`: an HTTP answer instead of 101 (e.g. a proxy's 426) also
      // reaches onerror/onclose; nothing more is needed here.
    });
  }

  /** Silence before the server pings us is fine; a long one means a dead link. */
  _startKeepalive() {
    const every = this.client.options.wsPingIntervalMs;
    if (!every) return;
    this.keepalive = setInterval(() => {
      const quiet = Date.now() - this.lastRx;
      if (quiet >= 2 * every) this.kill(new StoaError('TIMEOUT', `WebSocket: nothing received for ${quiet} ms`));
      else if (quiet >= every) this.send(JSON.stringify({ type: 'ping' }));
    }, Math.max(1000, Math.floor(every / 2)));
  }

  get open() { return this.ws && this.ws.readyState === 1; }

  send(text) {
    if (!this.open) return false;
    this.ws.send(text);
    return true;
  }

  _cleanup() {
    clearTimeout(this.openTimer);
    clearInterval(this.keepalive);
  }

  /**
   * Drop the socket without a close frame where the platform allows it
   * (Node's `ws`: terminate()): a close frame would end the session. A
   * browser can only close with a frame, so there the socket is left to
   * the server, which closes it once another connection takes the session
   * (4009), unless `clean` says the session is over or already elsewhere.
   */
  _drop(clean) {
    const ws = this.ws;
    if (!ws || ws.readyState >= 2) return;
    if (clean) ws.close(1000);
    else if (typeof ws.terminate === 'function') ws.terminate();
  }

  retire({ clean = false } = {}) {
    this.retired = true;
    this._cleanup();
    this._drop(clean);
  }

  /** Break the link as a network failure would (tests, and dead links). */
  kill(err = new StoaError('KILLED', 'WebSocket dropped')) {
    if (this.ws && typeof this.ws.terminate === 'function' && !this.retired) {
      this.ws.terminate();   // onclose reports it
      return;
    }
    this._lost(err);
    this.retired = true;
  }
}

/** Server-Sent Events read with fetch (any runtime with streaming fetch). */
class SseConn extends Conn {
  constructor(client) {
    super(client, 'sse');
  }

  start(url) {
    const opts = this.client.options;
    this.abort = new AbortController();
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err) => {
        if (settled) return;
        settled = true;
        this.retire();
        reject(err);
      };
      this.onReady = (welcome) => {
        settled = true;
        clearTimeout(this.firstTimer);
        this.client._onWelcome(this, welcome);
        resolve();
      };
      this.firstTimer = setTimeout(() => fail(new StoaError('TIMEOUT',
        `SSE: no first event within ${opts.sseFirstEventTimeoutMs} ms (a buffering proxy?)`)), opts.sseFirstEventTimeoutMs);
      this._read(url).then(
        () => (this.ready ? this._lost(new StoaError('STREAM_ENDED', 'SSE stream ended')) : fail(new StoaError('STREAM_ENDED', 'SSE stream ended before its welcome'))),
        (err) => (this.ready ? this._lost(err) : fail(err)));
    });
  }

  async _read(url) {
    const res = await this.client._fetch(url, {
      headers: { Accept: 'text/event-stream' },
      signal: this.abort.signal,
      credentials: this.client.options.credentials,
    });
    if (!res.ok) throw await httpError(res, 'SSE');
    if (!res.body) throw new StoaError('NOT_SUPPORTED', 'SSE: this fetch cannot stream a response body');
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let ev = { id: undefined, data: [] };
    this._touch();
    for (;;) {
      const { value, done } = await reader.read();
      if (this.retired) return;
      if (done) return;
      this._touch();
      buf += decoder.decode(value, { stream: true });
      // Complete lines only; a trailing '\r' may be half of "\r\n".
      let start = 0;
      for (;;) {
        let end = -1;
        for (let i = start; i < buf.length; i++) {
          const ch = buf.charCodeAt(i);
          if (ch === 10 || ch === 13) { end = i; break; }
        }
        if (end < 0 || (buf.charCodeAt(end) === 13 && end === buf.length - 1)) break;
        const line = buf.slice(start, end);
        start = end + (buf.charCodeAt(end) === 13 && buf.charCodeAt(end + 1) === 10 ? 2 : 1);
        if (line === '') {
          if (ev.data.length) this._event(ev);
          ev = { id: undefined, data: [] };
          if (this.retired) return;
          continue;
        }
        if (line[0] === ':') continue;   // a comment: padding, heartbeat
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value2 = colon < 0 ? '' : line.slice(colon + 1);
        if (value2[0] === ' ') value2 = value2.slice(1);
        if (field === 'data') ev.data.push(value2);
        else if (field === 'id') ev.id = value2;
        // `retry` and `event` are not used by Stoa's client.
      }
      buf = buf.slice(start);
    }
  }

  _event(ev) {
    let m;
    try {
      m = JSON.parse(ev.data.join('\n'));
    } catch {
      return;
    }
    if (ev.id === undefined || ev.id === '') {
      if (m.type === 'welcome' && !this.ready) {
        this.ready = true;
        this.onReady(m);
      }
      return;
    }
    if (this.ready) this._deliver(Number(ev.id), m);
  }

  /** Bytes arrived: the stream is alive. */
  _touch() {
    clearTimeout(this.idleTimer);
    const ms = this.client.options.sseIdleTimeoutMs;
    if (ms) {
      this.idleTimer = setTimeout(() => {
        this.abort.abort();
        this._lost(new StoaError('TIMEOUT', `SSE: nothing received for ${ms} ms`));
      }, ms);
    }
  }

  _cleanup() {
    clearTimeout(this.firstTimer);
    clearTimeout(this.idleTimer);
  }

  retire() {
    this.retired = true;
    this._cleanup();
    this.abort?.abort();
  }

  kill(err = new StoaError('KILLED', 'SSE stream dropped')) {
    this.abort?.abort();
    this._lost(err);
    this.retired = true;
  }
}

/**
 * Long-poll: GET .../poll?after=<lastSeq>&_=<unique>, one at a time. Each
 * answer is a whole JSON document: {first_seq, last_seq, messages}.
 */
class PollConn extends Conn {
  constructor(client) {
    super(client, 'longpoll');
    this.paused = false;
    this.inflight = null;   // {abort, done: Promise}
  }

  /**
   * Polls carry no welcome (the session is the one POST /v1/sessions
   * made), and a poll may be held for 25 s: so prove first that the server
   * answers and still has the session (GET /v1/sessions/{id}), and count
   * as open only then. A server that is down fails here, not after the
   * transport was reported open.
   */
  async start() {
    const c = this.client;
    const res = await c._fetch(c._sessionUrl(), { credentials: c.options.credentials,
      signal: timeoutSignal(c.options.wsOpenTimeoutMs) });
    if (res.status !== 200) throw await httpError(res, 'long-poll');
    await res.text().catch(() => '');
    if (this.retired) return;
    this.ready = true;
    this._loop();
  }

  async _loop() {
    if (this.looping) return;
    this.looping = true;
    try {
      while (!this.retired && !this.paused && !this.dead) {
        const err = await this._pollOnce();
        if (err) {
          if (this.retired || this.paused) break;
          this._lost(err);
          break;
        }
      }
    } finally {
      this.looping = false;
    }
  }

  /** One poll; resolves null on success, or the error. */
  async _pollOnce() {
    const c = this.client;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), c.options.pollRequestTimeoutMs);
    let release;
    this.inflight = { abort, done: new Promise((r) => { release = r; }) };
    try {
      const res = await c._fetch(`${c._sessionUrl()}/poll?after=${c.lastSeq}&_=${unique()}`, {
        signal: abort.signal,
        credentials: c.options.credentials,
      });
      if (res.status !== 200) {
        const err = await httpError(res, 'long-poll');
        return err;
      }
      const body = await res.json();
      if (this.retired) return null;
      const first = Number(body.first_seq);
      (body.messages ?? []).forEach((m, i) => this._deliver(first + i, m));
      return null;
    } catch (e) {
      if (this.retired || this.paused) return null;
      return abort.signal.aborted && !this.killed
        ? new StoaError('TIMEOUT', `long-poll: no answer within ${c.options.pollRequestTimeoutMs} ms`)
        : e;
    } finally {
      clearTimeout(timer);
      this.inflight = null;
      release();
    }
  }

  /**
   * Stop polling for a switch: abort the poll in flight. Whatever it may
   * have been sent is still in the server's buffer (nothing is dropped
   * there until a later request acknowledges it with after= or last_seq=),
   * so the next transport, attaching with last_seq, gets it again.
   */
  async pause() {
    this.paused = true;
    const f = this.inflight;
    if (f) {
      f.abort.abort();
      await f.done;
    }
  }

  resume() {
    if (this.retired || this.dead) return;
    this.paused = false;
    this._loop();
  }

  retire() {
    this.retired = true;
    this.inflight?.abort.abort();
  }

  kill(err = new StoaError('KILLED', 'long-poll dropped')) {
    this.killed = true;
    this.inflight?.abort.abort();
    this._lost(err);
    this.retired = true;
  }
}

function closeCodeName(code) {
  switch (code) {
    case 4001: return 'AUTH_FAILED';
    case 4004: return 'SESSION_NOT_FOUND';
    case 4009: return 'SUPERSEDED';
    case 1013: return 'SERVER_FULL';
    case 1001: return 'GOING_AWAY';
    default: return 'CLOSED';
  }
}

// ---------------------------------------------------------------------------

/**
 * A Stoa client. Events (listener arguments in parentheses):
 *  - 'welcome' (welcome, {transport}): a transport attached;
 *  - 'message' (msg, {seq, transport}): every numbered message, once, in order;
 *  - one event per message type, same arguments: 'room_state', 'peer_joined',
 *    'peer_left', 'presence', 'presence_batch' (also emitted as one
 *    'presence' per peer), 'ephemeral', 'ack', 'pong', 'notice', 'resync',
 *    'error' (server errors, and errors from POST batches);
 *  - 'transport' (name, previous): the transport in use changed (name null: none);
 *  - 'transport_error' (name, error): an attempt at a transport failed;
 *  - 'disconnect' (error): the transport in use broke; a reconnect follows;
 *  - 'session' (welcome, previousSessionId): a new session replaced one that ended;
 *  - 'state' (state, {transport}): 'connecting' | 'open' | 'reconnecting' |
 *    'closed', or the transport changed while open;
 *  - 'presence-changed' (room, peers): the local store of a room changed
 *    (a join, a leave, a presence change; see presence());
 *  - 'overflow' (msg): the bounded outgoing queue dropped a presence or
 *    ephemeral message (maxQueuedMessages);
 *  - 'close' (): close() finished.
 */
export class StoaClient extends Emitter {
  constructor(options = {}) {
    super();
    if (!options.url) throw new TypeError('StoaClient: options.url is required');
    this.options = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) this.options[k] = v;
    this.url = String(options.url).replace(/\/+$/, '');
    this.wsUrl = options.wsUrl ?? this.url.replace(/^http(s?):/i, 'ws$1:') + '/v1/ws';
    const f = options.fetch ?? globalThis.fetch;
    if (!f) throw new TypeError('StoaClient: no fetch available; pass options.fetch');
    this._fetch = (...args) => f.apply(options.fetch ? undefined : globalThis, args);
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.transports = this.options.transports.filter((t) => TRANSPORTS.includes(t) &&
      (t !== 'websocket' || this._WebSocket));
    if (!this.transports.length) throw new TypeError('StoaClient: no usable transport');

    this.session = null;     // the session id (a secret: whoever holds it may resume)
    this.peer = null;
    this.user = null;
    this.welcome = null;     // the latest welcome
    this.lastSeq = 0;        // the last numbered message delivered
    this.transport = null;   // 'websocket' | 'sse' | 'longpoll' | null
    this.rooms = new Map();  // room -> my presence state there, as I set it
    this.stats = {
      delivered: { websocket: 0, sse: 0, longpoll: 0 },
      duplicates: 0,    // numbered messages dropped as already seen
      gaps: 0,          // numbered messages that skipped ahead (should stay 0)
      reconnects: 0,
      switches: 0,
    };

    this._conn = null;
    this._switching = false;
    this._closed = false;
    this._reconnectTimer = null;
    this._reconnectAttempt = 0;
    this._penalty = new Map();   // transport -> {fails, until}
    this._outbox = [];
    this._flushQueued = false;
    this._posting = null;
    this._pending = new Map();   // request id -> {resolve, reject, timer}
    this._nextId = 1;
    this._heartbeatTimer = null;
    this._heartbeatMs = 0;
    this._upgradeTimer = null;

    this.state = 'closed';          // until connect(): see _setState
    this.stats.dropped = 0;         // outgoing messages the bounded queue dropped
    this._stores = new Map();       // room -> Map(peer -> {peer, user, state})
    this._pendingPresence = new Map();   // room -> merge-patch not sent yet
    this._presenceTimer = null;
    this._presenceFrame = null;
    this._lastPresenceAt = 0;
    this._postingCount = 0;         // outbox entries in the POST in flight
    this._hidden = false;
    this._onVisibility = null;
    if (this.options.pauseWhenHidden && typeof document !== 'undefined' && document.addEventListener) {
      this._hidden = document.visibilityState === 'hidden';
      this._onVisibility = () => {
        const hidden = document.visibilityState === 'hidden';
        if (hidden === this._hidden) return;
        this._hidden = hidden;
        if (!hidden) this._resumeVisible();
      };
      document.addEventListener('visibilitychange', this._onVisibility);
    }
    this._onPageHide = null;
    if (this.options.leaveOnPageHide && typeof window !== 'undefined' && window.addEventListener) {
      // A page being unloaded (or put in the back-forward cache) cannot
      // wait for anything: a keepalive DELETE outlives it. A page restored
      // from the cache finds its session gone and starts a new one.
      this._onPageHide = () => {
        if (!this.session || this._closed) return;
        try {
          this._fetch(this._sessionUrl(), { method: 'DELETE', keepalive: true,
            credentials: this.options.credentials }).catch(() => {});
        } catch { /* best effort */ }
      };
      window.addEventListener('pagehide', this._onPageHide);
    }
  }

  // ---- public API ----

  /**
   * Create the session (POST /v1/sessions) and attach the best transport
   * that works. Rejects if the session cannot be created or no transport
   * works now; once connected, breaks are repaired in the background.
   */
  async connect() {
    if (this._closed) throw new StoaError('CLOSED', 'this client was closed');
    if (this.state === 'closed') this._setState('connecting');
    if (!this.session) await this._createSession();
    const errors = await this._attach(null);
    if (!this._conn) {
      throw new StoaError('UNREACHABLE', `no transport works: ${errors.map((e) => e.message).join('; ')}`,
        { errors });
    }
    this._startUpgrades();
    return this;
  }

  /**
   * Enter a document's room with my initial presence state; resolves its
   * room_state. From then on presence(room) holds everyone in it and
   * 'presence-changed' fires on every join, leave and change.
   */
  enterDocument(room, state = {}) {
    this._stores.set(room, new Map());
    return this.join(room, state).catch((e) => {
      if (!this.rooms.has(room)) this._stores.delete(room);
      throw e;
    });
  }

  /** Leave a document's room; its local store is dropped. */
  leaveDocument(room) {
    this._pendingPresence.delete(room);
    if (this._stores.delete(room)) this.emit('presence-changed', room, []);
    return this.leave(room);
  }

  /**
   * Everyone in a room as this client knows them: [{peer, user, state,
   * self}], in the order they joined (self: my own entry, with the state
   * as I last set it).
   */
  presence(room) {
    const store = this._stores.get(room);
    if (!store) return [];
    return [...store.values()].map((p) => (p.peer === this.peer
      ? { ...p, state: this.rooms.get(room) ?? p.state, self: true }
      : { ...p, self: false }));
  }

  /** Relay `data` to the others in the room (ephemeral: never stored). */
  sendEphemeral(room, data) {
    this.send(room, data);
  }

  /** Enter a room; resolves the room_state (rejects with a StoaError). */
  join(room, state = {}) {
    this.rooms.set(room, state);
    return this._request({ type: 'join', room, state }).catch((e) => {
      // Refused (no right, bad name, full...): not a room to heartbeat or rejoin.
      if (!['ALREADY_JOINED', 'TIMEOUT', 'CLOSED'].includes(e.code) && this.rooms.get(room) === state) {
        this.rooms.delete(room);
      }
      throw e;
    });
  }

  /** Leave a room; resolves the ack. */
  leave(room) {
    this.rooms.delete(room);
    return this._request({ type: 'leave', room });
  }

  /**
   * Change my presence in a room by JSON merge-patch. Patches are
   * coalesced: at most one presence message per animation frame (outside
   * a browser, per presenceIntervalMs), never faster than the server's
   * presence_rate, and none while the page is hidden.
   */
  setPresence(room, patch) {
    if (this.rooms.has(room)) this.rooms.set(room, mergePatch(this.rooms.get(room), patch));
    this._pendingPresence.set(room, composePatch(this._pendingPresence.get(room), patch));
    if (this._stores.has(room)) this.emit('presence-changed', room, this.presence(room));
    this._schedulePresence();
  }

  /** Relay `data` to the others in the room (ephemeral: never stored). */
  send(room, data) {
    this._enqueue({ type: 'ephemeral', room, data });
  }

  /** Send any client message; with `id`, the returned promise resolves its answer. */
  request(msg) {
    return this._request(msg);
  }

  /**
   * Move to another transport now, without losing or repeating a message.
   * Resolves true when `name` is in use, false when it could not attach
   * (the current transport then goes on).
   */
  async switchTo(name) {
    if (!TRANSPORTS.includes(name)) throw new TypeError(`unknown transport ${name}`);
    return this._switchTo(name);
  }

  /** Break the current connection as the network would (for tests and diagnostics). */
  dropConnection() {
    this._conn?.kill();
  }

  /**
   * Leave for good: end the session (DELETE; peers see `peer_left` with
   * reason `leave`) and stop every transport and timer.
   */
  async close() {
    if (this._closed) return;
    this._sendPendingPresence(true);
    this._closed = true;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._presenceTimer);
    if (this._presenceFrame !== null && typeof cancelAnimationFrame === 'function') cancelAnimationFrame(this._presenceFrame);
    if (this._onVisibility) document.removeEventListener('visibilitychange', this._onVisibility);
    if (this._onPageHide) window.removeEventListener('pagehide', this._onPageHide);
    clearInterval(this._upgradeTimer);
    clearInterval(this._heartbeatTimer);
    const conn = this._conn;
    this._conn = null;
    // What is queued goes out first, as far as it can.
    await this._posting;
    if (conn?.name === 'websocket' && conn.ready) this._flushWs(conn);
    else if (conn?.ready && this._outbox.length) await withTimeout(this._postAll(true), 2000);
    if (this.session) {
      try {
        await this._fetch(this._sessionUrl(), { method: 'DELETE', credentials: this.options.credentials,
          signal: timeoutSignal(3000) });
      } catch { /* the WebSocket close frame, or the grace period, ends it */ }
    }
    conn?.retire({ clean: true });
    const prev = this.transport;
    this.transport = null;
    if (prev) this.emit('transport', null, prev);
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new StoaError('CLOSED', 'the client closed'));
    }
    this._pending.clear();
    this._setState('closed');
    this.emit('close');
  }

  // ---- state ----

  _setState(state) {
    const transport = this.transport;
    if (state === this.state && transport === this._stateTransport) return;
    this.state = state;
    this._stateTransport = transport;
    this.emit('state', state, { transport });
  }

  // ---- presence, coalesced ----

  _schedulePresence() {
    if (this._closed || this._hidden || this._presenceTimer || this._presenceFrame !== null) return;
    if (!this._pendingPresence.size) return;
    const rate = Number(this.welcome?.limits?.presence_rate) || 20;
    // Each flush sends one message per room with a pending patch: keep
    // the session under the server's token bucket.
    const gap = (1000 * this._pendingPresence.size) / rate * 1.05;
    const wait = Math.max(0, this._lastPresenceAt + gap - Date.now());
    const frame = () => {
      this._presenceFrame = null;
      this._sendPendingPresence(false);
    };
    if (wait > 0 || typeof requestAnimationFrame !== 'function') {
      const interval = typeof requestAnimationFrame === 'function' ? 0 : this.options.presenceIntervalMs;
      this._presenceTimer = setTimeout(() => {
        this._presenceTimer = null;
        if (typeof requestAnimationFrame === 'function' && !this._hidden) this._presenceFrame = requestAnimationFrame(frame);
        else this._sendPendingPresence(false);
      }, Math.max(wait, interval));
    } else {
      this._presenceFrame = requestAnimationFrame(frame);
    }
  }

  _sendPendingPresence(force) {
    if (this._closed || (this._hidden && !force) || !this._pendingPresence.size) return;
    for (const [room, state] of this._pendingPresence) this._enqueue({ type: 'presence', room, state });
    this._pendingPresence.clear();
    this._lastPresenceAt = Date.now();
  }

  /** The page is shown again: send what changed meanwhile and prove we are here. */
  _resumeVisible() {
    this._sendPendingPresence(false);
    for (const room of this.rooms.keys()) this._enqueue({ type: 'heartbeat', room });
  }

  /** Keep the local presence stores in step with what the server says. */
  _track(m) {
    const store = this._stores.get(m.room);
    if (!store) return;
    switch (m.type) {
      case 'room_state':
        store.clear();
        for (const p of m.peers ?? []) store.set(p.peer, { peer: p.peer, user: p.user, state: p.state ?? {} });
        break;
      case 'peer_joined':
        store.set(m.peer, { peer: m.peer, user: m.user, state: m.state ?? {} });
        break;
      case 'presence': {
        const p = store.get(m.peer);
        if (!p) return;
        p.state = m.state ?? {};
        break;
      }
      case 'presence_batch': {
        let changed = false;
        for (const e of m.peers ?? []) {
          const p = store.get(e.peer);
          if (!p || e.peer === this.peer) continue;
          p.state = e.state ?? {};
          changed = true;
        }
        if (!changed) return;
        break;
      }
      case 'peer_left':
        if (m.peer === this.peer) store.clear();
        else if (!store.delete(m.peer)) return;
        break;
      default:
        return;
    }
    this.emit('presence-changed', m.room, this.presence(m.room));
  }

  // ---- sessions ----

  _sessionUrl() {
    return `${this.url}/v1/sessions/${encodeURIComponent(this.session)}`;
  }

  async _token() {
    const t = this.options.token;
    return typeof t === 'function' ? t() : t;
  }

  async _createSession() {
    const token = await this._token();
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await this._fetch(`${this.url}/v1/sessions`, { method: 'POST', headers,
      credentials: this.options.credentials });
    if (res.status !== 201) throw await httpError(res, 'POST /v1/sessions');
    const w = await res.json();
    const previous = this.session;
    this.session = w.session;
    this.peer = w.peer;
    this.user = w.user;
    this.welcome = w;
    this.lastSeq = w.seq;
    this._setHeartbeat(w.heartbeat_interval);
    if (previous) {
      // The old session ended: the server forgot our rooms. Join them again
      // (first in line, before anything queued) with the state we had.
      const joins = [...this.rooms].map(([room, state]) => ({ type: 'join', room, state }));
      this._outbox.unshift(...joins);
      this.emit('session', w, previous);
    }
  }

  // ---- transports ----

  _makeConn(name) {
    if (name === 'websocket') return new WsConn(this);
    if (name === 'sse') return new SseConn(this);
    return new PollConn(this);
  }

  async _connUrl(name) {
    if (name === 'websocket') {
      const token = await this._token();
      return `${this.wsUrl}?session=${encodeURIComponent(this.session)}&last_seq=${this.lastSeq}` +
        (token ? `&token=${encodeURIComponent(token)}` : '');
    }
    if (name === 'sse') {
      return `${this._sessionUrl()}/sse?last_seq=${this.lastSeq}&_=${unique()}` +
        (this.options.ssePadding ? '&pad=1' : '');
    }
    return null;
  }

  /** Start a connection on `name`; resolves it attached, or rejects. */
  async _open(name) {
    const conn = this._makeConn(name);
    const url = await this._connUrl(name);
    try {
      await conn.start(url);
    } catch (e) {
      conn.retire();
      throw e;
    }
    return conn;
  }

  /** Make `conn` the transport in use. */
  _adopt(conn) {
    const prev = this.transport;
    this._conn = conn;
    this.transport = conn.name;
    this._penalty.delete(conn.name);
    if (prev !== conn.name) this.emit('transport', conn.name, prev);
    this._setState('open');
    this._scheduleFlush();
  }

  /** Candidate order: `first`, then unpenalized transports best first, then penalized ones. */
  _candidates(first) {
    const now = Date.now();
    const free = this.transports.filter((t) => !(this._penalty.get(t)?.until > now));
    const held = this.transports.filter((t) => !free.includes(t));
    const order = [...free, ...held];
    if (first && TRANSPORTS.includes(first) && (first !== 'websocket' || this._WebSocket)) {
      if (order.includes(first)) order.splice(order.indexOf(first), 1);
      order.unshift(first);
    }
    return order;
  }

  _penalize(name) {
    const p = this._penalty.get(name) ?? { fails: 0, until: 0 };
    p.fails += 1;
    const base = this.options.upgradeIntervalMs || 30000;
    p.until = Date.now() + base * 2 ** Math.min(p.fails - 1, 4);
    this._penalty.set(name, p);
  }

  /**
   * Try transports in order until one attaches. Resolves the errors of the
   * ones that failed (this._conn is set on success).
   */
  async _attach(first) {
    const errors = [];
    for (const name of this._candidates(first)) {
      if (this._closed) break;
      try {
        const conn = await this._open(name);
        if (this._closed) {
          conn.retire({ clean: true });
          break;
        }
        this._adopt(conn);
        return errors;
      } catch (e) {
        errors.push(e);
        this._penalize(name);
        this.emit('transport_error', name, e);
        if (e.code === 'SESSION_NOT_FOUND') {
          // The session ended (grace period over, or the server restarted):
          // start a new one and begin again from the best transport.
          await this._createSession();
          return this._attach(first);
        }
      }
    }
    return errors;
  }

  _onConnLost(conn, err) {
    if (conn !== this._conn || this._closed) return;
    if (this._switching) {
      // Expected when a switch supersedes it; decided when the switch ends.
      conn.lostDuringSwitch = err;
      return;
    }
    this._conn = null;
    const prev = this.transport;
    this.transport = null;
    this.emit('disconnect', err);
    this.emit('transport', null, prev);
    this._setState('reconnecting');
    this._scheduleReconnect(conn.name, err);
  }

  _scheduleReconnect(preferred, err) {
    if (this._closed || this._reconnectTimer) return;
    const o = this.options;
    const n = this._reconnectAttempt++;
    const base = Math.min(o.reconnectMaxDelayMs, o.reconnectDelayMs * 2 ** n);
    // The first retry after a clean takeover (4009) is immediate; then
    // exponential backoff with full jitter, so that clients cut off by one
    // server restart do not all come back at the same instant.
    const delay = n === 0 && err?.code === 'SUPERSEDED' ? 0 : Math.random() * base;
    this._reconnectTimer = setTimeout(async () => {
      this._reconnectTimer = null;
      if (this._closed || this._conn) return;
      this.stats.reconnects++;
      try {
        if (err?.code === 'SESSION_NOT_FOUND') await this._createSession();
        await this._attach(preferred);
      } catch (e) {
        this.emit('transport_error', null, e);
      }
      if (this._conn) this._reconnectAttempt = 0;
      else this._scheduleReconnect(preferred, null);
    }, delay);
  }

  /**
   * Switch from the transport in use to `name` without loss or repeat:
   *  1. pause the old one (long-poll: abort the poll in flight, issue no more);
   *  2. attach the new one with last_seq = what was delivered so far; the
   *     server takes the session over and releases the old transport;
   *  3. meanwhile anything still arriving on the old one is delivered (seqs
   *     already seen are dropped); then retire the old one.
   * If the new one fails, the old one resumes.
   */
  async _switchTo(name) {
    if (this._closed) return false;
    if (this.transport === name) return true;
    while (this._switching) await sleep(20);
    const old = this._conn;
    if (!old) {
      await this._attach(name);
      return this.transport === name;
    }
    this._switching = true;
    let conn = null;
    let error = null;
    try {
      await old.pause();
      conn = await this._open(name);
    } catch (e) {
      error = e;
    }
    this._switching = false;
    if (this._closed) {
      conn?.retire({ clean: true });
      return false;
    }
    if (conn) {
      this.stats.switches++;
      old.retire({ clean: true });   // the session is elsewhere now: a close frame is harmless
      this._adopt(conn);
      return true;
    }
    this._penalize(name);
    this.emit('transport_error', name, error);
    if (error?.code === 'SESSION_NOT_FOUND' || old.lostDuringSwitch) {
      this._onConnLost(old, old.lostDuringSwitch ?? error);
    } else {
      old.resume();
      this._scheduleFlush();
    }
    return false;
  }

  /** Periodically try better transports than the one in use. */
  _startUpgrades() {
    clearInterval(this._upgradeTimer);
    const every = this.options.upgradeIntervalMs;
    if (!every) return;
    this._upgradeTimer = setInterval(async () => {
      if (this._closed || this._switching || !this._conn || this._upgrading) return;
      this._upgrading = true;
      try {
        const now = Date.now();
        const i = this.transports.indexOf(this.transport);
        const better = i > 0 ? this.transports.slice(0, i) : [];
        for (const name of better) {
          if (this._penalty.get(name)?.until > now) continue;
          if (await this._switchTo(name)) break;
        }
      } finally {
        this._upgrading = false;
      }
    }, every);
  }

  // ---- incoming ----

  _onWelcome(conn, w) {
    if (w.session !== this.session) return;
    this.welcome = w;
    this.peer = w.peer;
    this.user = w.user;
    this._setHeartbeat(w.heartbeat_interval);
    this.emit('welcome', w, { transport: conn.name });
  }

  /** Every numbered message from every transport comes through here. */
  _deliver(conn, seq, m) {
    if (!Number.isFinite(seq) || seq <= this.lastSeq) {
      this.stats.duplicates++;
      return;
    }
    if (seq !== this.lastSeq + 1 && m.type !== 'resync') this.stats.gaps++;
    this.lastSeq = seq;
    this.stats.delivered[conn.name]++;
    const meta = { seq, transport: conn.name };

    if (m.id !== undefined && this._pending.has(m.id)) {
      const p = this._pending.get(m.id);
      this._pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.type === 'error') p.reject(new StoaError(m.code, m.message, { room: m.room, id: m.id }));
      else p.resolve(m);
    }
    if (m.type === 'peer_left' && m.peer === this.peer && this.rooms.has(m.room)) {
      // Evicted for want of a heartbeat (e.g. after a long sleep): join
      // again. Kicked by the operator: stay out.
      if (m.reason === 'timeout' && this.options.autoRejoin) {
        this._enqueue({ type: 'join', room: m.room, state: this.rooms.get(m.room) });
      } else {
        this.rooms.delete(m.room);
      }
    }
    this._track(m);
    this.emit(m.type, m, meta);
    if (m.type === 'presence_batch') {
      // Several peers' changes coalesced by the server: also one
      // 'presence' event per peer (mine left out), as if sent one by one.
      for (const e of m.peers ?? []) {
        if (e.peer !== this.peer) this.emit('presence', { type: 'presence', room: m.room, peer: e.peer, state: e.state }, meta);
      }
    }
    this.emit('message', m, meta);
  }

  // ---- outgoing ----

  _request(msg) {
    const id = msg.id ?? `c${this._nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new StoaError('TIMEOUT', `no answer to ${msg.type} within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      this._enqueue({ ...msg, id });
    });
  }

  _enqueue(msg) {
    if (this._closed) return;
    if (this._outbox.length >= this.options.maxQueuedMessages) {
      // Full (a long disconnection): drop the oldest presence or ephemeral
      // message not already in flight; joins, leaves and requests stay.
      const droppable = (m) => (m.type === 'presence' || m.type === 'ephemeral' || m.type === 'heartbeat') &&
        m.id === undefined;
      let i = this._outbox.findIndex((m, j) => j >= this._postingCount && droppable(m));
      if (i < 0 && droppable(msg)) {
        this.stats.dropped++;
        this.emit('overflow', msg);
        return;
      }
      if (i >= 0) {
        const [gone] = this._outbox.splice(i, 1);
        this.stats.dropped++;
        this.emit('overflow', gone);
      }
    }
    this._outbox.push(msg);
    this._scheduleFlush();
  }

  _scheduleFlush() {
    if (this._flushQueued) return;
    this._flushQueued = true;
    Promise.resolve().then(() => {
      this._flushQueued = false;
      this._flush();
    });
  }

  /** Send what is queued over the transport in use (held during a switch). */
  _flush() {
    const conn = this._conn;
    if (this._closed || this._switching || !conn?.ready || !this._outbox.length) return;
    if (conn.name === 'websocket') this._flushWs(conn);
    else if (!this._posting) this._posting = this._postAll().finally(() => { this._posting = null; });
  }

  _flushWs(conn) {
    while (this._outbox.length && conn.send(JSON.stringify(this._outbox[0]))) this._outbox.shift();
  }

  /** POST the outbox in batches under maxBatchBytes, one request at a time (keeps order). */
  async _postAll(closing = false) {
    let failures = 0;
    while (this._outbox.length && (closing || !this._closed)) {
      if (this._conn?.name === 'websocket') return this._flushWs(this._conn);
      const batch = [];
      let bytes = 2;
      for (const m of this._outbox) {
        const text = JSON.stringify(m);
        const n = byteLength(text) + 1;
        if (batch.length && (bytes + n > this.options.maxBatchBytes || batch.length >= this.options.maxBatchMessages)) break;
        batch.push(text);
        bytes += n;
      }
      const sent = this._outbox.slice(0, batch.length);
      let res;
      this._postingCount = batch.length;
      try {
        res = await this._fetch(`${this._sessionUrl()}/messages`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: `[${batch.join(',')}]`,
          credentials: this.options.credentials,
        });
      } catch (e) {
        // Not sent, or sent and the answer lost: retry (at-least-once).
        this._postingCount = 0;
        if (closing) return;
        failures++;
        await sleep(Math.min(this.options.reconnectMaxDelayMs, this.options.reconnectDelayMs * 2 ** failures));
        continue;
      }
      this._postingCount = 0;
      if (res.status >= 500 || res.status === 429) {
        if (closing) return;
        failures++;
        await sleep(Math.min(this.options.reconnectMaxDelayMs, this.options.reconnectDelayMs * 2 ** failures));
        continue;
      }
      failures = 0;
      this._outbox.splice(0, batch.length);
      if (res.ok) {
        // 200: handled here; 202: forwarded to the instance holding the
        // session (its errors come on the stream).
        const body = await res.json().catch(() => ({ errors: [] }));
        for (const e of body.errors ?? []) this._postError(sent[e.index] ?? {}, e);
      } else {
        const err = await httpError(res, 'POST messages');
        if (err.code === 'SESSION_NOT_FOUND') {
          // The messages went nowhere: put them back for the next session.
          this._outbox.unshift(...sent);
          this._conn?.kill(err);
          return;
        }
        for (const m of sent) this._postError(m, { code: err.code, message: err.message });
      }
    }
  }

  /** An error the POST answer reported for one message: reject its request, or emit 'error'. */
  _postError(msg, e) {
    const err = { type: 'error', code: e.code, message: e.message };
    if (msg.id !== undefined) err.id = msg.id;
    if (msg.room !== undefined) err.room = msg.room;
    const p = msg.id !== undefined && this._pending.get(msg.id);
    if (p) {
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      p.reject(new StoaError(err.code, err.message, { room: err.room, id: err.id }));
    }
    this.emit('error', err, { seq: null, transport: 'post' });
  }

  // ---- heartbeats ----

  _setHeartbeat(seconds) {
    const ms = Math.max(1, Number(seconds) || 30) * 1000;
    if (ms === this._heartbeatMs && this._heartbeatTimer) return;
    this._heartbeatMs = ms;
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = setInterval(() => {
      if (this._closed) return;
      for (const room of this.rooms.keys()) this._enqueue({ type: 'heartbeat', room });
    }, ms);
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** The promise, or undefined after ms; the timer does not outlive it. */
function withTimeout(promise, ms) {
  let timer;
  return Promise.race([promise, new Promise((r) => { timer = setTimeout(r, ms); })])
    .finally(() => clearTimeout(timer));
}

function timeoutSignal(ms) {
  if (typeof AbortSignal !== 'undefined' && AbortSignal.timeout) return AbortSignal.timeout(ms);
  const a = new AbortController();
  setTimeout(() => a.abort(), ms);
  return a.signal;
}

/**
 * Connect to a Stoa server: a new StoaClient (options as its constructor
 * takes them: url, token, transports, ...) that resolves once a transport
 * is open. While no transport works it keeps trying with exponential
 * backoff and full jitter (state 'reconnecting'), unless `retry: false`;
 * it rejects at once when the server refuses who we are (AUTH_FAILED,
 * ORIGIN_DENIED, ANONYMOUS_DISABLED).
 */
export async function connect(options = {}) {
  const client = new StoaClient(options);
  const o = client.options;
  for (let attempt = 0; ; attempt++) {
    try {
      return await client.connect();
    } catch (e) {
      if (client._closed || options.retry === false ||
          ['AUTH_FAILED', 'ORIGIN_DENIED', 'ANONYMOUS_DISABLED', 'CLOSED'].includes(e.code)) {
        client._setState('closed');
        throw e;
      }
      client._setState('reconnecting');
      const base = Math.min(o.reconnectMaxDelayMs, o.reconnectDelayMs * 2 ** attempt);
      await sleep(Math.random() * base);
    }
  }
}

export default StoaClient;
