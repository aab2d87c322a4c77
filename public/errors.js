// Error lines from the server: about a join (beside the room field), or about a message (its
// line fails, named by cid; the text says why, in words a person can act on).

import { closeRoom, showRoomError } from './entry.js';
import { note } from './log.js';
import { errorEntry, fail, rateLimited, renderCounter, showSendError, tooLong } from './outbox.js';
import { LOBBY, rooms } from './rooms.js';
import { S, asked, leaving } from './state.js';
import { A, refreshRefused } from './token.js';
import { el, idNode, lower, roomNode, textLength } from './util.js';

const ERRORS = {
  empty: 'Type something first.',
  bad_message: 'The server did not understand that message.',
};

// bad_room, too_many_rooms and forbidden (outside the sign-in's rooms) answer a join (ours always sends valid names to rooms we are
// in, so a text does not get them); they go next to the room field, and leave the outbox
// alone, which holds texts.
function onRoomError(msg) {
  const name = lower(msg.room);
  const how = asked.get(name);
  asked.delete(name);
  const why = msg.code === 'bad_room'
    ? ['The server does not take “', name, '” as a room name: use 1 to 32 of a-z 0-9 _ - or .']
    : msg.code === 'forbidden'
      ? ['Your sign-in does not allow ', roomNode(name), '.']
      : ['Could not enter ', roomNode(name), ': too many rooms (the server limits the rooms one person is in, and all its rooms). Close one first, or try later.'];
  if (how === 'rejoin') {
    // A room we were in before the reconnect, that we cannot have back.
    closeRoom(name);
    note(['Could not enter ', roomNode(name), ' again after reconnecting: ',
      { bad_room: 'the server no longer takes that name.', forbidden: 'your sign-in does not allow it.' }[msg.code] ||
        'too many rooms.'], '', rooms.get(LOBBY));
    return;
  }
  showRoomError(why);
}

// Errors about a message: with its cid, the line it names fails; an older server (or a
// line the server sends without one) names none, and then the oldest pending message it
// can be about is taken, since the server answers a connection's messages in order.
const ABOUT_A_MESSAGE = new Set(['too_long', 'empty', 'bad_message', 'not_in_room', 'unknown_recipient',
  'recipient_busy', 'rate_limited', 'cluster_unavailable', 'cluster_unconfirmed', 'undelivered']);

export function onError(msg) {
  if (msg.code === 'bad_id' || msg.code === 'id_taken') return; // the close code says it
  if (msg.code === 'unauthorized') {
    // The answer to a refresh (the connection stays), or the reason of the 4401 that follows.
    if (!refreshRefused(msg)) A.refusal = typeof msg.reason === 'string' ? msg.reason : '';
    return;
  }
  if (['bad_room', 'too_many_rooms', 'forbidden'].includes(msg.code) && typeof msg.room === 'string') {
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

// The server's room name was refused with not_in_room while the page shows it: the
// server no longer has us there (or never had, after a reconnect). Enter it again quietly,
// so that a Retry works once it is answered.
function rejoin(name) {
  const room = rooms.get(name);
  if (!room || leaving.has(name) || asked.has(name) || !S.ws || !S.online) return;
  room.joined = false;
  asked.set(name, 'rejoin');
  S.ws.send(JSON.stringify(room.joinFrame()));
}
