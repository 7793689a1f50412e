// A room larger than one drain of a WebSocket thread (ws.c takes 1,024
// woken connections per round of its loop, then runs the loop again):
// every member gets every message once and in order, also when messages
// come while a fan-out is half sent (those members then get them together).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, waitFor } from './lib/stoa.mjs';

const MEMBERS = 1500;   // more than one drain (1,024) on the one thread
const MESSAGES = 40;

describe(`a room of ${MEMBERS} on one WebSocket thread`, () => {
  const srv = useStoa(['--ws-threads', '1', '--ephemeral-burst', '1000']);

  it(`each of ${MESSAGES} messages sent back to back reaches every member once, in order`, async () => {
    const subs = [];
    // In batches: at most max_pending_handshakes (1,024) connections may
    // wait for their request head at once.
    for (let i = 0; i < MEMBERS; i += 250) {
      const batch = await Promise.all(Array.from({ length: Math.min(250, MEMBERS - i) }, () => srv.client()));
      // Observers: no peer_joined to every member for each join.
      const joined = await Promise.all(batch.map((c) => c.request({ type: 'join', room: 'doc:big', observe: true }, 20000)));
      for (const r of joined) assert.equal(r.type, 'room_state');
      subs.push(...batch);
    }
    const pub = await srv.client();
    await pub.join('doc:big');
    for (let n = 0; n < MESSAGES; n++) pub.send({ type: 'ephemeral', room: 'doc:big', data: { n } });
    const got = (c) => c.received.filter((m) => m.type === 'ephemeral');
    await waitFor(() => subs.every((c) => got(c).length >= MESSAGES),
      { timeoutMs: 60000, what: `${MESSAGES} messages at each of ${MEMBERS} members` });
    // A ping answered after them: anything queued before it (a duplicate)
    // has arrived too.
    await Promise.all(subs.map((c) => c.sync(30000)));
    const want = [...Array(MESSAGES).keys()];
    for (const c of subs) {
      assert.deepEqual(got(c).map((m) => m.data.n), want);
    }
    await Promise.all([...subs, pub].map((c) => c.close()));
  });
});
