// Sign-in tokens (a server in --auth token mode): the auth mode and token URL from GET /config,
// the token from the URL fragment (#token=…, which the browser never sends to a server; read
// once, then cleared from the address bar), its `sub` shown as the id, fresh tokens fetched
// from the token URL, and the refresh before the welcome's `exp`. The page never verifies a
// token: it only reads the payload's `sub`; the server checks the signature.

import { note } from './log.js';
import { S } from './state.js';
import { ID_RE, el, idNode } from './util.js';

// mode: 'open' (no tokens, the id is typed) or 'token'; url: where fresh tokens come from
// (the server's --token-url), or null; token: the one the next connect presents.
// refusal: the reason of the last `unauthorized` error, for the 4401 close that follows it.
export const A = { mode: 'open', url: null, token: '', sub: '', refusal: '' };

let refreshTimer = 0;
let refreshing = false; // a {"token":…} was sent and not yet answered
let expires = 0; // the connection's token expires then (Unix ms; the welcome's `exp`)
let complained = false; // a failed refresh was noted since the last good one

export const tokenMode = () => A.mode === 'token';

// The token in the fragment, if any; the fragment is removed from the address bar (and so
// from the history and any bookmark) whether or not it held one we can use.
export function takeFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return '';
  history.replaceState(history.state, '', location.pathname + location.search);
  try {
    return decodeURIComponent(m[1]);
  } catch (e) {
    return '';
  }
}

// The payload's `sub`, if it is an id ('' for anything that is no JWT of ours).
export function subOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims.sub === 'string' && ID_RE.test(claims.sub) ? claims.sub : '';
  } catch (e) {
    return '';
  }
}

export function useToken(token) {
  const sub = subOf(token);
  A.token = sub ? token : '';
  A.sub = sub;
  return sub !== '';
}

// GET /config: {"auth":"open"|"token","token_url":URL|null}. A server without it (404) is
// an open one; one that cannot be asked is taken as token mode if we were given a token.
export async function loadConfig(haveToken) {
  try {
    const r = await fetch('/config', { cache: 'no-store' });
    if (r.status === 404) return;
    const c = await r.json();
    A.mode = c.auth === 'token' ? 'token' : 'open';
    A.url = typeof c.token_url === 'string' && c.token_url ? c.token_url : null;
  } catch (e) {
    if (haveToken) A.mode = 'token';
  }
}

// A fresh token from the token URL (the sign-in's cookies go along); true if it holds an id.
export async function fetchToken() {
  if (!A.url) return false;
  try {
    const r = await fetch(A.url, { credentials: 'include', cache: 'no-store' });
    if (!r.ok) return false;
    return useToken((await r.text()).trim());
  } catch (e) {
    return false;
  }
}

// The welcome's or a refresh answer's `exp` (Unix ms): refresh halfway to it, at most a
// minute before, so a slow token URL still has time.
export function scheduleRefresh(exp) {
  stopRefresh();
  expires = Number.isFinite(exp) ? exp : 0;
  complained = false;
  if (!tokenMode() || !A.url || expires <= 0) return;
  const left = expires - Date.now();
  refreshTimer = setTimeout(refresh, Math.max(1000, left - Math.min(60000, left / 2)));
}

async function refresh() {
  refreshTimer = 0;
  const sock = S.ws;
  if (!(await fetchToken())) return retryRefresh('the sign-in page did not give a new one');
  if (S.ws !== sock || !sock || !S.online) return; // the next connect presents it
  refreshing = true;
  sock.send(JSON.stringify({ token: A.token }));
}

// The refresh failed: the connection keeps its old token until that expires. Try again while
// there is time, and say so once.
function retryRefresh(why) {
  refreshing = false;
  const left = expires - Date.now();
  if (left < 5000 || S.ws === null) return;
  if (!complained) note('Could not renew your sign-in (' + why + '): trying again.', '', 'all');
  complained = true;
  refreshTimer = setTimeout(refresh, Math.min(10000, left / 2));
}

// An `unauthorized` error while a refresh waits is its answer: true if taken as one
// (otherwise the 4401 close that follows says it).
export function refreshRefused(msg) {
  if (!refreshing) return false;
  retryRefresh(typeof msg.reason === 'string' ? msg.reason : 'refused');
  return true;
}

export function stopRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = 0;
  refreshing = false;
}

// The login screen in token mode: no id field, the token's id instead, or the one line that
// says a sign-in is needed (and no Join). Open mode: the id field as always.
export function renderSignIn() {
  const token = tokenMode();
  el.idFields.hidden = token;
  el.signIn.hidden = !token;
  el.join.hidden = token && !A.sub;
  if (!token) return;
  el.signIn.replaceChildren(...(A.sub ? ['Signed in as ', idNode(A.sub)]
    : ['This chat needs a sign-in: open it with the link your sign-in gives you.']));
}
