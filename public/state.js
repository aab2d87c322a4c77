// The session's shared state: who we are, the socket, what the server said about its limits,
// and the bookkeeping that several parts of the page read and write. Plain data, no drawing.
// Scalars live on `S` (an imported binding cannot be assigned, a property can).

import { lower } from './util.js';

export const S = {
  me: null, // our id as the server spelled it back (or as typed before the welcome)
  ws: null, // the current socket, or null
  joined: false, // a welcome arrived for this id at least once: later drops reconnect
  online: false, // the current socket got its welcome
  // What the welcome said about the server's limits; 0 = not said (an older server).
  limits: { maxText: 0, rate: 0, burst: 0 },
  // Private messages to us are numbered (pseq); a resume says the last one we have, and the
  // server sends what came after it.
  lastPseq: 0,
};

// Private pseq numbers seen, to show each once whatever is resent.
export const seenPseq = new Set();
export const unread = new Map(); // lowercased id -> private messages from them not yet read
// Rooms closed here while offline: a resumed session is still in them on the server, so
// the leave goes once we are back. A not_in_room for one of them is no news.
export const leaving = new Set();
// Joins sent and not yet answered: name -> 'user' (typed: show it once joined, errors go next
// to the room field) or 'rejoin' (after a reconnect: quietly, and an error drops the room).
export const asked = new Map();

export const isMe = (id) => S.me !== null && lower(id) === lower(S.me);
