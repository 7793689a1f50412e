// Helpers for browser tests of the demo page (www/index.html, www/demo.js)
// in real headless Chromium, driven by playwright-core, against the real
// stoa binary (startStoa of ../integration/lib/stoa.mjs).
//
//   const browser = await launchBrowser();
//   const a = await openDemo(browser, srv.url, { doc: 'doc:x', name: 'Ada' });
//   await waitJoined(a);                       // #state open, joined, window.stoaDemo set
//   const pos = await moveOnBoard(a, 0.3, 0.4); // real mouse move over #board
//   await waitCursor(b, a.peer, pos);          // b draws a's cursor there
//
// The page's DOM contract (kept by the demo's author):
//   ?doc=<room> ?name=<display name> ?transport=websocket|sse|longpoll ?auto=1
//   #state[data-state][data-transport]
//   #board .cursor[data-peer] (style.left/top px relative to #board) > .cursor-name
//   #peers li[data-peer] (mine has class self)
//   #chat-log .chat-msg, form#chat-form #chat-input
//   window.stoaDemo = { client, doc }
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { REPO } from '../integration/lib/stoa.mjs';

export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Generous: protocol waits (join, fallback, reconnect) on a loaded machine. */
export const PROTOCOL_TIMEOUT = 15000;

/** The pixel tolerance for a cursor's position (rounding on both pages). */
export const CURSOR_TOLERANCE_PX = 3;

/** Where screenshots go: $STOA_ARTIFACTS, default tests/artifacts/. */
export const ARTIFACTS = resolve(process.env.STOA_ARTIFACTS || join(REPO, 'tests', 'artifacts'));

export function artifactsDir() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return ARTIFACTS;
}

/** A unique document name for one test. */
let docSeq = 0;
export function uniqueDoc(label) {
  return `doc:${label}-${process.pid}-${++docSeq}`;
}

/** Headless Chromium (root needs --no-sandbox). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    args: ['--no-sandbox'],
    timeout: 30000,
  });
}

/**
 * Open the demo page in a fresh browser context (its own cookies and
 * storage: another person). opts: doc, name, transport, auto (default
 * true), viewport, label (for messages). Resolves a handle {context, page,
 * label, url, errors, peer (after waitJoined), close()}.
 * `errors` collects uncaught exceptions and unhandled rejections of the page.
 */
