// Switchyard's browser client: ONE connection to a bff-web gateway per page (or per origin, in
// shared mode), shared by every component that asks for it.
//
// An ES module with no dependencies and no build step: `import { connect } from
// '/v1/client.js'` (bff-web serves this file there; its types are at /v1/client.d.ts). It speaks
// graphql-transport-ws (the protocol of the graphql-ws library), so a page may use that library
// instead; docs/browser.md is the guide.
//
// - `connect(url)` returns the page's connection to that gateway URL: a window-wide singleton
//   (kept on `globalThis` under a `Symbol.for` key, so independently loaded copies of this module
//   find it too). `connect(url, { shared: true })` shares one socket between every tab of the
//   origin through a SharedWorker (this same module runs as the worker), and falls back to one
//   socket per tab where SharedWorker is missing.
// - `channel(name, handlers)` subscribes to a catalog channel. Subscriptions are reference
//   counted: however many components listen to one channel, the gateway sees ONE subscription,
//   opened with the first listener and completed with the last.
// - After a reconnect every channel resumes after the last event delivered (`after: {epoch,
//   offset}`), so nothing is missed and nothing comes twice; when the gateway says history no
//   longer covers the position (`HISTORY_GAP`), or a channel had delivered nothing yet when the
//   socket dropped, its listeners' `lost` handler is told, explicitly.
// - `request(query, variables)` runs a query or mutation over the same socket.
// - `setToken(token)` re-authenticates the open socket (a `ping` carrying the token) without
//   touching any subscription; a token function is also called before the token expires.

/** The key of the window-wide registry of connections, by gateway URL. */
const REGISTRY = Symbol.for('switchyard.client.connections/v1');

const CHANNEL_QUERY =
  'subscription SwitchyardChannel($name: String!, $after: ChannelPosition) ' +
  '{ channel(name: $name, after: $after) { epoch offset data } }';

const DEFAULTS = {
  /** First reconnect delay ceiling (ms); each attempt doubles it, up to `retryMaxMs`. */
  retryInitialMs: 250,
  /** Largest reconnect delay ceiling (ms). The delay is uniform below the ceiling (full jitter). */
  retryMaxMs: 5000,
  /** How long a `request` waits for a connection and its answer (ms). */
  requestTimeoutMs: 10000,
  /** A ping is sent after this long without any message (ms); 0 turns keep-alive off. */
  keepAliveMs: 15000,
  /** A connection whose ping is not answered within this long is dropped and reopened (ms). */
  pongTimeoutMs: 5000,
  /** A token function is called this long before the current token's `exp` (ms). */
  refreshBeforeMs: 30000,
};

/** Close codes after which the connection does not come back by itself. */
const FATAL_CLOSES = new Set([4406]);

/**
 * The page's connection to the gateway at `url` (absolute, or relative to the page).
 *
 * The first call creates it with `options`; later calls with the same URL return the same
 * connection (a `token` given later is applied with `setToken`). `options.shared` asks for one
 * socket for every tab of the origin (SharedWorker), falling back to one per tab.
 */
export function connect(url, options = {}) {
  const key = absoluteUrl(url);
  const registry = registryOf(globalThis);
  let conn = registry.get(key);
  if (conn) {
    if (options.token !== undefined) conn.setToken(options.token);
    return conn;
  }
  conn =
    options.shared && typeof globalThis.SharedWorker === 'function' && !options.WebSocket
      ? sharedOrLocal(key, options)
      : new Connection(key, options);
  registry.set(key, conn);
  return conn;
}

/** Forgets every connection of this window (closing them): for tests. */
export function _resetForTests() {
  const registry = registryOf(globalThis);
  for (const conn of registry.values()) conn.close();
  registry.clear();
}

function registryOf(scope) {
  if (!scope[REGISTRY]) {
    Object.defineProperty(scope, REGISTRY, { value: new Map(), enumerable: false });
  }
  return scope[REGISTRY];
}

function absoluteUrl(url) {
  const base = globalThis.location?.href;
  const u = base ? new URL(url, base) : new URL(url);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new TypeError(`not a WebSocket URL: ${url}`);
  }
  return u.href;
}

