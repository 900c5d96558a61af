#!/usr/bin/env node
// A backend with a WebSocket API of its own (the npm `ws` package), the kind of service a json-ws
// source hides behind Switchyard: chat rooms, followed and unfollowed by JSON messages.
//
//   client → {"action":"follow","room":"lobby"}    server → {"type":"following","room":"lobby"}
//   client → {"action":"unfollow","room":"lobby"}  server → {"type":"unfollowed","room":"lobby"}
//   server → {"type":"message","room":"lobby","seq":0,"text":"..."}  to the room's followers
//
// A connection must carry `authorization: Bearer rooms-secret`, or it is refused (401).
//
// Usage: node rooms-server.mjs [port]   (0 or none: any free port)
// Prints `{"port":N}` once listening, then reads commands on stdin, one per line, and answers
// each with one line of JSON:
//   say <room> <n>   sends n messages (seq continuing per room) to the room's followers;
//                    answers {"sent":n,"to":followers}
//   garbage <room>   sends to every connection: invalid JSON, an unknown type, a message for the
//                    hostile room "a.b", a binary frame; answers {"sent":4}
//   stats            answers {"connections":c,"connections_total":t,"follows":{room:n},
//                    "unfollows":{room:n},"refused":r}
// It exits when stdin closes.

import { WebSocketServer } from 'ws';
import { createInterface } from 'node:readline';

const port = Number(process.argv[2] ?? 0);
const SECRET = 'Bearer rooms-secret';
const followers = new Map(); // room -> Set<ws>
const seqs = new Map();
const stats = { connections: 0, connections_total: 0, follows: {}, unfollows: {}, refused: 0 };

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  verifyClient: (info, done) => {
    if (info.req.headers.authorization === SECRET) return done(true);
    stats.refused += 1;
    done(false, 401, 'Unauthorized');
  },
});

wss.on('listening', () => console.log(JSON.stringify({ port: wss.address().port })));

wss.on('connection', (ws) => {
  stats.connections += 1;
  stats.connections_total += 1;
  const mine = new Set();
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch {
      ws.send(JSON.stringify({ type: 'error', message: 'bad json' }));
      return;
    }
    const room = String(msg.room ?? '');
    if (msg.action === 'follow') {
      if (!followers.has(room)) followers.set(room, new Set());
      followers.get(room).add(ws);
      mine.add(room);
      stats.follows[room] = (stats.follows[room] ?? 0) + 1;
      ws.send(JSON.stringify({ type: 'following', room }));
    } else if (msg.action === 'unfollow') {
      followers.get(room)?.delete(ws);
      mine.delete(room);
      stats.unfollows[room] = (stats.unfollows[room] ?? 0) + 1;
      ws.send(JSON.stringify({ type: 'unfollowed', room }));
    } else {
      ws.send(JSON.stringify({ type: 'error', message: 'unknown action' }));
    }
  });
  ws.on('close', () => {
    stats.connections -= 1;
    for (const room of mine) followers.get(room)?.delete(ws);
  });
});

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [cmd, room, n] = line.trim().split(/\s+/);
  if (cmd === 'say') {
    const to = followers.get(room) ?? new Set();
    const count = Number(n);
    for (let i = 0; i < count; i++) {
      const seq = seqs.get(room) ?? 0;
      seqs.set(room, seq + 1);
      const text = JSON.stringify({ type: 'message', room, seq, text: `hello ${seq} ✓` });
      for (const ws of to) ws.send(text);
    }
    console.log(JSON.stringify({ sent: count, to: to.size }));
  } else if (cmd === 'garbage') {
    for (const ws of wss.clients) {
      ws.send('{not json');
      ws.send(JSON.stringify({ type: 'typing', room }));
      ws.send(JSON.stringify({ type: 'message', room: 'a.b', seq: 0, text: 'x' }));
      ws.send(Buffer.from([1, 2, 3]));
    }
    console.log(JSON.stringify({ sent: 4 }));
  } else if (cmd === 'stats') {
    console.log(JSON.stringify(stats));
  } else {
    console.log(JSON.stringify({ error: `unknown command ${line}` }));
  }
});
rl.on('close', () => process.exit(0));
