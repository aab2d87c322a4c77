// Helpers for the browser tests: start the real chatloop binary, launch Debian's chromium,
// join the chat as a person would, and poll for conditions.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '..', '..');
export const artifacts = resolve(repoRoot, 'artifacts');

/** The server binary: $CHATLOOP_BIN, else target/release, else target/debug. */
export function serverBin() {
  if (process.env.CHATLOOP_BIN) return resolve(process.env.CHATLOOP_BIN);
  for (const p of ['target/release/chatloop', 'target/debug/chatloop']) {
    const full = resolve(repoRoot, p);
    if (existsSync(full)) return full;
  }
  throw new Error('no chatloop binary: build it (cargo build --release) or set CHATLOOP_BIN');
}

/**
 * Starts the server on 127.0.0.1:`port` (0: any free port) and resolves once it printed
 * "listening on http://ADDR". Rate limiting is off so tests can send bursts.
 * $CHATLOOP_PUBLIC serves public/ from disk instead of the embedded copy (for page work).
 */
const running = new Set();
// However the test process ends, no server outlives it.
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

export async function startServer(port = 0, extra = []) {
  // Each flag once (the server refuses one given twice): the rate limit is off unless the
  // test sets its own.
  const args = ['--addr', `127.0.0.1:${port}`, ...extra];
  if (!extra.includes('--rate-limit')) args.push('--rate-limit', '0');
  if (process.env.CHATLOOP_PUBLIC) args.push('--public', resolve(process.env.CHATLOOP_PUBLIC));
  const proc = spawn(serverBin(), args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  const log = [];
  createInterface({ input: proc.stderr }).on('line', (l) => {
    log.push(l);
    if (log.length > 200) log.shift();
    if (process.env.CHATLOOP_TEST_VERBOSE) console.error('[server]', l);
  });
  const addr = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('server did not say "listening on" within 10 s\n' + log.join('\n'))), 10000);
    const rl = createInterface({ input: proc.stdout });
    rl.on('line', (line) => {
      const m = /^listening on http:\/\/(\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    proc.on('exit', (code, sig) => {
      clearTimeout(timer);
      fail(new Error(`server exited (${code ?? sig}) before listening\n` + log.join('\n')));
    });
    proc.on('error', (e) => {
      clearTimeout(timer);
      fail(e);
    });
  });
  const exited = new Promise((ok) => {
    if (proc.exitCode !== null || proc.signalCode !== null) ok();
    else proc.once('exit', () => ok());
  });
  return {
    proc,
    log,
    url: `http://${addr}`,
    port: Number(addr.slice(addr.lastIndexOf(':') + 1)),
    /** Stops the server; SIGKILL by default, like a crash. */
    async stop(signal = 'SIGKILL') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A fresh context (own storage, as a separate person) with one page at `url`.
 * Page errors and CSP violations are collected in page.problems.
 */
export async function openPage(browser, url, opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...opts });
  return openTab(context, url);
}

/** Another tab in `context` (same browser profile: shared localStorage), at `url`. */
export async function openTab(context, url) {
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push('pageerror: ' + e.message));
  page.on('console', (m) => {
    // A server without GET /config answers 404, which the page takes as open mode (issue 24):
    // that one is expected, not a failed load.
    if (m.type() === 'error' && !(/\/config$/.test(m.location().url) && / 404 /.test(m.text()))) {
      page.problems.push('console: ' + m.text() + ' (' + m.location().url + ')');
    }
  });
  await page.goto(url);
  return page;
}

/** Types an id into the form and presses Join; does not wait for the outcome. */
export async function submitId(page, id) {
  await page.getByLabel('Your id', { exact: true }).fill(id);
  await page.getByRole('button', { name: 'Join' }).click();
}

/** Joins as `id` and waits until the status line says connected. */
export async function join(page, id) {
  await submitId(page, id);
  await waitForState(page, 'connected');
  await page.locator('#chat').waitFor({ state: 'visible' });
}

export function waitForState(page, state, timeout = 15000) {
  return page.waitForFunction((s) => document.getElementById('status').dataset.state === s, state, { timeout });
}

/** Sends `text` with Enter, to `to` (a user id), the room (''), or whoever is picked (null). */
export async function say(page, text, to = '') {
  if (to !== null) await page.getByLabel('To').selectOption(to);
  const field = page.getByLabel('Message', { exact: true });
  await field.fill(text);
  await field.press('Enter');
}

/** Waits until a log line with exactly this text exists. */
export function waitForLine(page, text, timeout = 10000) {
  return page.waitForFunction(
    (t) => [...document.querySelectorAll('#log .msg .text')].some((n) => n.textContent === t),
    text,
    { timeout },
  );
}

/** The ids in the Online list, in order. */
export function onlineIds(page) {
  return page.$$eval('#users > li', (lis) => lis.map((li) => li.dataset.id));
}

export function waitForOnline(page, id, present = true, timeout = 10000) {
  return page.waitForFunction(
    ([i, p]) => [...document.querySelectorAll('#users > li')].some((li) => li.dataset.id === i) === p,
    [id, present],
    { timeout },
  );
}

export function ensureArtifacts() {
  mkdirSync(artifacts, { recursive: true });
  return artifacts;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
