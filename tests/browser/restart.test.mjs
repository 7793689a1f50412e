// The demo page rides out a restart of the server: stop stoa and start it
// again on the same port with the same data dir (the same JWT secret, so
// the page's anonymous token stays valid). Both pages go to
// data-state 'reconnecting', come back to 'open' by themselves (a new
// session: the old one died with the server), and see each other again:
// #peers and a cursor move.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startStoa, sleep } from '../integration/lib/stoa.mjs';
import { freePort } from '../integration/lib/pg.mjs';
import {
  launchBrowser, openDemo, waitJoined, waitPeers, moveOnBoard, waitCursor, uniqueDoc,
  recordStates, readStates, pageSummary as describePage,
} from './lib.mjs';

const FLAGS = ['--session-grace-ms', '2000'];
/** The client's reconnect backoff grows to reconnectMaxDelayMs (15 s); the server is down ~1 s. */
const BACK_TIMEOUT = 30000;

/** Start stoa on exactly this port; the old one may hold it a moment after exiting. */
async function startOn(port, dataDir) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startStoa(FLAGS, { listen: `127.0.0.1:${port}`, dataDir });
    } catch (e) {
      if (attempt >= 10) throw e;
      await sleep(300);
    }
  }
}

describe('demo page across a server restart', () => {
  const doc = uniqueDoc('restart');
  let dataDir;
  let port;
  let srv;
  let browser;
  let ada;
  let bob;

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'stoa-browser-restart-'));
    port = await freePort();
    srv = await startOn(port, dataDir);
    browser = await launchBrowser();
    ada = await openDemo(browser, srv.url, { doc, name: 'Ada' });
    bob = await openDemo(browser, srv.url, { doc, name: 'Bob' });
  });
  after(async () => {
    await ada?.close();
    await bob?.close();
    await browser?.close();
    await srv?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  let before1;
  let stoppedAt;
  it('both pages are connected and see each other', async () => {
    await waitJoined(ada);
    await waitJoined(bob);
    before1 = { ada: ada.peer, bob: bob.peer };
    const both = [{ peer: ada.peer, name: 'Ada' }, { peer: bob.peer, name: 'Bob' }];
    await waitPeers(ada, both);
    await waitPeers(bob, both);
    const pos = await moveOnBoard(ada, 0.3, 0.3);
    await waitCursor(bob, ada.peer, pos, { name: 'Ada' });
  });

  it("stopping the server puts both pages in 'reconnecting'", async () => {
    await recordStates(ada);
    await recordStates(bob);
    stoppedAt = Date.now();
    const { code, signal } = await srv.stop();
    assert.deepEqual({ code, signal }, { code: 0, signal: null },
      `stoa did not exit cleanly with two pages connected; its log:\n${srv.logs()}`);
    for (const h of [ada, bob]) {
      try {
        await h.page.waitForFunction(() => document.querySelector('#state').dataset.state === 'reconnecting',
          null, { timeout: 10000 });
      } catch (e) {
        throw new Error(`${h.label} is not 'reconnecting' with the server down: ` +
          `${JSON.stringify(await describePage(h))}; states: ${JSON.stringify(await readStates(h))}`);
      }
    }
    await sleep(1500);   // down a while longer: the pages retry and fail a few times more
    for (const h of [ada, bob]) {
      // From the first 'reconnecting' on, nothing else while no server answers.
      const states = await readStates(h);
      const since = states.slice(states.findIndex((s) => s.state === 'reconnecting'));
      assert.deepEqual([...new Set(since.map((s) => s.state))], ['reconnecting'],
        `${h.label}: only 'reconnecting' while the server is down; states (ms from the stop): ` +
        JSON.stringify(states.map((s) => [s.state, s.transport, s.t - stoppedAt])));
    }
  });

  it("after a restart on the same port both pages go back to 'open' by themselves and see each other", async (t) => {
    const t0 = Date.now();
    srv = await startOn(port, dataDir);
    for (const h of [ada, bob]) {
      try {
        await h.page.waitForFunction(() => document.querySelector('#state').dataset.state === 'open',
          null, { timeout: BACK_TIMEOUT });
      } catch (e) {
        throw new Error(`${h.label} did not come back to 'open' within ${BACK_TIMEOUT} ms: ` +
          `${JSON.stringify(await describePage(h))}; states: ${JSON.stringify(await readStates(h))}`);
      }
      const states = await readStates(h);
      const seq = states.map((s) => s.state);
      t.diagnostic(`${h.label}: open again ${Date.now() - t0} ms after the restart; states ${JSON.stringify(seq)}`);
      const r = seq.indexOf('reconnecting');
      assert.ok(r >= 0 && seq.lastIndexOf('open') > r, `${h.label}: 'reconnecting' then 'open': ${JSON.stringify(states)}`);
    }
    // A new session each (the server forgot the old ones), back in the document.
    for (const h of [ada, bob]) {
      const info = await waitJoined(h);
      t.diagnostic(`${h.label}: back on ${info.transport}; states (ms from the stop): ` +
        JSON.stringify((await readStates(h)).map((s) => [s.state, s.transport, s.t - stoppedAt])));
    }
    assert.notEqual(ada.peer, before1.ada, 'Ada has a new peer id');
    assert.notEqual(bob.peer, before1.bob, 'Bob has a new peer id');
    const both = [{ peer: ada.peer, name: 'Ada' }, { peer: bob.peer, name: 'Bob' }];
    await waitPeers(ada, both);
    await waitPeers(bob, both);

    const pa = await moveOnBoard(ada, 0.7, 0.25);
    await waitCursor(bob, ada.peer, pa, { name: 'Ada' });
    const pb = await moveOnBoard(bob, 0.2, 0.75);
    await waitCursor(ada, bob.peer, pb, { name: 'Bob' });
    for (const h of [ada, bob]) {
      const shown = await h.page.$$eval('#board .cursor', (cs) => cs.map((c) => c.dataset.peer));
      assert.deepEqual(shown, [h === ada ? bob.peer : ada.peer], `${h.label}: no stale cursor of the old session`);
      assert.deepEqual(h.errors, [], `${h.label}: uncaught errors in the page`);
    }
  });

  it('the restarted server exits 0 on SIGTERM', async () => {
    stoppedAt = Date.now();
    const { code, signal } = await srv.stop();
    assert.deepEqual({ code, signal }, { code: 0, signal: null }, `its log:\n${srv.logs()}`);
  });
});
