// Stoa live demo: presence cursors, who is here, and a sidecar chat.
// Plain ES module, no dependencies; the client is Stoa's own /stoa.js.
import { connect } from '/stoa.js';

const TRANSPORTS = ['websocket', 'sse', 'longpoll'];
const TRANSPORT_LABEL = { websocket: 'WebSocket', sse: 'Server-Sent Events', longpoll: 'long-polling' };
const ROOM_RE = /^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9._~@+=:-]*[A-Za-z0-9._~@+=-]$/;
const MAX_NAME = 40;
const MAX_TEXT = 500;
const MAX_LINES = 200;
const KEY_STEP = 0.02;

const $ = (sel) => document.querySelector(sel);
const el = {
  state: $('#state'), stateText: $('#state .state-text'),
  banner: $('#banner'), bannerText: $('#banner .banner-text'), bannerClose: $('#banner .banner-close'),
  joinForm: $('#join-form'), name: $('#name'), doc: $('#doc'), joinButton: $('#join-button'),
  board: $('#board'), boardEmpty: $('#board-empty'), boardDoc: $('#board-doc'),
  peers: $('#peers'), peersEmpty: $('#peers-empty'), peersCount: $('#peers-count'),
  chatLog: $('#chat-log'), chatForm: $('#chat-form'), chatInput: $('#chat-input'), chatSend: $('#chat-send'),
  version: $('#version'),
};

// ---- parameters ----

const params = new URLSearchParams(location.search);
const forcedTransport = TRANSPORTS.includes(params.get('transport')) ? params.get('transport') : null;
if (params.has('doc')) el.doc.value = params.get('doc').trim();
if (params.has('name')) el.name.value = cleanName(params.get('name'));

// ---- state ----

let client = null;
let connecting = null;      // the promise of the client while connect() runs
let doc = null;             // the document joined (or being joined)
let myName = '';            // my chosen display name ('' = anonymous)
let tokenCache = null;      // {token, expires_at}
let busy = false;           // a join is in progress
let keyCursor = null;       // {x, y} when moved with the keyboard
let myCursorEl = null;
let lastPeers = [];         // the last presence list of the document

// ---- helpers ----

function cleanName(s) {
  return String(s ?? '').replace(/[\u0000-\u001f\u007f]/g, '').replace(/\s+/g, ' ').trim().slice(0, MAX_NAME);
}

function safeColor(c) {
  return typeof c === 'string' && /^#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?$/.test(c) ? c : '#6b7280';
}

/** Black or white text, whichever reads better on `hex`. */
function inkFor(hex) {
  let h = safeColor(hex).slice(1);
  if (h.length === 3) h = [...h].map((c) => c + c).join('');
  const lin = (i) => {
    const v = parseInt(h.slice(i, i + 2), 16) / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  };
  const L = 0.2126 * lin(0) + 0.7152 * lin(2) + 0.0722 * lin(4);
  return L > 0.36 ? '#111827' : '#ffffff';
}

function displayName(p) {
  const n = p && p.state && typeof p.state.name === 'string' ? cleanName(p.state.name) : '';
  return n || (p && p.user && p.user.name) || 'Someone';
}

function sidecar(room) { return `eph:${room}`; }

function clamp01(v) { return Math.min(1, Math.max(0, v)); }

function round4(v) { return Math.round(v * 10000) / 10000; }

function isConnected() { return client && client.state === 'open'; }

// ---- connection state indicator ----

// The attributes follow the client at once; the words wait until a
// connection made after a break has held for a moment, so that a link
// that opens and drops again does not make the indicator flicker.
const SETTLE_MS = 500;
let shownState = 'closed';
let settleTimer = null;

function showState(state, transport) {
  el.state.dataset.state = state || 'closed';
  el.state.dataset.transport = transport || '';
  clearTimeout(settleTimer);
  if (state === 'open' && shownState === 'reconnecting') {
    settleTimer = setTimeout(() => showStateText('open', transport), SETTLE_MS);
    return;
  }
  showStateText(state, transport);
}

function showStateText(state, transport) {
  shownState = state;
  let text;
  switch (state) {
    case 'open': text = `Connected over ${TRANSPORT_LABEL[transport] || transport || 'the network'}`; break;
    case 'connecting': text = 'Connecting…'; break;
    case 'reconnecting': text = 'Reconnecting…'; break;
    default: text = client ? 'Disconnected' : 'Not connected';
  }
  el.stateText.textContent = text;
  document.body.classList.toggle('is-offline', !!client && state !== 'open');
  if (state === 'open' && onStableOpen) onStableOpen();
}

