#!/usr/bin/env node
// The reference graphql-transport-ws client (the `graphql-ws` npm package) on a catalog channel of
// bff-web: `subscription { channel(name, after) { epoch offset data } }`.
//
// Usage: node channel-client.mjs <ws-url> <channel> <count> [token]
//   AFTER_EPOCH, AFTER_OFFSET  optional: resume after this position (both decimal strings)
//   TIMEOUT_MS                 the global timeout (default 15000)
//
// It connects, subscribes (after the position given, if any), waits for <count> events and prints
// ONE line of JSON, `{"ok":true,"events":[{epoch,offset,data},...]}`, and exits 0. It then
// waits 300 ms more: an event beyond <count> is a failure (exactly once). On any failure it prints
// the reason to stderr and exits 1. It never hangs: a global timeout exits 1.

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, channel, countArg, token = ''] = process.argv.slice(2);
const count = Number(countArg);
const timeoutMs = Number(process.env.TIMEOUT_MS ?? 15000);
const after =
  process.env.AFTER_EPOCH && process.env.AFTER_OFFSET
    ? { epoch: process.env.AFTER_EPOCH, offset: process.env.AFTER_OFFSET }
    : null;

function fail(message) {
  console.error(`[channel-client] FAILED: ${message}`);
  process.exit(1);
}

if (!url || !channel || !Number.isInteger(count) || count < 1) {
  fail('usage: node channel-client.mjs <ws-url> <channel> <count> [token]');
}

setTimeout(() => fail(`timed out after ${timeoutMs} ms with ${events.length} of ${count} events`), timeoutMs);

const events = [];
const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: false,
  retryAttempts: 0,
  connectionParams: token ? { authorization: `Bearer ${token}` } : undefined,
  onNonLazyError: (err) => fail(`connection failed: ${String(err?.message ?? err?.reason ?? err)}`),
});

const QUERY =
  'subscription ($name: String!, $after: ChannelPosition) { channel(name: $name, after: $after) { epoch offset data } }';

let done = false;
client.subscribe(
  { query: QUERY, variables: { name: channel, after } },
  {
    next: (result) => {
      if (result.errors) fail(`errors: ${JSON.stringify(result.errors)}`);
      events.push(result.data.channel);
      if (events.length > count) fail(`more than ${count} events: ${JSON.stringify(events)}`);
      if (events.length === count && !done) {
        done = true;
        // Exactly once: nothing more may come.
        setTimeout(() => {
          console.log(JSON.stringify({ ok: true, events }));
          client.dispose();
          process.exit(0);
        }, 300);
      }
    },
    error: (err) => fail(`subscription error: ${JSON.stringify(err)}`),
    complete: () => {
      if (!done) fail('the subscription completed early');
    },
  },
);
