// Other tabs of this browser, and the id remembered for the login field.
// localStorage is shared by every tab, so every new tab would pre-fill the last id and the
// second one to join would collide with the first. Tabs tell each other which id they use
// over a BroadcastChannel; a new tab pre-fills only an id that no open tab is using.
// The server still decides who gets an id: this only picks the pre-fill and the wording.

import { S } from './state.js';
import { ID_RE, STORE_KEY, el, lower } from './util.js';

const TAB = Math.random().toString(36).slice(2) + Date.now().toString(36);
const otherTabs = new Map(); // tab token -> the id that tab uses
let prefilled = ''; // what we put in the id field ourselves, while the user has not changed it
let channel = null;
try {
  channel = new BroadcastChannel('chatloop');
} catch (e) {
  // no BroadcastChannel: every tab pre-fills the last id, as before
}

export function announce() {
  if (channel) channel.postMessage({ tab: TAB, id: S.me });
}

export const inOtherTab = (id) => [...otherTabs.values()].some((v) => lower(v) === lower(id));

if (channel) {
  channel.onmessage = (ev) => {
    const m = ev.data;
    if (!m || typeof m.tab !== 'string' || m.tab === TAB) return;
    if (m.ask) {
      if (S.me !== null) announce();
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

export function remember(id) {
  try {
    sessionStorage.setItem(STORE_KEY, id);
    localStorage.setItem(STORE_KEY, id);
  } catch (e) {
    // storage may be off; the id is only a convenience
  }
}

function prefill() {
  if (S.me !== null || el.id.value) return; // joining already, or the user typed
  prefilled = remembered();
  el.id.value = prefilled;
}

// The user typed in the id field: what is there is theirs now.
export function typedId() {
  prefilled = '';
}

// Tell the other tabs this one's id is free when it closes (or goes into the back-forward
// cache), and that it is taken again if it comes back; then pre-fill the id field.
export function startTabs() {
  window.addEventListener('pagehide', () => {
    if (channel) channel.postMessage({ tab: TAB, id: null });
  });
  window.addEventListener('pageshow', (ev) => {
    if (ev.persisted) announce();
  });
  if (channel) {
    // Ask which ids the open tabs use; they answer within milliseconds. A late answer still
    // takes the pre-fill back (onmessage), as long as the user has not touched it.
    channel.postMessage({ tab: TAB, ask: true });
    setTimeout(prefill, 150);
  } else {
    prefill();
  }
}
