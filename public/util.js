// The page's constants, its elements by id, and small helpers every other module uses:
// text as the server counts it, ids and room names drawn in their own face. Imports nothing.

export const ID_RE = /^[A-Za-z0-9_.-]{1,32}$/;
export const BACKOFF_MIN = 500; // first retry after about 0.5 s
export const BACKOFF_MAX = 10000; // never more than 10 s apart
export const AUTH_BACKOFF_MIN = 1000; // after a failed sign-in renewal, the next in about 1 s
export const AUTH_BACKOFF_MAX = 30000; // doubling to 30 s apart at most
export const STABLE_MS = 10000; // a connection that lived this long resets the back-off
export const CONNECT_TIMEOUT = 10000; // no welcome by then: drop and retry
export const MAX_FRAME = 4096; // an older server's --max-message (one whose welcome has no max_text)
export const MAX_LINES = 1000; // log lines kept
export const STORE_KEY = 'chatloop.id';
export const NEAR_LIMIT = 0.9; // the length counter stands out from this share of max_text on
export const HISTORY = 50; // lines of a room's history shown on entering it (the lobby on joining)

// The server trims a text with Rust's str::trim (Unicode White_Space) before it checks the
// length; JS's trim differs (it strips U+FEFF, keeps U+0085), so count what the server counts.
const SPACE = '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const TRIM_RE = new RegExp('^' + SPACE + '+|' + SPACE + '+$', 'g');
export const serverTrim = (s) => s.replace(TRIM_RE, '');

const $ = (id) => document.getElementById(id);
export const el = {
  status: $('status'),
  statusText: $('status-text'),
  leave: $('leave'),
  login: $('login'),
  loginForm: $('login-form'),
  id: $('id'),
  idFields: $('id-fields'),
  signIn: $('sign-in'),
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

export const lower = (s) => String(s).toLowerCase();
export const posInt = (v) => (Number.isSafeInteger(v) && v > 0 ? v : 0);
// max_text counts Unicode scalar values: a string's iterator walks code points, where
// .length would count an emoji twice.
export function textLength(text) {
  let n = 0;
  for (const _ of serverTrim(text)) n += 1;
  return n;
}

// Ids are shown in a monospace face wherever they appear, so that look-alikes (aIice and
// alice, b0b and bob) stay distinct. Texts that mention ids are lists of strings and these.
export function idNode(id) {
  const span = document.createElement('span');
  span.className = 'id';
  span.textContent = id;
  return span;
}
export const parts = (p) => (Array.isArray(p) ? p : [p]);

// A room's name as shown: "#dev", in the ids' face (a name is as easy to misread as an id).
export function roomNode(name) {
  const span = document.createElement('span');
  span.className = 'room-name';
  span.textContent = '#' + name;
  return span;
}

