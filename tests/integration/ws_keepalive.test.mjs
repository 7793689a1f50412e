// WebSocket keepalive: the server pings a connection silent for
// ws_ping_interval_s and closes one silent (pongs included) for
// ws_idle_timeout_s. A client that answers pings stays connected.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, WebSocket } from './lib/stoa.mjs';

function open(srv, options = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(srv.wsUrl, options);
    ws.pings = 0;
    ws.on('ping', () => { ws.pings++; });
    ws.closedAt = new Promise((r) => ws.on('close', (code) => r({ code, at: Date.now() })));
    ws.on('open', () => resolve(ws));
    ws.on('error', reject);
  });
}

describe('WebSocket keepalive', () => {
  const srv = useStoa(['--ws-ping-interval-s', '1', '--ws-idle-timeout-s', '3']);

  it('a client that answers pings is pinged about once a second and stays connected', async () => {
    const ws = await open(srv);
    const closed = ws.closedAt.then(() => 'closed');
    const r = await Promise.race([closed, new Promise((res) => setTimeout(() => res('open'), 5500))]);
    assert.equal(r, 'open', 'still connected after 5.5 s');
    assert.ok(ws.pings >= 2, `pings received: ${ws.pings}`);
    ws.close();
  });

  it('a client that never answers is closed after the idle timeout, not before', async () => {
    const start = Date.now();
    const ws = await open(srv, { autoPong: false });
    const { at } = await ws.closedAt;
    const after = at - start;
    assert.ok(ws.pings >= 1, 'it was pinged first');
    assert.ok(after >= 2900, `closed after ${after} ms, before the 3 s idle timeout`);
    assert.ok(after < 8000, `closed after ${after} ms`);
  });

  itStopsCleanly(srv);
});
