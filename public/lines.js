// The server's lines after the welcome: presence, joined and left, the directory, room and
// private messages (each shown once, whatever a replay resends), gaps and errors.

import { closeRoom, switchTo } from './entry.js';
import { onError } from './errors.js';
import { addMessage, gapNote, note, seen } from './log.js';
import { lostEntry, outbox, ownEntry, settle } from './outbox.js';
import { renderUsers } from './people.js';
import { onDirectory, renderRooms } from './roomlist.js';
import { LOBBY, roomLines, roomName, roomOf, rooms } from './rooms.js';
import { S, asked, isMe, leaving, seenPseq, unread } from './state.js';
import { scheduleRefresh } from './token.js';
import { MAX_LINES, el, idNode, lower, posInt, roomNode } from './util.js';

let privates = 0; // private lines so far: each one's copies in every room's log share a number

export function handle(msg) {
  switch (msg.type) {
    case 'users': {
      // Presence events resume after the crowd went back under --presence-limit: this is
      // the whole truth again, in the welcome's shape.
      const room = rooms.get(roomOf(msg));
      if (room) {
        room.setUsers(msg.users, msg.total, msg.away);
        renderUsers();
      }
      return;
    }
    case 'join':
    case 'leave':
    case 'away':
    case 'back':
      return onPresence(msg);
    case 'joined':
      return onJoined(msg);
    case 'left':
      return onLeft(msg);
    case 'rooms':
      return onDirectory(msg);
    case 'message':
      return onMessage(msg);
    case 'gap':
      return onGap(msg);
    case 'error':
      return onError(msg);
    case 'token':
      return scheduleRefresh(msg.exp); // a refresh taken: its new expiry
    default:
      return; // newer server: ignore what we do not know
  }
}

function onPresence(msg) {
  const room = rooms.get(roomOf(msg));
  if (!room || typeof msg.id !== 'string') return;
  if (msg.type === 'away') {
    // Still a member (the server holds its id for a resume), but not here right now.
    if (room.users.has(lower(msg.id))) room.away.add(lower(msg.id));
    note([idNode(msg.id), ' lost their connection'], 'presence', room);
  } else if (msg.type === 'back') {
    room.away.delete(lower(msg.id));
    note([idNode(msg.id), ' is back'], 'presence', room);
  } else if (msg.type === 'join') {
    if (room.addUser(msg.id)) note([idNode(msg.id), ' joined'], 'presence', room);
  } else if (room.removeUser(msg.id)) {
    note([idNode(msg.id), ' left'], 'presence', room);
  }
  renderUsers();
}

function onJoined(msg) {
  if (typeof msg.room !== 'string') return;
  const name = lower(msg.room);
  const how = asked.get(name);
  asked.delete(name);
  leaving.delete(name);
  const known = rooms.get(name);
  // Our join asked for the last lines when we had no joined for the room yet (joinFrame).
  const wasLast = !known || !known.answered;
  const room = rooms.add(name);
  room.joined = true;
  room.setUsers(msg.users, msg.total, msg.away);
  const seq = posInt(msg.seq);
  const epoch = typeof msg.epoch === 'string' ? msg.epoch : '';
  if (epoch !== room.epoch) {
    // The server lost the room's history (a restart): its numbers start again, and the
    // ones on our lines say nothing about the new ones. What was said between our last
    // line and the loss is gone, if there was any: unless we were live in the room until
    // the server went away (Room.whole), we cannot know, so we say that some may be gone.
    // The new history's own losses are the gap's to say (onGap).
    if (room.epoch && !room.whole) gapNote(room);
    room.seqs.clear();
    room.seq = 0;
    for (const line of roomLines(room, '.msg[data-seq]')) delete line.dataset.seq;
    room.epoch = epoch;
  }
  room.whole = false; // said for this drop
  room.answered = true;
  room.synced = true;
  room.liveFrom = seq;
  room.quietUntil = wasLast ? seq : 0;
  if (how === 'user') {
    room.historyBefore = note(['You entered ', roomNode(name), '.'], '', room);
    if (roomName(el.roomName.value) === name) el.roomName.value = '';
    el.roomError.textContent = '';
    switchTo(name);
  }
  renderUsers();
  renderRooms();
}

