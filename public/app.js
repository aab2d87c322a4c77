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
  let total = 0; // the server's count of users (the list may be capped)
  const users = new Map(); // lowercased id -> id as spelled
  const unread = new Map(); // lowercased id -> private messages from them not yet read
  let pending = []; // texts sent and not yet answered, oldest first
  // What the welcome said about the server's limits; 0 = not said (an older server).
  let limits = { maxText: 0, rate: 0, burst: 0 };
  // The latest welcome's resume token: if the server closes us (slow consumer, idle timeout),
  // it holds our id for a few seconds for whoever presents this, so a reconnect gets it back
  // at once instead of meeting id_taken until the hold ends. Unknown to the server: ignored.
  let resumeToken = '';

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
      (resume ? '&resume=' + encodeURIComponent(resume) : '');
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
    pending = [];
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
      note('Connection lost' + describeClose(code, reason) + '. Reconnecting…');
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
    attempt = 0;
    pending = [];
    announce(); // this tab's id is free again
    setStatus('offline', 'offline');
  }

  // ---- server lines --------------------------------------------------------------------

  function handle(msg) {
    switch (msg.type) {
      case 'welcome':
        return onWelcome(msg);
      case 'users':
        // Presence events resume after the crowd went back under --presence-limit: this is
        // the whole truth again, in the welcome's shape.
        return setUsers(msg.users, msg.total);
      case 'join':
        if (typeof msg.id === 'string') {
          if (!users.has(lower(msg.id))) {
            total += 1;
            note([idNode(msg.id), ' joined'], 'presence');
          }
          users.set(lower(msg.id), msg.id);
          renderUsers();
        }
        return;
      case 'leave':
        if (typeof msg.id === 'string') {
          if (users.delete(lower(msg.id))) note([idNode(msg.id), ' left'], 'presence');
          total = Math.max(users.size, total - 1);
          renderUsers();
        }
        return;
      case 'message':
        return onMessage(msg);
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
    remember(me);
    announce();
    limits = { maxText: posInt(msg.max_text), rate: posInt(msg.rate_limit), burst: posInt(msg.burst) };
    renderCounter();
    setStatus('connected', ['connected as ', idNode(me)]);
    if (first) {
      showChat();
      note(['You joined as ', idNode(me), '.']);
    } else if (lostNoted) {
      note('Reconnected.');
    }
    lostNoted = false;
    setUsers(msg.users, msg.total);
  }

  function setUsers(list, count) {
    users.clear();
    for (const u of Array.isArray(list) ? list : []) {
      if (typeof u === 'string') users.set(lower(u), u);
    }
    if (me !== null) users.set(lower(me), me);
    total = Math.max(users.size, Number(count) || 0);
    renderUsers();
  }

  function onMessage(msg) {
    if (typeof msg.from !== 'string' || typeof msg.text !== 'string') return;
    const priv = typeof msg.to === 'string';
    if (isMe(msg.from)) {
      pending.shift(); // our message came back: it was delivered
    }
    const line = addMessage(msg, priv);
    // A private line from someone else is unread until it has been seen: shown in the log
    // while the tab is visible, or its sender picked.
    if (priv && !isMe(msg.from) && lower(msg.from) !== lower(el.to.value) && !seen(line)) {
      line.dataset.unread = '1';
      const k = lower(msg.from);
      unread.set(k, (unread.get(k) || 0) + 1);
      renderUsers();
    }
  }

  function seen(line) {
    if (document.visibilityState !== 'visible' || el.chat.hidden) return false;
    // At least half of the line inside the log's view (or half the view, for a tall line).
    const r = line.getBoundingClientRect();
    const v = el.log.getBoundingClientRect();
    const h = Math.min(r.bottom, v.bottom) - Math.max(r.top, v.top);
    return h > 0 && (h >= r.height / 2 || h >= v.height / 2);
  }

  // Called when what is on screen may have changed: a scroll, a resize, the tab shown.
  function readVisible() {
    let changed = false;
    for (const line of el.log.querySelectorAll('.msg[data-unread]')) {
      if (!seen(line)) continue;
      delete line.dataset.unread;
      const k = lower(line.dataset.from);
      const n = (unread.get(k) || 0) - 1;
      if (n > 0) unread.set(k, n);
      else unread.delete(k);
      changed = true;
    }
    if (changed) renderUsers();
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

  function onError(msg) {
    if (msg.code === 'bad_id' || msg.code === 'id_taken') return; // the close code says it
    const to = typeof msg.to === 'string' ? idNode(msg.to) : 'That user';
    let text;
    if (msg.code === 'unknown_recipient') {
      text = [to, ' is not online. The message was not sent.'];
    } else if (msg.code === 'recipient_busy') {
      // The recipient's queue is full of private messages right now; later may work.
      text = [to, ' cannot take more private messages right now. Yours was not delivered: try again in a moment.'];
    } else if (msg.code === 'too_long') {
      text = tooLong(pending.length ? textLength(pending[0].text) : 0);
    } else if (msg.code === 'rate_limited') {
      text = rateLimited();
    } else if (msg.code === 'cluster_unavailable') {
      // A cluster node lost touch with the others: a private message did not go out, a
      // room message reached only the people on this server.
      if (typeof msg.to !== 'string') {
        // The room message itself was delivered (and echoed): nothing to give back.
        showSendError('The other chat servers cannot be reached right now: only people on this server got that.');
        return;
      }
      text = ['The server cannot reach ', to, ' right now. The message was not sent.'];
    } else {
      text = ERRORS[msg.code] || (typeof msg.message === 'string' ? msg.message : 'Error: ' + msg.code);
    }
    showSendError(text);
    // The refused text is ours again: put it back if the field is free, so it can be resent.
    const lost = pending.shift();
    if (lost && lost.text && !el.message.value && msg.code !== 'empty') {
      el.message.value = lost.text;
      renderCounter();
    }
  }

  // ---- the log -------------------------------------------------------------------------

  function atBottom() {
    // gorilla/websocket's chat example: within a pixel of the bottom counts as the bottom.
    return el.log.scrollTop > el.log.scrollHeight - el.log.clientHeight - 1;
  }

  function append(node) {
    const follow = atBottom();
    el.log.appendChild(node);
    while (el.log.childElementCount > MAX_LINES) {
      const old = el.log.firstElementChild;
      const h = old.offsetHeight;
      old.remove();
      if (!follow) el.log.scrollTop -= h; // keep what the reader is looking at in place
    }
    if (follow) {
      el.log.scrollTop = el.log.scrollHeight - el.log.clientHeight;
    } else {
      el.jump.hidden = false;
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

  function addMessage(msg, priv) {
    const line = document.createElement('div');
    line.className = 'line msg';
    if (priv) line.classList.add('private');
    if (isMe(msg.from)) line.classList.add('mine');
    line.dataset.from = msg.from;
    if (priv) line.dataset.to = msg.to;

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
    append(line);
    return line;
  }

  function note(text, kind) {
    const line = document.createElement('div');
    line.className = 'line note' + (kind ? ' ' + kind : '');
    const span = document.createElement('span');
    span.className = 'text';
    span.append(...parts(text));
    line.append(span, timeOf());
    append(line);
  }

  // ---- users, recipient picker, unread counts ------------------------------------------

  function renderUsers() {
    const ids = [...users.values()].sort((a, b) => {
      if (isMe(a) !== isMe(b)) return isMe(a) ? -1 : 1;
      return lower(a) < lower(b) ? -1 : lower(a) > lower(b) ? 1 : 0;
    });
    const frag = document.createDocumentFragment();
    let unreadTotal = 0;
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
        unreadTotal += n;
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
        li.append(b);
      }
      frag.append(li);
    }
    // Unread from people who left still count until read.
    for (const [k, n] of unread) if (!users.has(k)) unreadTotal += n;
    el.users.replaceChildren(frag);
    const more = total - users.size;
    el.count.textContent = more > 0 ? total + ' (' + more + ' not listed)' : String(total);
    document.title = (unreadTotal > 0 ? '(' + unreadTotal + ') ' : '') + 'chatloop';
    renderPicker(ids);
  }

  function renderPicker(ids) {
    const current = el.to.value;
    const frag = document.createDocumentFragment();
    const room = document.createElement('option');
    room.value = '';
    room.textContent = 'Room';
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
      for (const line of el.log.querySelectorAll('.msg[data-unread]')) {
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
    if (!ws || !online || ws.readyState !== WebSocket.OPEN) {
      // Nothing is queued: say so, and leave the text in the field to send once connected.
      showSendError('Not connected: this message cannot be sent until the connection is back. It stays in the field.');
      return;
    }
    const length = textLength(text);
    if (limits.maxText && length > limits.maxText) {
      showSendError(tooLong(length));
      return;
    }
    const to = el.to.value;
    const frame = JSON.stringify(to ? { to: to, text: text } : { text: text });
    // A server that states max_text guarantees that any text within it fits its frame limit
    // (--max-message is derived from --max-text for the worst encoding, and a smaller one is
    // refused at start-up). An older server does not: stay under its old default there.
    const bytes = new TextEncoder().encode(frame).length;
    if (!limits.maxText && bytes > MAX_FRAME) {
      showSendError('That message is too long to send: ' + bytes + ' bytes once encoded, and the server takes ' +
        MAX_FRAME + '. It was not sent.');
      return;
    }
    ws.send(frame);
    pending.push({ text: text, to: to });
    el.message.value = '';
    renderCounter();
    clearTimeout(errorTimer);
    el.sendError.textContent = '';
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
    users.clear();
    unread.clear();
    total = 0;
    el.log.replaceChildren();
    el.users.replaceChildren();
    el.to.value = '';
    el.message.value = '';
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

  el.message.addEventListener('input', renderCounter);

  el.id.addEventListener('input', () => {
    prefilled = '';
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

  window.addEventListener('online', retryNow);
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
