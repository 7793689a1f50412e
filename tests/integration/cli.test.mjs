// The stoa command line: version, help, flags, environment, config file, token.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runStoa, startStoa } from './lib/stoa.mjs';

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function tempDir() {
  return mkdtempSync(join(tmpdir(), 'stoa-cli-'));
}

/** Start a server with these flags/env, return welcome.limits of an anonymous client. */
async function limitsOf(flags, opts) {
  const srv = await startStoa(flags, opts);
  let limits;
  try {
    const c = await srv.client();
    limits = c.welcome.limits;
  } finally {
    const { code } = await srv.stop();
    assert.equal(code, 0, srv.logs());
  }
  return limits;
}

describe('stoa', () => {
  it('version prints the version', async () => {
    const r = await runStoa(['version']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^stoa \d+\.\d+\.\d+/);
    const v = await runStoa(['--version']);
    assert.equal(v.stdout, r.stdout);
  });

  it('an unknown command: exit 2 with usage on stderr', async () => {
    const r = await runStoa(['frobnicate']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown command/);
    assert.match(r.stderr, /usage/);
  });

  it('serve --help lists every setting with its default and exits 0', async () => {
    const r = await runStoa(['serve', '--help']);
    assert.equal(r.code, 0);
    const settings = {
      listen: '127.0.0.1:8080', jwt_alg: 'HS256', max_state_bytes: '2048', heartbeat_timeout_s: '75',
      heartbeat_interval_s: '30', presence_rate: '60', presence_burst: '30', presence_tick_ms: '50', max_message_bytes: '65536',
      max_rooms_per_conn: '32', max_peers_per_room: '256', session_buffer_msgs: '1024', session_grace_ms: '10000', jwt_leeway_s: '30',
      allow_anonymous: 'true', token_cookie: 'stoa_token', handshake_timeout_ms: '5000',
    };
    for (const [name, def] of Object.entries(settings)) {
      const flag = `--${name.replace(/_/g, '-')}`;
      const i = r.stdout.indexOf(`${flag} `);
      assert.ok(i >= 0, `${flag} is listed`);
      const block = r.stdout.slice(i, r.stdout.indexOf('\n  --', i + 1) >>> 0);
      assert.ok(block.includes(`STOA_${name.toUpperCase()}`), `${flag} names its variable`);
      assert.match(block, new RegExp(`default: ${def.replace(/\./g, '\\.')}\\b`), `${flag} default`);
    }
  });

  it('a bad flag: exit 2 with a message on stderr', async () => {
    let r = await runStoa(['serve', '--no-such-flag', '1']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no-such-flag/);
    r = await runStoa(['serve', '--max-state-bytes', 'lots']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /max_state_bytes/);
    r = await runStoa(['serve', '--heartbeat-interval-s', '10', '--heartbeat-timeout-s', '5']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /heartbeat_timeout_s/);
    r = await runStoa(['serve', '--listen']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /needs a value/);
  });

  it('STOA_LISTEN is honoured', async () => {
    const port = await freePort();
    const srv = await startStoa([], { listen: null, env: { STOA_LISTEN: `127.0.0.1:${port}` } });
    try {
      assert.equal(srv.port, port);
      const r = await fetch(`http://127.0.0.1:${port}/healthz`);
      assert.equal(r.status, 200);
    } finally {
      await srv.stop();
    }
  });

  it('a bad environment value is refused like a bad flag', async () => {
    const r = await runStoa(['serve'], { env: { ...process.env, STOA_MAX_STATE_BYTES: 'x' } });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /STOA_MAX_STATE_BYTES/);
  });

  it('--config-file: its settings apply; the environment beats it; a flag beats both', async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'stoa.ini');
      writeFileSync(file, '; test configuration\n[limits]\nmax_state_bytes = 100\nmax_rooms_per_conn = 3\n');
      let limits = await limitsOf(['--config-file', file]);
      assert.equal(limits.max_state_bytes, 100);
      assert.equal(limits.max_rooms_per_conn, 3);
      limits = await limitsOf(['--config-file', file, '--max-state-bytes', '200']);
      assert.equal(limits.max_state_bytes, 200);
      assert.equal(limits.max_rooms_per_conn, 3);
      limits = await limitsOf(['--config-file', file], { env: { STOA_MAX_STATE_BYTES: '150' } });
      assert.equal(limits.max_state_bytes, 150);
      limits = await limitsOf(['--max-state-bytes=300'], { env: { STOA_MAX_STATE_BYTES: '150', STOA_CONFIG_FILE: file } });
      assert.equal(limits.max_state_bytes, 300);
      assert.equal(limits.max_rooms_per_conn, 3, 'STOA_CONFIG_FILE names the file');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a config file with an unknown key or a missing file: exit 2 naming the problem', async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'bad.ini');
      writeFileSync(file, 'max_state_bites = 100\n');
      let r = await runStoa(['serve', '--config-file', file]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /max_state_bites/);
      r = await runStoa(['serve', '--config-file', join(dir, 'missing.ini')]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /missing\.ini/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve --jwt-alg none is refused with a clear message', async () => {
    const dir = tempDir();
    try {
      const r = await runStoa(['serve', '--jwt-alg', 'none', '--listen', '127.0.0.1:0', '--data-dir', dir]);
      assert.notEqual(r.code, 0);
      assert.equal(r.signal, null);
      assert.match(r.stderr, /jwt_alg/);
      assert.match(r.stderr, /HS256/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve with a short HS256 secret is refused', async () => {
    const r = await runStoa(['serve', '--jwt-secret', 'short', '--listen', '127.0.0.1:0']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /secret/);
  });
});

describe('stoa token', () => {
  it('without --sub: exit 2', async () => {
    const r = await runStoa(['token', '--name', 'Ada']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--sub/);
    assert.equal(r.stdout, '');
  });

  it('bad --rooms or --ttl: exit 2', async () => {
    const dir = tempDir();
    try {
      let r = await runStoa(['token', '--sub', 'a', '--rooms', '{"doc:1":"x"}', '--data-dir', dir]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /rooms/);
      r = await runStoa(['token', '--sub', 'a', '--ttl', '0', '--data-dir', dir]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /ttl/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('mints an HS256 JWT carrying the given claims', async () => {
    const dir = tempDir();
    try {
      const r = await runStoa(['token', '--sub', 'ada', '--name', 'Ada', '--rooms', '{"doc:*":"rw"}',
                               '--ttl', '600', '--data-dir', dir]);
      assert.equal(r.code, 0, r.stderr);
      const parts = r.stdout.trim().split('.');
      assert.equal(parts.length, 3);
      const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
      const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
      assert.equal(header.alg, 'HS256');
      assert.equal(claims.sub, 'ada');
      assert.equal(claims.name, 'Ada');
      assert.deepEqual(claims.rooms, { 'doc:*': 'rw' });
      assert.equal(claims.exp - claims.iat, 600);
      assert.equal(claims.iss, 'stoa');
      assert.equal(claims.aud, 'stoa');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
