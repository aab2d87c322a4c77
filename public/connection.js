// The connection and its resume: one WebSocket to /ws?id=ID (JSON lines in, one JSON object
// per frame out), reconnects with back-off, the welcome, and the resume token that takes the
// session back after a drop; in token mode, the token on every connect and a fresh one after
// a 4401 (token.js), retried with a back-off while none comes. Every other server line goes
// to lines.js.

import { handle } from './lines.js';
import { note } from './log.js';
import { fail, outbox, renderCounter } from './outbox.js';
import { renderUsers } from './people.js';
import { renderRooms } from './roomlist.js';
import { LOBBY, rooms } from './rooms.js';
import { setStatus, showChat, showLogin } from './screens.js';
import { S, asked, leaving, seenPseq } from './state.js';
import { announce, inOtherTab, remember } from './tabs.js';
import { A, fetchToken, renderSignIn, scheduleRefresh, stopRefresh, tokenMode } from './token.js';
import {
  AUTH_BACKOFF_MAX, AUTH_BACKOFF_MIN, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, HISTORY, STABLE_MS, idNode, lower, posInt,
} from './util.js';

let attempt = 0; // reconnects since the last stable connection
let retryTimer = 0;
let connectTimer = 0;
let openedAt = 0;
let lostNoted = false; // "connection lost" already logged for this outage
// The latest welcome's resume token. A connection that ends without our close frame (the
// network went away, the server closed it) is *lost*, not left: the server holds our id,
// our rooms and our private messages for its --resume-grace for whoever presents this, and
// a reconnect with it is the same session again, the old connection replaced if the server
// still thinks it is open. Each token works once; every welcome brings a new one.
let resumeToken = '';
let authAttempt = 0; // sign-in renewals after a 4401 since the last welcome

function wsUrl(id, resume) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return proto + '//' + location.host + '/ws?id=' + encodeURIComponent(id) +
    (resume ? '&resume=' + encodeURIComponent(resume) + '&pseq=' + S.lastPseq : '') +
    (tokenMode() && A.token ? '&token=' + encodeURIComponent(A.token) : '');
}

export function connect() {
  clearTimeout(retryTimer);
  retryTimer = 0;
  if (S.me === null) return;
  let sock;
  try {
    sock = new WebSocket(wsUrl(S.me, S.joined ? resumeToken : ''));
  } catch (e) {
    onDrop(null, 0, String(e && e.message ? e.message : e));
    return;
  }
  S.ws = sock;
  S.online = false;
  openedAt = 0;
  clearTimeout(connectTimer);
  connectTimer = setTimeout(() => {
    if (S.ws === sock && !S.online) sock.close(); // hung handshake: onclose schedules a retry
  }, CONNECT_TIMEOUT);
  sock.onmessage = (ev) => {
    if (S.ws !== sock || typeof ev.data !== 'string') return;
    for (const line of ev.data.split('\n')) {
      if (!line) continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (e) {
        continue;
      }
      if (!msg || typeof msg !== 'object') continue;
      if (msg.type === 'welcome') onWelcome(msg);
      else handle(msg);
    }
  };
  sock.onclose = (ev) => {
    if (S.ws !== sock) return;
    onDrop(sock, ev.code, ev.reason);
  };
}

function onDrop(sock, code, reason) {
  clearTimeout(connectTimer);
  const lived = openedAt ? Date.now() - openedAt : 0;
  // 1001 going away and 1012 restart say it; 1006 (no close frame) is a server that died.
  const serverWent = sock !== null && (code === 1001 || code === 1006 || code === 1012);
  const welcomed = S.online;
  S.ws = null;
  S.online = false;
  // What was sent and not answered may or may not have reached the server.
  for (const entry of outbox.values()) {
    if (entry.state === 'pending') fail(entry, 'lost');
  }
  // Memberships belong to a connection: the next welcome puts us in the lobby only (a
  // resumed one in all our rooms, but quiet until each is asked for again).
  for (const room of rooms.list()) {
    if (welcomed) room.whole = room.synced && serverWent;
    room.joined = false;
    room.synced = false;
  }
  if (S.me === null) return; // we left on purpose

  if (code === 4401) return onUnauthorized(reason);
  if (code === 4403) {
    // Banned or disconnected by the chat's operator: coming back at once would not help.
    stop();
    const why = reason && reason !== 'disconnected' ? ' (' + reason + ')' : '';
    showLogin('You were removed from this chat' + why + '.');
    return;
  }
  if (code === 4400) {
    // The server refused the id itself: retrying cannot help.
    stop();
    showLogin('That id is not allowed: use 1 to 32 letters, digits, _ - or .');
    return;
  }
  if (!S.joined) {
    // First join: tell the user and let them pick again.
    let why;
    if (code === 4409) {
      why = inOtherTab(S.me)
        ? 'That id is in use in another tab of this browser. Pick another one for this tab.'
        : 'That id is taken: someone with the same id (ignoring case) is online. Pick another.';
    } else {
      why = 'Could not connect to the chat server' + (reason ? ' (' + reason + ')' : '') + '. Try again.';
    }
    stop();
    showLogin(why);
    return;
  }
  if (lived >= STABLE_MS) attempt = 0;
  if (!lostNoted) {
    lostNoted = true;
    note('Connection lost' + describeClose(code, reason) + '. Reconnecting…', '', 'all');
  }
  scheduleRetry(code === 4409);
}

