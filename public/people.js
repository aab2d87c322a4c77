// The Online list of the shown room (away people greyed, private unread counts on their
// buttons) and the "To" picker: the room, or one person for a private message.

import { allLines, rooms } from './rooms.js';
import { isMe, unread } from './state.js';
import { el, lower } from './util.js';

export function renderUsers() {
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
      if (lower(rooms.current().to) === lower(id)) b.setAttribute('aria-pressed', 'true');
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
  const current = rooms.current().to;
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
  showRecipient();
}

// Where a line typed now goes, said where the eye is: the composer is tinted for a private
// line, and the field's placeholder names the person or the room.
function showRecipient() {
  const to = el.to.value;
  el.composer.classList.toggle('is-private', to !== '');
  el.message.placeholder = to ? 'Private message to ' + to + '…' : 'Message #' + rooms.shown + '…';
}

// Picks who the room on screen writes to: an id, or '' for the room. The choice stays for
// the sends that follow (a private conversation is rarely one line) until the user picks
// again, and belongs to this room (see Room.to).
export function pick(id) {
  el.to.value = id;
  if (el.to.value !== id) el.to.value = '';
  rooms.current().to = el.to.value;
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
