#!/usr/bin/env node
// The demo page in a real headless Chromium (Debian's /usr/bin/chromium, driven with the npm
// playwright-core package), run by tests/browser.rs against a bff-web that test holds.
//
// Usage: node browser-demo.mjs <gateway-base-url> <token> <screenshot.png>
//
// Talks with the Rust test over stdio, one JSON object a line: it writes {"ask": …} and reads
// the answer — "stats" (the gateway's open sockets and /v1 subscriptions), "restart" (the test
// stops the gateway, makes conversions through the conversions service while it is down, starts
// it again on the same address, and answers their ids). Its last line is {"ok": true, …}; any
// failure is {"ok": false, "error": …} and exit 1. A global timeout bounds the run.

import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [base, token, screenshot] = process.argv.slice(2);
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS ?? 120000);
const PATIENCE = 15000;

const input = readline.createInterface({ input: process.stdin });
const answers = [];
const waiting = [];
input.on('line', (line) => {
  const value = JSON.parse(line);
  const next = waiting.shift();
  if (next) next(value);
  else answers.push(value);
});

function ask(what, extra = {}) {
  process.stdout.write(`${JSON.stringify({ ask: what, ...extra })}\n`);
  return new Promise((resolve) => {
    const ready = answers.shift();
    if (ready) resolve(ready);
    else waiting.push(resolve);
  });
}