// 4401: the token was refused, or expired without a refresh. With a token URL, a fresh token
// and the same session again (resume token and pseq, as after any drop: nothing is lost);
// without one, back to the login, which says a sign-in is needed.
function onUnauthorized(reason) {
  const why = A.refusal || reason || 'refused';
  A.refusal = '';
  stopRefresh();
  if (!A.url) return signedOut(why);
  if (S.joined && !lostNoted) note('Your sign-in ended (' + why + '). Renewing it…', '', 'all');
  lostNoted = S.joined;
  renewAfter(why);
}

// The first renewal at once; after each that failed (the token URL gave none, or the server
// refused the fresh one too) 1 s, 2 s, 4 s… up to 30 s, each with equal jitter, so the pages
// of a sign-in service that is down neither give up nor come back all at once.
function renewAfter(why) {
  clearTimeout(retryTimer);
  const base = Math.min(AUTH_BACKOFF_MAX, AUTH_BACKOFF_MIN * Math.pow(2, Math.max(0, authAttempt - 1)));
  const delay = authAttempt === 0 ? 0 : base / 2 + Math.random() * (base / 2);
  authAttempt += 1;
  setStatus('reconnecting', delay
    ? 'sign-in refused (' + why + '): trying again in ' + Math.max(1, Math.round(delay / 1000)) + ' s…'
    : 'renewing the sign-in…');
  retryTimer = setTimeout(renew, delay);
}

async function renew() {
  retryTimer = 0;
  setStatus('reconnecting', 'renewing the sign-in…');
  const fresh = await fetchToken();
  if (S.me === null || S.ws !== null || retryTimer) return; // left, or connected meanwhile
  if (!fresh) return renewAfter('the sign-in page gave no token');
  // A token for someone else: this session is not theirs to take back.
  if (lower(A.sub) !== lower(S.me)) return signedOut('the sign-in is for ' + A.sub + ' now');
  connect();
}

function signedOut(why) {
  stop();
  A.token = '';
  A.sub = '';
  renderSignIn();
  showLogin('Signed out: the server refused the sign-in (' + why + ').');
}

function describeClose(code, reason) {
  if (code === 1008 && reason) return ' (' + reason + ')';
  if (code === 1001) return reason ? ' (' + reason + ')' : ' (server going away)';
  if (code === 1009) return ' (message too big)';
  if (reason) return ' (' + reason + ')';
  return '';
}

function scheduleRetry(idHeld) {
  clearTimeout(retryTimer);
  const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, attempt));
  attempt += 1;
  // "Equal jitter": between half and all of the base delay, never below BACKOFF_MIN / 2.
  const delay = Math.max(BACKOFF_MIN / 2, base / 2 + Math.random() * (base / 2));
  const secs = Math.max(1, Math.round(delay / 1000));
  setStatus('reconnecting', idHeld
    ? ['reconnecting: the server still holds “', idNode(S.me), '”, retrying in ' + secs + ' s']
    : navigator.onLine === false ? 'offline: reconnecting once the network is back…'
      : 'reconnecting in ' + secs + ' s…');
  retryTimer = setTimeout(() => {
    setStatus('reconnecting', 'reconnecting…');
    connect();
  }, delay);
}

export function retryNow() {
  // The network came back or the tab woke up: no need to wait out the back-off.
  // A sign-in renewal keeps its own back-off: an old token would only be refused again.
  if (S.me !== null && S.joined && S.ws === null && retryTimer && authAttempt === 0) {
    setStatus('reconnecting', 'reconnecting…');
    connect();
  }
}

