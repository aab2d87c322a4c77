// The log and its scroll rule. #log holds the shown room's lines; every other room keeps its
// own in room.lines, and a switch moves them in and out (saveView, showView), so that the log
// (and everything that reads it) is always just the room on screen. A reader at the bottom
// follows new lines; one scrolled up stays where they are and gets "New lines below". Lines
// are unread until seen on screen.

import { renderUsers } from './people.js';
import { renderRooms } from './roomlist.js';
import { allLines, rooms } from './rooms.js';
import { isMe, unread } from './state.js';
import { MAX_LINES, el, idNode, lower, parts, posInt } from './util.js';

export function atBottom() {
  // gorilla/websocket's chat example: within a pixel of the bottom counts as the bottom.
  return el.log.scrollTop > el.log.scrollHeight - el.log.clientHeight - 1;
}

// Adds `node` to `room`'s log, at the end or before `before` (a line of that log). The
// end is above our messages still pending, which stay at the bottom until answered (the
// server puts them after whatever reaches us meanwhile); `last` puts a pending one there.
export function append(node, room, before = null, last = false) {
  const box = rooms.box(room);
  if (!before && !last) before = box.querySelector(':scope > .out.pending');
  if (room.name !== rooms.shown) {
    // Not on screen: nothing to scroll. The reader finds it below where they left off.
    room.lines.insertBefore(node, before);
    if (!room.follow) room.newBelow = true;
    trim(room.lines, room, false);
    return;
  }
  const follow = atBottom();
  el.log.insertBefore(node, before);
  trim(el.log, room, !follow);
  if (follow) {
    el.log.scrollTop = el.log.scrollHeight - el.log.clientHeight;
  } else {
    el.jump.hidden = false;
  }
}

function trim(box, room, keepView) {
  while (box.childElementCount > MAX_LINES) {
    const old = box.firstElementChild;
    const h = old.offsetHeight;
    old.remove();
    // The line is gone, and its unread mark with it, unless another room's log still has
    // a copy of it (a private line).
    if (old.dataset.unread && !(old.dataset.pm && allLines('.msg[data-pm="' + old.dataset.pm + '"]').length)) {
      markRead(old, room);
      renderUsers();
      renderRooms();
    }
    if (keepView) el.log.scrollTop -= h; // keep what the reader is looking at in place
  }
}

export function timeOf(ts) {
  const d = new Date(typeof ts === 'number' ? ts : Date.now());
  const t = document.createElement('time');
  t.dateTime = d.toISOString();
  t.title = d.toLocaleString();
  t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return t;
}

// Where a new message line goes in `room`'s log: before the returned line, or at the end
// (null). Live lines go at the end. History asked for on entering goes above the "You
// entered" note. A replay after a reconnect goes where it belongs: before the room's lines
// with a higher seq (a fresh session's lobby is live before its replay comes), and before
// private lines newer than it (a resumed session's private messages come right after the
// welcome, ahead of every room's replay).
function placeOf(room, seq, ts) {
  if (!seq || seq > room.liveFrom) return null;
  const box = rooms.box(room);
  let ref = null;
  if (seq <= room.quietUntil && room.historyBefore && room.historyBefore.parentNode === box) {
    ref = room.historyBefore;
  }
  for (let prev = ref ? ref.previousElementSibling : box.lastElementChild; prev; prev = prev.previousElementSibling) {
    // Our pending messages are newer than anything the server sent; a failed one is as
    // old as when it was sent.
    const later = prev.classList.contains('pending') ? true
      : prev.dataset.seq ? Number(prev.dataset.seq) > seq
        : prev.dataset.pm || prev.classList.contains('out') ? Number(prev.dataset.ts) > ts : false;
    if (!later) break;
    ref = prev;
  }
  return ref;
}

