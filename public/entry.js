// Moving between rooms: showing one (switchTo), entering one by name (the room field, whose
// errors go beside it), closing one.

import { readVisible, saveView, showView } from './log.js';
import { renderUsers } from './people.js';
import { renderRooms } from './roomlist.js';
import { LOBBY, roomName, rooms } from './rooms.js';
import { S, asked, leaving } from './state.js';
import { HISTORY, el, parts } from './util.js';

export function switchTo(name) {
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
export function closeRoom(name) {
  if (name === LOBBY || !rooms.get(name)) return;
  if (rooms.shown === name) switchTo(LOBBY);
  // Its lines go with it; private lines in it have copies in the other rooms' logs.
  rooms.remove(name);
  asked.delete(name);
  renderUsers();
  renderRooms();
}

export function showRoomError(text) {
  el.roomError.replaceChildren(...parts(text));
}

export function enterRoom() {
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
  if (!S.ws || !S.online) {
    showRoomError('Not connected: rooms can be entered once the connection is back.');
    return;
  }
  // The room shows up once the server answers joined (or an error says why not).
  asked.set(name, 'user');
  S.ws.send(JSON.stringify({ join: name, last: HISTORY }));
}

export function leaveRoom(name) {
  // Gone from the page at once; the server's left, when it comes, finds nothing to do.
  // Offline, the server may still hold us in it (the session is resumed on reconnect):
  // the leave goes then.
  if (S.ws && S.online) S.ws.send(JSON.stringify({ leave: name }));
  else leaving.add(name);
  closeRoom(name);
  el.message.focus();
}
