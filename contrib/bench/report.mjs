// Markdown report of one results file written by contrib/bench/run.sh.
//   node contrib/bench/report.mjs /tmp/stoa-bench/results/<timestamp>.jsonl
// The file's lines are JSON objects: one {"type":"machine",...} header, then
// one {"type":"result","run":<name>,...stoa-bench --json fields} per run
// (and {"type":"skipped","run","target","reason"} for runs that could not
// happen). Prints the machine, then one table row per result.
import { readFileSync } from 'node:fs';

const file = process.argv[2];
if (!file) {
  console.error('usage: node contrib/bench/report.mjs RESULTS.jsonl');
  process.exit(2);
}
const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim());
const rows = [];
let machine = null;
const skipped = [];
let unreadable = 0;
for (const line of lines) {
  let o;
  try {
    o = JSON.parse(line);
  } catch {
    unreadable++;
    continue;
  }
  if (o.type === 'machine') machine = o;
  else if (o.type === 'skipped') skipped.push(o);
  else rows.push(o);
}

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
function fmt(v, digits = 1) {
  const n = num(v);
  if (n === null) return '–';
  if (Math.abs(n) >= 100000) return Math.round(n).toLocaleString('en-US');
  if (Math.abs(n) >= 100) return n.toFixed(0);
  return n.toFixed(digits);
}
function pct(v) {
  const n = num(v);
  if (n === null) return '–';
  // loss is a fraction (0..1) of expected deliveries
  return n === 0 ? '0' : `${(n * 100).toFixed(n < 0.001 ? 3 : 2)}%`;
}
function bytes(v) {
  const n = num(v);
  if (n === null || n === 0) return '–';
  return n >= 10240 ? `${(n / 1024).toFixed(1)} KiB` : `${Math.round(n)} B`;
}

// The ceiling's cost per delivery for the same load (any transport: the
// ceiling speaks WebSocket only, so an SSE row is compared with it too).
const loadKey = (r) => [r.scenario, r.rooms, r.subs, r.pubs, r.rate, r.size].join('/');
const ceiling = new Map();
for (const r of rows) {
  if (r.target === 'ceiling' && r.scenario !== 'idle' && num(r.server_us_per_delivery)) ceiling.set(loadKey(r), r.server_us_per_delivery);
}

function params(r) {
  if (r.scenario === 'idle') return `${r.connected ?? r.rooms * r.subs} idle, ${r.transport}`;
  if (r.scenario === 'presence') return `${r.rooms}×${r.subs} peers, presence @${r.rate}/s/peer, ${r.transport}`;
  return `${r.rooms}×${r.subs}, ${r.pubs} pub ${r.publisher} @${r.rate}/s/room, ${r.size} B, ${r.transport}`;
}

function problems(r) {   // errors, and duplicates and resyncs when there were any
  const p = [`${r.errors ?? '–'}`];
  if (r.duplicates) p.push(`${r.duplicates} dup`);
  if (r.resyncs) p.push(`${r.resyncs} resync`);
  return p.join(', ');
}

const out = [];
if (machine) {
  out.push(`Machine: ${machine.cpu_model} (${machine.nproc} CPUs), ${Math.round(machine.mem_total_kb / 1024)} MiB, ` +
    `kernel ${machine.kernel}; open files ${machine.nofile}; server on CPU ${machine.server_cpu}, generator on CPU ${machine.gen_cpu}.`);
  out.push(`Versions: ${machine.stoa_version}; ${machine.nginx_version || 'nginx –'}; node ${machine.node_version || '–'}; ` +
    `commit ${machine.git_commit || '–'}. Runs of ${machine.duration_s} s after ${machine.warmup_s} s of warm-up.`);
  out.push('');
}
out.push('| target | run | load | delivered/s | loss | p50 ms | p95 ms | p99 ms | max ms | server µs/delivery | × ceiling | server CPU s | gen CPU s | steal | other load | mem/conn | errors |');
out.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const lat = r.lat_ms || {};
  const c = ceiling.get(loadKey(r));
  const us = num(r.server_us_per_delivery);
  const ratio = r.target !== 'ceiling' && r.scenario !== 'idle' && c && us ? `${(us / c).toFixed(1)}×` : '–';
  const idle = r.scenario === 'idle';
  const noLat = idle || !r.delivered;   // nothing measured: no latency to show
  const ms = (v) => (noLat ? '–' : fmt(v, 2));
  out.push(`| ${r.target} | ${r.run ?? r.scenario} | ${params(r)} | ${idle ? '–' : fmt(r.delivered_per_s, 0)} | ` +
    `${idle ? '–' : pct(r.loss)} | ${ms(lat.p50)} | ${ms(lat.p95)} | ${ms(lat.p99)} | ${ms(lat.max)} | ` +
    `${idle ? '–' : fmt(us, 2)} | ${ratio} | ${fmt(r.server_cpu_s, 2)} | ${fmt(r.gen_cpu_s, 2)} | ` +
    `${num(r.steal_pct) === null ? '–' : `${r.steal_pct.toFixed(1)}%`} | ` +
    `${num(r.other_cpu_pct) === null ? '–' : `${r.other_cpu_pct.toFixed(1)}%`} | ${bytes(r.mem_per_conn_bytes)} | ${problems(r)} |`);
}
for (const s of skipped) out.push(`| ${s.target} | ${s.run} | skipped: ${s.reason} |${' |'.repeat(14)}`);
if (unreadable) out.push(`\n${unreadable} line(s) of ${file} are not JSON and were left out.`);
out.push('');
out.push('delivered/s: messages received by subscribers per second over the measured window; loss: share of expected ' +
  'deliveries not received by the end; latency: publish to receipt, on one clock; server µs/delivery: server CPU ' +
  '(user+system) over the window / deliveries; × ceiling: that cost divided by the ceiling program\'s for the same ' +
  'load; steal: CPU taken by the hypervisor (generator\'s view); other load: CPU used by anything but the server and ' +
  'the generator during the run, as a share of all CPUs (should be near 0: otherwise the run was disturbed); ' +
  'mem/conn: server RSS growth / connections (idle runs).');
console.log(out.join('\n'));
