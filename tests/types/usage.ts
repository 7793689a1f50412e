// Type-checked by integration/client_types.test.mjs against www/stoa.d.ts:
// the README's API example must compile.
import { connect, StoaClient, type Peer, type ClientState } from '../../www/stoa.js';

async function main(token: string): Promise<void> {
  const client: StoaClient = await connect({ url: 'https://presence.example.com', token, transports: ['websocket', 'sse', 'longpoll'] });
  client.on('state', (state: ClientState, { transport }) => console.log(state, transport));
  const rs = await client.enterDocument('doc:42', { name: 'Ada' });
  console.log(rs.peers.length);
  client.on('presence-changed', (room: string, peers: Peer[]) => {
    for (const p of peers) if (!p.self) console.log(room, p.user.name, p.state.cursor);
  });
  client.setPresence('doc:42', { cursor: { x: 0.5, y: 0.25 } });
  client.sendEphemeral('eph:doc:42', { text: 'hello' });
  client.on('ephemeral', (m) => console.log(m.from, m.user.name, m.data));
  client.on('notice', (m) => console.log(m.level, m.message));
  client.on('error', (m) => console.log(m.code, m.message));
  await client.leaveDocument('doc:42');
  await client.close();
}
void main;
