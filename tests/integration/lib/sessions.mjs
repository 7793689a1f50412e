// Helpers for the HTTP transports: sessions over REST, a raw SSE reader,
// a long-poll loop, and an inbox shared by them.
//
//   const s = await createSession(srv);                 // the 201 body (a welcome)
//   await postMessages(srv, s.session, { type: 'join', room: 'doc:1', id: 1 });
//   const sse = await SseStream.open(srv, s.session);   // resolves on the response head
//   const rs = await sse.next('room_state');
//   const lp = Poller.start(srv, s.session);             // polls after=0, then after=last_seq
//   await lp.next('room_state');
import http from 'node:http';
import net from 'node:net';
import assert from 'node:assert/strict';
import { Inbox, waitFor } from './stoa.mjs';

export { Inbox };

// ---- cleanup ----

const live = new Set();

/** Keep x (anything with close()) to be closed by closeAll(); returns x. */
export function track(x) {
  live.add(x);
  return x;
}

/**
 * Close every SSE stream, poller and tracked object still open, so that a
 * failed test leaves nothing running (an EventSource would reconnect
 * forever and keep the test process alive). Use in afterEach().
 */
export async function closeAll() {
  const all = [...live];
  live.clear();
  await Promise.all(all.map(async (x) => { try { await x.close(); } catch { /* already gone */ } }));
}

// ---- sessions over REST ----

const authHeaders = (token) => (token ? { Authorization: `Bearer ${token}` } : {});

/** fetch() with a JSON body (when given); resolves {status, headers, text, body (parsed or null)}. */
export async function request(srv, method, path, { body, token, headers = {} } = {}) {
  const init = { method, headers: { ...authHeaders(token), ...headers } };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const r = await srv.fetch(path, init);
  const text = await r.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { /* left null */ }
  return { status: r.status, headers: r.headers, text, body: parsed };
}

/** POST /v1/sessions; resolves the 201 body (welcome fields plus transports). */
export async function createSession(srv, { token } = {}) {
  const r = await request(srv, 'POST', '/v1/sessions', { token });
  assert.equal(r.status, 201, r.text);
  return r.body;
}

/** GET /v1/sessions/{id}: {status, body, ...}. */
export const getSession = (srv, id, opts) => request(srv, 'GET', `/v1/sessions/${id}`, opts);

/** DELETE /v1/sessions/{id}: {status, ...}. */
export const deleteSession = (srv, id, opts) => request(srv, 'DELETE', `/v1/sessions/${id}`, opts);

/** POST /v1/sessions/{id}/messages with a message or an array; resolves {status, body, ...}. */
export const postMessages = (srv, id, msgs, opts = {}) =>
  request(srv, 'POST', `/v1/sessions/${id}/messages`, { ...opts, body: msgs });

/** POST messages that must all be accepted; resolves the answer body. */
export async function postOk(srv, id, msgs, opts) {
  const r = await postMessages(srv, id, msgs, opts);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.body.errors, [], r.text);
  return r.body;
}

/** n sessions, each joined to room as an observer (50 created at a time). */
export async function observerSessions(srv, n, room) {
  const sessions = [];
  for (let i = 0; i < n; i += 50) {
    sessions.push(...await Promise.all(Array.from({ length: Math.min(50, n - i) }, async () => {
      const s = await createSession(srv);
      await postOk(srv, s.session, { type: 'join', room, observe: true });
      return s;
    })));
  }
  return sessions;
}

/** One GET .../poll; resolves {status, headers, body, text}. */
export function poll(srv, id, { after, token, signal, extra = '' } = {}) {
  const q = after === undefined ? '' : `after=${after}`;
  const qs = [q, extra].filter(Boolean).join('&');
  return (async () => {
    const r = await srv.fetch(`/v1/sessions/${id}/poll${qs ? '?' + qs : ''}`, { headers: authHeaders(token), signal });
    const text = await r.text();
    let body = null;
    try { body = JSON.parse(text); } catch { /* left null */ }
    return { status: r.status, headers: r.headers, text, body };
  })();
}

/** The healthz transports object. */
export async function transportCounts(srv) {
  return (await (await srv.fetch('/healthz')).json()).transports;
}

// ---- SSE ----

/**
 * Parse SSE text into lines of {kind: 'retry'|'id'|'data'|'comment'|'blank', value}.
 * Returns {lines, bad: [line texts that are no SSE this server should send]}.
 */
export function parseSseLines(text) {
  const lines = [];
  const bad = [];
  for (const line of text.split('\n')) {
    let m;
    if (line === '') lines.push({ kind: 'blank' });
    else if (line.startsWith(':')) lines.push({ kind: 'comment', value: line.slice(1) });
    else if ((m = /^retry: (\d+)$/.exec(line))) lines.push({ kind: 'retry', value: Number(m[1]) });
    else if ((m = /^id: (\d+)$/.exec(line))) lines.push({ kind: 'id', value: Number(m[1]) });
    else if ((m = /^data: (.*)$/.exec(line))) lines.push({ kind: 'data', value: m[1] });
    else bad.push(line);
  }
  return { lines, bad };
}

/**
 * Group complete SSE text (ending in a blank line) into events:
 * {id (number or undefined), data (text), comments: [...], retry}.
 */
export function sseEvents(text) {
  const { lines, bad } = parseSseLines(text);
  assert.deepEqual(bad, [], `not SSE: ${JSON.stringify(bad.slice(0, 3))}`);
  const events = [];
  let cur = null;
  for (const l of lines) {
    if (l.kind === 'blank') {
      if (cur) events.push(cur);
      cur = null;
      continue;
    }
    cur ??= { comments: [], data: [] };
    if (l.kind === 'comment') cur.comments.push(l.value);
    else if (l.kind === 'retry') cur.retry = l.value;
    else if (l.kind === 'id') cur.id = l.value;
    else cur.data.push(l.value);
  }
  return events.map((e) => ({ ...e, data: e.data.length ? e.data.join('\n') : undefined }));
}