export function addMessage(msg, priv, room) {
  const line = document.createElement('div');
  line.className = 'line msg';
  if (priv) line.classList.add('private');
  if (isMe(msg.from)) line.classList.add('mine');
  line.dataset.from = msg.from;
  if (priv) line.dataset.to = msg.to;
  const seq = priv ? 0 : posInt(msg.seq);
  if (seq) line.dataset.seq = String(seq);
  line.dataset.ts = String(typeof msg.ts === 'number' ? msg.ts : Date.now());

  const who = document.createElement('span');
  who.className = 'who';
  const tag = (name) => {
    const t = document.createElement('span');
    t.className = `tag ${name}`;
    t.textContent = name;
    return t;
  };
  // The backend's lines: tagged, and with a sender only if it named one.
  if (msg.system === true) {
    line.classList.add('system');
    who.append(tag('system'));
  }
  const from = msg.from ? [idNode(msg.from)] : [];
  if (priv) {
    who.append(tag('private'), ...from, ' → ', idNode(msg.to));
  } else {
    who.append(...from);
  }
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = msg.text;
  line.append(who, timeOf(msg.ts), text);
  append(line, room, placeOf(room, seq, Number(line.dataset.ts)));
  return line;
}

// A quiet line in `room`'s log (the shown one by default), or in every room's log ('all':
// news about the connection, which every room shares).
export function note(text, kind, room) {
  if (room === 'all') {
    // A node can be in one place only: each room gets its own copy of the parts.
    for (const r of rooms.list()) note(parts(text).map((p) => (typeof p === 'string' ? p : p.cloneNode(true))), kind, r);
    return;
  }
  const line = document.createElement('div');
  line.className = 'line note' + (kind ? ' ' + kind : '');
  const span = document.createElement('span');
  span.className = 'text';
  span.append(...parts(text));
  line.append(span, timeOf());
  append(line, room || rooms.current());
  return line;
}

// Some earlier lines of `room` are gone: said once where they would be.
export function gapNote(room) {
  const box = rooms.box(room);
  if (box.lastElementChild && box.lastElementChild.classList.contains('gap')) return; // said just now
  note('Some earlier messages are no longer available.', 'gap', room);
}

// A line has been seen: it is on screen, in the visible tab.
export function seen(line) {
  if (line.parentNode !== el.log) return false; // in a room not on screen
  if (document.visibilityState !== 'visible' || el.chat.hidden) return false;
  // At least half of the line inside the log's view (or half the view, for a tall line).
  const r = line.getBoundingClientRect();
  const v = el.log.getBoundingClientRect();
  const h = Math.min(r.bottom, v.bottom) - Math.max(r.top, v.top);
  return h > 0 && (h >= r.height / 2 || h >= v.height / 2);
}

// A line stops being unread (seen, or trimmed off the log); counts go down by one.
function markRead(line, room) {
  if (!line.dataset.unread) return;
  if (line.dataset.pm) {
    for (const copy of allLines('.msg[data-pm="' + line.dataset.pm + '"]')) delete copy.dataset.unread;
    const k = lower(line.dataset.from);
    const n = (unread.get(k) || 0) - 1;
    if (n > 0) unread.set(k, n);
    else unread.delete(k);
  } else {
    delete line.dataset.unread;
    room.unread = Math.max(0, room.unread - 1);
  }
}

// Called when what is on screen may have changed: a scroll, a resize, the tab shown, a
// room switch.
export function readVisible() {
  let changed = false;
  for (const line of el.log.querySelectorAll('.msg[data-unread]')) {
    if (!seen(line)) continue;
    markRead(line, rooms.current());
    changed = true;
  }
  if (changed) {
    renderUsers();
    renderRooms();
  }
}

// Where the reader is in the shown room, kept with the room while another is shown.
export function saveView(room) {
  room.follow = atBottom();
  room.newBelow = !room.follow && !el.jump.hidden;
  room.anchor = null;
  if (!room.follow) {
    const top = el.log.scrollTop;
    const line = [...el.log.children].find((c) => c.offsetTop + c.offsetHeight > top);
    if (line) {
      room.anchor = line;
      room.offset = top - line.offsetTop;
    }
  }
  room.lines.append(...el.log.childNodes);
}

export function showView(room) {
  el.log.append(...room.lines.childNodes);
  if (room.follow) {
    el.log.scrollTop = el.log.scrollHeight;
  } else if (room.anchor && room.anchor.parentNode === el.log) {
    el.log.scrollTop = room.anchor.offsetTop + room.offset;
  } else {
    el.log.scrollTop = 0; // the line they were reading was trimmed: the oldest kept is next
  }
  el.jump.hidden = !(room.newBelow && !atBottom());
}

