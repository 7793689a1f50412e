// The demo page through a strict proxy (../integration/lib/nginx.mjs strict
// mode: no WebSocket, buffered responses, so SSE shows nothing either)
// falls back to long-poll by itself and still shows live cursors, both ways,
// with a page connected directly.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly } from '../integration/lib/stoa.mjs';
import { startNginx } from '../integration/lib/nginx.mjs';
import {
  launchBrowser, openDemo, waitJoined, waitPeers, stateOf, moveOnBoard, waitCursor, uniqueDoc,
} from './lib.mjs';

/** WebSocket refused at once, then SSE waits sseFirstEventTimeoutMs (3 s) for its first event. */
const FALLBACK_TIMEOUT = 20000;

describe('demo page through a strict proxy', () => {
  const srv = useStoa();
  const doc = uniqueDoc('proxy');
  let px;
  let browser;
  let viaProxy;
  let direct;

  before(async () => {
    px = await startNginx(srv.port, { mode: 'strict' });
    browser = await launchBrowser();
    viaProxy = await openDemo(browser, px.url, { doc, name: 'Pat', label: 'Pat (via the strict proxy)' });
    direct = await openDemo(browser, srv.url, { doc, name: 'Dee', label: 'Dee (direct)' });
  });
  after(async () => {
    await viaProxy?.close();
    await direct?.close();
    await browser?.close();
    await px?.stop();
  });

  it('the proxied page ends on long-poll, the direct one on WebSocket', async () => {
    const p = await waitJoined(viaProxy, { timeout: FALLBACK_TIMEOUT });
    assert.equal(p.transport, 'longpoll', '#state data-transport of the proxied page');
    assert.equal(p.clientTransport, 'longpoll', 'stoaDemo.client.transport of the proxied page');
    const d = await waitJoined(direct);
    assert.equal(d.transport, 'websocket');
    const both = [{ peer: viaProxy.peer, name: 'Pat' }, { peer: direct.peer, name: 'Dee' }];
    await waitPeers(viaProxy, both);
    await waitPeers(direct, both);
  });

  it("each sees the other's cursor move", async () => {
    for (const [mover, viewer, spots] of [[viaProxy, direct, [[0.3, 0.6], [0.55, 0.2]]],
      [direct, viaProxy, [[0.75, 0.7], [0.15, 0.35]]]]) {
      for (const [nx, ny] of spots) {
        const pos = await moveOnBoard(mover, nx, ny);
        await waitCursor(viewer, mover.peer, pos, { name: mover.name, timeout: FALLBACK_TIMEOUT });
      }
    }
    assert.equal((await stateOf(viaProxy)).transport, 'longpoll', 'the proxied page stayed on long-poll');
    // It really went through the proxy: its polls are in nginx's access log.
    assert.match(px.accessLog(), /GET \/v1\/sessions\/[^/ ]+\/poll\?/, 'long-polls in the proxy\'s access log');
    assert.doesNotMatch(px.accessLog(), /" 101 /, 'no WebSocket through the strict proxy');
    for (const h of [viaProxy, direct]) assert.deepEqual(h.errors, [], `${h.label}: uncaught errors in the page`);
  });

  itStopsCleanly(srv);
});
