// chatloop page: one WebSocket to /ws?id=ID, JSON lines in, one JSON object per frame out.
// Every piece of text reaches the page through textContent, never innerHTML.
// This is the entry module (index.html loads it with type="module", no build step): it wires
// the page's controls to the modules below and starts. The map:
//   util.js        constants, elements by id, small helpers (imports nothing)
//   state.js       the session's shared state (S: who we are, the socket, limits)
//   rooms.js       Room and RoomSet: the rooms we are in, as plain state
//   tabs.js        other tabs of this browser, and the remembered id
//   screens.js     the status line, the login and chat screens
//   people.js      the Online list and the "To" picker
//   roomlist.js    the Rooms panel and the directory's suggestions
//   log.js         the log, its scroll rule, unread lines
//   token.js       sign-in tokens: GET /config, the #token= fragment, fresh tokens, refresh
//   outbox.js      pending and failed lines (cid matching, Retry), the send field
//   entry.js       switching, entering and closing rooms
//   errors.js      the server's error lines
//   lines.js       the server's other lines (presence, joined, messages, gaps)
//   connection.js  the WebSocket: connect, reconnect with back-off, welcome and resume
// Each imports only modules above it in this list.

import { connect, onOffline, onOnline, retryNow, stop } from './connection.js';
import { enterRoom, leaveRoom, switchTo } from './entry.js';
import { atBottom, readVisible } from './log.js';
import { outbox, renderCounter, retry, send } from './outbox.js';
import { pick } from './people.js';
import { askDirectory } from './roomlist.js';
import { rooms } from './rooms.js';
import { setStatus, showLogin } from './screens.js';
import { S, asked, unread } from './state.js';
import { announce, startTabs, typedId } from './tabs.js';
import { A, fetchToken, loadConfig, renderSignIn, takeFragment, tokenMode, useToken } from './token.js';
import { ID_RE, el, lower } from './util.js';

// A new login (or Leave): nothing of the last session stays on the page.
function resetChat() {
  rooms.reset();
  asked.clear();
  unread.clear();
  el.log.replaceChildren();
  el.users.replaceChildren();
  el.rooms.replaceChildren();
  el.directory.replaceChildren();
  el.roomName.value = '';
  el.roomError.textContent = '';
  el.to.value = '';
  el.message.value = '';
  outbox.clear();
  S.limits = { maxText: 0, rate: 0, burst: 0 };
  renderCounter();
  el.sendError.textContent = '';
  el.jump.hidden = true;
  document.title = 'chatloop';
}

el.loginForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const id = tokenMode() ? A.sub : el.id.value.trim();
  if (tokenMode() && !id) return;
  if (!ID_RE.test(id)) {
    el.loginError.textContent = id
      ? 'An id is 1 to 32 letters, digits, _ - or . (no spaces).'
      : 'Type an id first.';
    el.id.focus();
    return;
  }
  stop();
  resetChat();
  S.me = id;
  announce();
  S.joined = false;
  el.loginError.textContent = '';
  el.join.disabled = true;
  setStatus('reconnecting', 'connecting…');
  connect();
});

el.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  send();
  el.message.focus();
});

el.users.addEventListener('click', (ev) => {
  const b = ev.target.closest('button.user');
  if (!b) return;
  // A second click on the chosen person goes back to the room.
  pick(lower(el.to.value) === lower(b.dataset.id) ? '' : b.dataset.id);
});

el.to.addEventListener('change', () => pick(el.to.value));

el.rooms.addEventListener('click', (ev) => {
  const close = ev.target.closest('button.room-close');
  if (close) return leaveRoom(close.dataset.room);
  const b = ev.target.closest('button.room-link');
  if (!b) return;
  switchTo(b.dataset.room);
  el.message.focus();
});

el.roomForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  enterRoom();
});

// The directory is a list of suggestions for the room field, fresh when it is about to be used.
el.roomName.addEventListener('focus', askDirectory);
el.roomName.addEventListener('input', () => {
  el.roomError.textContent = '';
});

el.message.addEventListener('input', renderCounter);

el.id.addEventListener('input', typedId);

el.log.addEventListener('click', (ev) => {
  const b = ev.target.closest('button.retry');
  if (b) retry(b.dataset.cid);
});

el.log.addEventListener('scroll', () => {
  if (atBottom()) el.jump.hidden = true;
  readVisible();
});
window.addEventListener('resize', readVisible);

el.jump.addEventListener('click', () => {
  el.log.scrollTop = el.log.scrollHeight;
  el.jump.hidden = true;
  el.message.focus();
});

el.leave.addEventListener('click', () => {
  const id = S.me;
  stop();
  resetChat();
  if (id) el.id.value = id;
  showLogin('');
});

window.addEventListener('online', onOnline);
window.addEventListener('offline', onOffline);
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    retryNow();
    readVisible();
  }
});

// The fragment goes first, before anything can read the address bar; Join waits for the mode.
async function startAuth(fragment) {
  el.join.disabled = true;
  await loadConfig(fragment !== '');
  if (tokenMode() && !(fragment && useToken(fragment))) await fetchToken();
  renderSignIn();
  el.join.disabled = false;
}

// A sign-in link opened in this tab again (or another one pasted): its token is the one used.
window.addEventListener('hashchange', () => {
  const fragment = takeFragment();
  if (fragment && tokenMode() && S.me === null && useToken(fragment)) renderSignIn();
});

setStatus('offline', 'offline');
el.id.focus();
startTabs();
startAuth(takeFragment());
