#!/usr/bin/env node
// The `sources` benchmark's Socket.IO upstream: a socket.io server (the npm package of tests/js,
// loaded from SOCKETIO_FROM, a path inside tests/js) that a `socketio` source joins with `sub`
// (acknowledged) and leaves with `unsub`.
//
// Prints `{"port":N}` once listening, then reads commands on stdin, one per line:
//   emit <run> <k> <us>  emits `tick` {r, k, us} to the joined sockets; answers `ok`. The
//                        bench stamps `us` (its system clock, µs) before it writes the command:
//                        node's own clocks are not the system clock to the microsecond.
//   subs             answers the number of joined sockets
// It exits when stdin closes.

import { createRequire } from 'node:module';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';

const require = createRequire(process.env.SOCKETIO_FROM);
const { Server } = require('socket.io');

const http = createServer();
const io = new Server(http, { serveClient: false });
let joined = 0;
io.on('connection', (socket) => {
  let mine = false;
  socket.on('sub', (ack) => {
    if (!mine) {
      mine = true;
      joined += 1;
      socket.join('bench');
    }
    if (typeof ack === 'function') ack(true);
  });
  socket.on('unsub', (ack) => {
    if (mine) {
      mine = false;
      joined -= 1;
      socket.leave('bench');
    }
    if (typeof ack === 'function') ack(true);
  });
  socket.on('disconnect', () => {
    if (mine) joined -= 1;
  });
});

http.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: http.address().port })));

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [cmd, r, k, us] = line.trim().split(/\s+/);
  if (cmd === 'emit') {
    io.to('bench').emit('tick', { r: Number(r), k: Number(k), us: Number(us) });
    console.log('ok');
  } else if (cmd === 'subs') {
    console.log(String(joined));
  } else {
    console.log(`err unknown command ${line}`);
  }
});
rl.on('close', () => process.exit(0));
