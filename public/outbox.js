// Pending and failed lines: what we sent, shown at once as pending and settled by the server's
// line that names its cid (our copy, or an error); failed ones say why, with Retry where
// sending again can help. Also the send field's length counter and error line.

import { append, timeOf } from './log.js';
import { LOBBY, roomOf, rooms } from './rooms.js';
import { S } from './state.js';
import { MAX_FRAME, NEAR_LIMIT, el, idNode, lower, parts, roomNode, serverTrim, textLength } from './util.js';

// Messages sent, by their client message id (cid): every line the server sends us about a
// request carries the request's cid (our own copy, an error about it), so a sent line shows
// at once as pending and is settled by the line that names it. Entries are 'pending' (no
// answer yet), 'failed' (an error named it before any copy came), 'lost' (the connection
// dropped before an answer: it may or may not have arrived) or 'sent' (our copy came; kept
// a while, since a cluster error or an undelivered may still name it later).
const CID_PREFIX = Math.random().toString(36).slice(2, 10) || 'tab';
let cids = 0;
export const outbox = new Map(); // cid -> { cid, text, to, room, state, lines: [elements] }
const KEEP_SENT = 200; // settled entries kept for errors that come later
let errorTimer = 0;

export function showSendError(text) {
  clearTimeout(errorTimer);
  el.sendError.replaceChildren(...parts(text));
  errorTimer = setTimeout(() => {
    el.sendError.textContent = '';
  }, 8000);
}

// "12 / 2000" beside the input once the server said its limit: quiet until the text nears
// the limit, red past it. An older server does not say, so there is nothing to count against.
export function renderCounter() {
  const n = textLength(el.message.value);
  const max = S.limits.maxText;
  el.counter.hidden = !max || n === 0;
  if (el.counter.hidden) return;
  el.counter.textContent = n + ' / ' + max;
  el.counter.dataset.level = n > max ? 'over' : n >= max * NEAR_LIMIT ? 'near' : '';
}

export function send() {
  const text = el.message.value;
  if (!serverTrim(text)) {
    showSendError('Type something first.');
    return;
  }
  if (sendText(text, el.to.value, rooms.current())) {
    el.message.value = '';
    renderCounter();
  }
}

// Sends `text` to `to` (an id) or, with none, to `room`, and shows it as pending. False,
// with the reason next to the input, when it cannot go now (the text stays where it is).
function sendText(text, to, room) {
  if (!S.ws || !S.online || S.ws.readyState !== WebSocket.OPEN) {
    // Nothing is queued: say so, and leave the text in the field to send once connected.
    showSendError('Not connected: this message cannot be sent until the connection is back. It stays in the field.');
    return false;
  }
  const length = textLength(text);
  if (S.limits.maxText && length > S.limits.maxText) {
    showSendError(tooLong(length));
    return false;
  }
  if (!to && !room.joined) {
    // After a reconnect, until the server answers the re-join, it would say not_in_room.
    showSendError(['Entering ', roomNode(room.name), ' again after the reconnect: send it in a moment. It stays in the field.']);
    return false;
  }
  cids += 1;
  const cid = CID_PREFIX + '-' + cids;
  // The lobby's texts go without a room, as before rooms: the server sends them to the
  // lobby, and a server from before rooms takes them too.
  const frame = JSON.stringify(to ? { to: to, text: text, cid: cid }
    : room.name === LOBBY ? { text: text, cid: cid } : { room: room.name, text: text, cid: cid });
  // A server that states max_text guarantees that any text within it fits its frame limit
  // (--max-message is derived from --max-text for the worst encoding, and a smaller one is
  // refused at start-up). An older server does not: stay under its old default there.
  const bytes = new TextEncoder().encode(frame).length;
  if (!S.limits.maxText && bytes > MAX_FRAME) {
    showSendError('That message is too long to send: ' + bytes + ' bytes once encoded, and the server takes ' +
      MAX_FRAME + '. It was not sent.');
    return false;
  }
  S.ws.send(frame);
  const entry = { cid: cid, text: text, to: to, room: room.name, state: 'pending', lines: [] };
  outbox.set(cid, entry);
  const line = outLine(entry);
  entry.lines = [line];
  append(line, room, null, true);
  clearTimeout(errorTimer);
  el.sendError.textContent = '';
  return true;
}

