// Type declarations of Switchyard's browser client (switchyard-client.js, served by bff-web at
// /v1/client.js, these at /v1/client.d.ts). Guide: docs/browser.md.

/** A position in a channel: the epoch and offset of an event, as decimal strings (u64). */
export interface ChannelPosition {
  epoch: string;
  offset: string;
}

/** One event of a catalog channel. */
export interface ChannelEvent<T = unknown> extends ChannelPosition {
  /** The published JSON value, as published. */
  data: T;
}

/** Why a listener's `lost` handler was called. */
export interface LostInfo {
  /**
   * `history_gap`: the gateway's history no longer covers the channel's position; events up to
   * `resume` are lost and the channel continues after it. `unknown_position`: the socket dropped
   * before the channel delivered any event, so what was published meanwhile cannot be asked for.
   * Either way: refetch what the lost events would have told you.
   */
  reason: 'history_gap' | 'unknown_position';
  channel: string;
  resume?: ChannelPosition | null;
  errors?: GraphQLErrorJSON[];
}

export interface GraphQLErrorJSON {
  message: string;
  path?: (string | number)[];
  extensions?: { code?: string; [key: string]: unknown };
}

/** Handlers of one listener of a channel. */
export interface ChannelHandlers<T = unknown> {
  next?(event: ChannelEvent<T>): void;
  lost?(info: LostInfo): void;
  /** The gateway refused the channel (`CHANNEL_NOT_FOUND`, `FORBIDDEN`, …); the listener is removed. */
  error?(error: SwitchyardError): void;
}

/** A token, or a function giving one (called at each connect and before the token expires). */
export type TokenSource = string | undefined | (() => string | undefined | Promise<string | undefined>);

export interface ConnectOptions {
  /** The bearer token (JWT) the socket signs in with. */
  token?: TokenSource;
  /** One socket for every tab of the origin (SharedWorker); one per tab where it is missing. */
  shared?: boolean;
  /** First reconnect delay ceiling, ms (250); doubles per attempt, full jitter. */
  retryInitialMs?: number;
  /** Largest reconnect delay ceiling, ms (5000). */
  retryMaxMs?: number;
  /** How long a request waits for a connection and its answer, ms (10000). */
  requestTimeoutMs?: number;
  /** Ping after this long without a message, ms (15000); 0: no keep-alive. */
  keepAliveMs?: number;
  /** Reconnect when a ping is not answered within this long, ms (5000). */
  pongTimeoutMs?: number;
  /** Call a token function this long before the token's `exp`, ms (30000). */
  refreshBeforeMs?: number;
  /** A WebSocket implementation (tests, non-browser runtimes); never shared mode. */
  WebSocket?: unknown;
}

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface ConnectionStats {
  url: string;
  state: ConnectionState;
  socketsOpened: number;
  channels: {
    name: string;
    listeners: number;
    subscribed: boolean;
    position: ChannelPosition | null;
    delivered: number;
  }[];
  /** In shared mode: the stats are the worker's, `tabs` the tabs connected to it. */
  shared?: boolean;
  tabs?: number;
}

/** The page's connection to one gateway. */
export interface SwitchyardConnection {
  readonly url: string;
  readonly state: ConnectionState;
  /** Listens to a catalog channel; returns the function that stops listening. */
  channel<T = unknown>(name: string, handlers?: ChannelHandlers<T>): () => void;
  /** A query or mutation over the socket; resolves with its `data`. */
  request<T = Record<string, unknown>>(query: string, variables?: Record<string, unknown>): Promise<T>;
  /** Re-authenticates without dropping subscriptions. */
  setToken(token: TokenSource): void;
  onState(listener: (state: ConnectionState) => void): () => void;
  stats(): ConnectionStats | Promise<ConnectionStats>;
  close(): void;
}

/** The page's one connection to the gateway at `url` (created by the first call). */
export function connect(url: string | URL, options?: ConnectOptions): SwitchyardConnection;

/** The `exp` claim of a JWT (Unix seconds), or null. */
export function tokenExpiry(token: string | undefined): number | null;

export class SwitchyardError extends Error {
  /** A GraphQL `extensions.code`, or `CONNECTION_LOST`, `TIMEOUT`, `CLOSED`, `CHANNEL_ENDED`. */
  readonly code: string;
  readonly errors: GraphQLErrorJSON[];
}

/** Closes and forgets every connection of this window: for tests. */
export function _resetForTests(): void;
