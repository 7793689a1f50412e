// Memory per idle connection, by transport: starts a real stoa, opens N
// WebSocket, N SSE and N held long-poll connections (each in its own
// session, joined to a room of its own), and prints the server's RSS
// growth / N: the cost of an idle connection with its session.
// Usage: node contrib/bench/conn_memory.mjs [N] [stoa binary] [extra serve flags...]
// Needs the tests' node_modules (cd tests && npm ci).
import { spawn } from 'node:child_process';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { createRequire } from 'node:module';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '../../tests/package.json'));
const WebSocket = require('ws');
const N = Number(process.argv[2] || 1000);
const BIN = process.argv[3] || join(here, '../../build/stoa');
const EXTRA = process.argv.slice(4);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const dir = mkdtempSync(join(tmpdir(), 'stoa-mem-'));
const proc = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dir, '--log-level', 'info',
  '--session-grace-ms', '200', ...EXTRA],
  { stdio: ['ignore', 'ignore', 'pipe'] });
let port;
let rooms = 0;
const room = () => `doc:mem${rooms++}`;
await new Promise((resolve, reject) => {
  let err = '';
  proc.stderr.on('data', (d) => { err += d; const m = /\(port (\d+)\)/.exec(err); if (m && !port) { port = +m[1]; resolve(); } });
  proc.on('exit', () => reject(new Error(err)));
  // the port line is logged at info: ask for it
});
const base = `http://127.0.0.1:${port}`;
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function rssKiB() {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${proc.pid}/status`, 'utf8'));
  return Number(m[1]);
}
async function settle() { await sleep(1500); return rssKiB(); }

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(base + path, { method, agent, headers: { 'content-type': 'application/json' } }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, data }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}
async function newSession() {
  const { data } = await request('POST', '/v1/sessions');
  const id = JSON.parse(data).session;
  await request('POST', `/v1/sessions/${id}/messages`, JSON.stringify({ type: 'join', room: room() }));
  return id;
}
const held = [];
async function openWs() {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`);
  await new Promise((r, j) => { ws.once('message', r); ws.once('error', j); });
  ws.send(JSON.stringify({ type: 'join', room: room() }));
  held.push(() => ws.terminate());
}
async function openSse() {
  const id = await newSession();
  await new Promise((resolve, reject) => {
    const req = http.get(`${base}/v1/sessions/${id}/sse`, { agent }, (res) => { res.once('data', () => resolve()); });
    req.on('error', reject);
    held.push(() => req.destroy());
  });
}
async function openPoll() {
  const id = await newSession();
  await request('GET', `/v1/sessions/${id}/poll`);   // drain room_state
  const req = http.get(`${base}/v1/sessions/${id}/poll?t=${Math.random()}`, { agent });
  req.on('error', () => {});
  held.push(() => req.destroy());
}

const results = [];
for (const [name, open] of [['websocket', openWs], ['sse', openSse], ['longpoll', openPoll]]) {
  const before = await settle();
  for (let i = 0; i < N; i += 50) await Promise.all(Array.from({ length: Math.min(50, N - i) }, open));
  const after = await settle();
  results.push({ transport: name, connections: N, rss_growth_kib: after - before,
    bytes_per_connection: Math.round(((after - before) * 1024) / N) });
  for (const close of held.splice(0)) close();
  await sleep(1500);   // past the grace period: those sessions end
}
console.log(`stoa ${BIN} ${EXTRA.join(' ')}`);
console.table(results);
proc.kill('SIGTERM');
await new Promise((r) => proc.on('exit', r));
rmSync(dir, { recursive: true, force: true });
