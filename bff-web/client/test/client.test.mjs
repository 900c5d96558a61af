// Unit tests of the browser client (../switchyard-client.js), run with `node --test` (no
// dependencies): a scripted WebSocket stands in for the gateway, so every message the client
// sends is checked and every message of the protocol can be played back at it.
// bff-web/tests/client_js.rs runs them under `cargo test`.

import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { connect, tokenExpiry, _resetForTests } from '../switchyard-client.js';

/** A scripted socket: what the client sent, and the gateway's side of the conversation. */
class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  send(data) {
    assert.equal(this.readyState, 1, 'send on an open socket only');
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // The gateway's side.
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  deliver(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  drop(code = 1006, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  of(type) {
    return this.sent.filter((m) => m.type === type);
  }
  static last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
}

const URL_ = 'ws://gateway.test/v1/graphql';
const FAST = { WebSocket: FakeSocket, retryInitialMs: 1, retryMaxMs: 2, keepAliveMs: 0 };

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** Opens the latest socket and acknowledges its `connection_init`. */
async function accept() {
  const ws = FakeSocket.last();
  ws.open();
  await tick();
  assert.equal(ws.sent[0]?.type, 'connection_init');
  ws.deliver({ type: 'connection_ack' });
  return ws;
}

/** Waits until a new socket is opened (a reconnect). */
async function nextSocket(count) {
  for (let i = 0; i < 200 && FakeSocket.all.length < count; i++) await tick(2);
  assert.equal(FakeSocket.all.length, count, 'a new socket was opened');
  return FakeSocket.last();
}

function event(id, offset, data, epoch = '7') {
  return { id, type: 'next', payload: { data: { channel: { epoch, offset: String(offset), data } } } };
}

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256' })}.${b64(claims)}.sig`;
}

beforeEach(() => {
  _resetForTests();
  FakeSocket.all = [];
});

test('connect is a window-wide singleton keyed by the gateway URL', () => {
  const a = connect(URL_, FAST);
  const b = connect(URL_, FAST);
  const c = connect('http://gateway.test/v1/graphql', FAST);
  const other = connect('ws://gateway.test/v2/graphql', FAST);
  assert.equal(a, b);
  assert.equal(a, c, 'http: is the same gateway as ws:');
  assert.notEqual(a, other);
  // The registry lives on globalThis under a registered symbol: another copy of the module finds it.
  const registry = globalThis[Symbol.for('switchyard.client.connections/v1')];
  assert.equal(registry.get(URL_), a);
});

test('no socket is opened before something is asked for; then exactly one', async () => {
  const conn = connect(URL_, FAST);
  assert.equal(FakeSocket.all.length, 0);
  conn.channel('rates.EUR-USD', {});
  conn.channel('announcements', {});
  void conn.request('{ __typename }').catch(() => {});
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(FakeSocket.last().protocol, 'graphql-transport-ws');
});

test('two listeners of one channel are one subscription, ended with the last listener', async () => {
  const conn = connect(URL_, { ...FAST, token: 't0' });
  const a = [];
  const b = [];
  const stopA = conn.channel('conversions.alice', { next: (e) => a.push(e.offset) });
  const stopB = conn.channel('conversions.alice', { next: (e) => b.push(e.offset) });
  const ws = await accept();
  assert.deepEqual(ws.sent[0].payload, { authorization: 'Bearer t0' });
  const subs = ws.of('subscribe');
  assert.equal(subs.length, 1, 'one subscribe for two listeners');
  assert.deepEqual(subs[0].payload.variables, { name: 'conversions.alice', after: null });
  ws.deliver(event(subs[0].id, 1, { n: 1 }));
  assert.deepEqual(a, ['1']);
  assert.deepEqual(b, ['1']);
  // A third listener joining later adds no subscription either.
  const stopC = conn.channel('conversions.alice', {});
  assert.equal(ws.of('subscribe').length, 1);
  stopA();
  stopC();
  stopA();
  assert.equal(ws.of('complete').length, 0, 'still one listener');
  ws.deliver(event(subs[0].id, 2, { n: 2 }));
  assert.deepEqual(a, ['1']);
  assert.deepEqual(b, ['1', '2']);
  stopB();
  assert.deepEqual(ws.of('complete'), [{ id: subs[0].id, type: 'complete' }]);
  assert.deepEqual(conn.stats().channels, []);
});

test('after a reconnect every channel resumes after its last event: none lost, none twice', async () => {
  const conn = connect(URL_, FAST);
  const seen = [];
  const lost = [];
  conn.channel('conversions.alice', { next: (e) => seen.push(e.offset), lost: (i) => lost.push(i) });
  let ws = await accept();
  const first = ws.of('subscribe')[0];
  ws.deliver(event(first.id, 41, {}));
  ws.deliver(event(first.id, 42, {}));
  ws.drop(1001, 'draining');
  assert.equal(conn.state, 'reconnecting');
  ws = await nextSocket(2);
  ws.open();
  await tick();
  ws.deliver({ type: 'connection_ack' });
  const again = ws.of('subscribe');
  assert.equal(again.length, 1);
  assert.deepEqual(again[0].payload.variables.after, { epoch: '7', offset: '42' });
  ws.deliver(event(again[0].id, 43, {}));
  // A late frame of the old socket's operation id on the new socket is not delivered.
  ws.deliver(event(first.id, 43, {}));
  assert.deepEqual(seen, ['41', '42', '43']);
  assert.deepEqual(lost, []);
  assert.equal(conn.state, 'connected');
});

test('a history gap is told to every listener, then the channel continues after `resume`', async () => {
  const conn = connect(URL_, FAST);
  const lostA = [];
  const lostB = [];
  conn.channel('orders.alice', { lost: (i) => lostA.push(i) });
  conn.channel('orders.alice', { lost: (i) => lostB.push(i) });
  const ws = await accept();
  const sub = ws.of('subscribe')[0];
  const resume = { epoch: '7', offset: '97' };
  ws.deliver({
    id: sub.id,
    type: 'next',
    payload: { data: null, errors: [{ message: 'lost', extensions: { code: 'HISTORY_GAP', resume } }] },
  });
  ws.deliver({ id: sub.id, type: 'complete' });
  assert.equal(lostA.length, 1);
  assert.equal(lostA[0].reason, 'history_gap');
  assert.deepEqual(lostA[0].resume, resume);
  assert.equal(lostB.length, 1);
  const subs = ws.of('subscribe');
  assert.equal(subs.length, 2, 'subscribed again');
  assert.deepEqual(subs[1].payload.variables.after, resume);
  assert.equal(conn.stats().channels[0].subscribed, true, "the gap's complete did not end it");
});

test('a gap sent as an `error` message is a gap too', async () => {
  const conn = connect(URL_, FAST);
  const lost = [];
  conn.channel('orders.alice', { lost: (i) => lost.push(i.reason), error: () => assert.fail('no error') });
  const ws = await accept();
  const sub = ws.of('subscribe')[0];
  ws.deliver({
    id: sub.id,
    type: 'error',
    payload: [{ message: 'lost', extensions: { code: 'HISTORY_GAP', resume: { epoch: '1', offset: '2' } } }],
  });
  assert.deepEqual(lost, ['history_gap']);
  assert.equal(ws.of('subscribe').length, 2);
});

test('a channel that had delivered nothing when the socket dropped reports unknown_position', async () => {
  const conn = connect(URL_, FAST);
  const lost = [];
  conn.channel('announcements', { lost: (i) => lost.push(i.reason) });
  const ws = await accept();
  ws.drop();
  assert.deepEqual(lost, ['unknown_position']);
  const next = await nextSocket(2);
  next.open();
  await tick();
  next.deliver({ type: 'connection_ack' });
  assert.deepEqual(next.of('subscribe')[0].payload.variables.after, null);
});

test('a refused channel errors its listeners and ends; others go on', async () => {
  const conn = connect(URL_, FAST);
  const errors = [];
  conn.channel('orders.bob', { error: (e) => errors.push(e.code) });
  conn.channel('announcements', {});
  const ws = await accept();
  const [bob] = ws.of('subscribe');
  ws.deliver({ id: bob.id, type: 'error', payload: [{ message: 'no', extensions: { code: 'FORBIDDEN' } }] });
  assert.deepEqual(errors, ['FORBIDDEN']);
  assert.deepEqual(
    conn.stats().channels.map((c) => c.name),
    ['announcements'],
  );
});

test('queries and mutations go over the same socket', async () => {
  const conn = connect(URL_, FAST);
  conn.channel('announcements', {});
  const answer = conn.request('mutation($a: String!) { convert(from: "EUR", to: "USD", amount: $a) { id } }', {
    a: '10',
  });
  const refused = conn.request('{ nope }');
  const ws = await accept();
  assert.equal(FakeSocket.all.length, 1);
  const [, mutation, query] = ws.of('subscribe');
  assert.deepEqual(mutation.payload.variables, { a: '10' });
  ws.deliver({ id: mutation.id, type: 'next', payload: { data: { convert: { id: 'c1' } } } });
  ws.deliver({ id: mutation.id, type: 'complete' });
  assert.deepEqual(await answer, { convert: { id: 'c1' } });
  ws.deliver({ id: query.id, type: 'error', payload: [{ message: 'unknown field', extensions: { code: 'X' } }] });
  await assert.rejects(refused, (e) => e.code === 'X' && /unknown field/.test(e.message));
});

test('a request in flight when the socket drops fails with CONNECTION_LOST, never resent', async () => {
  const conn = connect(URL_, FAST);
  const answer = conn.request('mutation { convert(from: "EUR", to: "USD", amount: "1") { id } }');
  const ws = await accept();
  assert.equal(ws.of('subscribe').length, 1);
  ws.drop();
  await assert.rejects(answer, (e) => e.code === 'CONNECTION_LOST');
  const next = await nextSocket(2);
  next.open();
  await tick();
  next.deliver({ type: 'connection_ack' });
  assert.equal(next.of('subscribe').length, 0, 'the mutation is not sent again');
});

test('setToken re-authenticates the open socket without touching its subscriptions', async () => {
  const conn = connect(URL_, { ...FAST, token: 'first' });
  const seen = [];
  conn.channel('conversions.alice', { next: (e) => seen.push(e.offset) });
  const ws = await accept();
  const sub = ws.of('subscribe')[0];
  conn.setToken('second');
  await tick();
  assert.deepEqual(ws.of('ping'), [{ type: 'ping', payload: { token: 'second' } }]);
  ws.deliver({ type: 'pong', payload: { reauthenticated: true, exp: Math.floor(Date.now() / 1000) + 600 } });
  ws.deliver(event(sub.id, 5, {}));
  assert.deepEqual(seen, ['5']);
  assert.equal(ws.of('subscribe').length, 1);
  assert.equal(ws.of('complete').length, 0);
  assert.equal(ws.closedWith, null);
  assert.equal(FakeSocket.all.length, 1);
});

test('a token function is asked again before the token expires, and sent in a ping', async () => {
  const soon = Math.floor(Date.now() / 1000) + 2;
  const tokens = [jwt({ sub: 'alice', exp: soon }), jwt({ sub: 'alice', exp: soon + 3600 })];
  let calls = 0;
  const conn = connect(URL_, { ...FAST, refreshBeforeMs: 1990, token: () => tokens[Math.min(calls++, 1)] });
  conn.channel('conversions.alice', {});
  const ws = await accept();
  assert.deepEqual(ws.sent[0].payload, { authorization: `Bearer ${tokens[0]}` });
  for (let i = 0; i < 100 && ws.of('ping').length === 0; i++) await tick(10);
  assert.deepEqual(ws.of('ping'), [{ type: 'ping', payload: { token: tokens[1] } }]);
  assert.equal(FakeSocket.all.length, 1, 'no reconnect');
  conn.close();
});

test('signing in an anonymous socket reopens it signed in, channels resuming', async () => {
  const conn = connect(URL_, FAST);
  conn.channel('rates.EUR-USD', {});
  const ws = await accept();
  assert.equal(ws.sent[0].payload, undefined, 'anonymous connection_init');
  ws.deliver(event(ws.of('subscribe')[0].id, 3, { rate: '1.1' }));
  connect(URL_, { token: 'alice-token' });
  assert.ok(ws.closedWith, 'the anonymous socket is closed');
  const next = await nextSocket(2);
  next.open();
  await tick();
  assert.deepEqual(next.sent[0].payload, { authorization: 'Bearer alice-token' });
  next.deliver({ type: 'connection_ack' });
  assert.deepEqual(next.of('subscribe')[0].payload.variables.after, { epoch: '7', offset: '3' });
});

test('a silent socket is detected by keep-alive and replaced', async () => {
  const conn = connect(URL_, { ...FAST, keepAliveMs: 5, pongTimeoutMs: 5 });
  conn.channel('announcements', {});
  const ws = await accept();
  const next = await nextSocket(2);
  assert.equal(ws.of('ping').length, 1);
  assert.ok(ws.closedWith);
  assert.notEqual(next, ws);
  conn.close();
});

test('answers the gateway’s pings; ignores frames for unknown ids and invalid JSON reconnects', async () => {
  const conn = connect(URL_, FAST);
  conn.channel('announcements', {});
  const ws = await accept();
  ws.deliver({ type: 'ping' });
  assert.deepEqual(ws.of('pong'), [{ type: 'pong' }]);
  ws.deliver({ id: 'nope', type: 'next', payload: { data: {} } });
  ws.onmessage({ data: '{not json' });
  assert.ok(ws.closedWith);
  await nextSocket(2);
  conn.close();
});

test('tokenExpiry reads a JWT `exp`, and nothing else', () => {
  assert.equal(tokenExpiry(jwt({ exp: 123 })), 123);
  assert.equal(tokenExpiry(jwt({ sub: 'x' })), null);
  assert.equal(tokenExpiry('not-a-jwt'), null);
  assert.equal(tokenExpiry('a.%%%.c'), null);
  assert.equal(tokenExpiry(undefined), null);
});

test('refuses what is not a WebSocket URL or a channel name', () => {
  assert.throws(() => connect('ftp://x/y', FAST), TypeError);
  const conn = connect(URL_, FAST);
  assert.throws(() => conn.channel(''), TypeError);
});