let onStableOpen = null;   // called when the indicator shows a connection again

// ---- banner ----

let bannerTimer = null;
let bannerKind = '';   // 'notice' while a server notice is shown

function banner(text, level = 'info', autoHideMs = 0, kind = '') {
  clearTimeout(bannerTimer);
  bannerKind = kind;
  el.banner.dataset.level = level;
  el.bannerText.textContent = text;
  el.banner.hidden = false;
  if (autoHideMs) bannerTimer = setTimeout(hideBanner, autoHideMs);
}

function hideBanner() {
  clearTimeout(bannerTimer);
  el.banner.hidden = true;
}

el.bannerClose.addEventListener('click', hideBanner);

// ---- token and connection ----

async function anonymousToken() {
  const now = Date.now() / 1000;
  if (tokenCache && (!tokenCache.expires_at || tokenCache.expires_at - now > 60)) return tokenCache.token;
  const r = await fetch('/v1/auth/anonymous', { method: 'POST' });
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  if (!r.ok || !body || !body.token) {
    const msg = body && body.error && (body.error.message || body.error.code);
    throw new Error(msg || `anonymous sign-in failed (HTTP ${r.status})`);
  }
  tokenCache = { token: body.token, expires_at: body.expires_at };
  return body.token;
}

async function ensureClient() {
  if (client && client.state !== 'closed') return client;
  if (connecting) return connecting;
  if (client) {
    // The old client gave up for good (e.g. its identity was refused): start afresh.
    client = null;
    doc = null;
    clearBoard();
  }
  showState('connecting', null);
  connecting = (async () => {
    // The server may be away for a moment: keep asking, as connect() does.
    for (let attempt = 0; ; attempt++) {
      try {
        await anonymousToken();
        break;
      } catch (e) {
        if (!(e instanceof TypeError)) throw e;   // an answer, not a network failure
        const wait = Math.min(15000, 500 * 2 ** attempt);
        banner(`Cannot reach the server. Trying again in ${Math.ceil(wait / 1000)} s…`, 'warn', 0, 'unreachable');
        await new Promise((r) => setTimeout(r, wait));
      }
    }
    if (bannerKind === 'unreachable') hideBanner();
    const opts = { url: location.origin, token: () => anonymousToken() };
    if (forcedTransport) opts.transports = [forcedTransport];
    const c = await connect(opts);
    wireClient(c);
    client = c;
    window.stoaDemo = { client: c, doc };
    showState(c.state, c.transport);
    return c;
  })();
  try {
    return await connecting;
  } catch (e) {
    showState('closed', null);
    throw e;
  } finally {
    connecting = null;
  }
}

function wireClient(c) {
  let noticeAt = 0;      // when the last notice arrived
  let downAt = 0;        // when the connection broke (0: it is up)
  onStableOpen = () => {
    if (!downAt) return;
    // A notice that came just before the break ("shutting down") is stale now.
    if (bannerKind === 'notice' && !el.banner.hidden && downAt - noticeAt < 10000) {
      banner('Reconnected.', 'info', 4000);
    }
    downAt = 0;
  };
  c.on('state', (state, info) => {
    if (state === 'reconnecting' && !downAt) downAt = Date.now();
    showState(state, (info && info.transport) || c.transport);
  });
  c.on('presence-changed', (room, peers) => {
    if (room === doc) renderPresence(peers);
  });
  c.on('ephemeral', (m) => {
    if (!doc || m.room !== sidecar(doc)) return;
    const data = m.data && typeof m.data === 'object' ? m.data : {};
    if (typeof data.text !== 'string' || !data.text.trim()) return;
    const peer = lastPeers.find((p) => p.peer === m.from);
    const name = peer ? displayName(peer)
      : cleanName(data.name) || (m.user && m.user.name) || 'Someone';
    const color = peer ? peer.user && peer.user.color : m.user && m.user.color;
    addChat({ name, color, text: data.text, self: false, peer: m.from });
  });
  c.on('notice', (m) => {
    if (!m || !m.message) return;
    noticeAt = Date.now();
    banner(m.message, m.level === 'error' ? 'error' : m.level === 'warn' ? 'warn' : 'info', 0, 'notice');
  });
  c.on('error', (m) => {
    const code = m && (m.code || (m.error && m.error.code));
    if (code === 'RATE_LIMITED' && doc && m.room === sidecar(doc)) {
      banner('You are sending messages too fast: some were not delivered.', 'warn', 6000);
      return;
    }
    if (code === 'RATE_LIMITED' || code === 'NOT_IN_ROOM') return;   // transient, nothing for a person to do
    const msg = m && (m.message || (m.error && m.error.message));
    banner(msg ? `${msg}${code ? ` (${code})` : ''}` : 'Something went wrong.', 'error', 8000);
  });
  c.on('session', () => {
    banner('The connection was lost for a while; you have rejoined the document.', 'info', 6000);
  });
}