export async function openDemo(browser, baseUrl, { doc, name, transport, auto = true,
  viewport = { width: 1280, height: 860 }, label } = {}) {
  const q = new URLSearchParams();
  if (doc !== undefined) q.set('doc', doc);
  if (name !== undefined) q.set('name', name);
  if (transport !== undefined) q.set('transport', transport);
  if (auto) q.set('auto', '1');
  const url = `${baseUrl}/?${q}`;
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(PROTOCOL_TIMEOUT);
  const h = {
    context, page, url, doc, name, transport,
    label: label ?? name ?? 'page',
    errors: [],
    console: [],
    peer: null,
    closed: false,
    async close() {
      if (h.closed) return;
      h.closed = true;
      await context.close().catch(() => {});
    },
  };
  page.on('pageerror', (e) => h.errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') h.console.push(`${m.type()}: ${m.text()}`); });
  await page.goto(url, { waitUntil: 'load' });
  return h;
}

/** #state's data-state and data-transport. */
export function stateOf(h) {
  return h.page.$eval('#state', (e) => ({ state: e.dataset.state, transport: e.dataset.transport }));
}

/**
 * Wait until the page is connected (data-state open) and in its document:
 * window.stoaDemo.doc is it, the client has a peer id, and #peers lists me
 * (li.self with my peer id). Sets h.peer. Resolves {peer, state, transport}.
 */
export async function waitJoined(h, { timeout = PROTOCOL_TIMEOUT } = {}) {
  try {
    await h.page.waitForFunction((doc) => {
      const d = window.stoaDemo;
      const st = document.querySelector('#state');
      if (!d || !d.client || !d.client.peer || st.dataset.state !== 'open') return false;
      if (doc !== undefined && d.doc !== doc) return false;
      const me = document.querySelector(`#peers li.self[data-peer="${CSS.escape(d.client.peer)}"]`);
      return !!me;
    }, h.doc, { timeout });
  } catch (e) {
    throw new Error(`${h.label}: not joined within ${timeout} ms (${JSON.stringify(await pageSummary(h))}): ${e.message}`);
  }
  const info = await h.page.evaluate(() => ({
    peer: window.stoaDemo.client.peer,
    clientTransport: window.stoaDemo.client.transport,
    state: document.querySelector('#state').dataset.state,
    transport: document.querySelector('#state').dataset.transport,
  }));
  h.peer = info.peer;
  return info;
}

/** What a page shows, for failure messages. */
export async function pageSummary(h) {
  if (h.closed) return { closed: true };
  try {
    return await h.page.evaluate(() => ({
      state: document.querySelector('#state')?.dataset.state,
      transport: document.querySelector('#state')?.dataset.transport,
      stateText: document.querySelector('#state')?.textContent.trim(),
      banner: document.querySelector('#banner')?.hidden ? null : document.querySelector('#banner')?.textContent.trim(),
      stoaDemo: window.stoaDemo ? { doc: window.stoaDemo.doc, peer: window.stoaDemo.client?.peer,
        transport: window.stoaDemo.client?.transport } : null,
      peers: [...document.querySelectorAll('#peers li')].map((li) => ({
        peer: li.dataset.peer, self: li.classList.contains('self'), text: li.textContent.trim() })),
      cursors: [...document.querySelectorAll('#board .cursor')].map((c) => ({
        peer: c.dataset.peer, left: c.style.left, top: c.style.top,
        name: c.querySelector('.cursor-name')?.textContent })),
    }));
  } catch (e) {
    return { error: e.message };
  }
}

/** The #peers list: [{peer, self, text}]. */
export function peersOf(h) {
  return h.page.$$eval('#peers li', (lis) => lis.map((li) => ({
    peer: li.dataset.peer, self: li.classList.contains('self'), text: li.textContent.trim() })));
}

/**
 * Wait until #peers lists exactly these peers ([{peer, name}]), each with
 * its display name in its text, and mine (h.peer) with class self.
 */
export async function waitPeers(h, expected, { timeout = PROTOCOL_TIMEOUT } = {}) {
  try {
    await h.page.waitForFunction(({ expected, me }) => {
      const lis = [...document.querySelectorAll('#peers li')];
      if (lis.length !== expected.length) return false;
      for (const { peer, name } of expected) {
        const li = lis.find((x) => x.dataset.peer === peer);
        if (!li || !li.textContent.includes(name)) return false;
        if (li.classList.contains('self') !== (peer === me)) return false;
      }
      return true;
    }, { expected, me: h.peer }, { timeout });
  } catch (e) {
    throw new Error(`${h.label}: #peers is not ${JSON.stringify(expected)} within ${timeout} ms; ` +
      `it shows ${JSON.stringify(await pageSummary(h))}: ${e.message}`);
  }
}

/** #board's content box in viewport coordinates: {x, y, w, h}. */
export function boardBox(h) {
  return h.page.$eval('#board', (b) => {
    const r = b.getBoundingClientRect();
    return { x: r.left + b.clientLeft, y: r.top + b.clientTop, w: b.clientWidth, h: b.clientHeight };
  });
}

/**
 * Where the page for a normalized position (nx, ny) puts the mouse: a whole
 * pixel of #board, and the normalized position it stands for (what the page
 * sends, rounded as the demo rounds: 4 decimals).
 */
export async function boardPoint(h, nx, ny) {
  const b = await boardBox(h);
  const x = Math.round(b.x + nx * b.w);
  const y = Math.round(b.y + ny * b.h);
  const r4 = (v) => Math.round(v * 10000) / 10000;
  return { x, y, nx: r4((x - b.x) / b.w), ny: r4((y - b.y) / b.h) };
}

/** Move the real mouse over #board of page h to (nx, ny); resolves the boardPoint. */
export async function moveOnBoard(h, nx, ny) {
  const p = await boardPoint(h, nx, ny);
  await h.page.mouse.move(p.x, p.y);
  return p;
}

/** The cursor page `h` should show at normalized (nx, ny): px relative to its #board. */
export async function expectedCursorPx(h, { nx, ny }) {
  const b = await boardBox(h);
  return { left: Math.round(nx * b.w), top: Math.round(ny * b.h) };
}

/**
 * Wait until page h shows peer's cursor at normalized pos (within
 * CURSOR_TOLERANCE_PX), as style.left/top and as laid out (offsetLeft/Top
 * with #board as offsetParent: after the CSS transition), with `name` in
 * its .cursor-name. Resolves what the page shows.
 */
export async function waitCursor(h, peer, pos, { name, timeout = PROTOCOL_TIMEOUT } = {}) {
  const want = await expectedCursorPx(h, pos);
  try {
    await h.page.waitForFunction(({ peer, want, tol, name }) => {
      const board = document.querySelector('#board');
      const c = board.querySelector(`.cursor[data-peer="${CSS.escape(peer)}"]`);
      if (!c) return false;
      const near = (a, b) => Math.abs(a - b) <= tol;
      if (!near(parseFloat(c.style.left), want.left) || !near(parseFloat(c.style.top), want.top)) return false;
      if (c.offsetParent !== board || !near(c.offsetLeft, want.left) || !near(c.offsetTop, want.top)) return false;
      if (name !== undefined && !(c.querySelector('.cursor-name')?.textContent || '').includes(name)) return false;
      return true;
    }, { peer, want, tol: CURSOR_TOLERANCE_PX, name }, { timeout, polling: 'raf' });
  } catch (e) {
    throw new Error(`${h.label}: no cursor of ${peer} at ${JSON.stringify(want)}px (${pos.nx}, ${pos.ny})` +
      `${name ? ` named ${name}` : ''} within ${timeout} ms; the page shows ${JSON.stringify(await pageSummary(h))}: ${e.message}`);
  }
  return h.page.$eval(`#board .cursor[data-peer="${peer}"]`, (c) => ({
    left: c.style.left, top: c.style.top, offsetLeft: c.offsetLeft, offsetTop: c.offsetTop,
    name: c.querySelector('.cursor-name')?.textContent, position: getComputedStyle(c).position }));
}

/**
 * Arm page h to timestamp (Date.now(), same clock as the test's) the first
 * moment it shows peer's cursor at pos: `dom` when style.left/top say so
 * (a MutationObserver: the moment the page updated the element), `frame`
 * the first animation frame where they do, `laidOut` the first animation
 * frame where the laid-out position (offsetLeft/Top, after the CSS
 * transition) is there. Resolves once armed; read with readArmed(h).
 */
export async function armCursorWatch(h, peer, pos) {
  const want = await expectedCursorPx(h, pos);
  await h.page.evaluate(({ peer, want, tol }) => {
    const board = document.querySelector('#board');
    const near = (a, b) => Math.abs(a - b) <= tol;
    const w = { dom: null, frame: null, laidOut: null, done: false };
    window.__cursorWatch?.stop?.();
    window.__cursorWatch = w;
    const find = () => board.querySelector(`.cursor[data-peer="${CSS.escape(peer)}"]`);
    const styled = () => {
      const c = find();
      return !!c && near(parseFloat(c.style.left), want.left) && near(parseFloat(c.style.top), want.top);
    };
    const laid = () => {
      const c = find();
      return !!c && c.offsetParent === board && near(c.offsetLeft, want.left) && near(c.offsetTop, want.top);
    };
    const mo = new MutationObserver(() => {
      if (w.dom === null && styled()) { w.dom = Date.now(); mo.disconnect(); }
    });
    mo.observe(board, { subtree: true, childList: true, attributes: true, attributeFilter: ['style'] });
    w.initially = styled();
    let raf = 0;
    const tick = () => {
      if (w.frame === null && styled()) w.frame = Date.now();
      if (w.laidOut === null && laid()) w.laidOut = Date.now();
      if (w.frame !== null && w.laidOut !== null) { w.done = true; return; }
      raf = requestAnimationFrame(tick);
    };
    raf = requestAnimationFrame(tick);
    w.stop = () => { mo.disconnect(); cancelAnimationFrame(raf); };
  }, { peer, want, tol: CURSOR_TOLERANCE_PX });
  return want;
}

/** Wait for the armed watch to see the cursor (dom, frame and laid out); resolves the timestamps. */
export async function readArmed(h, { timeout = PROTOCOL_TIMEOUT } = {}) {
  try {
    await h.page.waitForFunction(() => window.__cursorWatch?.done, null, { timeout, polling: 'raf' });
  } catch (e) {
    throw new Error(`${h.label}: the armed cursor was not seen within ${timeout} ms; the page shows ` +
      `${JSON.stringify(await pageSummary(h))}: ${e.message}`);
  }
  return h.page.evaluate(() => {
    const w = window.__cursorWatch;
    w.stop();
    return { dom: w.dom, frame: w.frame, laidOut: w.laidOut, initially: w.initially };
  });
}

/**
 * Record every data-state of #state from now on (the page's transitions,
 * even brief ones). readStates(h) resolves the list.
 */
export function recordStates(h) {
  return h.page.evaluate(() => {
    const st = document.querySelector('#state');
    window.__states = [{ state: st.dataset.state, transport: st.dataset.transport, t: Date.now() }];
    new MutationObserver(() => {
      const last = window.__states[window.__states.length - 1];
      if (last.state !== st.dataset.state || last.transport !== st.dataset.transport) {
        window.__states.push({ state: st.dataset.state, transport: st.dataset.transport, t: Date.now() });
      }
    }).observe(st, { attributes: true, attributeFilter: ['data-state', 'data-transport'] });
  });
}

export function readStates(h) {
  return h.page.evaluate(() => window.__states);
}
