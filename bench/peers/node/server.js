// A room server on Node's `ws` for chatloop's bench (scripts/peers.sh): every text frame from
// any client goes to every client, the sender included. This is the broadcast recipe from
// ws's README ("Server broadcast", to all connected clients, itself included), with the port
// from the command line.
//
// Usage: node server.js PORT   (listens on 127.0.0.1:PORT, any path)
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js PORT');
  process.exit(2);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => console.log(`listening on 127.0.0.1:${port}`));