// ---- joining ----

el.joinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  join();
});

async function join() {
  if (busy) return;
  const room = el.doc.value.trim();
  const name = cleanName(el.name.value);
  el.name.value = name;
  if (!ROOM_RE.test(room) || room.startsWith('eph:') || room.length > 120) {
    el.doc.setAttribute('aria-invalid', 'true');
    banner('A document is named like doc:welcome: a kind (letters, digits, _ or -), a colon, then an id.', 'warn');
    el.doc.focus();
    return;
  }
  el.doc.removeAttribute('aria-invalid');
  busy = true;
  el.joinButton.disabled = true;
  el.joinButton.textContent = 'Joining…';
  try {
    const c = await ensureClient();
    if (doc === room) {
      // Same document: only the name may have changed.
      if (name !== myName) {
        myName = name;
        const patch = { name: name || null };
        c.setPresence(room, patch);
        c.setPresence(sidecar(room), patch);
      }
    } else {
      const previous = doc;
      if (previous) {
        doc = null;
        clearBoard();
        await Promise.allSettled([c.leaveDocument(previous), c.leaveDocument(sidecar(previous))]);
      }
      myName = name;
      const state = name ? { name } : {};
      doc = room;
      window.stoaDemo = { client: c, doc: room };
      renderPresence([]);
      el.chatLog.replaceChildren();
      try {
        await c.enterDocument(room, state);
      } catch (e) {
        doc = null;
        window.stoaDemo = { client: c, doc: null };
        throw e;
      }
      renderPresence(c.presence(room));
      try {
        await c.enterDocument(sidecar(room), state);
        setChatEnabled(true);
      } catch (e) {
        setChatEnabled(false);
        banner(`The chat of ${room} is not available: ${e.message || e}`, 'warn', 8000);
      }
      const u = new URL(location.href);
      u.searchParams.set('doc', room);
      if (name) u.searchParams.set('name', name); else u.searchParams.delete('name');
      u.searchParams.delete('auto');
      history.replaceState(null, '', u);
    }
    hideBannerIfJoinError();
    el.boardDoc.textContent = room;
    el.boardDoc.hidden = false;
    el.boardEmpty.hidden = true;
    document.body.classList.add('joined');
    if (keyCursor) sendCursor(keyCursor);
  } catch (e) {
    const msg = e && e.message ? e.message : String(e);
    banner(`Could not join: ${msg}`, 'error');
    joinErrorShown = true;
    if (!client) showState('closed', null);
  } finally {
    busy = false;
    el.joinButton.disabled = false;
    el.joinButton.textContent = doc ? 'Update' : 'Join';
  }
}

let joinErrorShown = false;
function hideBannerIfJoinError() {
  if (joinErrorShown) hideBanner();
  joinErrorShown = false;
}

// ---- presence: who is here, cursors ----

const cursorEls = new Map();   // peer -> element

function renderPresence(peers) {
  lastPeers = peers || [];
  renderPeers(lastPeers);
  renderCursors(lastPeers);
}

function renderPeers(peers) {
  const items = [];
  // Me first, then the others in the order they joined.
  for (const p of [...peers.filter((x) => x.self), ...peers.filter((x) => !x.self)]) {
    const li = document.createElement('li');
    li.dataset.peer = p.peer;
    if (p.self) li.classList.add('self');
    const color = safeColor(p.user && p.user.color);
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.style.background = color;
    dot.setAttribute('aria-hidden', 'true');
    const name = document.createElement('span');
    name.className = 'peer-name';
    name.textContent = displayName(p);
    if (p.user && p.user.anonymous && name.textContent !== p.user.name) {
      name.title = `${name.textContent} (anonymous: ${p.user.name})`;
    }
    li.append(dot, name);
    if (p.self) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = '(you)';
      li.append(' ', you);
    }
    const cursor = p.state && p.state.cursor;
    const status = document.createElement('span');
    status.className = 'peer-status';
    status.textContent = !p.self && cursor && typeof cursor.x === 'number' ? 'on the board' : '';
    li.append(status);
    items.push(li);
  }
  el.peers.replaceChildren(...items);
  el.peersEmpty.hidden = peers.length > 0;
  el.peersCount.textContent = peers.length ? (peers.length === 1 ? '1 person' : `${peers.length} people`) : '';
}