/** The `exp` (Unix seconds) of a JWT, or null when it has none or is not a JWT. */
export function tokenExpiry(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const exp = JSON.parse(json).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

function codeOf(errors) {
  return Array.isArray(errors) ? errors[0]?.extensions?.code : undefined;
}

/** An error of a request or subscription: the GraphQL errors, or why the socket failed it. */
export class SwitchyardError extends Error {
  constructor(message, code, errors) {
    super(message);
    this.name = 'SwitchyardError';
    this.code = code;
    this.errors = errors ?? [];
  }
}

function graphqlError(errors) {
  const message = errors?.map?.((e) => e?.message).join('; ') || 'GraphQL error';
  return new SwitchyardError(message, codeOf(errors) ?? 'GRAPHQL_ERROR', errors);
}

/**
 * One socket to one gateway, with every channel it carries. Use `connect`, not this class.
 */
export class Connection {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._token = options.token;
    this._ws = null;
    this._acked = false;
    this._authenticated = false;
    this._closed = false;
    this._attempt = 0;
    this._nextId = 1;
    /** Channels by name: { name, listeners:Set, position, opId, delivered }. */
    this._channels = new Map();
    /** Channel names by the id of their active operation. */
    this._channelOps = new Map();
    /** Requests waiting for an answer, by operation id. */
    this._requests = new Map();
    /** Requests waiting for a connection. */
    this._queued = [];
    this._stateListeners = new Set();
    this._state = 'idle';
    this._timers = { retry: null, keepAlive: null, pong: null, refresh: null };
    this._reauth = null;
    this.socketsOpened = 0;
  }

  /** `idle`, `connecting`, `connected`, `reconnecting` or `closed`. */
  get state() {
    return this._state;
  }

  /** Calls `fn(state)` on every state change; returns a function that stops it. */
  onState(fn) {
    this._stateListeners.add(fn);
    return () => this._stateListeners.delete(fn);
  }

  /**
   * Listens to catalog channel `name`. `handlers.next({epoch, offset, data})` gets each event;
   * `handlers.lost(info)` is told when events may have been lost (`info.reason`:
   * `history_gap`, with `info.resume`, or `unknown_position`); `handlers.error(err)` when the
   * gateway refused the channel (the listener is then removed). Returns the function that stops
   * listening; the gateway's subscription ends with the channel's last listener.
   */
  channel(name, handlers = {}) {
    if (typeof name !== 'string' || name.length === 0) {
      throw new TypeError('a channel name is a non-empty string');
    }
    if (this._closed) throw new SwitchyardError('the connection is closed', 'CLOSED');
    const listener = { handlers };
    let entry = this._channels.get(name);
    if (!entry) {
      entry = { name, listeners: new Set(), position: null, opId: null, delivered: 0 };
      this._channels.set(name, entry);
    }
    entry.listeners.add(listener);
    if (entry.listeners.size === 1) {
      if (this._acked) this._subscribeChannel(entry);
      else this._ensureOpen();
    }
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      entry.listeners.delete(listener);
      if (entry.listeners.size === 0 && this._channels.get(name) === entry) {
        this._channels.delete(name);
        if (entry.opId !== null) {
          this._channelOps.delete(entry.opId);
          this._send({ id: entry.opId, type: 'complete' });
          entry.opId = null;
        }
      }
    };
  }

  /**
   * Runs a query or mutation over the socket; resolves with its `data`, rejects with a
   * `SwitchyardError` (its GraphQL `errors`, or `CONNECTION_LOST` when the socket dropped before
   * the answer: a mutation may or may not have run, so it is never resent by itself).
   */
  request(query, variables = {}) {
    if (this._closed) return Promise.reject(new SwitchyardError('the connection is closed', 'CLOSED'));
    return new Promise((resolve, reject) => {
      const req = { query, variables, resolve, reject, id: null, data: undefined, timer: null };
      req.timer = setTimeout(() => {
        this._dropRequest(req);
        reject(new SwitchyardError('no answer in time', 'TIMEOUT'));
      }, this.options.requestTimeoutMs);
      if (this._acked) this._startRequest(req);
      else {
        this._queued.push(req);
        this._ensureOpen();
      }
    });
  }

  /**
   * Sets the token: a string, or a function returning one (or a promise of one), called at each
   * connect and before the token expires. On an open signed-in socket the new token is sent in a
   * re-authentication `ping`: subscriptions go on untouched. On an anonymous socket the socket is
   * reopened signed in (channels resume where they were).
   */
  setToken(token) {
    this._token = token;
    if (!this._ws || !this._acked) return;
    if (this._authenticated) this._reauthenticate();
    else this._reconnect(4000, 'signing in');
  }

  /** What this connection holds now: for debugging, and for tests. */
  stats() {
    return {
      url: this.url,
      state: this._state,
      socketsOpened: this.socketsOpened,
      channels: [...this._channels.values()].map((e) => ({
        name: e.name,
        listeners: e.listeners.size,
        subscribed: e.opId !== null,
        position: e.position,
        delivered: e.delivered,
      })),
    };
  }

  /** Closes the socket for good: requests fail, channels end silently. */
  close() {
    this._closed = true;
    this._setState('closed');
    this._clearTimers();
    this._failRequests('CLOSED', 'the connection is closed');
    this._channels.clear();
    this._channelOps.clear();
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      try {
        ws.close(1000, 'closed by the client');
      } catch {
        // Already closing.
      }
    }
  }

  // --- the socket ---

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    for (const fn of this._stateListeners) {
      try {
        fn(state);
      } catch (e) {
        reportError(e);
      }
    }
  }

  _ensureOpen() {
    if (this._ws || this._closed || this._timers.retry) return;
    this._open();
  }

  async _currentToken() {
    const t = this._token;
    return typeof t === 'function' ? await t() : t;
  }

  _open() {
    this._setState(this._attempt === 0 && this.socketsOpened === 0 ? 'connecting' : 'reconnecting');
    const ws = new this._WebSocket(this.url, 'graphql-transport-ws');
    this._ws = ws;
    this._acked = false;
    this.socketsOpened += 1;
    ws.onopen = async () => {
      if (this._ws !== ws) return;
      let token;
      try {
        token = await this._currentToken();
      } catch (e) {
        reportError(e);
        token = undefined;
      }
      if (this._ws !== ws) return;
      this._authenticated = typeof token === 'string' && token.length > 0;
      this._send(
        this._authenticated
          ? { type: 'connection_init', payload: { authorization: `Bearer ${token}` } }
          : { type: 'connection_init' },
      );
      if (this._authenticated) this._scheduleRefresh(tokenExpiry(token));
    };
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      this._onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._onClosed(event.code, event.reason);
    };
    ws.onerror = () => {
      // A close event follows; it decides.
    };
  }

  _send(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  _onMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      this._reconnect(4400, 'invalid message from the gateway');
      return;
    }
    this._armKeepAlive();
    switch (msg.type) {
      case 'connection_ack':
        this._acked = true;
        this._attempt = 0;
        this._setState('connected');
        for (const entry of this._channels.values()) this._subscribeChannel(entry);
        for (const req of this._queued.splice(0)) this._startRequest(req);
        break;
      case 'ping':
        this._send({ type: 'pong' });
        break;
      case 'pong':
        this._onPong(msg.payload);
        break;
      case 'next':
        this._onNext(msg.id, msg.payload);
        break;
      case 'error':
        this._onError(msg.id, msg.payload);
        break;
      case 'complete':
        this._onComplete(msg.id);
        break;
      default:
        break;
    }
  }

  _onClosed(code, reason) {
    this._ws = null;
    this._acked = false;
    this._clearTimers();
    this._failRequests('CONNECTION_LOST', `the connection was lost (${code} ${reason || ''})`.trim());
    this._channelOps.clear();
    for (const entry of this._channels.values()) {
      entry.opId = null;
      // Subscribed, but nothing delivered yet: what was published while we were away cannot be
      // asked for (no position to resume after). Say so.
      if (entry.position === null && entry.subscribedOnce) {
        this._notify(entry, 'lost', { reason: 'unknown_position', channel: entry.name });
      }
    }
    if (this._closed) return;
    if (FATAL_CLOSES.has(code)) {
      this._setState('closed');
      this._closed = true;
      return;
    }
    this._scheduleRetry();
  }

  _scheduleRetry() {
    const ceiling = Math.min(this.options.retryMaxMs, this.options.retryInitialMs * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    const delay = Math.random() * ceiling;
    this._setState('reconnecting');
    this._timers.retry = setTimeout(() => {
      this._timers.retry = null;
      if (!this._closed && !this._ws) this._open();
    }, delay);
  }

  /** Drops the socket and opens another (channels resume). */
  _reconnect(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    try {
      ws.close(code >= 4000 && code < 5000 ? code : 4000, reason);
    } catch {
      // Already closing.
    }
    this._onClosed(code, reason);
  }

  _clearTimers() {
    for (const k of ['keepAlive', 'pong', 'refresh']) {
      clearTimeout(this._timers[k]);
      this._timers[k] = null;
    }
  }

  _armKeepAlive() {
    if (!this.options.keepAliveMs) return;
    clearTimeout(this._timers.keepAlive);
    clearTimeout(this._timers.pong);
    this._timers.pong = null;
    this._timers.keepAlive = setTimeout(() => {
      if (!this._send({ type: 'ping' })) return;
      this._timers.pong = setTimeout(() => this._reconnect(4000, 'no pong'), this.options.pongTimeoutMs);
    }, this.options.keepAliveMs);
  }

  // --- authentication ---

  _scheduleRefresh(exp) {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    if (typeof this._token !== 'function' || !Number.isFinite(exp)) return;
    const wait = Math.max(0, exp * 1000 - Date.now() - this.options.refreshBeforeMs);
    // setTimeout holds at most 2^31-1 ms; a later expiry is looked at again then.
    this._timers.refresh = setTimeout(() => this._reauthenticate(), Math.min(wait, 2 ** 31 - 1));
  }

  async _reauthenticate() {
    const ws = this._ws;
    let token;
    try {
      token = await this._currentToken();
    } catch (e) {
      reportError(e);
      return;
    }
    if (this._ws !== ws || !this._acked || typeof token !== 'string' || !token) return;
    this._send({ type: 'ping', payload: { token } });
  }

  _onPong(payload) {
    clearTimeout(this._timers.pong);
    this._timers.pong = null;
    if (payload && payload.reauthenticated === true) this._scheduleRefresh(payload.exp);
  }

  // --- channels ---

  _subscribeChannel(entry) {
    if (entry.opId !== null || entry.listeners.size === 0) return;
    const id = `c${this._nextId++}`;
    entry.opId = id;
    entry.subscribedOnce = true;
    this._channelOps.set(id, entry.name);
    const variables = { name: entry.name, after: entry.position };
    this._send({ id, type: 'subscribe', payload: { query: CHANNEL_QUERY, variables } });
  }

  _entryOf(id) {
    const name = this._channelOps.get(id);
    const entry = name === undefined ? undefined : this._channels.get(name);
    return entry && entry.opId === id ? entry : undefined;
  }

  _notify(entry, kind, value) {
    for (const listener of [...entry.listeners]) {
      const fn = listener.handlers[kind];
      if (typeof fn !== 'function') continue;
      try {
        fn(value);
      } catch (e) {
        reportError(e);
      }
    }
  }

  /** A gap: tell the listeners, then continue from where the gateway says. */
  _gap(entry, errors) {
    const resume = errors[0]?.extensions?.resume ?? null;
    this._channelOps.delete(entry.opId);
    entry.opId = null;
    entry.position = resume;
    this._notify(entry, 'lost', { reason: 'history_gap', channel: entry.name, resume, errors });
    if (this._acked && this._channels.get(entry.name) === entry) this._subscribeChannel(entry);
  }

  _onNext(id, payload) {
    const req = this._requests.get(id);
    if (req) {
      if (payload?.errors?.length && payload.data == null) {
        this._requests.delete(id);
        this._finish(req, null, graphqlError(payload.errors));
      } else {
        req.data = payload?.data;
        req.errors = payload?.errors;
      }
      return;
    }
    const entry = this._entryOf(id);
    if (!entry) return;
    if (payload?.errors?.length) {
      if (codeOf(payload.errors) === 'HISTORY_GAP') this._gap(entry, payload.errors);
      else this._notify(entry, 'error', graphqlError(payload.errors));
      return;
    }
    const event = payload?.data?.channel;
    if (!event) return;
    entry.position = { epoch: event.epoch, offset: event.offset };
    entry.delivered += 1;
    this._notify(entry, 'next', event);
  }

  _onError(id, errors) {
    const req = this._requests.get(id);
    if (req) {
      this._requests.delete(id);
      this._finish(req, null, graphqlError(errors));
      return;
    }
    const entry = this._entryOf(id);
    if (!entry) return;
    if (codeOf(errors) === 'HISTORY_GAP') {
      this._gap(entry, errors);
      return;
    }
    // Refused (not in the catalog, forbidden, over a limit): the channel ends for its listeners.
    this._channelOps.delete(id);
    this._channels.delete(entry.name);
    entry.opId = null;
    this._notify(entry, 'error', graphqlError(errors));
    entry.listeners.clear();
  }

  _onComplete(id) {
    const req = this._requests.get(id);
    if (req) {
      this._requests.delete(id);
      if (req.errors?.length && req.data == null) this._finish(req, null, graphqlError(req.errors));
      else this._finish(req, req.data ?? null, null);
      return;
    }
    const entry = this._entryOf(id);
    if (!entry) return;
    // A channel the gateway ended without an error (a gap's `complete` is handled with the
    // gap): catalog channels never end, so this is an error for its listeners, not a loop of
    // resubscriptions.
    this._channelOps.delete(id);
    this._channels.delete(entry.name);
    entry.opId = null;
    this._notify(entry, 'error', new SwitchyardError('the gateway ended the channel', 'CHANNEL_ENDED'));
    entry.listeners.clear();
  }

  // --- requests ---

  _startRequest(req) {
    const id = `r${this._nextId++}`;
    req.id = id;
    this._requests.set(id, req);
    this._send({ id, type: 'subscribe', payload: { query: req.query, variables: req.variables } });
  }

  _dropRequest(req) {
    const i = this._queued.indexOf(req);
    if (i >= 0) this._queued.splice(i, 1);
    if (req.id !== null && this._requests.get(req.id) === req) {
      this._requests.delete(req.id);
      this._send({ id: req.id, type: 'complete' });
    }
  }

  _finish(req, data, error) {
    clearTimeout(req.timer);
    if (error) req.reject(error);
    else req.resolve(data);
  }

  _failRequests(code, message) {
    for (const req of this._requests.values()) this._finish(req, null, new SwitchyardError(message, code));
    this._requests.clear();
    if (code === 'CLOSED') {
      for (const req of this._queued.splice(0)) this._finish(req, null, new SwitchyardError(message, code));
    }
  }
}

