#!/usr/bin/env node
// The reference graphql-transport-ws client (the `graphql-ws` npm package) against bff-web.
//
// Usage: node rates-client.mjs <ws-url> [token]
//   ws-url  e.g. ws://127.0.0.1:PORT/v1/graphql (or SWITCHYARD_WS_URL)
//   token   optional bearer token, sent as `connectionParams.authorization` (or SWITCHYARD_TOKEN)
//   MIN_TICKS  how many ticks to wait for (default 3); TIMEOUT_MS the global timeout (default 15000)
//
// It connects, runs `{ __typename }` as a query over the socket, subscribes to EUR/USD rates, waits
// for MIN_TICKS ticks with strictly increasing `seq`, completes the subscription, disposes the
// client and waits for the socket's close (code 1000). On success it prints ONE line of JSON to
// stdout, `{"ok":true,"ticks":N,"seqs":[...],"closeCode":1000,...}`, and exits 0. On any failure
// it prints the reason to stderr and exits 1. It never hangs: a global timeout exits 1.
// Progress goes to stderr, so stdout is only the summary.

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const url = process.argv[2] ?? process.env.SWITCHYARD_WS_URL;
const token = process.argv[3] ?? process.env.SWITCHYARD_TOKEN ?? '';
const minTicks = Number(process.env.MIN_TICKS ?? 3);
const timeoutMs = Number(process.env.TIMEOUT_MS ?? 15000);

const RATES = 'subscription { rates(pairs: ["EUR/USD"]) { pair rate seq } }';
const TYPENAME = '{ __typename }';

const log = (...args) => console.error('[rates-client]', ...args);

function fail(message) {
  console.error(`[rates-client] FAILED: ${message}`);
  process.exit(1);
}

if (!url) {
  fail('usage: node rates-client.mjs <ws-url> [token]  (e.g. ws://127.0.0.1:8080/v1/graphql)');
}

// Global timeout: whatever is pending, the process ends.
const globalTimer = setTimeout(
  () => fail(`timed out after ${timeoutMs} ms (stage: ${acked ? stage : 'waiting for connection_ack'})`),
  timeoutMs,
);

let stage = 'connecting';
let acked = false;
let resolveClosed;
const closed = new Promise((resolve) => {
  resolveClosed = resolve;
});
let disposing = false;

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: false,
  retryAttempts: 0,
  connectionParams: token ? { authorization: `Bearer ${token}` } : undefined,
  // Not lazy: a failure to connect is reported here, not to an operation.
  onNonLazyError: (err) => fail(`connection failed: ${describe(err)}`),
  on: {
    connected: (_socket, payload) => {
      acked = true;
      log('connected; ack payload:', JSON.stringify(payload ?? null));
    },
    closed: (event) => {
      const code = event?.code;
      const reason = event?.reason ?? '';
      log(`socket closed: code ${code}${reason ? `, reason ${JSON.stringify(reason)}` : ''}`);
      if (!disposing) {
        fail(`the socket closed before the client was done (stage: ${stage}): code ${code} ${reason}`);
      }
      resolveClosed({ code, reason });
    },
    error: (err) => log('socket error:', describe(err)),
  },
});

function describe(err) {
  if (err instanceof Error) return err.stack ?? err.message;
  // A WebSocket ErrorEvent (connection refused, bad handshake...).
  if (err && typeof err === 'object' && typeof err.message === 'string' && err.message) {
    return err.message;
  }
  // A CloseEvent or an array of GraphQL errors.
  if (err && typeof err === 'object' && 'code' in err && 'reason' in err) {
    return `close event: code ${err.code}, reason ${JSON.stringify(err.reason)}`;
  }
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

/** Runs a single-result operation (a query) over the socket. */
function queryOnce(query) {
  return new Promise((resolve, reject) => {
    let result;
    client.subscribe(
      { query },
      {
        next: (value) => {
          result = value;
        },
        error: (err) => reject(new Error(`query ${query} failed: ${describe(err)}`)),
        complete: () => resolve(result),
      },
    );
  });
}

async function main() {
  stage = 'query';
  const typename = await queryOnce(TYPENAME);
  const expected = JSON.stringify({ data: { __typename: 'Query' } });
  if (JSON.stringify(typename) !== expected) {
    throw new Error(`query ${TYPENAME}: expected ${expected}, got ${JSON.stringify(typename)}`);
  }
  log('query ok:', JSON.stringify(typename));

  stage = 'subscribe';
  const ticks = [];
  const iterator = client.iterate({ query: RATES });
  for (;;) {
    const { value, done } = await iterator.next();
    if (done) {
      throw new Error(`the server completed the subscription after ${ticks.length} tick(s)`);
    }
    stage = `received ${ticks.length + 1} tick(s)`;
    if (value.errors) {
      throw new Error(`tick with errors: ${JSON.stringify(value)}`);
    }
    const rate = value.data?.rates;
    if (!rate || rate.pair !== 'EUR/USD' || typeof rate.rate !== 'string' || !Number.isInteger(rate.seq)) {
      throw new Error(`unexpected tick: ${JSON.stringify(value)}`);
    }
    const previous = ticks.at(-1);
    if (previous && !(rate.seq > previous.seq)) {
      throw new Error(`seq did not increase: ${previous.seq} then ${rate.seq}`);
    }
    log('tick:', JSON.stringify(rate));
    ticks.push(rate);
    if (ticks.length >= minTicks) break;
  }

  // Complete the subscription (the client sends `complete` for it).
  stage = 'completing';
  await iterator.return?.();

  // Then close the connection and wait for the socket's close.
  stage = 'closing';
  disposing = true;
  await client.dispose();
  const { code, reason } = await closed;
  if (code !== 1000) {
    throw new Error(`expected close code 1000 (normal closure), got ${code} ${JSON.stringify(reason)}`);
  }

  clearTimeout(globalTimer);
  console.log(
    JSON.stringify({
      ok: true,
      query: typename,
      ticks: ticks.length,
      seqs: ticks.map((t) => t.seq),
      rates: ticks.map((t) => t.rate),
      closeCode: code,
    }),
  );
  process.exit(0);
}

process.on('unhandledRejection', (err) => fail(`unhandled rejection: ${describe(err)}`));
main().catch((err) => fail(describe(err)));
