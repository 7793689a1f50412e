// Token claims may list groups: a session then joins user:{sub} and
// group:{id} by itself, and the application's backend can reach those
// rooms through the integrator API.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { useStoa, itStopsCleanly, runStoa } from './lib/stoa.mjs';

const KEY = 'groups-test-api-key-0123456789abcdef';

describe('groups claim', () => {
  const srv = useStoa(['--api-keys', KEY]);
  const tok = (sub, groups, rooms = {}) => srv.token({ sub, name: sub, rooms, flags: ['--groups', groups] });

  it('a session joins user:{sub} and group:{id} by itself, with their room_state first', async () => {
    const ada = await srv.client({ token: await tok('ada', 'staff,council') });
    const rooms = [];
    for (let i = 0; i < 3; i++) {
      const m = await ada.next();
      assert.equal(m.type, 'room_state', JSON.stringify(m));
      assert.deepEqual(m.peers.map((p) => p.peer), [ada.peer]);
      rooms.push(m.room);
    }
    assert.deepEqual(rooms, ['user:ada', 'group:staff', 'group:council']);
    // read rights on them come with the claim (the token grants no rooms)
    ada.send({ type: 'ephemeral', room: 'group:staff', data: 1, id: 'e' });
    assert.equal((await ada.next((m) => m.id === 'e')).type, 'ack');
    await ada.close();
  });

  it('members of a group see each other there; others do not', async () => {
    const ada = await srv.client({ token: await tok('ada', 'staff') });
    const bob = await srv.client({ token: await tok('bob', 'staff,council') });
    const eve = await srv.client({ token: await tok('eve', 'council') });
    const joined = await ada.next((m) => m.type === 'peer_joined' && m.room === 'group:staff');
    assert.equal(joined.peer, bob.peer);
    await eve.next((m) => m.type === 'room_state' && m.room === 'group:council');
    await eve.sync();
    assert.deepEqual(eve.peek((m) => m.room === 'group:staff'), []);
    // no rights on another user's room or group
    eve.send({ type: 'join', room: 'group:staff', id: 'j' });
    assert.equal((await eve.next((m) => m.id === 'j')).code, 'PERMISSION_DENIED');
    eve.send({ type: 'join', room: 'user:ada', id: 'k' });
    assert.equal((await eve.next((m) => m.id === 'k')).code, 'PERMISSION_DENIED');
    await Promise.all([ada.close(), bob.close(), eve.close()]);
  });

  it('the backend reaches a user or a group through publish', async () => {
    const ada = await srv.client({ token: await tok('ada', 'staff') });
    const bob = await srv.client({ token: await tok('bob', 'staff') });
    const publish = (room, data) => srv.fetch(`/v1/rooms/${room}/publish`, {
      method: 'POST', headers: { Authorization: `Bearer ${KEY}` }, body: JSON.stringify({ data }),
    });
    assert.deepEqual(await (await publish('group:staff', { record: 1 })).json(), { room: 'group:staff', delivered: 2 });
    assert.deepEqual(await (await publish('user:bob', { record: 2 })).json(), { room: 'user:bob', delivered: 1 });
    assert.deepEqual((await ada.next('message')).data, { record: 1 });
    assert.deepEqual((await bob.next('message')).data, { record: 1 });
    assert.deepEqual((await bob.next('message')).data, { record: 2 });
    await ada.sync();
    assert.deepEqual(ada.peek('message'), []);
    await Promise.all([ada.close(), bob.close()]);
  });

  it('a token without a groups claim joins nothing by itself', async () => {
    const c = await srv.client({ token: await srv.token({ sub: 'carl', rooms: { '*': 'r' } }) });
    await c.sync();
    assert.deepEqual(c.peek('room_state'), []);
    await c.close();
  });

  it('a token with a bad group id is refused (AUTH_FAILED), and so are too many groups', async () => {
    for (const groups of ['bad group', Array.from({ length: 17 }, (_, i) => `g${i}`).join(',')]) {
      // stoa token verifies what it minted the way the server will, and refuses
      const r = await runStoa(['token', '--sub', 'x', '--groups', groups, '--data-dir', srv.dataDir]);
      assert.equal(r.code, 2, groups);
      assert.match(r.stderr, /groups/);
    }
  });

  itStopsCleanly(srv);
});