// Stops using the current session's socket without closing it. A close frame would tell
// the server that we left (our id freed, our rooms left, our private messages no longer
// kept); a socket that just goes quiet is *lost*, and the resume token of its welcome
// takes the session back on a new one, the old one replaced (4001) if the server still
// thinks it is open. Whatever the old socket still delivers is ignored: the new session
// replays it, in order, once.
// Only a welcomed socket: one still connecting may be welcomed by the server with a token
// we have not seen, and left open it would hold our id for good (the browser answers the
// server's pings); it is left to finish or fail (CONNECT_TIMEOUT) as it would anyway.
function abandon(why) {
  const sock = S.ws;
  if (!sock || !S.online || S.me === null) return;
  sock.onmessage = null;
  sock.onclose = null;
  onDrop(sock, 0, why);
}

// The browser says the network went away: the socket may linger for a minute before
// anything notices (the server's idle timeout; TCP keeps a dead peer longer), and what it
// still delivers may be late. Retries meanwhile fail fast; `online` retries at once.
// (navigator.onLine does not gate the retries: some machines say offline with a working
// loopback, and a page served from 127.0.0.1 would never come back.)
export function onOffline() {
  abandon('the network went away');
}

// The network is back (or changed: a phone moving from Wi-Fi to mobile data). A socket
// still open may be one over the old network that nothing will ever reach again: take the
// session over on a new one rather than wait to find out.
export function onOnline() {
  if (S.ws && !S.online) {
    // A retry begun while offline: it will fail; the next one goes without back-off.
    attempt = 0;
    return;
  }
  abandon('the network changed');
  retryNow();
}

export function stop() {
  clearTimeout(retryTimer);
  clearTimeout(connectTimer);
  retryTimer = 0;
  const sock = S.ws;
  S.ws = null;
  S.online = false;
  if (sock) sock.close(1000, 'bye');
  S.me = null;
  S.joined = false;
  resumeToken = '';
  S.lastPseq = 0;
  seenPseq.clear();
  leaving.clear();
  attempt = 0;
  lostNoted = false;
  authAttempt = 0;
  stopRefresh();
  outbox.clear();
  announce(); // this tab's id is free again
  setStatus('offline', 'offline');
}

// The server took us (a new session, or `resumed`: the same one again).
function onWelcome(msg) {
  clearTimeout(connectTimer);
  S.online = true;
  openedAt = Date.now();
  const first = !S.joined;
  S.joined = true;
  authAttempt = 0;
  scheduleRefresh(msg.exp); // token mode: renew before it expires
  if (typeof msg.id === 'string') S.me = msg.id;
  resumeToken = typeof msg.resume === 'string' ? msg.resume : '';
  // The same session again, or a new one (first join, or the server no longer held us):
  // a new one numbers its private messages from 1 again.
  const resumed = msg.resumed === true;
  if (!resumed) {
    S.lastPseq = 0;
    seenPseq.clear();
  }
  remember(S.me);
  announce();
  S.limits = { maxText: posInt(msg.max_text), rate: posInt(msg.rate_limit), burst: posInt(msg.burst) };
  renderCounter();
  setStatus('connected', ['connected as ', idNode(S.me)]);
  if (first) {
    showChat();
    // The lobby's history goes above this line.
    rooms.get(LOBBY).historyBefore = note(['You joined as ', idNode(S.me), '.'], '', rooms.get(LOBBY));
  } else if (lostNoted) {
    note('Reconnected.', '', 'all');
  }
  lostNoted = false;
  const lobby = rooms.get(LOBBY);
  lobby.joined = true;
  lobby.setUsers(msg.users, msg.total, msg.away);
  // A new connection is in the lobby only: enter the other rooms again (a resumed one too:
  // the server restores its rooms but sends them nothing until asked), and send again what
  // the user asked for just before the drop. The lobby is asked for too: for its history
  // on the first welcome, for what we missed after a reconnect (after a resume, it is quiet
  // like the other rooms until then).
  for (const room of rooms.list()) {
    if (asked.get(room.name) !== 'user') asked.set(room.name, 'rejoin');
  }
  for (const name of asked.keys()) {
    const room = rooms.get(name);
    S.ws.send(JSON.stringify(room ? room.joinFrame() : { join: name, last: HISTORY }));
  }
  if (resumed) {
    for (const name of leaving) S.ws.send(JSON.stringify({ leave: name }));
  } else {
    leaving.clear(); // a new session is in none of them
  }
  renderUsers();
  renderRooms();
}

