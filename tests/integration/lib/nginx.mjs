// A real nginx in front of a Stoa, for tests of clients behind proxies.
//
//   const px = await startNginx(srv.port, { mode: 'strict' });
//   ... new StoaClient({ url: px.url }) ...
//   await px.stop();
//
// Each call runs its own nginx: a temporary prefix directory with its own
// nginx.conf, pid file, logs and temp paths, in the foreground
// (`daemon off; master_process off;`) as a child of this process, listening
// on a free port of 127.0.0.1.
//
// Modes (see ../../../../shared/notes/strict-proxies.md for what each does
// to WebSocket, SSE and long-poll):
//
// - 'strict': what a restrictive corporate proxy does.
//     * Upgrade and Connection are not forwarded: a WebSocket handshake
//       reaches Stoa as a plain GET and gets 426.
//     * Responses are buffered (`proxy_buffering on`), with HTTP/1.0
//       upstream so that Stoa cannot chunk its answers (over HTTP/1.1 nginx
//       forwards each chunk at once), and Stoa's `X-Accel-Buffering: no`
//       is ignored: an SSE stream delivers nothing, not even its headers.
//     * `proxy_read_timeout 30s`: anything silent for 30 s is cut (504).
//     * Request bodies over 8 KiB are refused (413).
//     * opts.cache: also cache successful GETs for 30 s, merging identical
//       concurrent ones (`proxy_cache_lock`), whatever the answer's
//       Cache-Control says.
// - 'transparent': a well-configured reverse proxy: Upgrade forwarded,
//   buffering off, HTTP/1.1 upstream.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NGINX_BIN = process.env.NGINX_BIN || '/usr/sbin/nginx';

const START_TIMEOUT = 10000;
const STOP_KILL_AFTER = 3000;

const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** A port free on 127.0.0.1 now (nginx binds it a moment later; start retries on a clash). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function locationBlock(mode, upstreamPort, { cache }) {
  const common = [
    `proxy_pass http://127.0.0.1:${upstreamPort};`,
    'proxy_set_header Host $http_host;',
    'proxy_read_timeout 30s;',
    'proxy_send_timeout 30s;',
  ];
  if (mode === 'transparent') {
    return [
      ...common,
      'proxy_http_version 1.1;',
      'proxy_set_header Upgrade $http_upgrade;',
      'proxy_set_header Connection $connection_upgrade;',
      'proxy_buffering off;',
      'proxy_request_buffering off;',
    ];
  }
  const strict = [
    ...common,
    'proxy_http_version 1.0;',
    // nginx does not forward hop-by-hop headers by default; make sure.
    'proxy_set_header Upgrade "";',
    'proxy_set_header Connection "";',
    'proxy_buffering on;',
    'proxy_ignore_headers X-Accel-Buffering;',
    'proxy_buffer_size 16k;',
    'proxy_buffers 8 16k;',
  ];
  if (cache) {
    strict.push(
      'proxy_cache stoa;',
      'proxy_cache_valid 200 30s;',
      'proxy_cache_lock on;',
      'proxy_ignore_headers X-Accel-Buffering Cache-Control Expires Set-Cookie;',
    );
    strict.splice(strict.indexOf('proxy_ignore_headers X-Accel-Buffering;'), 1);
  }
  return strict;
}

function config(dir, port, upstreamPort, mode, opts) {
  const lines = [
    ...(process.getuid?.() === 0 ? ['user root;'] : []),
    'daemon off;',
    'master_process off;',
    'worker_processes 1;',
    `pid ${join(dir, 'nginx.pid')};`,
    `error_log ${join(dir, 'error.log')} info;`,
    'events { worker_connections 512; }',
    'http {',
    `  access_log ${join(dir, 'access.log')};`,
    `  client_body_temp_path ${join(dir, 'tmp', 'body')};`,
    `  proxy_temp_path ${join(dir, 'tmp', 'proxy')};`,
    `  fastcgi_temp_path ${join(dir, 'tmp', 'fastcgi')};`,
    `  uwsgi_temp_path ${join(dir, 'tmp', 'uwsgi')};`,
    `  scgi_temp_path ${join(dir, 'tmp', 'scgi')};`,
    '  map $http_upgrade $connection_upgrade { default upgrade; "" close; }',
    ...(opts.cache ? [`  proxy_cache_path ${join(dir, 'cache')} keys_zone=stoa:1m;`] : []),
    '  server {',
    `    listen 127.0.0.1:${port};`,
    ...(mode === 'strict' ? ['    client_max_body_size 8k;'] : []),
    '    location / {',
    ...locationBlock(mode, upstreamPort, opts).map((l) => `      ${l}`),
    '    }',
    '  }',
    '}',
    '',
  ];
  return lines.join('\n');
}

async function startOnce(upstreamPort, mode, opts) {
  const dir = mkdtempSync(join(tmpdir(), `stoa-nginx-${mode}-`));
  mkdirSync(join(dir, 'tmp'));
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, config(dir, port, upstreamPort, mode, opts));
  const proc = spawn(NGINX_BIN, ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let output = '';
  proc.stdout.setEncoding('utf8').on('data', (d) => { output += d; });
  proc.stderr.setEncoding('utf8').on('data', (d) => { output += d; });
  const exited = new Promise((r) => proc.on('exit', (code, signal) => { live.delete(proc); r({ code, signal }); }));
  const errorLog = () => {
    const f = join(dir, 'error.log');
    return existsSync(f) ? readFileSync(f, 'utf8') : '';
  };
  const cleanup = () => rmSync(dir, { recursive: true, force: true });

  // Ready once it answers on its port (any HTTP answer will do).
  const deadline = Date.now() + START_TIMEOUT;
  let exitedEarly = null;
  exited.then((x) => { exitedEarly = x; });
  for (;;) {
    if (exitedEarly) {
      const log = errorLog() + output;
      cleanup();
      const err = new Error(`nginx exited (${exitedEarly.code ?? exitedEarly.signal}) on start:\n${log}`);
      err.addressInUse = /Address already in use/.test(log);
      throw err;
    }
    try {
      await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1000) });
      break;
    } catch {
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        await exited;
        const log = errorLog() + output;
        cleanup();
        throw new Error(`nginx did not answer on port ${port} within ${START_TIMEOUT} ms:\n${log}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/v1/ws`,
    mode,
    dir,
    proc,
    errorLog,
    accessLog: () => {
      const f = join(dir, 'access.log');
      return existsSync(f) ? readFileSync(f, 'utf8') : '';
    },
    /** Stop nginx (SIGTERM: fast shutdown; SIGKILL if it lingers) and remove its directory. */
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), STOP_KILL_AFTER);
        await exited;
        clearTimeout(t);
      }
      cleanup();
      return exited;
    },
  };
}

/**
 * Start nginx in front of 127.0.0.1:upstreamPort.
 * opts.mode: 'strict' (default) or 'transparent'; opts.cache (strict only):
 * cache successful GETs for 30 s. Resolves {port, url, wsUrl, mode, dir,
 * proc, errorLog(), accessLog(), stop()}.
 */
export async function startNginx(upstreamPort, { mode = 'strict', cache = false } = {}) {
  if (mode !== 'strict' && mode !== 'transparent') throw new Error(`unknown nginx mode ${mode}`);
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(upstreamPort, mode, { cache: cache && mode === 'strict' });
    } catch (e) {
      if (!e.addressInUse || attempt >= 5) throw e;
    }
  }
}