// Some of what a re-join asked for is gone: lines before `seq` that we do not have. Said
// quietly where the missing lines would be; what is still kept follows. After a new epoch
// (a restart: onJoined set our seq back to 0) the server always sends a gap, and one at 1
// skips nothing: the new history is whole from its first line.
function onGap(msg) {
  const room = rooms.get(roomOf(msg));
  if (!room) return;
  const next = posInt(msg.seq);
  if (next && next <= room.seq + 1) return; // nothing we asked for is missing
  if (next) room.seq = next - 1; // nothing before `next` will come
  gapNote(room);
}

function onLeft(msg) {
  // The page drops a room from its list when the user closes it, before this answer.
  if (typeof msg.room !== 'string' || lower(msg.room) === LOBBY) return;
  leaving.delete(lower(msg.room));
  closeRoom(lower(msg.room));
}

function onMessage(msg) {
  // A line from the server's backend (`system`) names a sender only if the backend gave one.
  if (msg.system === true && msg.from === undefined) msg.from = '';
  if (typeof msg.from !== 'string' || typeof msg.text !== 'string') return;
  const priv = typeof msg.to === 'string';
  if (priv) {
    // Ours come back without a pseq; theirs may come again after a resume.
    const pseq = posInt(msg.pseq);
    if (pseq) {
      if (seenPseq.has(pseq)) return;
      seenPseq.add(pseq);
      if (pseq > S.lastPseq) S.lastPseq = pseq;
      if (seenPseq.size > 2 * MAX_LINES) {
        for (const n of seenPseq) if (n < S.lastPseq - MAX_LINES) seenPseq.delete(n);
      }
    }
    const entry = isMe(msg.from) ? ownEntry(msg) : null;
    const copies = onPrivate(msg);
    if (entry) settle(entry, copies);
    return;
  }
  const room = rooms.get(roomOf(msg));
  const seq = posInt(msg.seq);
  // Lines numbered up to the latest joined's seq are history we asked for; after them the
  // server sends the room live.
  const old = seq > 0 && room !== null && seq <= room.liveFrom;
  if (room && seq && !room.take(seq)) return; // one we have: a replay of what came live
  // Our own copy settles the line shown as pending. A replay has no cid: it may be one that
  // was pending when the connection dropped, and so did arrive after all.
  const entry = !isMe(msg.from) ? null : old ? lostEntry(roomOf(msg), msg.text) : ownEntry(msg);
  if (!room) {
    if (entry) outbox.delete(entry.cid); // a room closed here a moment ago
    return;
  }
  const line = addMessage(msg, false, room);
  if (entry) settle(entry, [line]);
  // A room line from someone else is unread until it has been seen: shown in the log of
  // the room on screen while the tab is visible. History shown on entering is not news.
  if (!isMe(msg.from) && !(seq && seq <= room.quietUntil) && !seen(line)) {
    line.dataset.unread = '1';
    room.unread += 1;
    renderRooms();
  }
}

// A private line goes into every room's log, as before rooms, where the one log held
// everything: a conversation with someone stays whole whichever room is on screen. Its
// copies share a number, so that seeing one reads them all; rooms' unread counts leave
// private lines out (the sender's badge in the Online list counts them).
function onPrivate(msg) {
  privates += 1;
  const copies = rooms.list().map((room) => addMessage(msg, true, room));
  for (const line of copies) line.dataset.pm = String(privates);
  // Unread until seen (in the log on screen) or its sender picked.
  if (msg.from && !isMe(msg.from) && lower(msg.from) !== lower(el.to.value) && !copies.some(seen)) {
    for (const line of copies) line.dataset.unread = '1';
    const k = lower(msg.from);
    unread.set(k, (unread.get(k) || 0) + 1);
    renderUsers();
  }
  return copies;
}

