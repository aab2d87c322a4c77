// Real-browser tests of the chat page against the real server binary.
// Run: node --test --test-concurrency=1 chat.test.mjs   (or scripts/browser-test.sh)

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join as pathJoin } from 'node:path';
import {
  ensureArtifacts,
  join,
  launchBrowser,
  onlineIds,
  openPage,
  say,
  sleep,
  startServer,
  submitId,
  waitForLine,
  waitForOnline,
  waitForState,
} from './harness.mjs';

const T = { timeout: 90000 };

let browser;
let server;
const pages = [];

async function page(opts) {
  const p = await openPage(browser, server.url, opts);
  pages.push(p);
  return p;
}

/** Closes every page of the test (their users leave), then checks none had script errors. */
async function closeAll() {
  const problems = [];
  for (const p of pages.splice(0)) {
    problems.push(...p.problems);
    await p.context().close().catch(() => {});
  }
  assert.deepEqual(problems, [], 'no script errors, CSP violations or failed loads on the pages');
}

describe('chat page in chromium', () => {
  before(async () => {
    browser = await launchBrowser();
    server = await startServer();
  });

  after(async () => {
    for (const p of pages.splice(0)) await p.context().close().catch(() => {});
    await browser?.close();
    await server?.stop('SIGTERM');
  });

  it('serves the page with an accessible id form', T, async () => {
    const p = await page();
    assert.equal(await p.title(), 'chatloop');
    await p.getByLabel('Your id').waitFor();
    await p.getByRole('button', { name: 'Join' }).waitFor();
    assert.equal(await p.locator('#chat').isVisible(), false, 'chat hidden before joining');
    assert.equal(await p.locator('#status').getAttribute('data-state'), 'offline');
    // A bad id is caught before it goes anywhere.
    await submitId(p, 'no spaces!');
    await p.locator('#login-error', { hasText: 'letters' }).waitFor();
    assert.equal(await p.locator('#chat').isVisible(), false);
    await closeAll();
  });

  it('room and private messages reach the right people', T, async () => {
    const alice = await page();
    const bob = await page();
    const carol = await page();
    await join(alice, 'alice');
    await join(bob, 'bob');
    await join(carol, 'carol');

    // Accessible names of the chat controls.
    for (const name of ['To', 'Message']) await alice.getByLabel(name, { exact: true }).waitFor();
    await alice.getByRole('button', { name: 'Send' }).waitFor();
    await alice.getByRole('list', { name: 'Online' }).waitFor();

    await say(alice, 'hello room');
    await waitForLine(alice, 'hello room');
    await waitForLine(bob, 'hello room');
    await waitForLine(carol, 'hello room');
    assert.equal(await alice.evaluate(() => document.activeElement.id), 'message', 'focus stays in the message field');
    assert.equal(await alice.getByLabel('Message', { exact: true }).inputValue(), '', 'the field is cleared after sending');

    await say(alice, 'psst bob', 'bob');
    await waitForLine(bob, 'psst bob');
    await waitForLine(alice, 'psst bob');
    for (const p of [alice, bob]) {
      const line = p.locator('#log .msg.private', { hasText: 'psst bob' });
      assert.match(await line.locator('.who').textContent(), /alice → bob/);
    }
    const room = bob.locator('#log .msg', { hasText: 'hello room' });
    assert.equal(await room.evaluate((n) => n.classList.contains('private')), false);
    const [roomBg, privBg] = await bob.evaluate(() => [
      getComputedStyle(document.querySelector('#log .msg:not(.private):not(.mine)')).backgroundColor,
      getComputedStyle(document.querySelector('#log .msg.private')).backgroundColor,
    ]);
    assert.notEqual(roomBg, privBg, 'a private line is tinted');

    // A room line sent after the private one: once carol has it, the private one would be there too.
    await say(alice, 'after the secret', '');
    await waitForLine(carol, 'after the secret');
    assert.equal(await carol.locator('#log', { hasText: 'psst bob' }).count(), 0, 'carol never sees it');

    // Unread count on bob's side, reset by picking alice.
    const badge = bob.locator('#users button[data-id="alice"] .unread');
    assert.equal(await badge.textContent(), '1');
    await say(alice, 'second secret', 'bob');
    await waitForLine(bob, 'second secret');
    assert.equal(await badge.textContent(), '2');
    await bob.locator('#users button[data-id="alice"]').click();
    assert.equal(await badge.count(), 0, 'reading clears the count');
    assert.equal(await bob.getByLabel('To').inputValue(), 'alice', 'clicking a user picks them');
    assert.equal(await bob.evaluate(() => document.activeElement.id), 'message');
    await say(bob, 'hi alice', null);
    await waitForLine(alice, 'hi alice');
    assert.equal(await alice.locator('#log .msg.private', { hasText: 'hi alice' }).count(), 1);
    await closeAll();
  });

  it('a taken id is refused on the first join, and another can be picked', T, async () => {
    const alice = await page();
    const other = await page();
    await join(alice, 'alice');
    await submitId(other, 'ALICE');
    await other.locator('#login-error', { hasText: 'taken' }).waitFor();
    assert.equal(await other.locator('#chat').isVisible(), false);
    assert.equal(await other.locator('#status').getAttribute('data-state'), 'offline');
    await sleep(1500); // no retry loop behind the user's back
    assert.equal(await other.locator('#status').getAttribute('data-state'), 'offline');
    await join(other, 'alice2');
    await waitForOnline(alice, 'alice2');
    await closeAll();
  });

  it('server errors show next to the input, not in the log', T, async () => {
    const alice = await page();
    await join(alice, 'alice');
    const bob = await page();
    await join(bob, 'bob');
    await alice.getByLabel('To').selectOption('bob');
    await bob.context().close();
    pages.splice(pages.indexOf(bob), 1);
    await waitForOnline(alice, 'bob', false);
    // bob left while picked: the picker keeps him (never silently falls back to the room).
    assert.equal(await alice.getByLabel('To').inputValue(), 'bob');
    await say(alice, 'are you there?', null);
    await alice.locator('#send-error', { hasText: 'bob is not online' }).waitFor();
    assert.equal(await alice.locator('#log', { hasText: 'are you there?' }).count(), 0);
    assert.equal(await alice.getByLabel('Message', { exact: true }).inputValue(), 'are you there?', 'refused text is given back');
    assert.equal(await alice.locator('#send-error').getAttribute('aria-live'), 'polite');

    // Over --max-text (1000) but under --max-message: the server answers too_long.
    const long = 'y'.repeat(1500);
    await say(alice, long, '');
    await alice.locator('#send-error', { hasText: 'too long' }).waitFor();
    assert.equal(await alice.locator('#log .msg').count(), 0, 'no chat line for a refused message');
    assert.equal(await alice.getByLabel('Message', { exact: true }).inputValue(), long);
    // Over --max-message: refused before sending, so the connection stays up.
    await say(alice, 'z'.repeat(5000), null);
    await alice.locator('#send-error', { hasText: 'too long' }).waitFor();
    await sleep(300);
    assert.equal(await alice.locator('#status').getAttribute('data-state'), 'connected');
    await closeAll();
  });

  it('shows rate_limited next to the input', T, async () => {
    const own = await startServer(0, ['--rate-limit', '1']);
    const alice = await openPage(browser, own.url);
    try {
      await join(alice, 'alice');
      for (let i = 0; i < 5; i++) await say(alice, `quick ${i}`, i === 0 ? '' : null);
      await alice.locator('#send-error', { hasText: 'slow down' }).waitFor();
      await waitForLine(alice, 'quick 0');
      assert.equal(await alice.locator('#log .msg', { hasText: 'slow down' }).count(), 0);
      assert.equal(await alice.locator('#status').getAttribute('data-state'), 'connected');
    } finally {
      await alice.context().close();
      await own.stop();
    }
  });

  it('the Online list follows joins and leaves', T, async () => {
    const alice = await page();
    const bob = await page();
    await join(alice, 'alice');
    assert.deepEqual(await onlineIds(alice), ['alice']);
    await join(bob, 'bob');
    await waitForOnline(alice, 'bob');
    assert.deepEqual(await onlineIds(bob), ['bob', 'alice'], 'you first, then the others');
    const carol = await page();
    await join(carol, 'carol');
    await waitForOnline(alice, 'carol');
    await waitForOnline(bob, 'carol');
    assert.equal(await alice.locator('#count').textContent(), '3');
    await carol.close();
    await waitForOnline(alice, 'carol', false);
    await waitForOnline(bob, 'carol', false);
    assert.deepEqual(await onlineIds(alice), ['alice', 'bob']);
    assert.equal(await alice.locator('#count').textContent(), '2');
    await closeAll();
  });

  it('keeps the scroll position when scrolled up, follows when at the bottom', T, async () => {
    const alice = await page();
    const bob = await page();
    await join(alice, 'alice');
    await join(bob, 'bob');
    for (let i = 0; i < 30; i++) await say(bob, `fill ${i}`, i === 0 ? '' : null);
    await waitForLine(alice, 'fill 29');
    const geo = () => alice.$eval('#log', (l) => ({ top: l.scrollTop, max: l.scrollHeight - l.clientHeight }));
    let g = await geo();
    assert.ok(g.max > 200, 'the log overflows');
    assert.ok(g.top >= g.max - 1, 'at the bottom while following');

    await alice.$eval('#log', (l) => { l.scrollTop = 100; });
    await sleep(100);
    const firstVisible = () => alice.$eval('#log', (l) => {
      const top = l.getBoundingClientRect().top;
      const n = [...l.children].find((c) => c.getBoundingClientRect().bottom > top + 1);
      return n.textContent;
    });
    const before = await firstVisible();
    for (let i = 0; i < 50; i++) await say(bob, `burst ${i}`, null);
    await waitForLine(alice, 'burst 49');
    g = await geo();
    assert.equal(g.top, 100, 'position kept while scrolled up');
    assert.equal(await firstVisible(), before);
    assert.ok(await alice.locator('#jump').isVisible(), 'a "new messages" button shows');

    await alice.$eval('#log', (l) => { l.scrollTop = l.scrollHeight; });
    await sleep(100);
    for (let i = 0; i < 5; i++) await say(bob, `tail ${i}`, null);
    await waitForLine(alice, 'tail 4');
    g = await geo();
    assert.ok(g.top >= g.max - 1, `follows at the bottom (${g.top} of ${g.max})`);
    const lastVisible = await alice.$eval('#log', (l) => {
      const r = l.getBoundingClientRect();
      const last = l.lastElementChild.getBoundingClientRect();
      return last.bottom <= r.bottom + 1 && last.top >= r.top;
    });
    assert.ok(lastVisible, 'the newest line is in view');
    await closeAll();
  });

  it('shows an XSS payload as text and runs nothing', T, async () => {
    const alice = await page();
    const bob = await page();
    await join(alice, 'alice');
    await join(bob, 'bob');
    const payload = '<img src=x onerror=window.__pwned=1>';
    await say(alice, payload);
    await say(alice, payload + ' private', 'bob');
    await waitForLine(bob, payload);
    await waitForLine(bob, payload + ' private');
    await waitForLine(alice, payload);
    await sleep(500); // would give an onerror the time to fire
    for (const p of [alice, bob]) {
      assert.equal(await p.evaluate(() => typeof window.__pwned), 'undefined');
      assert.equal(await p.locator('#log img').count(), 0);
      assert.equal(await p.locator('body img').count(), 0);
    }
    await closeAll();
  });

  it('reconnects by itself with the same id after a server restart', T, async () => {
    const own = await startServer();
    const url = own.url;
    let again;
    const alice = await openPage(browser, url);
    const bob = await openPage(browser, url);
    try {
      await join(alice, 'alice');
      await join(bob, 'bob');
      await waitForOnline(alice, 'bob');
      await alice.evaluate(() => {
        window.__states = [];
        const s = document.getElementById('status');
        new MutationObserver(() => window.__states.push(s.dataset.state)).observe(s, { attributes: true });
      });
      await own.stop(); // a crash: SIGKILL
      await waitForState(alice, 'reconnecting');
      await alice.screenshot({ path: pathJoin(ensureArtifacts(), 'desktop-reconnecting.png') });
      await sleep(800);
      again = await startServer(own.port);
      assert.equal(again.port, own.port);
      await waitForState(alice, 'connected', 20000);
      await waitForState(bob, 'connected', 20000);
      await waitForOnline(alice, 'alice');
      await waitForOnline(alice, 'bob');
      await waitForOnline(bob, 'alice');
      assert.match(await alice.locator('#status-text').textContent(), /connected as alice/);
      const states = await alice.evaluate(() => window.__states);
      assert.ok(states.includes('reconnecting'), `states: ${states}`);
      assert.equal(states.at(-1), 'connected');
      assert.ok(await alice.locator('#chat').isVisible(), 'still in the chat, not sent back to the id form');
      await alice.locator('#log .note', { hasText: 'Reconnected' }).waitFor();
      await say(alice, 'back again');
      await waitForLine(bob, 'back again');
      assert.deepEqual(alice.problems.filter((m) => !/WebSocket/.test(m)), []);
    } finally {
      await alice.context().close();
      await bob.context().close();
      await own.stop();
      await again?.stop();
    }
  });

  it('keeps retrying when the server still holds the id on reconnect (4409)', T, async () => {
    const own = await startServer();
    let again;
    const alice = await openPage(browser, own.url);
    const squatter = await openPage(browser, own.url);
    try {
      await join(alice, 'alice');
      await own.stop();
      // Wait until alice's next try is at least 2.5 s away, then let someone take the id first.
      await alice.waitForFunction(
        () => /reconnecting in ([3-9]|10) s/.test(document.getElementById('status-text').textContent),
        null,
        { timeout: 20000 },
      );
      again = await startServer(own.port);
      const state = await squatter.evaluate((u) => new Promise((ok) => {
        const ws = new WebSocket(u.replace('http', 'ws') + '/ws?id=ALICE');
        window.__squat = ws;
        ws.onmessage = (e) => ok(e.data);
        ws.onclose = (e) => ok('closed ' + e.code);
      }), again.url);
      assert.match(state, /"type":"welcome"/, 'the squatter got the id');
      await alice.waitForFunction(
        () => /still holds/.test(document.getElementById('status-text').textContent),
        null,
        { timeout: 20000 },
      );
      assert.ok(await alice.locator('#chat').isVisible(), 'a reconnect never goes back to the id form');
      await squatter.evaluate(() => window.__squat.close());
      await waitForState(alice, 'connected', 30000);
      await waitForOnline(alice, 'alice');
    } finally {
      await alice.context().close();
      await squatter.context().close();
      await own.stop();
      await again?.stop();
    }
  });

  it('looks right on a desktop and on a phone (screenshots in artifacts/)', T, async () => {
    const dir = ensureArtifacts();
    const desk = await page({ viewport: { width: 1280, height: 800 } });
    const phone = await page({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    await phone.screenshot({ path: pathJoin(dir, 'phone-login.png') });
    const bob = await page();
    const carol = await page();
    await join(desk, 'alice');
    await join(bob, 'bob');
    await join(carol, 'carol_the_long_named');
    await join(phone, 'dave');
    await say(bob, 'Morning all! Anyone up for lunch at noon?');
    await say(carol, 'Sure, the usual place?');
    await say(desk, 'Count me in.');
    await say(bob, 'Can you bring the report? No rush.', 'alice');
    await say(desk, 'Will do, it is nearly ready.', 'bob');
    await say(phone, 'I might be ten minutes late, save me a seat :)');
    await say(carol, 'A longer line to see how wrapping looks when a message does not fit on one row of the log at all, even on a wide screen.');
    await say(bob, 'psst dave: the cake is a surprise', 'dave');
    await waitForLine(desk, 'A longer line to see how wrapping looks when a message does not fit on one row of the log at all, even on a wide screen.');
    await waitForLine(phone, 'psst dave: the cake is a surprise');
    await desk.getByLabel('Message', { exact: true }).fill('typing…');
    await desk.screenshot({ path: pathJoin(dir, 'desktop.png') });
    await phone.screenshot({ path: pathJoin(dir, 'phone.png') });
    await closeAll();
  });
});
