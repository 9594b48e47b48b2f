// Opens the pulsegate dashboard in headless Chromium, waits until it is live
// and its figures have settled, saves a full-page screenshot and prints the
// figures as ONE JSON line on stdout.
//
// Usage: node tests/e2e/dashboard.mjs URL OUTDIR [--hold]
//   URL     e.g. http://127.0.0.1:8080/dashboard?token=secret
//   OUTDIR  directory for dashboard.png (created if missing)
//   --hold  after printing the JSON line, keep the page open (and its
//           WebSocket connected) until stdin is closed (at most 30 s), so the
//           caller can compare the figures with the server's own numbers
// Environment: CHROMIUM = path of the Chromium binary (default /usr/bin/chromium).
// Exits 1 with a message on stderr (and the page's console errors) on any
// failure or timeout; a failure screenshot is saved as OUTDIR/dashboard-failure.png.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
const hold = args.includes('--hold');
const [url, outdir] = args.filter((a) => a !== '--hold');
if (!url || !outdir) {
  console.error('usage: node dashboard.mjs URL OUTDIR [--hold]');
  process.exit(2);
}

const CONNECT_TIMEOUT_MS = 15_000; // until #status says connected and a sample arrived
const STABLE_FOR_MS = 2_500; // #published unchanged this long = traffic has settled
const SETTLE_TIMEOUT_MS = 20_000;
const OVERALL_TIMEOUT_MS = 55_000; // the Rust test allows 60 s
const HOLD_TIMEOUT_MS = 30_000;

const consoleErrors = [];
const pageErrors = [];
let browser;
let page;

// Figures read from the page: output key -> element id.
const FIGURES = {
  connections: 'connections',
  subscriptions: 'subscriptions',
  topics: 'topics',
  published: 'published',
  delivered: 'delivered',
  rate_in: 'rate-in',
  rate_out: 'rate-out',
  lag_p50: 'lag-p50',
  lag_p99: 'lag-p99',
  rtt_p50: 'rtt-p50',
  rtt_p99: 'rtt-p99',
  drops: 'drops',
  slow_closes: 'slow-closes',
};

async function fail(message) {
  const lines = [`dashboard e2e: ${message}`];
  if (page) {
    try {
      const state = await page.evaluate(() => ({
        status: document.getElementById('status')?.textContent,
        banner: document.getElementById('banner')?.textContent,
        seq: document.body?.dataset.seq ?? null,
      }));
      lines.push(`page state: ${JSON.stringify(state)}`);
      await page.screenshot({ path: join(outdir, 'dashboard-failure.png'), fullPage: true });
      lines.push(`failure screenshot: ${join(outdir, 'dashboard-failure.png')}`);
    } catch (e) {
      lines.push(`(could not inspect the page: ${e.message})`);
    }
  }
  if (pageErrors.length) lines.push('page errors:', ...pageErrors.map((e) => `  ${e}`));
  if (consoleErrors.length) lines.push('console errors:', ...consoleErrors.map((e) => `  ${e}`));
  if (!pageErrors.length && !consoleErrors.length) lines.push('(no console errors)');
  console.error(lines.join('\n'));
  try {
    await browser?.close();
  } catch {
    // already gone
  }
  process.exit(1);
}

const watchdog = setTimeout(
  () => fail(`gave up after ${OVERALL_TIMEOUT_MS / 1000} s`),
  OVERALL_TIMEOUT_MS,
);

async function main() {
  mkdirSync(outdir, { recursive: true });
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  try {
    browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  } catch (e) {
    return fail(`cannot launch Chromium at ${executablePath}: ${e.message}`);
  }
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => pageErrors.push(String(err?.stack || err)));

  const response = await page.goto(url, { waitUntil: 'load', timeout: CONNECT_TIMEOUT_MS });
  if (!response) return fail(`no response for ${url}`);
  if (response.status() !== 200) {
    const body = (await response.text().catch(() => '')).slice(0, 300);
    return fail(`GET ${url} answered ${response.status()}: ${body}`);
  }

  try {
    await page.waitForFunction(
      () =>
        document.getElementById('status')?.textContent.trim() === 'connected' &&
        document.body.hasAttribute('data-seq'),
      null,
      { timeout: CONNECT_TIMEOUT_MS, polling: 100 },
    );
  } catch {
    return fail(`the page was not connected with a $sys/stats sample within ${CONNECT_TIMEOUT_MS / 1000} s`);
  }

  // Wait for #published to stay unchanged for STABLE_FOR_MS.
  const started = Date.now();
  let last = null;
  let since = Date.now();
  for (;;) {
    const now = await page.textContent('#published');
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= STABLE_FOR_MS) {
      break;
    }
    if (Date.now() - started > SETTLE_TIMEOUT_MS) {
      return fail(`#published kept changing for ${SETTLE_TIMEOUT_MS / 1000} s (last ${last})`);
    }
    await page.waitForTimeout(200);
  }

  const result = await page.evaluate((figures) => {
    const num = (id) => {
      const el = document.getElementById(id);
      if (!el) return `missing #${id}`;
      const t = el.textContent.trim();
      if (t === '' || t === '\u2013' || t === '-') return null;
      const n = Number(t);
      return Number.isFinite(n) ? n : t;
    };
    const rows = (id) =>
      document.querySelectorAll(`#${id} tbody tr:not(.empty)`).length;
    const out = {};
    for (const [key, id] of Object.entries(figures)) out[key] = num(id);
    const banner = document.getElementById('banner');
    Object.assign(out, {
      status: document.getElementById('status').textContent.trim(),
      seq: Number(document.body.dataset.seq),
      updated: document.getElementById('updated').textContent.trim(),
      closes_rows: rows('closes'),
      topics_rows: rows('top-topics'),
      conns_rows: rows('conns'),
      banner: banner && getComputedStyle(banner).display !== 'none' ? banner.textContent.trim() : '',
    });
    return out;
  }, FIGURES);

  const screenshot = join(outdir, 'dashboard.png');
  await page.screenshot({ path: screenshot, fullPage: true });
  result.screenshot = screenshot;
  result.console_errors = consoleErrors;
  result.page_errors = pageErrors;

  clearTimeout(watchdog);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  if (hold) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, HOLD_TIMEOUT_MS);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      process.stdin.on('end', done);
      process.stdin.on('close', done);
      process.stdin.on('error', done);
      process.stdin.resume();
    });
  }
  await browser.close();
  process.exit(0);
}

main().catch((e) => fail(e?.stack || String(e)));
