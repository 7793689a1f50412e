// Rooms, presence, ephemeral relay and leave over real WebSockets.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly } from './lib/stoa.mjs';

const COLOR = /^#[0-9a-f]{6}$/;

describe('three peers in doc:1', () => {
  const srv = useStoa();
  let a, b, c;                  // Ada, Bob, Cy
  const states = {
    a: { name: 'Ada', cursor: { line: 3, ch: 14 }, selection: { from: 1, to: 5 } },
    b: { name: 'Bob' },
  };

  before(async () => {
    const [ta, tb, tc] = await Promise.all([
      srv.token({ sub: 'ada', name: 'Ada Lovelace', rooms: { 'doc:*': 'rw', 'project:7': 'r' } }),
      srv.token({ sub: 'bob', name: 'Bob', rooms: { '*': 'r' } }),
      srv.token({ sub: 'cy', rooms: { 'doc:1': 'r' } }),
    ]);
    a = await srv.client({ token: ta });
    b = await srv.client({ token: tb });
    c = await srv.client({ token: tc });
  });

  it('welcome carries a distinct peer id and the identity of the token', () => {
    assert.equal(a.welcome.user.id, 'ada');
    assert.equal(a.welcome.user.name, 'Ada Lovelace');
    assert.equal(a.welcome.user.anonymous, false);
    assert.match(a.welcome.user.color, COLOR);
    assert.equal(c.welcome.user.id, 'cy');
    assert.equal(c.welcome.user.name, 'cy', 'name defaults to sub');
    assert.equal(new Set([a.peer, b.peer, c.peer]).size, 3);
    for (const x of [a, b, c]) assert.match(x.peer, /^[a-z0-9]{8,}$/);
  });

  it('each joiner gets room_state with the peers before it and itself, in join order', async () => {
    const rsA = await a.join('doc:1', states.a);
    assert.equal(rsA.room, 'doc:1');
    assert.deepEqual(rsA.peers.map((p) => p.peer), [a.peer]);
    assert.deepEqual(rsA.peers[0].state, states.a);
    assert.deepEqual(rsA.peers[0].user, a.welcome.user);

    const rsB = await b.join('doc:1', states.b);
    assert.deepEqual(rsB.peers.map((p) => p.peer), [a.peer, b.peer]);
    assert.deepEqual(rsB.peers[0], { peer: a.peer, user: a.welcome.user, state: states.a });
    assert.deepEqual(rsB.peers[1], { peer: b.peer, user: b.welcome.user, state: states.b });

    c.send({ type: 'join', room: 'doc:1', id: 'c-join' });   // no state: {}
    const rsC = await c.next('room_state');
    assert.equal(rsC.id, 'c-join');
    assert.deepEqual(rsC.peers.map((p) => p.peer), [a.peer, b.peer, c.peer]);
    assert.deepEqual(rsC.peers.map((p) => p.user.id), ['ada', 'bob', 'cy']);
    assert.deepEqual(rsC.peers.map((p) => p.state), [states.a, states.b, {}]);
  });

  it('the others get peer_joined with identity and state; the joiner does not', async () => {
    const bJoined = await a.next((m) => m.type === 'peer_joined' && m.peer === b.peer);
    assert.deepEqual(bJoined, { type: 'peer_joined', room: 'doc:1', peer: b.peer, user: b.welcome.user,
                                state: states.b });
    const cJoinedA = await a.next((m) => m.type === 'peer_joined' && m.peer === c.peer);
    const cJoinedB = await b.next((m) => m.type === 'peer_joined' && m.peer === c.peer);
    assert.deepEqual(cJoinedA, cJoinedB);
    assert.deepEqual(cJoinedA.user, c.welcome.user);
    assert.deepEqual(cJoinedA.state, {});
    for (const x of [a, b, c]) await x.sync();
    assert.deepEqual(b.peek((m) => m.type === 'peer_joined' && m.peer === b.peer), []);
    assert.deepEqual(c.peek('peer_joined'), []);
    assert.deepEqual(a.peek('peer_joined'), []);
  });

  it('presence is a merge-patch; others get the whole merged state; the sender gets only an ack', async () => {
    a.send({ type: 'presence', room: 'doc:1', state: { cursor: { line: 4 }, selection: null, mood: 'ok' }, id: 2 });
    const ack = await a.next('ack');
    assert.deepEqual(ack, { type: 'ack', id: 2 });
    const expected = { name: 'Ada', cursor: { line: 4, ch: 14 }, mood: 'ok' };
    for (const x of [b, c]) {
      const p = await x.next('presence');
      assert.deepEqual(p, { type: 'presence', room: 'doc:1', peer: a.peer, state: expected });
    }
    // The relay to the room is queued before the ack: no echo can come later.
    assert.deepEqual(a.peek('presence'), []);
    await a.sync();
    assert.deepEqual(a.peek('presence'), []);
    assert.deepEqual(a.peek('error'), []);
  });

  it('presence without id is relayed and answered with nothing', async () => {
    b.send({ type: 'presence', room: 'doc:1', state: { name: null, typing: true } });
    const pa = await a.next('presence');
    assert.deepEqual(pa.state, { typing: true });
    assert.equal(pa.peer, b.peer);
    await c.next((m) => m.type === 'presence' && m.peer === b.peer);
    await b.sync();
    assert.deepEqual(b.peek((m) => m.type === 'ack' || m.type === 'presence' || m.type === 'error'), []);
  });

  it('the REST view agrees with the merged states', async () => {
    const r = await srv.fetch('/v1/rooms/doc:1/presence');
    assert.equal(r.status, 200);
    const body = await r.json();
    assert.deepEqual(body.peers.map((p) => [p.peer, p.state]), [
      [a.peer, { name: 'Ada', cursor: { line: 4, ch: 14 }, mood: 'ok' }],
      [b.peer, { typing: true }],
      [c.peer, {}],
    ]);
  });

  it('ephemeral reaches the others stamped by the server, not the sender', async () => {
    const data = { kind: 'reaction', emoji: '🎉', n: [1, 2, { x: null }] };
    b.send({ type: 'ephemeral', room: 'doc:1', data, id: 'e1',
             from: 'forged-peer', user: { id: 'mallory', name: 'Mallory' }, peer: 'forged' });
    assert.deepEqual(await b.next('ack'), { type: 'ack', id: 'e1' });
    for (const x of [a, c]) {
      const e = await x.next('ephemeral');
      assert.deepEqual(e, { type: 'ephemeral', room: 'doc:1', from: b.peer, user: b.welcome.user, data });
    }
    assert.deepEqual(b.peek('ephemeral'), []);
    await b.sync();
    assert.deepEqual(b.peek('ephemeral'), []);
  });

  it('ephemeral data may be any JSON value', async () => {
    for (const data of ['hello', 42, null, [1, 'two'], false]) {
      c.send({ type: 'ephemeral', room: 'doc:1', data });
      for (const x of [a, b]) {
        const e = await x.next('ephemeral');
        assert.deepEqual(e.data, data);
        assert.equal(e.from, c.peer);
        assert.equal(e.user.id, 'cy');
      }
    }
    await c.sync();
    assert.deepEqual(c.peek((m) => m.type === 'ephemeral' || m.type === 'error'), []);
  });

  it('a message in WebSocket fragments, and one larger than a receive chunk, each arrive whole', async () => {
    // Three continuation frames make one message.
    const text = JSON.stringify({ type: 'ephemeral', room: 'doc:1', data: { parts: 'abc'.repeat(50) } });
    const cut = [0, 40, 200, text.length];
    for (let i = 0; i < 3; i++) c.sendRaw(text.slice(cut[i], cut[i + 1]), { fin: i === 2 });
    // One frame of 3,000 bytes: libwebsockets hands it over in pieces.
    const big = 'x'.repeat(3000);
    c.send({ type: 'ephemeral', room: 'doc:1', data: big });
    // And a small one after both: nothing of the earlier ones is left over.
    c.send({ type: 'ephemeral', room: 'doc:1', data: 'small' });
    for (const x of [a, b]) {
      assert.deepEqual((await x.next('ephemeral')).data, { parts: 'abc'.repeat(50) });
      assert.equal((await x.next('ephemeral')).data, big);
      assert.equal((await x.next('ephemeral')).data, 'small');
    }
    await c.sync();
    assert.deepEqual(c.peek('error'), []);
  });

  it('leave: ack to the leaver, peer_left reason "leave" to the others', async () => {
    c.send({ type: 'leave', room: 'doc:1', id: 5 });
    assert.deepEqual(await c.next('ack'), { type: 'ack', id: 5 });
    for (const x of [a, b]) {
      const left = await x.next('peer_left');
      assert.deepEqual(left, { type: 'peer_left', room: 'doc:1', peer: c.peer, reason: 'leave' });
    }
    await c.sync();
    assert.deepEqual(c.peek('peer_left'), [], 'a leaver is not told about itself');
    // No longer in the room: nothing reaches it, and it cannot speak there.
    a.send({ type: 'ephemeral', room: 'doc:1', data: 'after-leave' });
    await b.next((m) => m.type === 'ephemeral' && m.data === 'after-leave');
    c.send({ type: 'heartbeat', room: 'doc:1', id: 'hb' });
    const err = await c.next('error');
    assert.equal(err.code, 'NOT_IN_ROOM');
    assert.equal(err.id, 'hb');
    await c.sync();
    assert.deepEqual(c.peek('ephemeral'), []);
    const body = await (await srv.fetch('/v1/rooms/doc:1/presence')).json();
    assert.deepEqual(body.peers.map((p) => p.peer), [a.peer, b.peer]);
  });

  it('a peer in two rooms gets the events of both, each labelled with its room', async () => {
    await a.join('project:7', { view: 'board' });
    const rs = await b.join('project:7');
    assert.deepEqual(rs.peers.map((p) => p.peer), [a.peer, b.peer]);
    const joined = await a.next('peer_joined');
    assert.equal(joined.room, 'project:7');
    assert.equal(joined.peer, b.peer);

    b.send({ type: 'presence', room: 'project:7', state: { card: 12 } });
    b.send({ type: 'presence', room: 'doc:1', state: { cursor: { line: 1 } } });
    b.send({ type: 'ephemeral', room: 'project:7', data: 'p7' });
    b.send({ type: 'ephemeral', room: 'doc:1', data: 'd1' });
    const p1 = await a.next((m) => m.type === 'presence' && m.room === 'project:7');
    assert.deepEqual(p1.state, { card: 12 }, 'a state is per room');
    const p2 = await a.next((m) => m.type === 'presence' && m.room === 'doc:1');
    assert.deepEqual(p2.state, { typing: true, cursor: { line: 1 } });
    assert.equal((await a.next((m) => m.type === 'ephemeral' && m.room === 'project:7')).data, 'p7');
    assert.equal((await a.next((m) => m.type === 'ephemeral' && m.room === 'doc:1')).data, 'd1');

    // Leaving one room leaves the other alone.
    b.send({ type: 'leave', room: 'project:7' });
    const left = await a.next('peer_left');
    assert.deepEqual(left, { type: 'peer_left', room: 'project:7', peer: b.peer, reason: 'leave' });
    b.send({ type: 'ephemeral', room: 'doc:1', data: 'still here' });
    assert.equal((await a.next('ephemeral')).data, 'still here');
  });

  it('closing the connection: peer_left reason "disconnect" in every room it was in', async () => {
    await b.join('project:7');
    await a.next((m) => m.type === 'peer_joined' && m.room === 'project:7');
    await b.close();
    const lefts = [await a.next('peer_left'), await a.next('peer_left')];
    assert.deepEqual(lefts.map((m) => m.room).sort(), ['doc:1', 'project:7']);
    for (const m of lefts) {
      assert.equal(m.peer, b.peer);
      assert.equal(m.reason, 'disconnect');
    }
  });

  itStopsCleanly(srv);
});
