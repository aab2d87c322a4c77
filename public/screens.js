// The status line in the top bar, and the two screens: the login form and the chat.

import { el, parts } from './util.js';

export function setStatus(state, text) {
  el.status.dataset.state = state;
  el.statusText.replaceChildren(...parts(text));
  // While disconnected the Online list is only what we last knew: show it as such.
  el.chat.classList.toggle('is-offline', state !== 'connected');
}

export function showLogin(error) {
  el.chat.hidden = true;
  el.leave.hidden = true;
  el.login.hidden = false;
  el.loginError.textContent = error || '';
  el.join.disabled = false;
  el.id.focus();
  el.id.select();
}

export function showChat() {
  el.login.hidden = true;
  el.chat.hidden = false;
  el.leave.hidden = false;
  el.loginError.textContent = '';
  el.message.focus();
}