const log = (...args) => console.error('[browser-demo]', ...args);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function eventually(what, fn) {
  const until = Date.now() + PATIENCE;
  let last;
  for (;;) {
    last = await fn();
    if (last === true || (last && last.ok)) return last;
    if (Date.now() > until) throw new Error(`${what}: not within ${PATIENCE} ms (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The gateway's counters reach `want` ({sockets?, subscriptions?}). */
async function gatewayHas(what, want) {
  return eventually(`gateway ${what}`, async () => {
    const s = await ask('stats');
    const ok = Object.entries(want).every(([k, v]) => s[k] === v);
    return ok ? { ok, ...s } : s;
  });
}

/** Opens the demo page, counting the page's own WebSockets. */
async function open(context, hash) {
  const page = await context.newPage();
  page.sockets = [];
  page.on('websocket', (ws) => page.sockets.push(ws.url()));
  page.on('pageerror', (e) => log('page error:', e.message));
  await page.goto(`${base}/#${hash}`);
  return page;
}

async function live(page) {
  for (const tag of ['fx-ticker', 'limit-card', 'conversion-feed']) {
    await page.waitForSelector(`${tag}[data-state="live"]`, { timeout: PATIENCE });
  }
  // fx-ticker: every pair has a rate.
  await eventually('every rate shown', () =>
    page.evaluate(() => [...document.querySelector('fx-ticker').shadowRoot.querySelectorAll('tr')].every((r) => r.dataset.seq)),
  );
}

const feedIds = (page) =>
  page.evaluate(() => [...document.querySelector('conversion-feed').shadowRoot.querySelectorAll('li')].map((li) => li.dataset.id));
const remaining = (page) => page.evaluate(() => Number(document.querySelector('limit-card').dataset.remaining));
const clientStats = (page) => page.evaluate(() => window.switchyard.stats());

async function convert(page, amount) {
  const feed = page.locator('conversion-feed');
  await feed.locator('input[name=amount]').fill(String(amount));
  await feed.locator('button[type=submit]').click();
}

async function run() {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true });
  const report = {};
  try {
    // 1. The page loads; all three components show live data; ONE WebSocket.
    const one = await browser.newContext({ viewport: { width: 960, height: 640 } });
    const page = await open(one, `token=${token}`);
    await live(page);
    await new Promise((r) => setTimeout(r, 500));
    check(page.sockets.length === 1, `the page opened ${page.sockets.length} WebSockets: ${page.sockets}`);
    await gatewayHas('one socket', { sockets: 1 });
    log('page live on one socket');

    // 2. Two components on one channel: one subscription at the gateway.
    const channels = (await clientStats(page)).channels;
    const conv = channels.find((c) => c.name === 'conversions.alice');
    check(conv && conv.listeners === 2, `limit-card and conversion-feed share conversions.alice: ${JSON.stringify(channels)}`);
    check(channels.length === 4, `three rates and one conversions channel: ${JSON.stringify(channels)}`);
    await gatewayHas('one subscription per channel', { subscriptions: 4 });
    // One listener leaves: the subscription stays; the last leaves: it ends.
    await page.evaluate(() => {
      window.parked = [document.querySelector('limit-card'), document.querySelector('conversion-feed')];
      window.parked[0].remove();
    });
    await new Promise((r) => setTimeout(r, 300));
    await gatewayHas('the subscription kept for the remaining listener', { subscriptions: 4 });
    await page.evaluate(() => window.parked[1].remove());
    await gatewayHas('the subscription ended with its last listener', { subscriptions: 3 });
    await page.evaluate(() => document.querySelector('main').append(...window.parked));
    await live(page);
    await gatewayHas('one subscription again', { subscriptions: 4 });
    log('two components, one subscription');

    // 3. A convert in <conversion-feed> appears in its feed and moves <limit-card>.
    const before = await remaining(page);
    const idsBefore = await feedIds(page);
    await convert(page, 25);
    await eventually('the conversion in the feed', async () => (await feedIds(page)).length === idsBefore.length + 1);
    await eventually('the limit moved by 25', async () => (await remaining(page)) === before - 25);
    await page.screenshot({ path: screenshot });
    log('convert shown; screenshot written');

    // 4. The gateway stops and starts again; conversions are made meanwhile.
    const idsBeforeRestart = await feedIds(page);
    const restart = await ask('restart');
    check(Array.isArray(restart.ids) && restart.ids.length === 3, `restart answer: ${JSON.stringify(restart)}`);
    await page.waitForSelector('#status[data-state="connected"]', { timeout: PATIENCE });
    const want = [...restart.ids, ...idsBeforeRestart];
    const got = await eventually('every conversion made meanwhile, once', async () => {
      const ids = await feedIds(page);
      return ids.length >= want.length ? { ok: true, ids } : ids;
    });
    await new Promise((r) => setTimeout(r, 500));
    const ids = await feedIds(page);
    check(new Set(ids).size === ids.length, `a conversion shown twice: ${ids}`);
    check(
      JSON.stringify(ids) === JSON.stringify([...restart.ids].reverse().concat(idsBeforeRestart)),
      `feed after the restart: ${ids} (made meanwhile: ${restart.ids}; before: ${idsBeforeRestart}; first seen ${got.ids})`,
    );
    // Attempts made while the gateway was down count as the page's WebSockets too; one is open.
    check(page.sockets.length >= 2, `the page reconnected: ${page.sockets.length} sockets`);
    await gatewayHas('one socket after the restart', { sockets: 1, subscriptions: 4 });
    await eventually('the limit follows', async () => (await remaining(page)) === before - 25 - 3);
    report.restart = { ids: restart.ids };
    log('reconnected; every conversion made meanwhile shown once');
    await one.close();
    await gatewayHas('the first tab gone', { sockets: 0 });

    // 5. Shared mode: a second tab opens no socket of its own and receives the same events.
    const two = await browser.newContext();
    const tab1 = await open(two, `token=${token}&shared=1`);
    await live(tab1);
    const tab2 = await open(two, `token=${token}&shared=1`);
    await live(tab2);
    const stats2 = await clientStats(tab2);
    check(stats2.shared && stats2.tabs === 2, `tab 2 is on the shared connection: ${JSON.stringify(stats2)}`);
    await gatewayHas('one socket for two tabs', { sockets: 1 });
    check(tab1.sockets.length === 0 && tab2.sockets.length === 0, `tabs opened sockets: ${tab1.sockets} / ${tab2.sockets}`);
    const sharedBefore = [await feedIds(tab1), await feedIds(tab2)];
    await convert(tab2, 5);
    for (const [i, tab] of [tab1, tab2].entries()) {
      await eventually(`tab ${i + 1} sees the conversion`, async () => (await feedIds(tab)).length === sharedBefore[i].length + 1);
    }
    const [a, b] = [await feedIds(tab1), await feedIds(tab2)];
    check(a[0] === b[0], `both tabs got the same event: ${a[0]} / ${b[0]}`);
    await gatewayHas('still one socket', { sockets: 1 });
    log('shared mode: two tabs, one socket');
    await two.close();
    report.ok = true;
  } finally {
    await browser.close();
  }
  return report;
}

const timer = setTimeout(() => {
  process.stdout.write(`${JSON.stringify({ ok: false, error: `timed out after ${TIMEOUT_MS} ms` })}\n`);
  process.exit(1);
}, TIMEOUT_MS);

run().then(
  (report) => {
    clearTimeout(timer);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exit(0);
  },
  (e) => {
    process.stdout.write(`${JSON.stringify({ ok: false, error: String(e?.stack ?? e) })}\n`);
    process.exit(1);
  },
);