function renderCursors(peers) {
  const w = el.board.clientWidth;
  const h = el.board.clientHeight;
  const seen = new Set();
  for (const p of peers) {
    if (p.self) continue;
    const cur = p.state && p.state.cursor;
    if (!cur || typeof cur.x !== 'number' || typeof cur.y !== 'number' ||
        !Number.isFinite(cur.x) || !Number.isFinite(cur.y)) continue;
    seen.add(p.peer);
    let node = cursorEls.get(p.peer);
    if (!node) {
      node = makeCursor(p.peer);
      cursorEls.set(p.peer, node);
      el.board.append(node);
    }
    const color = safeColor(p.user && p.user.color);
    node.style.setProperty('--c', color);
    node.style.setProperty('--ink', inkFor(color));
    const x = clamp01(cur.x);
    const y = clamp01(cur.y);
    node.style.left = `${Math.round(x * w)}px`;
    node.style.top = `${Math.round(y * h)}px`;
    node.classList.toggle('flip-x', x > 0.75);
    node.classList.toggle('flip-y', y > 0.9);
    const label = node.querySelector('.cursor-name');
    const name = displayName(p);
    if (label.textContent !== name) label.textContent = name;
  }
  for (const [peer, node] of cursorEls) {
    if (!seen.has(peer)) {
      node.remove();
      cursorEls.delete(peer);
    }
  }
}

const SVG_NS = 'http://www.w3.org/2000/svg';

function makeCursor(peer) {
  const node = document.createElement('div');
  node.className = 'cursor';
  node.dataset.peer = peer;
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'cursor-arrow');
  svg.setAttribute('viewBox', '0 0 16 20');
  svg.setAttribute('width', '16');
  svg.setAttribute('height', '20');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(SVG_NS, 'path');
  path.setAttribute('d', 'M1 1 L1 16.5 L5.2 12.6 L8.1 19 L10.9 17.8 L8.1 11.6 L14 11.4 Z');
  svg.append(path);
  const label = document.createElement('span');
  label.className = 'cursor-name';
  node.append(svg, label);
  return node;
}

function clearBoard() {
  for (const node of cursorEls.values()) node.remove();
  cursorEls.clear();
  renderPresence([]);
  setChatEnabled(false);
}

// Redraw on resize: positions are fractions of the board.
if (typeof ResizeObserver !== 'undefined') {
  new ResizeObserver(() => { renderCursors(lastPeers); drawMyCursor(); }).observe(el.board);
} else {
  addEventListener('resize', () => { renderCursors(lastPeers); drawMyCursor(); });
}

// ---- my cursor ----

let lastSent = undefined;   // the last cursor value sent (null: none)

function sendCursor(pos) {
  if (!client || !doc) return;
  const value = pos ? { x: round4(pos.x), y: round4(pos.y) } : null;
  if (value === null && lastSent === null) return;
  if (value && lastSent && value.x === lastSent.x && value.y === lastSent.y) return;
  lastSent = value;
  try {
    client.setPresence(doc, { cursor: value });
  } catch (e) {
    console.warn('stoa demo: setPresence failed', e);
  }
}

function boardPosition(ev) {
  const r = el.board.getBoundingClientRect();
  const w = el.board.clientWidth;
  const h = el.board.clientHeight;
  if (!w || !h) return null;
  return {
    x: clamp01((ev.clientX - r.left - el.board.clientLeft) / w),
    y: clamp01((ev.clientY - r.top - el.board.clientTop) / h),
  };
}

el.board.addEventListener('pointermove', (ev) => {
  if (!doc) return;
  keyCursor = null;
  drawMyCursor();
  const pos = boardPosition(ev);
  if (pos) sendCursor(pos);
});
el.board.addEventListener('pointerdown', (ev) => {
  if (!doc) return;
  const pos = boardPosition(ev);
  if (pos) sendCursor(pos);
});
el.board.addEventListener('pointerleave', () => { if (!keyCursor) sendCursor(null); });
el.board.addEventListener('pointercancel', () => { if (!keyCursor) sendCursor(null); });
el.board.addEventListener('pointerup', (ev) => {
  if (ev.pointerType === 'touch' && !keyCursor) sendCursor(null);
});
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'hidden' && !keyCursor) sendCursor(null);
});