function reportError(e) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
  else console.error(e);
}

// --- shared mode: one socket for every tab of the origin ---

/**
 * A tab's side of the shared connection: the same API as `Connection`, each call a message to
 * the SharedWorker (this module, run as one), which holds the one socket.
 */
export class SharedConnection {
  constructor(url, options, worker) {
    this.url = url;
    this.shared = true;
    this._port = worker.port;
    this._token = options.token;
    this._next = 1;
    this._subs = new Map();
    this._calls = new Map();
    this._stateListeners = new Set();
    this._state = 'connecting';
    this._port.onmessage = (e) => this._onMessage(e.data);
    this._port.start();
    this._post({ t: 'init', url, options: serializableOptions(options) });
    this._sendToken();
    globalThis.addEventListener?.('pagehide', () => this._post({ t: 'bye' }));
  }

  get state() {
    return this._state;
  }

  onState(fn) {
    this._stateListeners.add(fn);
    return () => this._stateListeners.delete(fn);
  }

  channel(name, handlers = {}) {
    const sid = this._next++;
    this._subs.set(sid, handlers);
    this._post({ t: 'sub', sid, name });
    return () => {
      if (this._subs.delete(sid)) this._post({ t: 'unsub', sid });
    };
  }

  request(query, variables = {}) {
    return this._call({ t: 'req', query, variables });
  }

