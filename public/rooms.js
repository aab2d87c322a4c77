// The rooms this page is in, as plain state (Room, RoomSet): members, unread counts, where
// the reader was, and each room's history numbering (seq, epoch) that a re-join resumes from.
// The drawing is in roomlist.js (the Rooms panel) and log.js (the lines).

import { S } from './state.js';
import { HISTORY, MAX_LINES, el, lower } from './util.js';

export const LOBBY = 'lobby'; // every connection starts there; the welcome's users are its members
export const ROOM_RE = /^[a-z0-9_.-]{1,32}$/;

// A name as the server will store it, or '' when it is not one. Names are case-insensitive
// and shown in lowercase, so "Dev" is "dev"; "#dev" is how people write channel names
// elsewhere, so it is "dev" too rather than an error.
export function roomName(input) {
  const name = lower(String(input).trim().replace(/^#/, ''));
  return ROOM_RE.test(name) ? name : '';
}

export class Room {
  constructor(name) {
    this.name = name;
    this.users = new Map(); // lowercased id -> id as spelled; at most --presence-limit of them
    this.total = 0; // the server's count of members (the list may be capped)
    // Listed members whose connection was lost (lowercased ids): they may resume within the
    // server's grace, so they stay listed, greyed.
    this.away = new Set();
    // The server confirmed our membership on the current connection (the welcome for the
    // lobby, joined for the others). False between a reconnect and the re-join's answer,
    // when a text to the room would only get not_in_room.
    this.joined = false;
    this.unread = 0; // room lines that arrived here and have not been seen in the log
    // Who the "To" picker names while this room is shown: '' (the room) or an id. Each room
    // keeps its own, so a private conversation picked in one room does not follow the reader
    // into another (where a line would go to that person by surprise), and is there again
    // on coming back (where a line would otherwise go to the whole room by surprise).
    this.to = '';
    // This room's log lines while another room is shown (the shown room's are in #log).
    this.lines = document.createElement('div');
    // Where the reader was when they switched away: at the bottom (following), or on a
    // line and how far into it. A line rather than a scrollTop, because lines arriving while
    // the room is not shown may push the oldest out (the log keeps MAX_LINES).
    this.follow = true;
    this.anchor = null;
    this.offset = 0;
    this.newBelow = false; // lines came in below the reader's view ("New lines below")
    // History. The server numbers each room's messages (seq) within an epoch, which changes
    // when it lost the room's history (a restart). A re-join asks for everything after the
    // last seq we have of that epoch, so a reconnect misses nothing still kept.
    this.epoch = ''; // '' = not known yet (no joined for it so far, or a server without history)
    this.seq = 0; // the highest seq we have of this epoch
    this.seqs = new Set(); // the seqs we have: a replay may resend what came live, and shows once
    this.answered = false; // a joined came for it: later joins ask for `since` (or plain)
    this.liveFrom = 0; // the latest joined's seq: lines numbered up to it are replayed history
    // A joined came on this connection: from then on the server sends every line of the
    // room in order, so `seq` may follow them. Before it (the lobby's live lines between a
    // fresh welcome and the join's answer) a line may come ahead of a replay still to come.
    this.synced = false;
    this.quietUntil = 0; // lines up to this seq came as history on entering: not unread
    // At the last drop of a welcomed connection, we had every line the server had numbered
    // in this room: we were live in it (synced) and the connection ended because the server
    // went away (a restart or a crash), not because we lost the network (when the server may
    // have gone on without us). A restart's new epoch then misses nothing of the old one.
    this.whole = false;
    // History on entering goes above this line (the "You entered" note), newest last.
    this.historyBefore = null;
  }

  // The join to send for this room: on entering, its last HISTORY lines; again (after a
  // reconnect), what came since the last line we have; a server that gave no epoch keeps no
  // history, so a plain join.
  joinFrame() {
    if (this.epoch) return { join: this.name, since: this.seq, epoch: this.epoch };
    if (this.answered) return { join: this.name };
    return { join: this.name, last: HISTORY };
  }

  // A room line's seq: true when it is news (not one we have already).
  take(seq) {
    const isNew = !this.seqs.has(seq);
    this.seqs.add(seq);
    if (this.synced && seq > this.seq) this.seq = seq;
    if (this.seqs.size > 4 * MAX_LINES) {
      // Only recent numbers can come again (a replay starts after this.seq).
      for (const s of this.seqs) if (s < this.seq - 2 * MAX_LINES) this.seqs.delete(s);
    }
    return isNew;
  }

  // The whole truth (welcome, joined, users): `list` in the server's order, us included.
  setUsers(list, total, away) {
    this.users.clear();
    this.away.clear();
    for (const u of Array.isArray(list) ? list : []) {
      if (typeof u === 'string') this.users.set(lower(u), u);
    }
    for (const u of Array.isArray(away) ? away : []) {
      if (typeof u === 'string' && this.users.has(lower(u))) this.away.add(lower(u));
    }
    if (S.me !== null) this.users.set(lower(S.me), S.me);
    this.total = Math.max(this.users.size, Number(total) || 0);
  }

  // A join event; true when it is news (not someone already listed).
  addUser(id) {
    this.away.delete(lower(id));
    const isNew = !this.users.has(lower(id));
    if (isNew) this.total += 1;
    this.users.set(lower(id), id);
    return isNew;
  }

  // A leave event; true when they were listed. The count drops either way: past
  // --presence-limit the list is capped, but the count is not.
  removeUser(id) {
    this.away.delete(lower(id));
    const was = this.users.delete(lower(id));
    this.total = Math.max(this.users.size, this.total - 1);
    return was;
  }
}

// The rooms we are in, in the order entered (the lobby always first), and the one shown.
// The page never leaves the lobby: the server puts every connection back in it, and the
// page reconnects by itself, so a left lobby would keep coming back.
export class RoomSet {
  constructor() {
    this.reset();
  }

  // Only the lobby, shown (a new login).
  reset() {
    this.rooms = new Map([[LOBBY, new Room(LOBBY)]]); // name -> Room
    this.shown = LOBBY;
  }

  // Where a room's lines are now: the shown room's in #log, the others' aside.
  box(room) {
    return room.name === this.shown ? el.log : room.lines;
  }

  get(name) {
    return this.rooms.get(name) || null;
  }

  add(name) {
    if (!this.rooms.has(name)) this.rooms.set(name, new Room(name));
    return this.rooms.get(name);
  }

  remove(name) {
    if (name !== LOBBY) this.rooms.delete(name);
  }

  current() {
    return this.rooms.get(this.shown);
  }

  list() {
    return [...this.rooms.values()];
  }

  // Everyone we can see in any of our rooms (the private picker offers them all).
  everyone() {
    const all = new Map();
    for (const room of this.rooms.values()) for (const [k, id] of room.users) all.set(k, id);
    return all;
  }
}

export const rooms = new RoomSet();

// The room a line is about. A line without one is the lobby's: lobby lines carry
// "room":"lobby", and a server from before rooms sends none.
export const roomOf = (msg) => (typeof msg.room === 'string' ? lower(msg.room) : LOBBY);

// One room's lines matching `selector`, wherever they are now.
export function roomLines(room, selector) {
  return [...rooms.box(room).querySelectorAll(selector)];
}

// Every room's lines matching `selector`: the shown room's in #log, the others' aside.
export function allLines(selector) {
  const found = [...el.log.querySelectorAll(selector)];
  for (const room of rooms.list()) {
    if (room.name !== rooms.shown) found.push(...room.lines.querySelectorAll(selector));
  }
  return found;
}
