// A seconds-long smoke of the benchmark tools (contrib/bench): the load
// generator connects to a real stoa over each transport, delivers, and
// exits 0 with its JSON report; the ceiling program relays. No figure is
// asserted beyond "what was sent arrived, once": numbers live in
// docs/benchmarks.md, not in tests.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { run, startStoa, STOA_BIN } from './lib/stoa.mjs';
import { freePort } from './lib/pg.mjs';

const BENCH_DIR = join(dirname(STOA_BIN), 'contrib', 'bench');
const GEN = join(BENCH_DIR, 'stoa-bench');
const CEILING = join(BENCH_DIR, 'ceiling');
const KEY = 'bench-smoke-key-0123456789abcdef';

async function bench(args) {
  const r = await run(GEN, ['--host', '127.0.0.1', '--duration', '2', '--warmup', '1', '--json', ...args], { timeout: 60000 });
  assert.equal(r.code, 0, `stoa-bench ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  const report = JSON.parse(r.stdout.trim().split('\n').at(-1));
  return report;
}

describe('benchmark tools smoke', () => {
  let srv;
  let ceiling;
  after(async () => {
    await srv?.stop();
    ceiling?.kill('SIGTERM');
  });

  it('the generator and the ceiling are built', () => {
    assert.ok(existsSync(GEN), `${GEN} missing`);
    assert.ok(existsSync(CEILING), `${CEILING} missing`);
  });

  for (const [transport, publisher] of [['ws', 'ws'], ['sse', 'http'], ['longpoll', 'ws']]) {
    it(`stoa: ${transport} subscribers, ${publisher} publisher: what is published is delivered`, async () => {
      srv ??= await startStoa(['--api-keys', KEY, '--ephemeral-per-min', '600000', '--ephemeral-burst', '10000']);
      const r = await bench(['--target', 'stoa', '--port', String(srv.port), '--scenario', 'fanout', '--transport', transport,
        '--publisher', publisher, '--api-key', KEY, '--subs', '20', '--rate', '20', '--server-pid', String(srv.proc.pid)]);
      assert.equal(r.target, 'stoa');
      assert.equal(r.connected, 20);
      assert.ok(r.published > 0, JSON.stringify(r));
      assert.equal(r.expected, r.published * 20);
      // Everything, but for what a loaded CI machine may leave undelivered
      // when the generator stops waiting (it gives up after 1 s without
      // progress): this is a smoke of the tools, not a measurement.
      assert.ok(r.delivered >= 0.9 * r.expected, JSON.stringify(r));
      assert.equal(r.duplicates, 0, JSON.stringify(r));
      assert.equal(r.errors, 0, JSON.stringify(r));
      assert.ok(r.lat_ms.p50 >= 0 && r.lat_ms.max >= r.lat_ms.p50);
      // Read from /proc in clock ticks (10 ms): a light run may show 0.
      assert.ok(typeof r.server_cpu_s === 'number' && r.server_cpu_s >= 0, JSON.stringify(r));
      assert.ok(r.server_rss_kb_after > 0, JSON.stringify(r));
    });
  }

  it('ceiling: relays a publisher\'s frames to every subscriber', async () => {
    const port = await freePort();
    ceiling = spawn(CEILING, ['--listen', `127.0.0.1:${port}`], { stdio: 'ignore' });
    // It may take a moment to listen (a loaded CI machine, a sanitizer
    // build): wait until the port takes a connection, so that none of the
    // generator's 20 is refused.
    for (let i = 0; ; i++) {
      const up = await new Promise((res) => {
        const s = connect(port, '127.0.0.1', () => { s.destroy(); res(true); });
        s.on('error', () => res(false));
      });
      if (up) break;
      assert.ok(i < 100, 'the ceiling listens within 10 s');
      await new Promise((res) => setTimeout(res, 100));
    }
    const r = await run(GEN, ['--target', 'ceiling', '--host', '127.0.0.1', '--port', String(port), '--scenario', 'fanout',
      '--subs', '20', '--rate', '20', '--duration', '2', '--warmup', '1', '--json'], { timeout: 60000 });
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout.trim().split('\n').at(-1));
    assert.equal(report.connected, 20, JSON.stringify(report));
    assert.ok(report.published > 0);
    assert.ok(report.delivered >= 0.9 * report.published * 20, JSON.stringify(report));
    assert.equal(report.duplicates, 0, JSON.stringify(report));
  });
});