  setToken(token) {
    this._token = token;
    this._sendToken();
  }

  stats() {
    return this._call({ t: 'stats' }).then((s) => ({ ...s, shared: true }));
  }

  close() {
    this._post({ t: 'bye' });
    this._subs.clear();
  }

  _call(message) {
    const rid = this._next++;
    return new Promise((resolve, reject) => {
      this._calls.set(rid, { resolve, reject });
      this._post({ ...message, rid });
    });
  }

  async _sendToken() {
    try {
      const t = this._token;
      const token = typeof t === 'function' ? await t() : t;
      if (typeof token === 'string') this._post({ t: 'token', token });
    } catch (e) {
      reportError(e);
    }
  }

  _post(message) {
    this._port.postMessage(message);
  }

  _onMessage(m) {
    if (!m || typeof m !== 'object') return;
    const sub = this._subs.get(m.sid);
    switch (m.t) {
      case 'event':
        sub?.next?.(m.event);
        break;
      case 'lost':
        sub?.lost?.(m.info);
        break;
      case 'error':
        this._subs.delete(m.sid);
        sub?.error?.(new SwitchyardError(m.error.message, m.error.code, m.error.errors));
        break;
      case 'res': {
        const call = this._calls.get(m.rid);
        this._calls.delete(m.rid);
        if (!call) break;
        if (m.ok) call.resolve(m.value);
        else call.reject(new SwitchyardError(m.error.message, m.error.code, m.error.errors));
        break;
      }
      case 'state':
        this._state = m.state;
        for (const fn of this._stateListeners) fn(m.state);
        break;
      case 'need-token':
        if (typeof this._token === 'function') this._sendToken();
        break;
      default:
        break;
    }
  }
}