/**
 * A raw SSE reader over node:http: every byte is kept (raw), complete events
 * are parsed (events), and their JSON data goes to an Inbox; numbered events
 * get their id as `seq` on the message object's side table (seqOf).
 */
export class SseStream extends Inbox {
  /**
   * Resolves on the response head (any status). opts: lastSeq (query),
   * lastEventId (header), pad, token, headers, path (instead of the default).
   */
  static open(srv, id, { lastSeq, lastEventId, pad, token, headers = {}, path } = {}) {
    const q = [];
    if (lastSeq !== undefined) q.push(`last_seq=${lastSeq}`);
    if (pad) q.push('pad=1');
    const url = path ?? `/v1/sessions/${id}/sse${q.length ? '?' + q.join('&') : ''}`;
    const h = { Accept: 'text/event-stream', ...authHeaders(token), ...headers };
    if (lastEventId !== undefined) h['Last-Event-ID'] = String(lastEventId);
    const s = track(new SseStream());
    return new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port: srv.port, path: url, headers: h }, (res) => {
        s.res = res;
        s.status = res.statusCode;
        s.headers = res.headers;
        res.setEncoding('utf8');
        res.on('data', (d) => s._feed(d));
        res.on('end', () => s.end('end of stream'));
        res.on('error', () => s.end('error'));
        res.on('close', () => s.end('closed'));
        resolve(s);
      });
      s.req = req;
      req.on('error', (e) => { s.end(`request error ${e.code ?? e.message}`); reject(e); });
    });
  }

  constructor() {
    super();
    this.raw = '';
    this.pending = '';
    this.events = [];
    this.seqs = new Map();   // message object -> its id
    this.ids = [];           // every id, in order
    this.closed = new Promise((r) => { this._closed = r; });
  }

  end(reason) {
    super.end(reason);
    this._closed?.(reason);
  }

  _feed(text) {
    this.raw += text;
    this.pending += text;
    let cut;
    while ((cut = this.pending.indexOf('\n\n')) >= 0) {
      const chunk = this.pending.slice(0, cut + 2);
      this.pending = this.pending.slice(cut + 2);
      for (const ev of sseEvents(chunk)) {
        this.events.push(ev);
        if (ev.data === undefined) continue;
        let m;
        try { m = JSON.parse(ev.data); } catch { m = { type: '<unparseable>', raw: ev.data }; }
        if (ev.id !== undefined) {
          this.seqs.set(m, ev.id);
          this.ids.push(ev.id);
        }
        this.push(m);
      }
    }
  }

  seqOf(m) {
    return this.seqs.get(m);
  }

  /** The body text (for a non-200 answer). */
  async text() {
    await this.closed;
    return this.raw;
  }

  /** Destroy the socket: the client vanishes without a word. */
  cut() {
    this.req.destroy();
    this.res?.destroy();
  }

  close() {
    this.cut();
  }
}

// ---- long-poll ----

/**
 * A long-poll loop: polls with after = the last seq received, pushes every
 * message (each message's seq is in seqOf) to the inbox. stop() ends the
 * loop after the poll in flight returns (or aborts it with {abort: true}).
 */
export class Poller extends Inbox {
  static start(srv, id, { after = 0, token } = {}) {
    const p = track(new Poller(srv, id, after, token));
    p.loop = p._run();
    return p;
  }

  constructor(srv, id, after, token) {
    super();
    this.srv = srv;
    this.id = id;
    this.last = after;
    this.token = token;
    this.seqs = new Map();
    this.answers = [];    // every poll answer {status, body}
    this.stopping = false;
    this.controller = null;
    this.polls = 0;
  }

  async _run() {
    while (!this.stopping) {
      this.controller = new AbortController();
      let r;
      try {
        this.polls++;
        r = await poll(this.srv, this.id, { after: this.last, token: this.token, signal: this.controller.signal,
                                            extra: `_=${this.polls}` });
      } catch (e) {
        if (this.stopping) break;
        this.end(`poll failed: ${e.message}`);
        return;
      }
      this.answers.push({ status: r.status, body: r.body });
      if (r.status !== 200) {
        this.end(`HTTP ${r.status} ${r.text}`);
        return;
      }
      const { first_seq: first, last_seq: last, messages } = r.body;
      assert.equal(last - first + 1, messages.length, `poll answer numbering: ${r.text.slice(0, 200)}`);
      messages.forEach((m, i) => {
        this.seqs.set(m, first + i);
        this.push(m);
      });
      if (messages.length) this.last = last;
    }
    this.end('stopped');
  }

  seqOf(m) {
    return this.seqs.get(m);
  }

  /** End the loop; abort the poll in flight when abort is true, else let it return. */
  async stop({ abort = true } = {}) {
    this.stopping = true;
    if (abort) this.controller?.abort();
    await this.loop;
  }

  close() {
    return this.stop();
  }
}

/** A raw HTTP/1.1 connection (tracked for closeAll): write requests, read
 * everything as text; until(pred, what, timeoutMs) waits for pred(data). */
export function rawConn(srv) {
  const sock = net.connect(srv.port, '127.0.0.1');
  const c = { sock, data: '', closed: false };
  sock.setEncoding('utf8');
  sock.on('data', (d) => { c.data += d; });
  sock.on('close', () => { c.closed = true; });
  sock.on('error', () => {});
  c.until = (pred, what, timeoutMs = 8000) => waitFor(() => pred(c.data), { timeoutMs, what });
  c.close = () => sock.destroy();
  return track(c);
}