// The line of a message not (yet) confirmed: like the one the server will send, greyed,
// with its state in words.
function outLine(entry) {
  const line = document.createElement('div');
  line.className = 'line out mine pending' + (entry.to ? ' private' : '');
  line.dataset.cid = entry.cid;
  line.dataset.ts = String(Date.now());
  const who = document.createElement('span');
  who.className = 'who';
  if (entry.to) {
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.textContent = 'private';
    who.append(tag, idNode(S.me), ' → ', idNode(entry.to));
  } else {
    who.append(idNode(S.me));
  }
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = serverTrim(entry.text);
  const outcome = document.createElement('span');
  outcome.className = 'outcome';
  const state = document.createElement('span');
  state.className = 'state';
  state.textContent = 'sending…';
  outcome.append(state);
  line.append(who, timeOf(), text, outcome);
  return line;
}

// Our own copy came: the pending (or lost) line gives way to `lines`, the server's.
export function settle(entry, lines) {
  for (const line of entry.lines) if (line.classList.contains('out')) line.remove();
  entry.state = 'sent';
  entry.lines = lines;
  // Kept a while: a cluster error or an undelivered may still name it.
  outbox.delete(entry.cid);
  outbox.set(entry.cid, entry);
  let settled = 0;
  for (const e of outbox.values()) if (e.state === 'sent') settled += 1;
  for (const [cid, e] of outbox) {
    if (settled <= KEEP_SENT) break;
    if (e.state === 'sent') {
      outbox.delete(cid);
      settled -= 1;
    }
  }
}

// Errors whose message may go through if sent again as it is.
const RETRYABLE = new Set(['lost', 'not_in_room', 'unknown_recipient', 'recipient_busy', 'rate_limited',
  'cluster_unavailable', 'cluster_unconfirmed', 'undelivered']);

// An error names `entry` (or the connection dropped before its answer: 'lost'): its line
// says why, with a Retry button where sending it again can help. A line already confirmed
// (a cluster error or an undelivered that came after our copy) keeps its place and says it.
export function fail(entry, code, why) {
  const maybe = code === 'lost' || code === 'cluster_unconfirmed';
  if (code === 'lost') {
    why = 'The connection dropped before the server confirmed this message: it may or may not have arrived.';
  }
  if (entry.state !== 'sent') entry.state = code === 'lost' ? 'lost' : 'failed';
  entry.code = code;
  for (const line of entry.lines) {
    line.classList.remove('pending');
    line.classList.add('failed');
    line.classList.toggle('unsure', maybe);
    for (const old of line.querySelectorAll(':scope > .outcome')) old.remove();
    const outcome = document.createElement('span');
    outcome.className = 'outcome';
    const state = document.createElement('span');
    state.className = 'state';
    state.id = 'state-' + entry.cid + '-' + Math.random().toString(36).slice(2, 8);
    const label = document.createElement('strong');
    label.textContent = maybe ? 'Not confirmed: ' : entry.state === 'sent' ? 'Not delivered: ' : 'Not sent: ';
    state.append(label, ...parts(why).map((p) => (typeof p === 'string' ? p : p.cloneNode(true))));
    outcome.append(state);
    line.append(outcome);
    if (RETRYABLE.has(code)) {
      // "Retry", not "Retry message" or "Send again": those would contain the names of
      // the Message field and the Send button. Which message: its line describes it.
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'retry';
      b.dataset.cid = entry.cid;
      b.textContent = 'Retry';
      const text = line.querySelector(':scope > .text');
      if (text) {
        text.id = state.id + '-text';
        b.setAttribute('aria-describedby', text.id + ' ' + state.id);
      }
      outcome.append(b);
    }
  }
  // Out of the pending group at the bottom: later lines go below it now.
  for (const line of entry.lines) {
    if (!line.classList.contains('out') || !line.parentNode) continue;
    const box = line.parentNode;
    const firstPending = box.querySelector(':scope > .out.pending');
    if (firstPending && line.compareDocumentPosition(firstPending) & Node.DOCUMENT_POSITION_PRECEDING) {
      box.insertBefore(line, firstPending);
    }
  }
}

