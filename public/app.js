// chatloop page: one WebSocket to /ws?id=ID, JSON lines in, one JSON object per frame out.
// Every piece of text reaches the page through textContent, never innerHTML.
'use strict';

(function () {
  const ID_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const BACKOFF_MIN = 500; // first retry after about 0.5 s
  const BACKOFF_MAX = 10000; // never more than 10 s apart
  const STABLE_MS = 10000; // a connection that lived this long resets the back-off
  const CONNECT_TIMEOUT = 10000; // no welcome by then: drop and retry
  const MAX_FRAME = 4096; // an older server's --max-message (one whose welcome has no max_text)
  const MAX_LINES = 1000; // log lines kept
  const STORE_KEY = 'chatloop.id';
  const NEAR_LIMIT = 0.9; // the length counter stands out from this share of max_text on
  const HISTORY = 50; // lines of a room's history shown on entering it (the lobby on joining)

  // The server trims a text with Rust's str::trim (Unicode White_Space) before it checks the
  // length; JS's trim differs (it strips U+FEFF, keeps U+0085), so count what the server counts.
  const SPACE = '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
  const TRIM_RE = new RegExp('^' + SPACE + '+|' + SPACE + '+$', 'g');
  const serverTrim = (s) => s.replace(TRIM_RE, '');

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'),
    statusText: $('status-text'),
    leave: $('leave'),
    login: $('login'),
    loginForm: $('login-form'),
    id: $('id'),
    join: $('join'),
    loginError: $('login-error'),
    chat: $('chat'),
    log: $('log'),
    jump: $('jump'),
    users: $('users'),
    count: $('count'),
    composer: $('composer'),
    to: $('to'),
    message: $('message'),
    counter: $('counter'),
    send: $('send'),
    sendError: $('send-error'),
    rooms: $('rooms'),
    roomForm: $('room-form'),
    roomName: $('room-name'),
    roomError: $('room-error'),
    directory: $('room-directory'),
  };

  // ---- state ---------------------------------------------------------------------------

  let me = null; // our id as the server spelled it back (or as typed before the welcome)
  let ws = null; // the current socket, or null
  let joined = false; // a welcome arrived for this id at least once: later drops reconnect
  let online = false; // the current socket got its welcome
  let attempt = 0; // reconnects since the last stable connection
  let retryTimer = 0;
  let connectTimer = 0;
  let errorTimer = 0;
  let openedAt = 0;
  let lostNoted = false; // "connection lost" already logged for this outage
  const unread = new Map(); // lowercased id -> private messages from them not yet read
  let privates = 0; // private lines so far: each one's copies in every room's log share a number
  // Messages sent, by their client message id (cid): every line the server sends us about a
  // request carries the request's cid (our own copy, an error about it), so a sent line shows
  // at once as pending and is settled by the line that names it. Entries are 'pending' (no
  // answer yet), 'failed' (an error named it before any copy came), 'lost' (the connection
  // dropped before an answer: it may or may not have arrived) or 'sent' (our copy came; kept
  // a while, since a cluster error or an undelivered may still name it later).
  const CID_PREFIX = Math.random().toString(36).slice(2, 10) || 'tab';
  let cids = 0;
  const outbox = new Map(); // cid -> { cid, text, to, room, state, lines: [elements] }
  const KEEP_SENT = 200; // settled entries kept for errors that come later
  // What the welcome said about the server's limits; 0 = not said (an older server).
  let limits = { maxText: 0, rate: 0, burst: 0 };
  // The latest welcome's resume token. A connection that ends without our close frame (the
  // network went away, the server closed it) is *lost*, not left: the server holds our id,
  // our rooms and our private messages for its --resume-grace for whoever presents this, and
  // a reconnect with it is the same session again, the old connection replaced if the server
  // still thinks it is open. Each token works once; every welcome brings a new one.
  let resumeToken = '';
  // Private messages to us are numbered (pseq); a resume says the last one we have, and the
  // server sends what came after it. Numbers seen, to show each once whatever is resent.
  let lastPseq = 0;
  const seenPseq = new Set();
  // Rooms closed here while offline: a resumed session is still in them on the server, so
  // the leave goes once we are back. A not_in_room for one of them is no news.
  const leaving = new Set();

  const lower = (s) => String(s).toLowerCase();
  const isMe = (id) => me !== null && lower(id) === lower(me);
  const posInt = (v) => (Number.isSafeInteger(v) && v > 0 ? v : 0);
  // max_text counts Unicode scalar values: a string's iterator walks code points, where
  // .length would count an emoji twice.
  function textLength(text) {
    let n = 0;
    for (const _ of serverTrim(text)) n += 1;
    return n;
  }

  // Ids are shown in a monospace face wherever they appear, so that look-alikes (aIice and
  // alice, b0b and bob) stay distinct. Texts that mention ids are lists of strings and these.
  function idNode(id) {
    const span = document.createElement('span');
    span.className = 'id';
    span.textContent = id;
    return span;
  }
  const parts = (p) => (Array.isArray(p) ? p : [p]);

  // ---- rooms: state --------------------------------------------------------------------
  // The rooms this page is in, as plain state; the drawing is further down. (It would read
  // well as a file of its own, but the server embeds public/ file by file in src/assets.rs,
  // so a new file needs a server change too.)

  const LOBBY = 'lobby'; // every connection starts there; the welcome's users are its members
  const ROOM_RE = /^[a-z0-9_.-]{1,32}$/;

  // A name as the server will store it, or '' when it is not one. Names are case-insensitive
  // and shown in lowercase, so "Dev" is "dev"; "#dev" is how people write channel names
  // elsewhere, so it is "dev" too rather than an error.
  function roomName(input) {
    const name = lower(String(input).trim().replace(/^#/, ''));
    return ROOM_RE.test(name) ? name : '';
  }

  class Room {
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
      if (me !== null) this.users.set(lower(me), me);
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
  class RoomSet {
    constructor() {
      this.rooms = new Map([[LOBBY, new Room(LOBBY)]]); // name -> Room
      this.shown = LOBBY;
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

  let rooms = new RoomSet();
  // Joins sent and not yet answered: name -> 'user' (typed: show it once joined, errors go next
  // to the room field) or 'rejoin' (after a reconnect: quietly, and an error drops the room).
  const asked = new Map();
  let directoryAt = 0; // when the directory was last asked for (it costs a rate-limit token)

  // ---- other tabs of this browser ------------------------------------------------------
  // localStorage is shared by every tab, so every new tab would pre-fill the last id and the
  // second one to join would collide with the first. Tabs tell each other which id they use
  // over a BroadcastChannel; a new tab pre-fills only an id that no open tab is using.
  // The server still decides who gets an id: this only picks the pre-fill and the wording.

  const TAB = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const otherTabs = new Map(); // tab token -> the id that tab uses
  let prefilled = ''; // what we put in the id field ourselves, while the user has not changed it
  let channel = null;
  try {
    channel = new BroadcastChannel('chatloop');
  } catch (e) {
    // no BroadcastChannel: every tab pre-fills the last id, as before
  }

  function announce() {
    if (channel) channel.postMessage({ tab: TAB, id: me });
  }

  const inOtherTab = (id) => [...otherTabs.values()].some((v) => lower(v) === lower(id));

  if (channel) {
    channel.onmessage = (ev) => {
      const m = ev.data;
      if (!m || typeof m.tab !== 'string' || m.tab === TAB) return;
      if (m.ask) {
        if (me !== null) announce();
        return;
      }
      if (typeof m.id === 'string') otherTabs.set(m.tab, m.id);
      else otherTabs.delete(m.tab);
      // Another tab took the id we pre-filled: take it back before the user presses Join.
      if (prefilled && el.id.value === prefilled && inOtherTab(prefilled)) {
        el.id.value = '';
        prefilled = '';
      }
    };
  }

  function remembered() {
    // This tab's own id first (it survives a reload), then the last id any tab joined with.
    const ids = [];
    try {
      ids.push(sessionStorage.getItem(STORE_KEY), localStorage.getItem(STORE_KEY));
    } catch (e) {
      // no storage: nothing remembered
    }
    return ids.find((id) => id && ID_RE.test(id) && !inOtherTab(id)) || '';
  }

  function remember(id) {
    try {
      sessionStorage.setItem(STORE_KEY, id);
      localStorage.setItem(STORE_KEY, id);
    } catch (e) {
      // storage may be off; the id is only a convenience
    }
  }

  // ---- status line ---------------------------------------------------------------------

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.statusText.replaceChildren(...parts(text));
    // While disconnected the Online list is only what we last knew: show it as such.
    el.chat.classList.toggle('is-offline', state !== 'connected');
  }

  // ---- connection ----------------------------------------------------------------------

  function wsUrl(id, resume) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return proto + '//' + location.host + '/ws?id=' + encodeURIComponent(id) +
      (resume ? '&resume=' + encodeURIComponent(resume) + '&pseq=' + lastPseq : '');
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    if (me === null) return;
    let sock;
    try {
      sock = new WebSocket(wsUrl(me, joined ? resumeToken : ''));
    } catch (e) {
      onDrop(null, 0, String(e && e.message ? e.message : e));
      return;
    }
    ws = sock;
    online = false;
    openedAt = 0;
    clearTimeout(connectTimer);
    connectTimer = setTimeout(() => {
      if (ws === sock && !online) sock.close(); // hung handshake: onclose schedules a retry
    }, CONNECT_TIMEOUT);
    sock.onmessage = (ev) => {
      if (ws !== sock || typeof ev.data !== 'string') return;
      for (const line of ev.data.split('\n')) {
        if (!line) continue;
        let msg;
        try {
          msg = JSON.parse(line);
        } catch (e) {
          continue;
        }
        if (msg && typeof msg === 'object') handle(msg);
      }
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      onDrop(sock, ev.code, ev.reason);
    };
  }

  function onDrop(sock, code, reason) {
    clearTimeout(connectTimer);
    const lived = openedAt ? Date.now() - openedAt : 0;
    ws = null;
    online = false;
    // What was sent and not answered may or may not have reached the server.
    for (const entry of outbox.values()) {
      if (entry.state === 'pending') fail(entry, 'lost');
    }
    // Memberships belong to a connection: the next welcome puts us in the lobby only (a
    // resumed one in all our rooms, but quiet until each is asked for again).
    for (const room of rooms.list()) {
      room.joined = false;
      room.synced = false;
    }
    if (me === null) return; // we left on purpose

    if (code === 4400) {
      // The server refused the id itself: retrying cannot help.
      stop();
      showLogin('That id is not allowed: use 1 to 32 letters, digits, _ - or .');
      return;
    }
    if (!joined) {
      // First join: tell the user and let them pick again.
      let why;
      if (code === 4409) {
        why = inOtherTab(me)
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
      ? ['reconnecting: the server still holds “', idNode(me), '”, retrying in ' + secs + ' s']
      : navigator.onLine === false ? 'offline: reconnecting once the network is back…'
        : 'reconnecting in ' + secs + ' s…');
    retryTimer = setTimeout(() => {
      setStatus('reconnecting', 'reconnecting…');
      connect();
    }, delay);
  }

  function retryNow() {
    // The network came back or the tab woke up: no need to wait out the back-off.
    if (me !== null && joined && ws === null && retryTimer) {
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
    const sock = ws;
    if (!sock || !online || me === null) return;
    sock.onmessage = null;
    sock.onclose = null;
    onDrop(sock, 0, why);
  }

  // The browser says the network went away: the socket may linger for a minute before
  // anything notices (the server's idle timeout; TCP keeps a dead peer longer), and what it
  // still delivers may be late. Retries meanwhile fail fast; `online` retries at once.
  // (navigator.onLine does not gate the retries: some machines say offline with a working
  // loopback, and a page served from 127.0.0.1 would never come back.)
  function onOffline() {
    abandon('the network went away');
  }

  // The network is back (or changed: a phone moving from Wi-Fi to mobile data). A socket
  // still open may be one over the old network that nothing will ever reach again: take the
  // session over on a new one rather than wait to find out.
  function onOnline() {
    if (ws && !online) {
      // A retry begun while offline: it will fail; the next one goes without back-off.
      attempt = 0;
      return;
    }
    abandon('the network changed');
    retryNow();
  }

  function stop() {
    clearTimeout(retryTimer);
    clearTimeout(connectTimer);
    retryTimer = 0;
    const sock = ws;
    ws = null;
    online = false;
    if (sock) sock.close(1000, 'bye');
    me = null;
    joined = false;
    resumeToken = '';
    lastPseq = 0;
    seenPseq.clear();
    leaving.clear();
    attempt = 0;
    outbox.clear();
    announce(); // this tab's id is free again
    setStatus('offline', 'offline');
  }

  // ---- server lines --------------------------------------------------------------------

  // The room a line is about. A line without one is the lobby's: lobby lines carry
  // "room":"lobby", and a server from before rooms sends none.
  const roomOf = (msg) => (typeof msg.room === 'string' ? lower(msg.room) : LOBBY);

  function handle(msg) {
    switch (msg.type) {
      case 'welcome':
        return onWelcome(msg);
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
      default:
        return; // newer server: ignore what we do not know
    }
  }

  function onWelcome(msg) {
    clearTimeout(connectTimer);
    online = true;
    openedAt = Date.now();
    const first = !joined;
    joined = true;
    if (typeof msg.id === 'string') me = msg.id;
    resumeToken = typeof msg.resume === 'string' ? msg.resume : '';
    // The same session again, or a new one (first join, or the server no longer held us):
    // a new one numbers its private messages from 1 again.
    const resumed = msg.resumed === true;
    if (!resumed) {
      lastPseq = 0;
      seenPseq.clear();
    }
    remember(me);
    announce();
    limits = { maxText: posInt(msg.max_text), rate: posInt(msg.rate_limit), burst: posInt(msg.burst) };
    renderCounter();
    setStatus('connected', ['connected as ', idNode(me)]);
    if (first) {
      showChat();
      // The lobby's history goes above this line.
      rooms.get(LOBBY).historyBefore = note(['You joined as ', idNode(me), '.'], '', rooms.get(LOBBY));
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
      ws.send(JSON.stringify(room ? room.joinFrame() : { join: name, last: HISTORY }));
    }
    if (resumed) {
      for (const name of leaving) ws.send(JSON.stringify({ leave: name }));
    } else {
      leaving.clear(); // a new session is in none of them
    }
    renderUsers();
    renderRooms();
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
      // line and the loss is gone: a gap, whether or not the server says so (it sends none
      // when the new history is whole from its first line).
      if (room.epoch) gapNote(room);
      room.seqs.clear();
      room.seq = 0;
      for (const line of roomLines(room, '.msg[data-seq]')) delete line.dataset.seq;
      room.epoch = epoch;
    }
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

  // Some of what a re-join asked for is gone (trimmed, or the server lost the room's history
  // and its epoch changed): said quietly where the missing lines would be. What is still
  // kept follows.
  function onGap(msg) {
    const room = rooms.get(roomOf(msg));
    if (!room) return;
    const next = posInt(msg.seq);
    if (next > room.seq + 1) room.seq = next - 1; // nothing before `next` will come
    gapNote(room);
  }

  function gapNote(room) {
    const box = room.name === rooms.shown ? el.log : room.lines;
    if (box.lastElementChild && box.lastElementChild.classList.contains('gap')) return; // said just now
    note('Some earlier messages are no longer available.', 'gap', room);
  }

  function onLeft(msg) {
    // The page drops a room from its list when the user closes it, before this answer.
    if (typeof msg.room !== 'string' || lower(msg.room) === LOBBY) return;
    leaving.delete(lower(msg.room));
    closeRoom(lower(msg.room));
  }

  function onDirectory(msg) {
    // Suggestions for the room field: the rooms there are, largest first as the server
    // sends them, less the ones we are in (those are in the list already).
    const frag = document.createDocumentFragment();
    for (const r of Array.isArray(msg.rooms) ? msg.rooms : []) {
      if (!r || typeof r.room !== 'string' || rooms.get(lower(r.room))) continue;
      const o = document.createElement('option');
      o.value = lower(r.room);
      const n = posInt(r.users);
      o.label = n + (n === 1 ? ' person' : ' people');
      frag.append(o);
    }
    el.directory.replaceChildren(frag);
  }

  function onMessage(msg) {
    if (typeof msg.from !== 'string' || typeof msg.text !== 'string') return;
    const priv = typeof msg.to === 'string';
    if (priv) {
      // Ours come back without a pseq; theirs may come again after a resume.
      const pseq = posInt(msg.pseq);
      if (pseq) {
        if (seenPseq.has(pseq)) return;
        seenPseq.add(pseq);
        if (pseq > lastPseq) lastPseq = pseq;
        if (seenPseq.size > 2 * MAX_LINES) {
          for (const n of seenPseq) if (n < lastPseq - MAX_LINES) seenPseq.delete(n);
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
    if (!isMe(msg.from) && lower(msg.from) !== lower(el.to.value) && !copies.some(seen)) {
      for (const line of copies) line.dataset.unread = '1';
      const k = lower(msg.from);
      unread.set(k, (unread.get(k) || 0) + 1);
      renderUsers();
    }
    return copies;
  }

  function seen(line) {
    if (line.parentNode !== el.log) return false; // in a room not on screen
    if (document.visibilityState !== 'visible' || el.chat.hidden) return false;
    // At least half of the line inside the log's view (or half the view, for a tall line).
    const r = line.getBoundingClientRect();
    const v = el.log.getBoundingClientRect();
    const h = Math.min(r.bottom, v.bottom) - Math.max(r.top, v.top);
    return h > 0 && (h >= r.height / 2 || h >= v.height / 2);
  }

  // One room's lines matching `selector`, wherever they are now.
  function roomLines(room, selector) {
    return [...(room.name === rooms.shown ? el.log : room.lines).querySelectorAll(selector)];
  }

  // Every room's lines matching `selector`: the shown room's in #log, the others' aside.
  function allLines(selector) {
    const found = [...el.log.querySelectorAll(selector)];
    for (const room of rooms.list()) {
      if (room.name !== rooms.shown) found.push(...room.lines.querySelectorAll(selector));
    }
    return found;
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
  function readVisible() {
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

  const ERRORS = {
    empty: 'Type something first.',
    bad_message: 'The server did not understand that message.',
  };

  function tooLong(length) {
    if (!limits.maxText) return 'That message is too long. It was not sent.';
    return 'That message is too long' + (length ? ' (' + length + ' characters)' : '') +
      ': the limit is ' + limits.maxText + ' characters. It was not sent.';
  }

  function rateLimited() {
    if (!limits.rate) return 'Too many messages: slow down. That one was not sent.';
    return 'Too many messages: the limit is ' + limits.rate + ' a second' +
      (limits.burst ? ' (bursts of ' + limits.burst + ')' : '') + '. Slow down: that one was not sent.';
  }

  // bad_room and too_many_rooms answer a join (ours always sends valid names to rooms we are
  // in, so a text does not get them); they go next to the room field, and leave the outbox
  // alone, which holds texts.
  function onRoomError(msg) {
    const name = lower(msg.room);
    const how = asked.get(name);
    asked.delete(name);
    const why = msg.code === 'bad_room'
      ? ['The server does not take “', name, '” as a room name: use 1 to 32 of a-z 0-9 _ - or .']
      : ['Could not enter ', roomNode(name), ': too many rooms (the server limits the rooms one person is in, and all its rooms). Close one first, or try later.'];
    if (how === 'rejoin') {
      // A room we were in before the reconnect, that we cannot have back.
      closeRoom(name);
      note(['Could not enter ', roomNode(name), ' again after reconnecting: ',
        msg.code === 'bad_room' ? 'the server no longer takes that name.' : 'too many rooms.'], '', rooms.get(LOBBY));
      return;
    }
    showRoomError(why);
  }

  // Errors about a message: with its cid, the line it names fails; an older server (or a
  // line the server sends without one) names none, and then the oldest pending message it
  // can be about is taken, since the server answers a connection's messages in order.
  const ABOUT_A_MESSAGE = new Set(['too_long', 'empty', 'bad_message', 'not_in_room', 'unknown_recipient',
    'recipient_busy', 'rate_limited', 'cluster_unavailable', 'cluster_unconfirmed', 'undelivered']);

  function onError(msg) {
    if (msg.code === 'bad_id' || msg.code === 'id_taken') return; // the close code says it
    if ((msg.code === 'bad_room' || msg.code === 'too_many_rooms') && typeof msg.room === 'string') {
      return onRoomError(msg);
    }
    const entry = ABOUT_A_MESSAGE.has(msg.code) ? errorEntry(msg) : null;
    const to = typeof msg.to === 'string' ? idNode(msg.to) : 'That user';
    let text;
    if (msg.code === 'unknown_recipient') {
      text = [to, ' is not online. The message was not sent.'];
    } else if (msg.code === 'recipient_busy') {
      // The recipient's queue is full of private messages right now; later may work.
      text = [to, ' cannot take more private messages right now. Yours was not delivered: try again in a moment.'];
    } else if (msg.code === 'undelivered') {
      // Sent (it showed in our log) to someone whose connection was lost: they did not come
      // back in time, or too much was waiting for them. The server names the line by its cid
      // (each of several gets its own error), so exactly those lines turn failed, with Retry.
      text = [to, ' was away and did not come back in time, or too much was waiting for them: ' +
        (entry ? 'this private message was not delivered.' : 'a private message of yours was not delivered.')];
    } else if (msg.code === 'not_in_room') {
      const name = typeof msg.room === 'string' ? lower(msg.room) : '';
      // The answer to a leave sent after a resume for a room the server had not kept.
      if (!entry && leaving.delete(name)) return;
      text = ['You are not in ', roomNode(name), ' (any more): the message was not sent.'];
      rejoin(name);
    } else if (msg.code === 'too_long') {
      text = tooLong(entry ? textLength(entry.text) : 0);
    } else if (msg.code === 'rate_limited') {
      text = rateLimited();
    } else if (msg.code === 'cluster_unconfirmed') {
      // Written to the other servers' link, never confirmed: nobody can say.
      text = 'The other chat servers did not confirm this message: it may or may not have arrived.';
    } else if (msg.code === 'cluster_unavailable') {
      // A cluster node lost touch with the others: a private message did not go out, a
      // room message reached only the people on this server.
      text = typeof msg.to === 'string'
        ? ['The server cannot reach ', to, ' right now. The message was not sent.']
        : 'The other chat servers cannot be reached right now: only people on this server got that.';
    } else {
      text = ERRORS[msg.code] || (typeof msg.message === 'string' ? msg.message : 'Error: ' + msg.code);
    }
    showSendError(text);
    if (!entry) return;
    fail(entry, msg.code, text);
    // A text over the limit fails again however often it is sent: it goes back to the field
    // (if that is free) to be shortened. Every other failed line has its Retry button.
    if (msg.code === 'too_long' && !el.message.value) {
      el.message.value = entry.text;
      renderCounter();
    }
  }

  // The sent message an error is about, or null.
  function errorEntry(msg) {
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
  function ownEntry(msg) {
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
  function lostEntry(room, text) {
    for (const entry of outbox.values()) {
      if (entry.state === 'lost' && !entry.to && entry.room === room && serverTrim(entry.text) === text) return entry;
    }
    return null;
  }

  // The server's room name was refused with not_in_room while the page shows it: the
  // server no longer has us there (or never had, after a reconnect). Enter it again quietly,
  // so that a Retry works once it is answered.
  function rejoin(name) {
    const room = rooms.get(name);
    if (!room || leaving.has(name) || asked.has(name) || !ws || !online) return;
    room.joined = false;
    asked.set(name, 'rejoin');
    ws.send(JSON.stringify(room.joinFrame()));
  }

  // ---- the log -------------------------------------------------------------------------
  // #log holds the shown room's lines; every other room keeps its own in room.lines, and a
  // switch moves them in and out, so that the log (and everything that reads it) is always
  // just the room on screen.

  function atBottom() {
    // gorilla/websocket's chat example: within a pixel of the bottom counts as the bottom.
    return el.log.scrollTop > el.log.scrollHeight - el.log.clientHeight - 1;
  }

  // Adds `node` to `room`'s log, at the end or before `before` (a line of that log). The
  // end is above our messages still pending, which stay at the bottom until answered (the
  // server puts them after whatever reaches us meanwhile); `last` puts a pending one there.
  function append(node, room, before = null, last = false) {
    const box = room.name === rooms.shown ? el.log : room.lines;
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

  function timeOf(ts) {
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
    const box = room.name === rooms.shown ? el.log : room.lines;
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

  function addMessage(msg, priv, room) {
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
    if (priv) {
      const tag = document.createElement('span');
      tag.className = 'tag';
      tag.textContent = 'private';
      who.append(tag, idNode(msg.from), ' → ', idNode(msg.to));
    } else {
      who.append(idNode(msg.from));
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
  function note(text, kind, room) {
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

  // ---- rooms: on screen ----------------------------------------------------------------

  // A room's name as shown: "#dev", in the ids' face (a name is as easy to misread as an id).
  function roomNode(name) {
    const span = document.createElement('span');
    span.className = 'room-name';
    span.textContent = '#' + name;
    return span;
  }

  // Where the reader is in the shown room, kept with the room while another is shown.
  function saveView(room) {
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

  function showView(room) {
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

  function switchTo(name) {
    if (name === rooms.shown || !rooms.get(name)) return;
    saveView(rooms.current());
    rooms.shown = name;
    showView(rooms.current());
    readVisible();
    renderUsers();
    renderRooms();
  }

  // The user closed a room (or the server said we left it): gone from the list, its log
  // with it. The lobby stays (see RoomSet).
  function closeRoom(name) {
    if (name === LOBBY || !rooms.get(name)) return;
    if (rooms.shown === name) switchTo(LOBBY);
    // Its lines go with it; private lines in it have copies in the other rooms' logs.
    rooms.remove(name);
    asked.delete(name);
    renderUsers();
    renderRooms();
  }

  function renderRooms() {
    const frag = document.createDocumentFragment();
    for (const room of rooms.list()) {
      const li = document.createElement('li');
      li.className = 'room-item';
      li.dataset.room = room.name;
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'room-link';
      b.dataset.room = room.name;
      if (room.name === rooms.shown) b.setAttribute('aria-current', 'true');
      const label = document.createElement('span');
      label.className = 'name';
      label.textContent = '#' + room.name;
      b.append(label);
      if (room.unread > 0) {
        const badge = document.createElement('span');
        badge.className = 'unread';
        badge.textContent = String(room.unread);
        badge.setAttribute('aria-hidden', 'true');
        b.append(badge);
        b.setAttribute('aria-label', '#' + room.name + ', ' + room.unread + ' unread');
      }
      li.append(b);
      if (room.name !== LOBBY) {
        // Not "Leave dev": it would contain the top bar's "Leave", and a lookup by that name
        // must find one button.
        const x = document.createElement('button');
        x.type = 'button';
        x.className = 'room-close';
        x.dataset.room = room.name;
        x.setAttribute('aria-label', 'Close ' + room.name);
        x.title = 'Leave #' + room.name;
        x.textContent = '×';
        li.append(x);
      }
      frag.append(li);
    }
    el.rooms.replaceChildren(frag);
  }

  function showRoomError(text) {
    el.roomError.replaceChildren(...parts(text));
  }

  function enterRoom() {
    const typed = el.roomName.value;
    const name = roomName(typed);
    if (!name) {
      showRoomError(typed.trim()
        ? 'A room name is 1 to 32 of a-z 0-9 _ - or . (no spaces).'
        : 'Type a room name first.');
      return;
    }
    el.roomError.textContent = '';
    if (rooms.get(name)) {
      // Already in it: entering it is showing it.
      el.roomName.value = '';
      switchTo(name);
      el.message.focus();
      return;
    }
    if (!ws || !online) {
      showRoomError('Not connected: rooms can be entered once the connection is back.');
      return;
    }
    // The room shows up once the server answers joined (or an error says why not).
    asked.set(name, 'user');
    ws.send(JSON.stringify({ join: name, last: HISTORY }));
  }

  function leaveRoom(name) {
    // Gone from the page at once; the server's left, when it comes, finds nothing to do.
    // Offline, the server may still hold us in it (the session is resumed on reconnect):
    // the leave goes then.
    if (ws && online) ws.send(JSON.stringify({ leave: name }));
    else leaving.add(name);
    closeRoom(name);
    el.message.focus();
  }

  function askDirectory() {
    // Each ask costs a rate-limit token, like a message: not more often than every 2 s.
    if (!ws || !online || Date.now() - directoryAt < 2000) return;
    directoryAt = Date.now();
    ws.send(JSON.stringify({ rooms: true }));
  }

  // ---- users, recipient picker, unread counts ------------------------------------------

  function renderUsers() {
    const room = rooms.current();
    const byName = (a, b) => {
      if (isMe(a) !== isMe(b)) return isMe(a) ? -1 : 1;
      return lower(a) < lower(b) ? -1 : lower(a) > lower(b) ? 1 : 0;
    };
    const ids = [...room.users.values()].sort(byName);
    const frag = document.createDocumentFragment();
    for (const id of ids) {
      const li = document.createElement('li');
      li.dataset.id = id;
      if (isMe(id)) {
        li.className = 'user me';
        const name = document.createElement('span');
        name.className = 'name';
        name.textContent = id;
        const you = document.createElement('span');
        you.className = 'you';
        you.textContent = '(you)';
        li.append(name, you);
      } else {
        const n = unread.get(lower(id)) || 0;
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'user';
        b.dataset.id = id;
        if (lower(el.to.value) === lower(id)) b.setAttribute('aria-pressed', 'true');
        const name = document.createElement('span');
        name.className = 'name';
        name.textContent = id;
        b.append(name);
        if (n > 0) {
          const badge = document.createElement('span');
          badge.className = 'unread';
          badge.textContent = String(n);
          badge.setAttribute('aria-hidden', 'true');
          b.append(badge);
          b.setAttribute('aria-label', id + ', ' + n + ' unread');
        }
        b.title = 'Send a private message to ' + id;
        if (room.away.has(lower(id))) {
          // Lost their connection; a private message is kept for them until they come back.
          b.classList.add('away');
          b.title += ' (away: kept until they reconnect)';
        }
        li.append(b);
      }
      frag.append(li);
    }
    el.users.replaceChildren(frag);
    const more = room.total - room.users.size;
    el.count.textContent = more > 0 ? room.total + ' (' + more + ' not listed)' : String(room.total);
    // Private lines not yet read, from anyone (also people not in this room, or gone).
    let unreadTotal = 0;
    for (const n of unread.values()) unreadTotal += n;
    document.title = (unreadTotal > 0 ? '(' + unreadTotal + ') ' : '') + 'chatloop';
    renderPicker([...rooms.everyone().values()].sort(byName));
  }

  function renderPicker(ids) {
    const current = el.to.value;
    const frag = document.createDocumentFragment();
    const room = document.createElement('option');
    room.value = '';
    // Not "Room": the room controls' names ("Rooms", "Room name", "Enter room") contain it.
    room.textContent = 'This room';
    frag.append(room);
    let kept = current === '';
    for (const id of ids) {
      if (isMe(id)) continue;
      const o = document.createElement('option');
      o.value = id;
      o.textContent = id;
      if (lower(id) === lower(current)) kept = true;
      frag.append(o);
    }
    if (!kept) {
      // The chosen person left. Keep them chosen rather than falling back to the room:
      // a private line must never go to everyone by surprise.
      const o = document.createElement('option');
      o.value = current;
      o.textContent = current + ' (offline)';
      frag.append(o);
    }
    el.to.replaceChildren(frag);
    const match = [...el.to.options].find((o) => lower(o.value) === lower(current));
    el.to.value = match ? match.value : '';
    el.composer.classList.toggle('is-private', el.to.value !== '');
  }

  function pick(id) {
    el.to.value = id;
    if (el.to.value !== id) el.to.value = '';
    if (id) {
      // Picking someone opens the conversation with them: all of theirs counts as read.
      unread.delete(lower(id));
      for (const line of allLines('.msg.private[data-unread]')) {
        if (lower(line.dataset.from) === lower(id)) delete line.dataset.unread;
      }
    }
    renderUsers();
    el.message.focus();
  }

  // ---- sending -------------------------------------------------------------------------

  function showSendError(text) {
    clearTimeout(errorTimer);
    el.sendError.replaceChildren(...parts(text));
    errorTimer = setTimeout(() => {
      el.sendError.textContent = '';
    }, 8000);
  }

  // "12 / 2000" beside the input once the server said its limit: quiet until the text nears
  // the limit, red past it. An older server does not say, so there is nothing to count against.
  function renderCounter() {
    const n = textLength(el.message.value);
    const max = limits.maxText;
    el.counter.hidden = !max || n === 0;
    if (el.counter.hidden) return;
    el.counter.textContent = n + ' / ' + max;
    el.counter.dataset.level = n > max ? 'over' : n >= max * NEAR_LIMIT ? 'near' : '';
  }

  function send() {
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
    if (!ws || !online || ws.readyState !== WebSocket.OPEN) {
      // Nothing is queued: say so, and leave the text in the field to send once connected.
      showSendError('Not connected: this message cannot be sent until the connection is back. It stays in the field.');
      return false;
    }
    const length = textLength(text);
    if (limits.maxText && length > limits.maxText) {
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
    if (!limits.maxText && bytes > MAX_FRAME) {
      showSendError('That message is too long to send: ' + bytes + ' bytes once encoded, and the server takes ' +
        MAX_FRAME + '. It was not sent.');
      return false;
    }
    ws.send(frame);
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
      who.append(tag, idNode(me), ' → ', idNode(entry.to));
    } else {
      who.append(idNode(me));
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
  function settle(entry, lines) {
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
  function fail(entry, code, why) {
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
  function retry(cid) {
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

  // ---- screens -------------------------------------------------------------------------

  function showLogin(error) {
    el.chat.hidden = true;
    el.leave.hidden = true;
    el.login.hidden = false;
    el.loginError.textContent = error || '';
    el.join.disabled = false;
    el.id.focus();
    el.id.select();
  }

  function showChat() {
    el.login.hidden = true;
    el.chat.hidden = false;
    el.leave.hidden = false;
    el.loginError.textContent = '';
    el.message.focus();
  }

  function resetChat() {
    rooms = new RoomSet();
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
    limits = { maxText: 0, rate: 0, burst: 0 };
    renderCounter();
    el.sendError.textContent = '';
    el.jump.hidden = true;
    lostNoted = false;
    document.title = 'chatloop';
  }

  // ---- wiring --------------------------------------------------------------------------

  el.loginForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = el.id.value.trim();
    if (!ID_RE.test(id)) {
      el.loginError.textContent = id
        ? 'An id is 1 to 32 letters, digits, _ - or . (no spaces).'
        : 'Type an id first.';
      el.id.focus();
      return;
    }
    stop();
    resetChat();
    me = id;
    announce();
    joined = false;
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

  el.id.addEventListener('input', () => {
    prefilled = '';
  });

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
    const id = me;
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

  // Tell the other tabs this one's id is free when it closes (or goes into the back-forward
  // cache), and that it is taken again if it comes back.
  window.addEventListener('pagehide', () => {
    if (channel) channel.postMessage({ tab: TAB, id: null });
  });
  window.addEventListener('pageshow', (ev) => {
    if (ev.persisted) announce();
  });

  function prefill() {
    if (me !== null || el.id.value) return; // joining already, or the user typed
    prefilled = remembered();
    el.id.value = prefilled;
  }

  setStatus('offline', 'offline');
  el.id.focus();
  if (channel) {
    // Ask which ids the open tabs use; they answer within milliseconds. A late answer still
    // takes the pre-fill back (onmessage), as long as the user has not touched it.
    channel.postMessage({ tab: TAB, ask: true });
    setTimeout(prefill, 150);
  } else {
    prefill();
  }
})();
