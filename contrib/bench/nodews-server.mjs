// A room fan-out server on Node.js and the `ws` package: the baseline a team
// choosing Node for this job would write. Used by contrib/bench/run.sh next
// to Stoa, nginx+nchan and the ceiling program.
//
//   node contrib/bench/nodews-server.mjs [--port P] [--host H]
//
// Protocol (WebSocket on path /, text frames of JSON):
//   {"join":"<room>"}                    puts the connection in <room>
//   {"leave":"<room>"}                   takes it out again
//   {"pub":"<room>","data":<any JSON>}   relays {"room":"<room>","data":...}
//                                        to every OTHER connection in <room>
//
// Each message is serialized once, into one Buffer sent as a text frame to
// every recipient (ws writes a Buffer without copying or re-encoding it), no
// per-recipient work but the frame header. No compression (ws's default for
// servers). Prints "nodews-server pid <pid> port <port>" once listening;
// exits 0 on SIGTERM or SIGINT.
//
// The `ws` package is resolved from tests/node_modules (cd tests && npm ci),
// else from NODE_PATH / the usual resolution.
import http from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
function loadWs() {
  const tries = [join(here, '../../tests/package.json'), join(process.cwd(), 'package.json')];
  for (const from of tries) {
    try { return createRequire(from)('ws'); } catch { /* next */ }
  }
  for (const dir of (process.env.NODE_PATH || '').split(':').filter(Boolean)) {
    try { return createRequire(join(dir, 'noop.js'))('ws'); } catch { /* next */ }
  }
  throw new Error('the ws package was not found: cd tests && npm ci, or set NODE_PATH');
}
const { WebSocketServer, WebSocket } = loadWs();

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const port = Number(arg('port', '8090'));
const host = arg('host', '127.0.0.1');

/** room name -> Set of WebSocket */
const rooms = new Map();

function join_(ws, room) {
  let members = rooms.get(room);
  if (!members) rooms.set(room, (members = new Set()));
  members.add(ws);
  ws.rooms.add(room);
}

function leave(ws, room) {
  const members = rooms.get(room);
  if (!members) return;
  members.delete(ws);
  ws.rooms.delete(room);
  if (members.size === 0) rooms.delete(room);
}

/** Send one encoded message to every open member of room but the sender. */
function fanout(room, payload, sender) {
  const members = rooms.get(room);
  if (!members) return;
  const frame = Buffer.from(JSON.stringify({ room, data: payload }));
  for (const peer of members) {
    if (peer !== sender && peer.readyState === WebSocket.OPEN) peer.send(frame, { binary: false });
  }
}

const server = http.createServer((req, res) => res.writeHead(426).end());

const wss = new WebSocketServer({ server, path: '/', maxPayload: 1 << 20 });

wss.on('connection', (ws) => {
  ws.rooms = new Set();
  ws.on('message', (raw, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== 'object') return;
    if (typeof msg.pub === 'string') fanout(msg.pub, msg.data, ws);
    else if (typeof msg.join === 'string') join_(ws, msg.join);
    else if (typeof msg.leave === 'string') leave(ws, msg.leave);
  });
  ws.on('close', () => {
    for (const room of ws.rooms) leave(ws, room);
  });
  ws.on('error', () => {});
});

server.on('error', (e) => {
  console.error(`nodews-server: ${e.message}`);
  process.exit(1);
});
server.listen(port, host, () => {
  console.log(`nodews-server pid ${process.pid} port ${server.address().port}`);
});

// Stop at once: the kernel closes what is still open. (Waiting for a close
// handshake per client would take long under a backlog of outgoing data.)
function stop() {
  for (const ws of wss.clients) ws.terminate();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