// The Retry button of a failed line: the same text again, with a new cid, to the same
// room or person. The failed line goes (a confirmed one stays, and says it was sent again).
export function retry(cid) {
  const entry = outbox.get(cid);
  if (!entry) return;
  const room = rooms.get(entry.room);
  if (!entry.to && !room) return; // its room was closed (its log with it)
  if (!sendText(entry.text, entry.to, room || rooms.current())) return;
  outbox.delete(cid);
  for (const line of entry.lines) {
    if (line.classList.contains('out')) {
      line.remove();
      continue;
    }
    line.classList.remove('failed');
    for (const b of line.querySelectorAll('.retry')) b.remove();
    const state = line.querySelector(':scope > .outcome > .state');
    if (state) state.append(' Sent again below.');
  }
  el.message.focus();
}

export function tooLong(length) {
  if (!S.limits.maxText) return 'That message is too long. It was not sent.';
  return 'That message is too long' + (length ? ' (' + length + ' characters)' : '') +
    ': the limit is ' + S.limits.maxText + ' characters. It was not sent.';
}

export function rateLimited() {
  if (!S.limits.rate) return 'Too many messages: slow down. That one was not sent.';
  return 'Too many messages: the limit is ' + S.limits.rate + ' a second' +
    (S.limits.burst ? ' (bursts of ' + S.limits.burst + ')' : '') + '. Slow down: that one was not sent.';
}

// The sent message an error is about, or null.
export function errorEntry(msg) {
  if (typeof msg.cid === 'string') return outbox.get(msg.cid) || null;
  // No cid. undelivered comes long after the copy, and a room's cluster_unavailable after
  // it too (the local members got it): neither answers a pending message.
  if (msg.code === 'undelivered' || (msg.code === 'cluster_unavailable' && typeof msg.to !== 'string')) return null;
  const to = typeof msg.to === 'string' ? lower(msg.to) : null;
  const room = msg.code === 'not_in_room' && typeof msg.room === 'string' ? lower(msg.room) : null;
  for (const entry of outbox.values()) {
    if (entry.state !== 'pending') continue;
    if (to !== null && lower(entry.to) !== to) continue;
    if (room !== null && (entry.to || entry.room !== room)) continue;
    return entry;
  }
  return null;
}

// The pending message our own copy `msg` answers, or null: by cid, else (an older server)
// the oldest pending one to the same place with the same text.
export function ownEntry(msg) {
  if (typeof msg.cid === 'string') {
    const entry = outbox.get(msg.cid);
    return entry && entry.state !== 'sent' ? entry : null;
  }
  const priv = typeof msg.to === 'string';
  for (const entry of outbox.values()) {
    if (entry.state !== 'pending' || serverTrim(entry.text) !== msg.text) continue;
    if (priv ? lower(entry.to) === lower(msg.to) : !entry.to && entry.room === roomOf(msg)) return entry;
  }
  return null;
}

// A message to `room` lost in a dropped connection whose text a replay brings back from us.
export function lostEntry(room, text) {
  for (const entry of outbox.values()) {
    if (entry.state === 'lost' && !entry.to && entry.room === room && serverTrim(entry.text) === text) return entry;
  }
  return null;
}
