// docs/openapi.yaml against the real server: the spec lists exactly the
// routes of src/http.c, and every operation's real answers (success and the
// main errors) have a documented status, the documented Content-Type and
// headers, and a body valid against the documented schema (Ajv).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import { Validator } from '@seriousme/openapi-schema-validator';
import { REPO, useStoa, itStopsCleanly, sleep } from './lib/stoa.mjs';

const KEY = 'openapi-test-key-0123456789abcdef';
const SNAP_MAX = 8192;
const POLL_TIMEOUT = 800;

const spec = YAML.parse(readFileSync(join(REPO, 'docs', 'openapi.yaml'), 'utf8'));
const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'];

// ---- the schemas, for Ajv ----

/** An OpenAPI 3.0 schema as JSON Schema: nullable -> type [t, 'null'], refs -> the stoa schema. */
function toJsonSchema(s) {
  if (Array.isArray(s)) return s.map(toJsonSchema);
  if (!s || typeof s !== 'object') return s;
  const out = {};
  for (const [k, v] of Object.entries(s)) {
    if (k === '$ref') {
      const m = /^#\/components\/schemas\/([^/]+)$/.exec(v);
      assert.ok(m, `unexpected schema $ref ${v}`);
      out.$ref = `stoa#/$defs/${m[1]}`;
    } else if (k === 'nullable' || k === 'example' || k === 'xml' || k === 'externalDocs') {
      continue;
    } else if (k === 'properties' || k === '$defs') {
      out[k] = Object.fromEntries(Object.entries(v).map(([p, sub]) => [p, toJsonSchema(sub)]));
    } else {
      out[k] = toJsonSchema(v);
    }
  }
  if (s.nullable === true && typeof s.type === 'string') out.type = [s.type, 'null'];
  return out;
}

const ajv = new Ajv({ strict: true, strictTypes: false, allErrors: true });
addFormats(ajv);
ajv.addSchema({ $id: 'stoa', $defs: toJsonSchema(spec.components.schemas) });
const compiled = new Map();
function validator(schema) {
  const key = JSON.stringify(schema);
  if (!compiled.has(key)) compiled.set(key, ajv.compile(toJsonSchema(schema)));
  return compiled.get(key);
}
function assertValid(schema, value, what) {
  const v = validator(schema);
  assert.ok(v(value), `${what}: ${ajv.errorsText(v.errors)}\n${JSON.stringify(value)}`);
}

