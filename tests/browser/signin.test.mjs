// Sign-in (issue 24) end to end: the page against a real `--auth token` server, with tokens
// minted by `chatloop token` and a token URL on another origin (a small HTTP server here, the
// way a sign-in service would hand them out), so the page's CSP must let it be fetched: the
// fragment's token, a forbidden room, a refresh before exp, and a 4401 renewed with a back-off
// while the token URL fails, then resumed without a loss.
// Run: node --test --test-concurrency=1 signin.test.mjs   (or scripts/browser-test.sh)

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { resolve } from 'node:path';
import { launchBrowser, openTab, repoRoot, say, serverBin, sleep, startServer, waitForLine, waitForState } from './harness.mjs';

const T = { timeout: 90000 };
const SECRET = resolve(repoRoot, 'src/auth/testdata/hs256.secret');

/** A token signed with the server's key, as `chatloop token` makes it for a shell. */
function mint(sub, ttl = '10m', rooms = null) {
  const args = ['token', '--key', SECRET, '--sub', sub, '--ttl', ttl];
  if (rooms) args.push('--rooms', rooms);
  return execFileSync(serverBin(), args, { encoding: 'utf8', timeout: 10000 }).trim();
}

/**
 * The sign-in service: GET /token answers a fresh token for alice while `up`, else 503; every
 * request's time is kept. It answers the page's origin with credentials, as CORS requires for
 * `credentials: "include"`.
 */
async function tokenService() {
  const svc = { up: true, times: [], sub: 'alice' };
  const http = createServer((req, res) => {
    svc.times.push(Date.now());
    const cors = { 'Access-Control-Allow-Origin': req.headers.origin || '*', 'Access-Control-Allow-Credentials': 'true' };
    if (!svc.up) {
      res.writeHead(503, { ...cors, 'Content-Type': 'text/plain' });
      return res.end('sign-in is down\n');
    }
    res.writeHead(200, { ...cors, 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
    res.end(mint(svc.sub) + '\n');
  });
  await new Promise((ok) => http.listen(0, '127.0.0.1', ok));
  svc.url = `http://127.0.0.1:${http.address().port}/token`;
  svc.close = () => new Promise((ok) => http.close(ok));
  return svc;
}

let browser;
let server;
let svc;
const pages = [];

async function tokenTab(token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const p = await openTab(context, server.url + '/#token=' + token);
  pages.push(p);
  await p.locator('#sign-in').filter({ hasText: 'Signed in as' }).waitFor();
  await p.getByRole('button', { name: 'Join' }).click();
  await waitForState(p, 'connected');
  return p;
}

/** Script errors and CSP violations; the token URL's 503s, made on purpose here, are not. */
function problems() {
  return pages.flatMap((p) => p.problems).filter((m) => !(m.includes(svc.url) && / 503 /.test(m)));
}

function statusText(p) {
  return p.$eval('#status-text', (n) => n.textContent);
}

async function waitUntil(what, cond, ms) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(20);
  }
}

