#!/usr/bin/env node
// Publish one event through Switchyard's publish API with Node's global fetch (Node 18+).
//
//   node publish.mjs URL KEY CHANNEL DATA_JSON [IDEMPOTENCY_KEY]
//   node publish.mjs http://127.0.0.1:8090/v1/publish "$KEY" announcements '{"text": "hi"}'
//
// Prints the answer's JSON (channel, epoch, offset) and exits 0; on an HTTP error prints the
// error's JSON body to stderr and exits 1.

const [url, key, channel, data, idempotencyKey] = process.argv.slice(2);
if (!url || !key || !channel || data === undefined) {
  console.error("usage: node publish.mjs URL KEY CHANNEL DATA_JSON [IDEMPOTENCY_KEY]");
  process.exit(2);
}

const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };
if (idempotencyKey) headers["idempotency-key"] = idempotencyKey;
const response = await fetch(url, {
  method: "POST",
  headers,
  body: JSON.stringify({ channel, data: JSON.parse(data) }),
  signal: AbortSignal.timeout(10_000),
});
const text = await response.text();
if (!response.ok) {
  console.error(`HTTP ${response.status}: ${text}`);
  process.exit(1);
}
console.log(JSON.stringify(JSON.parse(text)));