/** Follow a local $ref ('#/components/...'). */
function pointer(ref) {
  assert.match(ref, /^#\//, `only local refs: ${ref}`);
  let node = spec;
  for (const part of ref.slice(2).split('/')) {
    node = node?.[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  assert.ok(node !== undefined, `$ref ${ref} resolves to nothing`);
  return node;
}
const deref = (x) => (x && x.$ref ? deref(pointer(x.$ref)) : x);

// ---- checking real answers ----

const seen = new Set();   // "METHOD /template STATUS"

/**
 * Check a fetch Response (body not yet read) against the operation
 * METHOD tpl in the spec, or against a components/responses entry
 * ({component: name}). Resolves the parsed JSON body (or the text).
 */
async function check(res, method, tpl, status, { component, text } = {}) {
  assert.equal(res.status, status, `${method} ${tpl}: status`);
  let r;
  if (component) {
    r = spec.components.responses[component];
    assert.ok(r, `no components/responses/${component}`);
  } else {
    const op = spec.paths[tpl]?.[method.toLowerCase()];
    assert.ok(op, `the spec has no operation ${method} ${tpl}`);
    r = deref(op.responses[String(status)]);
    assert.ok(r, `${method} ${tpl}: status ${status} is not documented (documented: ${Object.keys(op.responses)})`);
    seen.add(`${method} ${tpl} ${status}`);
  }
  for (const [name, h0] of Object.entries(r.headers ?? {})) {
    const h = deref(h0);
    const value = res.headers.get(name);
    if (h.required) assert.ok(value !== null, `${method} ${tpl} ${status}: header ${name} is required`);
    if (value !== null) assertValid(h.schema, value, `${method} ${tpl} ${status}: header ${name}`);
  }
  const body = text ?? await res.text();
  if (!r.content) {
    assert.equal(body, '', `${method} ${tpl} ${status}: documented without a body`);
    return body;
  }
  const ct = res.headers.get('content-type');
  assert.ok(ct, `${method} ${tpl} ${status}: no Content-Type`);
  const media = ct.split(';')[0].trim().toLowerCase();
  const key = Object.keys(r.content).find((k) => k === media) ?? (r.content['*/*'] ? '*/*' : undefined);
  assert.ok(key, `${method} ${tpl} ${status}: Content-Type ${ct} not documented (${Object.keys(r.content)})`);
  if (key !== 'application/json') return body;
  let parsed;
  assert.doesNotThrow(() => { parsed = JSON.parse(body); }, `${method} ${tpl} ${status}: not JSON: ${body}`);
  assertValid(r.content[key].schema, parsed, `${method} ${tpl} ${status}: body`);
  if (status >= 400) assertValid({ $ref: '#/components/schemas/Error' }, parsed, `${method} ${tpl} ${status}: error`);
  return parsed;
}

const json = (body, headers = {}) => ({
  body: typeof body === 'string' ? body : JSON.stringify(body),
  headers: { 'Content-Type': 'application/json', ...headers },
});
const bearer = (t) => ({ Authorization: `Bearer ${t}` });

/** The route table of src/http.c, as "METHOD /path/{}". */
function serverRoutes() {
  const src = readFileSync(join(REPO, 'src', 'http.c'), 'utf8');
  const table = /routes\[\]\s*=\s*\{([\s\S]*?)\n\};/.exec(src);
  assert.ok(table, 'routes[] not found in src/http.c');
  const routes = [...table[1].matchAll(/\{\s*"([A-Z]+)",\s*"([^"]+)",\s*\w+\s*\}/g)].map((m) => `${m[1]} ${m[2]}`);
  assert.ok(routes.length > 0, 'no routes parsed');
  return routes;
}
function specOperations() {
  const ops = [];
  for (const [path, item] of Object.entries(spec.paths))
    for (const m of METHODS) if (item[m]) ops.push(`${m.toUpperCase()} ${path.replace(/\{[^}]+\}/g, '{}')}`);
  return ops;
}
const tplOf = (op) => {
  const [m, p] = op.split(' ');
  const tpl = Object.keys(spec.paths).find((k) => k.replace(/\{[^}]+\}/g, '{}') === p);
  return `${m} ${tpl}`;
};

/** Open an SSE stream, read until the first data event; resolves {res, text}. */
async function readSse(srv, path, init = {}) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 3000);
  const res = await srv.fetch(path, { ...init, signal: ac.signal });
  let text = '';
  if (res.status === 200) {
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    try {
      while (!/^data: .*\n\n/m.test(text)) {
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
      }
    } catch { /* aborted: checked below */ }
    ac.abort();
  } else {
    text = await res.text();
  }
  clearTimeout(timer);
  return { res, text };
}

describe('docs/openapi.yaml against the server', () => {
  const srv = useStoa(['--api-keys', KEY, '--poll-timeout-ms', String(POLL_TIMEOUT),
                       '--snapshot-max-bytes', String(SNAP_MAX)]);

  it('is valid OpenAPI 3.0.3 whose refs resolve and whose schemas compile', async () => {
    assert.equal(spec.openapi, '3.0.3');
    const official = new Validator();
    const result = await official.validate(structuredClone(spec));
    assert.equal(official.version, '3.0');
    assert.ok(result.valid, `not valid OpenAPI: ${JSON.stringify(result.errors, null, 1)?.slice(0, 3000)}`);
    const refs = [];
    (function walk(n) {
      if (Array.isArray(n)) n.forEach(walk);
      else if (n && typeof n === 'object') for (const [k, v] of Object.entries(n)) k === '$ref' ? refs.push(v) : walk(v);
    })(spec);
    assert.ok(refs.length > 20);
    for (const r of refs) pointer(r);
    for (const name of Object.keys(spec.components.schemas)) validator({ $ref: `#/components/schemas/${name}` });
    for (const s of ['bearerJwt', 'tokenQuery', 'tokenCookie', 'apiKey'])
      assert.ok(spec.components.securitySchemes[s], `security scheme ${s}`);
    assert.equal(spec.components.securitySchemes.tokenCookie.name, 'stoa_token');
    assert.equal(spec.components.securitySchemes.tokenQuery.name, 'token');
    // every {param} of a path is a declared path parameter, and back
    for (const [path, item] of Object.entries(spec.paths)) {
      const names = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      for (const m of METHODS) {
        if (!item[m]) continue;
        const declared = [...(item.parameters ?? []), ...(item[m].parameters ?? [])].map(deref)
          .filter((p) => p.in === 'path').map((p) => p.name).sort();
        assert.deepEqual(declared, names, `${m} ${path}: path parameters`);
      }
    }
  });

  it('lists exactly the operations routed by src/http.c', () => {
    const routes = serverRoutes().sort();
    const ops = specOperations().sort();
    assert.deepEqual(ops.filter((o) => !routes.includes(o)), [], 'in the spec but not routed');
    assert.deepEqual(routes.filter((o) => !ops.includes(o)), [], 'routed but not in the spec');
    assert.equal(ops.length, routes.length);
  });

  it('GET /healthz', async () => {
    const body = await check(await srv.fetch('/healthz'), 'GET', '/healthz', 200);
    assert.equal(body.status, 'ok');
  });

  it('POST /v1/auth/anonymous and GET /v1/auth/me', async () => {
    const anon = await check(await srv.fetch('/v1/auth/anonymous', { method: 'POST' }),
      'POST', '/v1/auth/anonymous', 200);
    assert.equal(anon.user.anonymous, true);
    const me = await check(await srv.fetch('/v1/auth/me', { headers: bearer(anon.token) }), 'GET', '/v1/auth/me', 200);
    assert.deepEqual(me.user, anon.user);
    const tok = await srv.token({ sub: 'ada', name: 'Ada', rooms: { 'doc:*': 'rw' } });
    // the same identity by header, query and cookie
    for (const init of [{ headers: bearer(tok) }, { q: `?token=${tok}` }, { headers: { Cookie: `stoa_token=${tok}` } }]) {
      const b = await check(await srv.fetch(`/v1/auth/me${init.q ?? ''}`, init), 'GET', '/v1/auth/me', 200);
      assert.equal(b.user.id, 'ada');
      assert.deepEqual(b.rooms, { 'doc:*': 'rw' });
    }
    let e = await check(await srv.fetch('/v1/auth/me'), 'GET', '/v1/auth/me', 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    e = await check(await srv.fetch('/v1/auth/me', { headers: bearer('not.a.token') }), 'GET', '/v1/auth/me', 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
  });

  it('sessions: create, inspect, send, end; 400/401/404/413', async () => {
    const s = await check(await srv.fetch('/v1/sessions', { method: 'POST' }), 'POST', '/v1/sessions', 201);
    assert.deepEqual(s.transports, ['websocket', 'sse', 'longpoll']);
    const p = `/v1/sessions/${s.session}`;
    let g = await check(await srv.fetch(p), 'GET', '/v1/sessions/{session}', 200);
    assert.equal(g.transport, null);
    assert.equal(g.session, s.session);

    const r = await check(await srv.fetch(`${p}/messages`, { method: 'POST', ...json([
      { type: 'join', room: 'doc:1', id: 1 }, { type: 'presence', room: 'doc:2', state: {}, id: 2 }, { type: 'ping', id: 3 },
    ]) }), 'POST', '/v1/sessions/{session}/messages', 200);
    assert.equal(r.accepted, 2);
    assert.equal(r.errors.length, 1);
    assert.equal(r.errors[0].code, 'NOT_IN_ROOM');
    assert.equal(r.errors[0].index, 1);
    const one = await check(await srv.fetch(`${p}/messages`, { method: 'POST', ...json({ type: 'ping', id: 4 }) }),
      'POST', '/v1/sessions/{session}/messages', 200);
    assert.deepEqual(one, { accepted: 1, errors: [] });
    g = await check(await srv.fetch(p), 'GET', '/v1/sessions/{session}', 200);
    assert.deepEqual(g.rooms, ['doc:1']);

    const M = 'POST', T = '/v1/sessions/{session}/messages';
    let e = await check(await srv.fetch(`${p}/messages`, { method: 'POST', ...json('{nope') }), M, T, 400);
    assert.equal(e.error.code, 'BAD_JSON');
    e = await check(await srv.fetch(`${p}/messages`, { method: 'POST', ...json('3') }), M, T, 400);
    assert.equal(e.error.code, 'BAD_MESSAGE');
    e = await check(await srv.fetch(`${p}/messages`, { method: 'POST',
      ...json(Array.from({ length: 257 }, () => ({ type: 'ping' }))) }), M, T, 413);
    assert.equal(e.error.code, 'MESSAGE_TOO_LARGE');
    e = await check(await srv.fetch(`${p}/messages`, { method: 'POST', ...json('[' + '1,'.repeat(40000) + '1]') }),
      M, T, 413);
    assert.equal(e.error.code, 'MESSAGE_TOO_LARGE');
    e = await check(await srv.fetch('/v1/sessions/nosuchsession/messages', { method: 'POST', ...json({ type: 'ping' }) }),
      M, T, 404);
    assert.equal(e.error.code, 'SESSION_NOT_FOUND');

    // a token that names another user than the session's
    const other = await srv.token({ sub: 'bob', rooms: { '*': 'rw' } });
    for (const [m, t, path, init] of [
      ['GET', '/v1/sessions/{session}', p, {}],
      ['DELETE', '/v1/sessions/{session}', p, { method: 'DELETE' }],
      [M, T, `${p}/messages`, { method: 'POST', ...json({ type: 'ping' }) }],
    ]) {
      e = await check(await srv.fetch(path, { ...init, headers: { ...init.headers, ...bearer(other) } }), m, t, 401);
      assert.equal(e.error.code, 'AUTH_FAILED');
    }

    assert.equal(await check(await srv.fetch(p, { method: 'DELETE' }), 'DELETE', '/v1/sessions/{session}', 204), '');
    for (const [m, t, init] of [['GET', '/v1/sessions/{session}', {}], ['DELETE', '/v1/sessions/{session}', { method: 'DELETE' }]]) {
      e = await check(await srv.fetch(p, init), m, t, 404);
      assert.equal(e.error.code, 'SESSION_NOT_FOUND');
    }
  });

  it('GET /v1/sessions/{session}/poll: 200 with messages, 200 empty, 409, 400, 401, 404', async () => {
    const T = '/v1/sessions/{session}/poll';
    const s = await check(await srv.fetch('/v1/sessions', { method: 'POST' }), 'POST', '/v1/sessions', 201);
    const p = `/v1/sessions/${s.session}`;
    await srv.fetch(`${p}/messages`, { method: 'POST', ...json([{ type: 'join', room: 'doc:poll', id: 1 }]) });
    const got = await check(await srv.fetch(`${p}/poll?after=0`), 'GET', T, 200);
    assert.equal(got.first_seq, 1);
    assert.equal(got.messages[0].type, 'room_state');
    // a held poll is answered 409 SUPERSEDED by the next; that one times out empty
    const held = srv.fetch(`${p}/poll?after=${got.last_seq}`);
    await sleep(150);
    const next = srv.fetch(`${p}/poll?after=${got.last_seq}`);
    const e = await check(await held, 'GET', T, 409);
    assert.equal(e.error.code, 'SUPERSEDED');
    const empty = await check(await next, 'GET', T, 200);
    assert.deepEqual(empty.messages, []);
    assert.equal(empty.first_seq, empty.last_seq + 1);

    let x = await check(await srv.fetch(`${p}/poll?after=-1`), 'GET', T, 400);
    assert.equal(x.error.code, 'BAD_MESSAGE');
    x = await check(await srv.fetch(`${p}/poll?after=0`, { headers: bearer(await srv.token({ sub: 'bob' })) }), 'GET', T, 401);
    assert.equal(x.error.code, 'AUTH_FAILED');
    x = await check(await srv.fetch('/v1/sessions/nosuchsession/poll?after=0'), 'GET', T, 404);
    assert.equal(x.error.code, 'SESSION_NOT_FOUND');
    await srv.fetch(p, { method: 'DELETE' });
  });

  it('GET /v1/sessions/{session}/sse: event stream with the welcome; 400, 401, 404', async () => {
    const T = '/v1/sessions/{session}/sse';
    const s = await check(await srv.fetch('/v1/sessions', { method: 'POST' }), 'POST', '/v1/sessions', 201);
    const p = `/v1/sessions/${s.session}`;
    const { res, text } = await readSse(srv, `${p}/sse?last_seq=0&pad=1`);
    await check(res, 'GET', T, 200, { text });
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    assert.match(text, /^retry: \d+\n/);
    const data = /^data: (.*)$/m.exec(text);
    assert.ok(data, text);
    const welcome = JSON.parse(data[1]);
    assertValid({ $ref: '#/components/schemas/Welcome' }, welcome, 'SSE welcome');
    assert.equal(welcome.session, s.session);
    assert.equal(welcome.resumed, true);

    let e = await check(await srv.fetch(`${p}/sse?last_seq=abc`), 'GET', T, 400);
    assert.equal(e.error.code, 'BAD_MESSAGE');
    e = await check(await srv.fetch(`${p}/sse`, { headers: bearer(await srv.token({ sub: 'bob' })) }), 'GET', T, 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    e = await check(await srv.fetch('/v1/sessions/nosuchsession/sse'), 'GET', T, 404);
    assert.equal(e.error.code, 'SESSION_NOT_FOUND');
    await srv.fetch(p, { method: 'DELETE' });
  });

  it('GET /v1/rooms/{room}/presence: 200, 400, 401, 403', async () => {
    const T = '/v1/rooms/{room}/presence';
    const c = await srv.client();
    await c.join('doc:pres', { cursor: 1 });
    const b = await check(await srv.fetch('/v1/rooms/doc:pres/presence'), 'GET', T, 200);
    assert.equal(b.peers.length, 1);
    assert.equal(b.peers[0].peer, c.peer);
    const empty = await check(await srv.fetch('/v1/rooms/doc%3Anobody/presence'), 'GET', T, 200);
    assert.deepEqual(empty, { room: 'doc:nobody', peers: [] });
    let e = await check(await srv.fetch('/v1/rooms/nocolon/presence'), 'GET', T, 400);
    assert.equal(e.error.code, 'BAD_ROOM');
    e = await check(await srv.fetch('/v1/rooms/doc:pres/presence', { headers: bearer('bad') }), 'GET', T, 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    const tok = await srv.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } });
    e = await check(await srv.fetch('/v1/rooms/other:1/presence', { headers: bearer(tok) }), 'GET', T, 403);
    assert.equal(e.error.code, 'PERMISSION_DENIED');
    await c.close();
  });

  it('integrator API: rooms, publish, kick, notices, with their errors', async () => {
    const K = bearer(KEY);
    const c = await srv.client();
    await c.join('doc:int');
    const rooms = await check(await srv.fetch('/v1/rooms', { headers: K }), 'GET', '/v1/rooms', 200);
    assert.ok(rooms.rooms.some((r) => r.room === 'doc:int' && r.peers === 1), JSON.stringify(rooms));
    let e = await check(await srv.fetch('/v1/rooms'), 'GET', '/v1/rooms', 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    e = await check(await srv.fetch('/v1/rooms', { headers: bearer(await srv.token({ sub: 'ada' })) }), 'GET', '/v1/rooms', 401);
    assert.equal(e.error.code, 'AUTH_FAILED');

    const P = '/v1/rooms/{room}/publish';
    const pub = await check(await srv.fetch('/v1/rooms/doc:int/publish', { method: 'POST', ...json({ data: { x: 1 } }, K) }),
      'POST', P, 200);
    assert.deepEqual(pub, { room: 'doc:int', delivered: 1 });
    const m = await c.next((x) => x.type === 'message');
    assert.deepEqual(m.data, { x: 1 });
    for (const [room, body, code] of [['doc:int', '{x', 'BAD_JSON'], ['doc:int', '[1]', 'BAD_MESSAGE'],
      ['doc:int', '{"nodata":1}', 'BAD_MESSAGE'], ['nocolon', '{"data":1}', 'BAD_ROOM']]) {
      e = await check(await srv.fetch(`/v1/rooms/${room}/publish`, { method: 'POST', ...json(body, K) }), 'POST', P, 400);
      assert.equal(e.error.code, code, body);
    }
    e = await check(await srv.fetch('/v1/rooms/doc:int/publish', { method: 'POST', ...json({ data: 'x'.repeat(70000) }, K) }),
      'POST', P, 413);
    assert.equal(e.error.code, 'MESSAGE_TOO_LARGE');
    e = await check(await srv.fetch('/v1/rooms/doc:int/publish', { method: 'POST', ...json({ data: 1 }) }), 'POST', P, 401);
    assert.equal(e.error.code, 'AUTH_FAILED');

    const N = '/v1/notices';
    const n = await check(await srv.fetch(N, { method: 'POST', ...json({ message: 'hello', level: 'warn' }, K) }), 'POST', N, 202);
    assert.deepEqual(n, {});
    const notice = await c.next((x) => x.type === 'notice');
    assert.equal(notice.message, 'hello');
    for (const body of ['nope', '{"message":""}', '{"message":"x","level":"loud"}']) {
      e = await check(await srv.fetch(N, { method: 'POST', ...json(body, K) }), 'POST', N, 400);
      assert.ok(['BAD_JSON', 'BAD_MESSAGE'].includes(e.error.code), body);
    }
    e = await check(await srv.fetch(N, { method: 'POST', ...json({ message: 'x'.repeat(70000) }, K) }), 'POST', N, 413);
    assert.equal(e.error.code, 'MESSAGE_TOO_LARGE');
    e = await check(await srv.fetch(N, { method: 'POST', ...json({ message: 'x' }) }), 'POST', N, 401);
    assert.equal(e.error.code, 'AUTH_FAILED');

    const D = '/v1/rooms/{room}/peers/{peer}';
    e = await check(await srv.fetch(`/v1/rooms/doc:int/peers/${c.peer}`, { method: 'DELETE' }), 'DELETE', D, 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    assert.equal(await check(await srv.fetch(`/v1/rooms/doc:int/peers/${c.peer}`, { method: 'DELETE', headers: K }),
      'DELETE', D, 204), '');
    const left = await c.next((x) => x.type === 'peer_left');
    assert.equal(left.reason, 'kicked');
    e = await check(await srv.fetch(`/v1/rooms/doc:int/peers/${c.peer}`, { method: 'DELETE', headers: K }), 'DELETE', D, 404);
    assert.equal(e.error.code, 'NOT_FOUND');
    await c.close();
  });

  it('snapshots: save, read, list, versions, with their errors', async () => {
    const S = '/v1/rooms/{room}/snapshot', L = '/v1/rooms/{room}/snapshots', V = '/v1/rooms/{room}/snapshots/{version}';
    const W = bearer(await srv.token({ sub: 'ada', rooms: { 'doc:*': 'rw' } }));
    const base = '/v1/rooms/doc:snap';
    let e = await check(await srv.fetch(`${base}/snapshot`), 'GET', S, 404);
    assert.equal(e.error.code, 'NOT_FOUND');
    const none = await check(await srv.fetch(`${base}/snapshots`), 'GET', L, 200);
    assert.deepEqual(none, { room: 'doc:snap', versions: [] });

    const put = (headers, body = '{"v":1}') => srv.fetch(`${base}/snapshot`, { method: 'PUT', body,
      headers: { 'Content-Type': 'application/json', ...W, ...headers } });
    e = await check(await put({}), 'PUT', S, 428);
    assert.equal(e.error.code, 'PRECONDITION_REQUIRED');
    e = await check(await put({ 'If-Match': '*' }), 'PUT', S, 428);
    assert.equal(e.error.code, 'PRECONDITION_REQUIRED');
    e = await check(await put({ 'If-Match': '"1"', 'If-None-Match': '*' }), 'PUT', S, 400);
    assert.equal(e.error.code, 'BAD_MESSAGE');
    let res = await put({ 'If-None-Match': '*' });
    const saved = await check(res, 'PUT', S, 201);
    assert.deepEqual(saved, { room: 'doc:snap', version: 1 });
    assert.equal(res.headers.get('etag'), '"1"');
    res = await put({ 'If-None-Match': '*' });
    e = await check(res, 'PUT', S, 412);
    assert.equal(e.error.code, 'PRECONDITION_FAILED');
    assert.equal(res.headers.get('etag'), '"1"');
    res = await put({ 'If-Match': '"1"' }, 'second');
    assert.equal((await check(res, 'PUT', S, 201)).version, 2);
    e = await check(await put({ 'If-Match': '"1"' }), 'PUT', S, 412);
    assert.equal(e.error.code, 'PRECONDITION_FAILED');
    e = await check(await put({ 'If-None-Match': '*' }, 'x'.repeat(SNAP_MAX + 1)), 'PUT', S, 413);
    assert.equal(e.error.code, 'MESSAGE_TOO_LARGE');
    e = await check(await srv.fetch(`${base}/snapshot`, { method: 'PUT', body: 'x', headers: { 'If-Match': '"2"' } }), 'PUT', S, 403);
    assert.equal(e.error.code, 'PERMISSION_DENIED');
    e = await check(await put({ 'If-Match': '"2"', ...bearer('bad') }), 'PUT', S, 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    e = await check(await srv.fetch('/v1/rooms/nocolon/snapshot', { method: 'PUT', body: 'x',
      headers: { ...W, 'If-None-Match': '*' } }), 'PUT', S, 400);
    assert.equal(e.error.code, 'BAD_ROOM');

    res = await srv.fetch(`${base}/snapshot`);
    assert.equal(await check(res, 'GET', S, 200), 'second');
    assert.equal(res.headers.get('etag'), '"2"');
    assert.equal(res.headers.get('content-type'), 'application/json');
    res = await srv.fetch(`${base}/snapshots/1`);
    assert.equal(await check(res, 'GET', V, 200), '{"v":1}');
    assert.equal(res.headers.get('etag'), '"1"');
    e = await check(await srv.fetch(`${base}/snapshots/abc`), 'GET', V, 400);
    assert.equal(e.error.code, 'BAD_MESSAGE');
    e = await check(await srv.fetch(`${base}/snapshots/99`), 'GET', V, 404);
    assert.equal(e.error.code, 'NOT_FOUND');
    const list = await check(await srv.fetch(`${base}/snapshots`), 'GET', L, 200);
    assert.deepEqual(list.versions.map((v) => v.version), [2, 1]);

    const R = bearer(await srv.token({ sub: 'eve', rooms: { 'other:*': 'rw' } }));
    for (const [t, path] of [[S, `${base}/snapshot`], [L, `${base}/snapshots`], [V, `${base}/snapshots/1`]]) {
      e = await check(await srv.fetch(path, { headers: R }), 'GET', t, 403);
      assert.equal(e.error.code, 'PERMISSION_DENIED');
      e = await check(await srv.fetch(path, { headers: bearer('bad') }), 'GET', t, 401);
      assert.equal(e.error.code, 'AUTH_FAILED');
      e = await check(await srv.fetch(path.replace('doc:snap', 'nocolon')), 'GET', t, 400);
      assert.equal(e.error.code, 'BAD_ROOM');
    }
  });

  it('GET /v1/ws: 426 without an upgrade; 101 and a valid welcome with one', async () => {
    const res = await srv.fetch('/v1/ws');
    const e = await check(res, 'GET', '/v1/ws', 426);
    assert.equal(e.error.code, 'UPGRADE_REQUIRED');
    const c = await srv.client();
    assertValid({ $ref: '#/components/schemas/Welcome' }, c.welcome, 'WebSocket welcome');
    assert.equal(c.welcome.resumed, false);
    seen.add('GET /v1/ws 101');
    await c.close();
  });

  it('common answers: 405 with Allow, 404 off the routes, 403 ORIGIN_DENIED', async () => {
    let res = await srv.fetch('/v1/auth/anonymous');
    let e = await check(res, 'GET', '/v1/auth/anonymous', 405, { component: 'MethodNotAllowed' });
    assert.equal(e.error.code, 'METHOD_NOT_ALLOWED');
    assert.equal(res.headers.get('allow'), 'POST');
    res = await srv.fetch('/v1/rooms/doc:1/snapshot', { method: 'POST' });
    await check(res, 'POST', '/v1/rooms/{room}/snapshot', 405, { component: 'MethodNotAllowed' });
    assert.equal(res.headers.get('allow'), 'GET, PUT');
    e = await check(await srv.fetch('/v1/nope'), 'GET', '/v1/nope', 404, { component: 'NotFound' });
    assert.equal(e.error.code, 'NOT_FOUND');
    e = await check(await srv.fetch('/healthz', { headers: { Origin: 'http://evil.example' } }), 'GET', '/healthz', 403,
      { component: 'OriginDenied' });
    assert.equal(e.error.code, 'ORIGIN_DENIED');
  });

  itStopsCleanly(srv);
});

describe('docs/openapi.yaml: a server without anonymous access or api_keys', () => {
  const srv = useStoa(['--no-allow-anonymous']);

  it('403 ANONYMOUS_DISABLED, 401 without a token, 501 NOT_SUPPORTED for the integrator API', async () => {
    let e = await check(await srv.fetch('/v1/auth/anonymous', { method: 'POST' }), 'POST', '/v1/auth/anonymous', 403);
    assert.equal(e.error.code, 'ANONYMOUS_DISABLED');
    e = await check(await srv.fetch('/v1/sessions', { method: 'POST' }), 'POST', '/v1/sessions', 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    e = await check(await srv.fetch('/v1/rooms/doc:1/presence'), 'GET', '/v1/rooms/{room}/presence', 401);
    assert.equal(e.error.code, 'AUTH_FAILED');
    const K = bearer(KEY);
    for (const [m, t, path, init] of [
      ['GET', '/v1/rooms', '/v1/rooms', {}],
      ['POST', '/v1/rooms/{room}/publish', '/v1/rooms/doc:1/publish', { method: 'POST', body: '{"data":1}' }],
      ['DELETE', '/v1/rooms/{room}/peers/{peer}', '/v1/rooms/doc:1/peers/abc', { method: 'DELETE' }],
      ['POST', '/v1/notices', '/v1/notices', { method: 'POST', body: '{"message":"x"}' }],
    ]) {
      e = await check(await srv.fetch(path, { ...init, headers: K }), m, t, 501);
      assert.equal(e.error.code, 'NOT_SUPPORTED');
    }
  });

  itStopsCleanly(srv);
});

// Last (suites run in order): the coverage of both servers' checks.
describe('docs/openapi.yaml: coverage', () => {
  it('every operation was checked with a success and an error answer', () => {
    const missing = [];
    for (const op of specOperations().map(tplOf)) {
      const statuses = [...seen].filter((s) => s.startsWith(op + ' ')).map((s) => Number(s.split(' ')[2]));
      const ok = statuses.some((s) => s < 300);
      const err = statuses.some((s) => s >= 400);
      const documentedErrors = Object.keys(spec.paths[op.split(' ')[1]][op.split(' ')[0].toLowerCase()].responses)
        .some((s) => Number(s) >= 400);
      if (!ok) missing.push(`${op}: no success`);
      if (documentedErrors && !err) missing.push(`${op}: no error`);
    }
    assert.deepEqual(missing, []);
  });
});