describe('sign-in against a real --auth token server', () => {
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });
  afterEach(async () => {
    for (const p of pages.splice(0)) await p.context().close().catch(() => {});
    await server?.stop('SIGTERM');
    await svc?.close();
  });

  async function start(extra = []) {
    svc = await tokenService();
    server = await startServer(0, ['--auth', 'token', '--auth-key', SECRET, '--token-url', svc.url, ...extra]);
  }

  it('the fragment\'s token signs in, chat works, a room outside the claim is refused', T, async () => {
    await start();
    const alice = await tokenTab(mint('alice', '10m', 'lobby,team-*'));
    assert.equal(new URL(alice.url()).hash, '', 'the token left the address bar');
    const bob = await tokenTab(mint('bob'));
    assert.match(await statusText(alice), /connected as alice/);
    await say(alice, 'hello from a signed-in page');
    await waitForLine(bob, 'hello from a signed-in page');
    await alice.getByLabel('Room name', { exact: true }).fill('secret');
    await alice.getByRole('button', { name: 'Enter room', exact: true }).click();
    await alice.locator('#room-error').filter({ hasText: 'does not allow' }).waitFor();
    assert.match(await alice.locator('#room-error').textContent(), /Your sign-in does not allow #secret/);
    await alice.getByLabel('Room name', { exact: true }).fill('team-a');
    await alice.getByRole('button', { name: 'Enter room', exact: true }).click();
    await alice.waitForFunction(() => document.querySelector('#rooms [aria-current="true"] .name')?.textContent === '#team-a');
    assert.equal(svc.times.length, 0, 'the fragment\'s tokens were enough');
    assert.ok(!server.log.some((l) => l.includes('token=')), 'no token in the server log');
    assert.deepEqual(problems(), [], 'no script errors or CSP violations');
  });

  it('refreshes its token on the live connection before exp, so the server never closes it', T, async () => {
    // A 3 s token, 1 s of grace: without a refresh the server closes 4401 about 4 s in.
    await start(['--auth-grace', '1', '--auth-leeway', '0']);
    const alice = await tokenTab(mint('alice', '3s'));
    const bob = await tokenTab(mint('bob'));
    await waitUntil('the refresh', () => svc.times.length >= 1, 10000);
    await sleep(5000); // past exp + grace of the first token
    assert.ok(!server.log.some((l) => /token_expired|session resumed/.test(l)), server.log.join('\n'));
    assert.equal(svc.times.length, 1, 'one fresh token, for the next 10 minutes');
    await say(alice, 'still here after exp');
    await waitForLine(bob, 'still here after exp');
    assert.match(await statusText(alice), /connected as alice/);
    assert.deepEqual(problems(), [], 'no script errors or CSP violations');
  });

  it('after a 4401, a token URL that fails is retried with a growing back-off, then the session resumes', T, async () => {
    // A 2 s token and 2 s of grace: the page's refresh before exp (one fetch, about 1 s in,
    // failing) comes well before the server closes alice 4401 expired (2 s after exp).
    await start(['--auth-grace', '2', '--auth-leeway', '0']);
    svc.up = false;
    const bob = await tokenTab(mint('bob'));
    const alice = await tokenTab(mint('alice', '2s'));
    await say(alice, 'before the expiry');
    await waitForLine(bob, 'before the expiry');
    let closedAt = 0;
    await waitUntil('the 4401', () => {
      if (server.log.some((l) => /session closed id=alice .*reason=token_expired/.test(l))) closedAt = Date.now();
      return closedAt > 0;
    }, 15000);
    // While alice is away (held for her resume): a lobby line she must not miss.
    await say(bob, 'while you were signed out');
    // Renewals: at once, then about 1 s, 2 s... apart (equal jitter: half to all of each).
    await waitUntil('three renewals', () => svc.times.filter((t) => t >= closedAt - 1000).length >= 3, 20000);
    const tries = svc.times.filter((t) => t >= closedAt - 1000);
    const gaps = tries.slice(1).map((t, i) => t - tries[i]);
    assert.ok(gaps[0] >= 450, `the second try ${gaps[0]} ms after the first: no back-off`);
    assert.ok(gaps[1] >= 950, `the third try ${gaps[1]} ms after the second: the back-off did not grow`);
    assert.match(await statusText(alice), /renewing the sign-in|trying again in \d+ s/);
    assert.ok(await alice.locator('#chat').isVisible(), 'still in the chat, not sent to the login');
    // The sign-in service is back: the next try gets a token, and the session comes back.
    svc.up = true;
    await waitForState(alice, 'connected', 30000);
    assert.ok(server.log.some((l) => l.includes('session resumed id=alice')), 'resumed, not a new session');
    await waitForLine(alice, 'while you were signed out', 15000);
    await say(alice, 'back again');
    await waitForLine(bob, 'back again');
    const shown = await alice.$$eval('#log .msg .text', (ns) => ns.map((n) => n.textContent));
    assert.equal(shown.filter((t) => t === 'while you were signed out').length, 1, 'shown once');
    const bobLog = await bob.$eval('#log', (n) => n.textContent);
    assert.ok(!/alice left/.test(bobLog), 'bob never saw alice leave');
    assert.deepEqual(problems(), [], 'no script errors or CSP violations (the token URL is another origin)');
  });
});