function serializableOptions(options) {
  const out = {};
  for (const k of Object.keys(DEFAULTS)) if (Number.isFinite(options[k])) out[k] = options[k];
  return out;
}

function sharedOrLocal(url, options) {
  try {
    const worker = new SharedWorker(import.meta.url, { type: 'module', name: 'switchyard-client' });
    return new SharedConnection(url, options, worker);
  } catch {
    return new Connection(url, options);
  }
}

/** In the SharedWorker: serves the tabs' ports, each gateway URL on one `Connection`. */
function serveWorker(scope) {
  const connections = new Map();
  const ports = new Set();
  const tokenWaiters = new Map();
  scope.onconnect = (event) => {
    const port = event.ports[0];
    ports.add(port);
    let conn = null;
    const subs = new Map();
    const errorOf = (e) => ({ message: String(e?.message ?? e), code: e?.code, errors: e?.errors });
    const bye = () => {
      for (const stop of subs.values()) stop();
      subs.clear();
      ports.delete(port);
    };
    port.addEventListener('close', bye);
    port.onmessage = async (e) => {
      const m = e.data;
      if (!m || typeof m !== 'object') return;
      if (m.t === 'init') {
        const url = String(m.url);
        conn = connections.get(url);
        if (!conn) {
          conn = new Connection(url, {
            ...m.options,
            token: () => tokenFor(url),
          });
          connections.set(url, conn);
          conn.onState((state) => {
            for (const p of ports) p.postMessage({ t: 'state', state });
          });
        }
        port.postMessage({ t: 'state', state: conn.state });
        return;
      }
      if (!conn) return;
      switch (m.t) {
        case 'token': {
          const had = latestToken.get(conn.url);
          latestToken.set(conn.url, m.token);
          for (const resolve of tokenWaiters.get(conn.url) ?? []) resolve(m.token);
          tokenWaiters.delete(conn.url);
          if (had !== m.token) conn.setToken(() => tokenFor(conn.url));
          break;
        }
        case 'sub':
          try {
            subs.set(
              m.sid,
              conn.channel(String(m.name), {
                next: (event) => port.postMessage({ t: 'event', sid: m.sid, event }),
                lost: (info) => port.postMessage({ t: 'lost', sid: m.sid, info }),
                error: (err) => port.postMessage({ t: 'error', sid: m.sid, error: errorOf(err) }),
              }),
            );
          } catch (err) {
            port.postMessage({ t: 'error', sid: m.sid, error: errorOf(err) });
          }
          break;
        case 'unsub':
          subs.get(m.sid)?.();
          subs.delete(m.sid);
          break;
        case 'req':
          conn.request(String(m.query), m.variables).then(
            (value) => port.postMessage({ t: 'res', rid: m.rid, ok: true, value }),
            (err) => port.postMessage({ t: 'res', rid: m.rid, ok: false, error: errorOf(err) }),
          );
          break;
        case 'stats':
          port.postMessage({ t: 'res', rid: m.rid, ok: true, value: { ...conn.stats(), tabs: ports.size } });
          break;
        case 'bye':
          bye();
          break;
        default:
          break;
      }
    };
    port.start();
  };

  const latestToken = new Map();
  // The worker's token for `url`: the latest a tab sent; when the socket needs a fresh one the
  // tabs are asked (a tab with a token function answers), and the latest is used after 2 s.
  function tokenFor(url) {
    const latest = latestToken.get(url);
    const exp = tokenExpiry(latest);
    if (latest && (exp === null || exp * 1000 - Date.now() > DEFAULTS.refreshBeforeMs)) {
      return latest;
    }
    for (const p of ports) p.postMessage({ t: 'need-token' });
    return new Promise((resolve) => {
      const list = tokenWaiters.get(url) ?? [];
      list.push(resolve);
      tokenWaiters.set(url, list);
      setTimeout(() => resolve(latestToken.get(url)), 2000);
    });
  }
}

if (
  typeof globalThis.SharedWorkerGlobalScope === 'function' &&
  globalThis instanceof globalThis.SharedWorkerGlobalScope
) {
  serveWorker(globalThis);
}
