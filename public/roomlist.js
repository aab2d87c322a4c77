// The Rooms panel (each room with its unread count and a close button) and the directory:
// the rooms there are, as suggestions for the room field.

import { LOBBY, rooms } from './rooms.js';
import { S } from './state.js';
import { el, lower, posInt } from './util.js';

let directoryAt = 0; // when the directory was last asked for (it costs a rate-limit token)

export function renderRooms() {
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

export function onDirectory(msg) {
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

export function askDirectory() {
  // Each ask costs a rate-limit token, like a message: not more often than every 2 s.
  if (!S.ws || !S.online || Date.now() - directoryAt < 2000) return;
  directoryAt = Date.now();
  S.ws.send(JSON.stringify({ rooms: true }));
}
