// The demo page (www/index.html + www/demo.js) in real headless Chromium
// against the real stoa binary: two people see each other in #peers and
// each other's cursor on #board within 200 ms of a mouse move; pages forced
// onto WebSocket, SSE and long-poll share a room; a closed page leaves the
// others' #peers; screenshots of visible cursors go to the test artifacts.
//
// Stoa runs with --session-grace-ms 2000 (default 10000) to keep the
// leaving tests short: a closed WebSocket page leaves at once (the browser
// sends a close frame), an SSE or long-poll page must leave within
// session_grace_ms + a margin, which it can only do if the page ends its
// session (DELETE) on pagehide; the server by itself notices a vanished
// SSE or long-poll client only when it next writes to it (heartbeat, poll
// answer), tens of seconds later.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { statSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useStoa, itStopsCleanly, sleep } from '../integration/lib/stoa.mjs';
import {
  launchBrowser, openDemo, waitJoined, waitPeers, stateOf, boardPoint, moveOnBoard, waitCursor,
  armCursorWatch, readArmed, uniqueDoc, artifactsDir, pageSummary as describePage,
} from './lib.mjs';

const GRACE_MS = 2000;
/** Cursor delay the spec allows (loopback). */
const CURSOR_BUDGET_MS = 200;

describe('demo page in Chromium', () => {
  const srv = useStoa(['--session-grace-ms', String(GRACE_MS)]);
  let browser;
  const pages = [];
  const open = async (opts) => {
    const h = await openDemo(browser, srv.url, opts);
    pages.push(h);
    return h;
  };
  const noPageErrors = (...hs) => {
    for (const h of hs) assert.deepEqual(h.errors, [], `${h.label}: uncaught errors in the page`);
  };

  before(async () => { browser = await launchBrowser(); });
  after(async () => {
    for (const h of pages) await h.close();
    await browser?.close();
  });

  describe('two people in one document', () => {
    const doc = uniqueDoc('two');
    let ada;
    let bob;
    before(async () => {
      ada = await open({ doc, name: 'Ada' });
      bob = await open({ doc, name: 'Bob' });
    });

    it('each sees the other by name in #peers, on WebSocket', async () => {
      const a = await waitJoined(ada);
      const b = await waitJoined(bob);
      assert.notEqual(a.peer, b.peer);
      for (const [h, info] of [[ada, a], [bob, b]]) {
        assert.equal(info.state, 'open');
        assert.equal(info.transport, 'websocket', `${h.label}: #state data-transport`);
        assert.equal(info.clientTransport, 'websocket', `${h.label}: stoaDemo.client.transport`);
        assert.equal(await h.page.evaluate(() => window.stoaDemo.doc), doc);
      }
      const expected = [{ peer: ada.peer, name: 'Ada' }, { peer: bob.peer, name: 'Bob' }];
      await waitPeers(ada, expected);
      await waitPeers(bob, expected);
      noPageErrors(ada, bob);
    });

    it("Bob's page shows Ada's cursor where she moves the mouse, within 200 ms, five times", async (t) => {
      const moves = [[0.2, 0.3], [0.7, 0.6], [0.45, 0.8], [0.85, 0.15], [0.1, 0.9]];
      const report = [];
      for (const [nx, ny] of moves) {
        const target = await boardPoint(ada, nx, ny);
        const want = await armCursorWatch(bob, ada.peer, target);
        const t0 = Date.now();
        await ada.page.mouse.move(target.x, target.y);
        const seen = await readArmed(bob);
        assert.equal(seen.initially, false, 'the cursor was not already there');
        const d = { at: [target.nx, target.ny], px: want, dom: seen.dom - t0, frame: seen.frame - t0,
          laidOut: seen.laidOut - t0 };
        report.push(d);
        t.diagnostic(`Ada -> Bob cursor at (${target.nx}, ${target.ny}) = ${want.left},${want.top}px: ` +
          `element updated after ${d.dom} ms, in a frame after ${d.frame} ms, laid out (after the CSS transition) after ${d.laidOut} ms`);
        // The element, its name and its laid-out position, checked once more.
        const c = await waitCursor(bob, ada.peer, target, { name: 'Ada', timeout: 1000 });
        assert.equal(c.position, 'absolute', 'the cursor is absolutely positioned');
        await sleep(150);   // apart from each other (the client sends at most presence_rate per second)
      }
      // Asserted: the first frame with the element at its new place, and
      // the moment it is laid out there (the page animates `left`/`top`).
      for (const d of report) {
        assert.ok(d.frame < CURSOR_BUDGET_MS,
          `Ada's cursor reached Bob's page ${d.frame} ms after the move (budget ${CURSOR_BUDGET_MS} ms): ${JSON.stringify(report)}`);
        assert.ok(d.laidOut < CURSOR_BUDGET_MS,
          `Ada's cursor was laid out at its place on Bob's page ${d.laidOut} ms after the move (budget ${CURSOR_BUDGET_MS} ms): ${JSON.stringify(report)}`);
      }
      noPageErrors(ada, bob);
    });

    it("Ada's page shows Bob's cursor, and neither page draws its own", async () => {
      const pos = await moveOnBoard(bob, 0.6, 0.35);
      await waitCursor(ada, bob.peer, pos, { name: 'Bob' });
      for (const h of [ada, bob]) {
        const own = await h.page.$$(`#board .cursor[data-peer="${h.peer}"]`);
        assert.equal(own.length, 0, `${h.label} draws no .cursor for itself`);
        const all = await h.page.$$eval('#board .cursor', (cs) => cs.map((c) => c.dataset.peer));
        assert.deepEqual(all, [h === ada ? bob.peer : ada.peer], `${h.label}: the only cursor is the other's`);
      }
    });

    it('a chat message reaches the other page (sidecar room)', async () => {
      await ada.page.fill('#chat-input', 'hello from Ada');
      await ada.page.press('#chat-input', 'Enter');
      await bob.page.waitForFunction(() => [...document.querySelectorAll('#chat-log .chat-msg')]
        .some((m) => m.textContent.includes('hello from Ada') && m.textContent.includes('Ada')));
      await ada.page.waitForFunction(() => [...document.querySelectorAll('#chat-log .chat-msg')]
        .some((m) => m.textContent.includes('hello from Ada')));
      noPageErrors(ada, bob);
    });

    it('screenshots of both pages, each showing the other\'s cursor, go to the artifacts', async (t) => {
      const pa = await moveOnBoard(ada, 0.35, 0.45);
      const pb = await moveOnBoard(bob, 0.62, 0.58);
      await waitCursor(bob, ada.peer, pa, { name: 'Ada' });
      await waitCursor(ada, bob.peer, pb, { name: 'Bob' });
      await sleep(200);   // let the CSS transitions end
      const dir = artifactsDir();
      for (const [h, file] of [[ada, 'demo-ada.png'], [bob, 'demo-bob.png']]) {
        const path = join(dir, file);
        await h.page.screenshot({ path });
        const size = statSync(path).size;
        const sig = readFileSync(path).subarray(0, 8).toString('hex');
        assert.equal(sig, '89504e470d0a1a0a', `${path} is a PNG`);
        assert.ok(size > 20000, `${path} is ${size} bytes: a blank page?`);
        t.diagnostic(`${path}: ${size} bytes`);
      }
    });
  });

  describe('URL parameters', () => {
    it('without ?doc the page joins doc:welcome; without ?auto=1 it waits for the Join button', async () => {
      const welcome = await open({ name: 'Nia' });
      const info = await waitJoined(welcome);
      assert.equal(await welcome.page.evaluate(() => window.stoaDemo.doc), 'doc:welcome');
      assert.equal(info.state, 'open');

      const doc = uniqueDoc('manual');
      const manual = await open({ doc, name: 'Max', auto: false });
      await sleep(1000);
      assert.equal((await stateOf(manual)).state, 'closed', 'no connection before Join');
      assert.equal(await manual.page.$$eval('#peers li', (l) => l.length), 0);
      await manual.page.click('#join-button');
      await waitJoined(manual);
      await waitPeers(manual, [{ peer: manual.peer, name: 'Max' }]);
      noPageErrors(welcome, manual);
      await welcome.close();
      await manual.close();
    });
  });

  describe('WebSocket, SSE and long-poll pages in one room', () => {
    const doc = uniqueDoc('mixed');
    const hs = {};
    before(async () => {
      hs.websocket = await open({ doc, name: 'Wes', transport: 'websocket' });
      hs.sse = await open({ doc, name: 'Sue', transport: 'sse' });
      hs.longpoll = await open({ doc, name: 'Lou', transport: 'longpoll' });
    });

    it('each page is on the transport its URL forces', async () => {
      for (const [transport, h] of Object.entries(hs)) {
        const info = await waitJoined(h);
        assert.equal(info.transport, transport, `${h.label}: #state data-transport`);
        assert.equal(info.clientTransport, transport, `${h.label}: stoaDemo.client.transport`);
      }
      const expected = Object.values(hs).map((h) => ({ peer: h.peer, name: h.name }));
      for (const h of Object.values(hs)) await waitPeers(h, expected);
    });

    it("each page sees both others' cursors after they move", async () => {
      const spots = { websocket: [0.25, 0.25], sse: [0.5, 0.7], longpoll: [0.8, 0.4] };
      for (const [transport, h] of Object.entries(hs)) {
        const pos = await moveOnBoard(h, ...spots[transport]);
        for (const other of Object.values(hs)) {
          if (other !== h) await waitCursor(other, h.peer, pos, { name: h.name });
        }
      }
      // All three cursors at once, each where its owner left it.
      for (const h of Object.values(hs)) {
        const shown = await h.page.$$eval('#board .cursor', (cs) => cs.map((c) => c.dataset.peer).sort());
        assert.deepEqual(shown, Object.values(hs).filter((x) => x !== h).map((x) => x.peer).sort(),
          `${h.label}: the cursors of the two others`);
        assert.equal((await stateOf(h)).transport, h.transport, `${h.label} stayed on ${h.transport}`);
      }
      noPageErrors(...Object.values(hs));
    });
  });

  describe('a closed page leaves the others\' #peers and board', () => {
    // WebSocket: the browser's close frame ends the session at once.
    // SSE and long-poll: nothing tells the server the tab is gone unless
    // the page says so (a DELETE of its session on pagehide); otherwise it
    // notices only when it next writes to the dead connection, then waits
    // session_grace_ms. Allowed: session_grace_ms + a margin.
    const LEAVE_MARGIN_MS = 4000;
    const bounds = { websocket: 5000, sse: GRACE_MS + LEAVE_MARGIN_MS, longpoll: GRACE_MS + LEAVE_MARGIN_MS };
    for (const transport of ['websocket', 'sse', 'longpoll']) {
      it(`closing a ${transport} page removes it from a watcher's #peers and board`, async (t) => {
        const doc = uniqueDoc(`leave-${transport}`);
        const watcher = await open({ doc, name: 'Wat' });
        const leaver = await open({ doc, name: 'Leo', transport });
        await waitJoined(watcher);
        const info = await waitJoined(leaver);
        assert.equal(info.transport, transport);
        const both = [{ peer: watcher.peer, name: 'Wat' }, { peer: leaver.peer, name: 'Leo' }];
        await waitPeers(watcher, both);
        await waitPeers(leaver, both);
        const pos = await moveOnBoard(leaver, 0.4, 0.4);
        await waitCursor(watcher, leaver.peer, pos, { name: 'Leo' });

        const t0 = Date.now();
        // page.close() runs the page's pagehide handlers (a keepalive fetch
        // they start goes out); the context closes afterwards.
        await leaver.page.close();
        try {
          await watcher.page.waitForFunction((peer) =>
            !document.querySelector(`#peers li[data-peer="${CSS.escape(peer)}"]`) &&
            !document.querySelector(`#board .cursor[data-peer="${CSS.escape(peer)}"]`),
          leaver.peer, { timeout: bounds[transport] });
        } catch (e) {
          throw new Error(`the closed ${transport} page (${leaver.peer}) is still shown by the watcher ` +
            `${Date.now() - t0} ms after it closed (allowed ${bounds[transport]} ms; session_grace_ms ${GRACE_MS}): ` +
            'does the page end its session on pagehide (e.g. a keepalive DELETE /v1/sessions/{id})? ' +
            `the watcher shows ${JSON.stringify(await describePage(watcher))}`);
        } finally {
          await leaver.close();
        }
        t.diagnostic(`${transport} page gone from the watcher's #peers and board after ${Date.now() - t0} ms ` +
          `(bound ${bounds[transport]} ms)`);
        await waitPeers(watcher, [{ peer: watcher.peer, name: 'Wat' }], { timeout: 1000 });
        noPageErrors(watcher);
        await watcher.close();
      });
    }
  });

  itStopsCleanly(srv);
});
