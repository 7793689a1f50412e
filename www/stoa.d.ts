// Type declarations for www/stoa.js, the Stoa client (an ES module with no
// dependency). docs/client.md explains the behaviour; docs/protocol.md is
// the wire contract these message types follow.

export type Transport = 'websocket' | 'sse' | 'longpoll';
export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export declare const TRANSPORTS: readonly Transport[];

/** A JSON value as presence states and ephemeral data carry them. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface User {
  id: string;
  name: string;
  color: string;
  anonymous: boolean;
}

/** One peer of a room in the client's local store (presence()). */
export interface Peer {
  peer: string;
  user: User;
  state: JsonObject;
  /** true for this client's own entry (its state as last set locally) */
  self: boolean;
}

export interface ClientOptions {
  /** The server's base URL, e.g. "https://presence.example.com". */
  url: string;
  /** A JWT, or a function returning one (called for each new connection). */
  token?: string | (() => string | Promise<string>);
  /** Transports to use, best first (default: all three). */
  transports?: readonly Transport[];
  /** A WebSocket constructor (Node: the `ws` package); browsers have one. */
  WebSocket?: unknown;
  /** A fetch implementation (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** Default: url with ws(s): and /v1/ws. */
  wsUrl?: string;
  /** connect(): false to reject instead of retrying while nothing works. */
  retry?: boolean;
  sseFirstEventTimeoutMs?: number;
  sseIdleTimeoutMs?: number;
  ssePadding?: boolean;
  wsOpenTimeoutMs?: number;
  wsPingIntervalMs?: number;
  pollRequestTimeoutMs?: number;
  /** Try a better transport this often; 0: never. Default 30000. */
  upgradeIntervalMs?: number;
  /** Reconnect backoff: first delay, doubling up to the maximum, full jitter. */
  reconnectDelayMs?: number;
  reconnectMaxDelayMs?: number;
  maxBatchBytes?: number;
  maxBatchMessages?: number;
  requestTimeoutMs?: number;
  autoRejoin?: boolean;
  credentials?: RequestCredentials;
  /** Outgoing messages kept while disconnected (default 1000). */
  maxQueuedMessages?: number;
  /** Presence coalescing interval outside a browser (default 16 ms). */
  presenceIntervalMs?: number;
  /** Hold presence while the page is hidden (default true). */
  pauseWhenHidden?: boolean;
  /** In a browser, end the session on pagehide (default true). */
  leaveOnPageHide?: boolean;
}

/** A message from the server (see docs/protocol.md for every type). */
export interface ServerMessage {
  type: string;
  room?: string;
  [key: string]: unknown;
}

export interface RoomState extends ServerMessage {
  type: 'room_state';
  room: string;
  peers: { peer: string; user: User; state: JsonObject }[];
}

export interface EphemeralMessage extends ServerMessage {
  type: 'ephemeral';
  room: string;
  from: string;
  user: User;
  data: Json;
}

export interface NoticeMessage extends ServerMessage {
  type: 'notice';
  level: string;
  message: string;
}

export interface ErrorMessage extends ServerMessage {
  type: 'error';
  code: string;
  message: string;
  id?: Json;
}

export interface Meta {
  seq: number | null;
  transport: Transport | 'post';
}

export declare class StoaError extends Error {
  constructor(code: string, message: string, extra?: Record<string, unknown>);
  code: string;
}

export declare class StoaClient {
  constructor(options: ClientOptions);

  readonly options: Required<Omit<ClientOptions, 'token' | 'WebSocket' | 'fetch' | 'wsUrl' | 'retry' | 'credentials'>> & ClientOptions;
  readonly url: string;
  /** The secret session id (whoever holds it may resume the session). */
  readonly session: string | null;
  readonly peer: string | null;
  readonly user: User | null;
  readonly state: ClientState;
  readonly transport: Transport | null;
  /** The last numbered message delivered. */
  readonly lastSeq: number;
  /** My presence state per room, as I set it. */
  readonly rooms: Map<string, JsonObject>;
  readonly stats: {
    delivered: Record<Transport, number>;
    duplicates: number;
    gaps: number;
    reconnects: number;
    switches: number;
    dropped: number;
  };

  connect(): Promise<this>;
  close(): Promise<void>;

  enterDocument(room: string, state?: JsonObject): Promise<RoomState>;
  leaveDocument(room: string): Promise<ServerMessage>;
  presence(room: string): Peer[];
  setPresence(room: string, patch: JsonObject): void;
  sendEphemeral(room: string, data: Json): void;

  join(room: string, state?: JsonObject): Promise<RoomState>;
  leave(room: string): Promise<ServerMessage>;
  send(room: string, data: Json): void;
  request(msg: { type: string; [key: string]: unknown }): Promise<ServerMessage>;
  switchTo(name: Transport): Promise<boolean>;
  dropConnection(): void;

  on(event: 'state', fn: (state: ClientState, info: { transport: Transport | null }) => void): () => void;
  on(event: 'presence-changed', fn: (room: string, peers: Peer[]) => void): () => void;
  on(event: 'ephemeral', fn: (msg: EphemeralMessage, meta: Meta) => void): () => void;
  on(event: 'notice', fn: (msg: NoticeMessage, meta: Meta) => void): () => void;
  on(event: 'error', fn: (msg: ErrorMessage, meta: Meta) => void): () => void;
  on(event: 'room_state', fn: (msg: RoomState, meta: Meta) => void): () => void;
  on(event: 'transport', fn: (name: Transport | null, previous: Transport | null) => void): () => void;
  on(event: 'transport_error', fn: (name: Transport | null, error: Error) => void): () => void;
  on(event: 'disconnect', fn: (error: Error) => void): () => void;
  on(event: 'session', fn: (welcome: ServerMessage, previousSession: string) => void): () => void;
  on(event: 'overflow', fn: (msg: ServerMessage) => void): () => void;
  on(event: 'close', fn: () => void): () => void;
  on(event: string, fn: (msg: ServerMessage, meta: Meta) => void): () => void;
  once(event: string, fn: (...args: any[]) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
}

/** A new client, resolved once a transport is open (see StoaClient). */
export declare function connect(options: ClientOptions): Promise<StoaClient>;

export default StoaClient;