// Keyboard: arrow keys move a marker of my own, Escape hides it.
el.board.addEventListener('keydown', (ev) => {
  if (!doc) return;
  const step = ev.shiftKey ? KEY_STEP * 4 : KEY_STEP;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (ev.key in moves) {
    ev.preventDefault();
    const base = keyCursor || { x: 0.5, y: 0.5 };
    const [dx, dy] = keyCursor ? moves[ev.key] : [0, 0];
    keyCursor = { x: clamp01(base.x + dx), y: clamp01(base.y + dy) };
    drawMyCursor();
    sendCursor(keyCursor);
  } else if (ev.key === 'Escape' && keyCursor) {
    ev.preventDefault();
    keyCursor = null;
    drawMyCursor();
    sendCursor(null);
  }
});
el.board.addEventListener('blur', () => {
  if (keyCursor) {
    keyCursor = null;
    drawMyCursor();
    sendCursor(null);
  }
});

function drawMyCursor() {
  if (!keyCursor) {
    if (myCursorEl) myCursorEl.hidden = true;
    return;
  }
  if (!myCursorEl) {
    myCursorEl = makeCursor('');
    myCursorEl.className = 'my-cursor';
    delete myCursorEl.dataset.peer;
    el.board.append(myCursorEl);
  }
  const me = lastPeers.find((p) => p.self);
  const color = safeColor(me ? me.user && me.user.color : client && client.user && client.user.color);
  myCursorEl.style.setProperty('--c', color);
  myCursorEl.style.setProperty('--ink', inkFor(color));
  myCursorEl.querySelector('.cursor-name').textContent = 'You';
  myCursorEl.style.left = `${Math.round(keyCursor.x * el.board.clientWidth)}px`;
  myCursorEl.style.top = `${Math.round(keyCursor.y * el.board.clientHeight)}px`;
  myCursorEl.classList.toggle('flip-x', keyCursor.x > 0.75);
  myCursorEl.hidden = false;
}

// ---- chat ----

function setChatEnabled(on) {
  el.chatInput.disabled = !on;
  el.chatSend.disabled = !on;
  el.chatInput.placeholder = on ? 'Write a message' : 'Join to chat';
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

function addChat({ name, color, text, self, peer }) {
  const atBottom = el.chatLog.scrollHeight - el.chatLog.scrollTop - el.chatLog.clientHeight < 24;
  const line = document.createElement('div');
  line.className = 'chat-msg';
  if (self) line.classList.add('self');
  if (peer) line.dataset.peer = peer;
  const head = document.createElement('p');
  head.className = 'chat-head';
  const dot = document.createElement('span');
  dot.className = 'dot';
  dot.style.background = safeColor(color);
  dot.setAttribute('aria-hidden', 'true');
  const who = document.createElement('span');
  who.className = 'chat-name';
  who.textContent = self ? `${name} (you)` : name;
  const when = document.createElement('time');
  const now = new Date();
  when.dateTime = now.toISOString();
  when.textContent = timeFmt.format(now);
  head.append(dot, who, when);
  const body = document.createElement('p');
  body.className = 'chat-text';
  body.textContent = String(text).slice(0, MAX_TEXT);
  line.append(head, body);
  el.chatLog.append(line);
  while (el.chatLog.childElementCount > MAX_LINES) el.chatLog.firstElementChild.remove();
  if (atBottom || self) el.chatLog.scrollTop = el.chatLog.scrollHeight;
}

el.chatForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = el.chatInput.value.replace(/\s+$/, '').slice(0, MAX_TEXT);
  if (!text.trim() || !client || !doc) return;
  const data = { text };
  if (myName) data.name = myName;
  try {
    client.sendEphemeral(sidecar(doc), data);
  } catch (e) {
    banner(`Could not send: ${e.message || e}`, 'error', 6000);
    return;
  }
  const me = lastPeers.find((p) => p.self);
  addChat({
    name: me ? displayName(me) : myName || (client.user && client.user.name) || 'You',
    color: me ? me.user && me.user.color : client.user && client.user.color,
    text, self: true, peer: client.peer,
  });
  el.chatInput.value = '';
});

// ---- start ----

fetch('/healthz').then((r) => (r.ok ? r.json() : null)).then((h) => {
  if (h && h.version) el.version.textContent = `Stoa ${h.version}.`;
}).catch(() => {});

showState('closed', null);

if (params.get('auto') === '1') {
  join();
}

// Retry a failed automatic start once the network comes back.
addEventListener('online', () => {
  if (!client && params.get('auto') === '1' && !busy) join();
});
