// A real Socket.IO server (the npm `socket.io` package) for shared/tests/sources_socketio.rs and
// tests/sources.rs: a price service on namespace /market that checks the auth payload's token,
// joins and leaves rooms on `subscribe`/`unsubscribe` (acknowledged; symbol BAD is refused),
// emits `price` events {symbol, price, seq, boot} to every joined room every 50 ms (or on
// request only, with --tick-ms 0), and counts everything. A symbol's seq counts from 1.
//
// Usage: node socketio-server.mjs --port P --token T [--ping-interval MS] [--ping-timeout MS]
//          [--tick-ms MS] [--tls-cert PEM --tls-key PEM]   (HTTPS, WSS)
// Prints one line, {"listening": PORT}, once it accepts connections. HTTP beside Socket.IO:
//   GET  /stats        the counters (JSON), with the last connection's `x-gateway` header
//   POST /emit?symbol=S&n=N  emits the symbol's next N prices to its room now; answers
//                      {"sent":N,"to":members}
//   POST /garbage      to every connected client: an unknown event (twice, once asking for an
//                      ack), a price for symbol "X.Y", a binary attachment event, a truncated
//                      Socket.IO packet
//   POST /big?bytes=N  to every connected client: a price event carrying N bytes of padding

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTlsServer } from "node:https";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", "0"));
const token = arg("token", "s3cret");
const pingInterval = Number(arg("ping-interval", "500"));
const pingTimeout = Number(arg("ping-timeout", "500"));
const tickMs = Number(arg("tick-ms", "50"));
const tlsCert = arg("tls-cert", "");
const tlsKey = arg("tls-key", "");
const boot = randomUUID();

const stats = {
  boot,
  connections: 0,
  connects_total: 0,
  auth_failures: 0,
  joins: {},
  leaves: {},
  refused_joins: 0,
  acks_received: 0,
  x_gateway: null,
};
const count = (map, key) => {
  map[key] = (map[key] ?? 0) + 1;
};

const handler = (req, res) => {
  const url = new URL(req.url, "http://localhost");
  const reply = (status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (req.method === "GET" && url.pathname === "/stats") {
    stats.connections = market.sockets.size;
    return reply(200, stats);
  }
  if (req.method === "POST" && url.pathname === "/garbage") {
    for (const socket of market.sockets.values()) {
      socket.emit("weather", { celsius: 21 });
      socket.timeout(5000).emit("weather", { celsius: 22 }, (err) => {
        if (!err) stats.acks_received += 1;
      });
      socket.emit("price", { symbol: "X.Y", price: 1 });
      socket.emit("price", Buffer.from([1, 2, 3, 4]));
      // Written below Socket.IO: the client reads `42/market,["price"`.
      socket.conn.write('2/market,["price"');
    }
    return reply(200, { sent_to: market.sockets.size });
  }
  if (req.method === "POST" && url.pathname === "/emit") {
    const symbol = url.searchParams.get("symbol") ?? "";
    const n = Number(url.searchParams.get("n") ?? "1");
    const room = `symbol:${symbol}`;
    for (let i = 0; i < n; i++) emitPrice(symbol, room);
    return reply(200, { sent: n, to: market.adapter.rooms.get(room)?.size ?? 0 });
  }
  if (req.method === "POST" && url.pathname === "/big") {
    const bytes = Number(url.searchParams.get("bytes") ?? "100000");
    for (const socket of market.sockets.values()) {
      socket.emit("price", { symbol: "AAPL", price: 0, pad: "x".repeat(bytes) });
    }
    return reply(200, { sent_to: market.sockets.size });
  }
  reply(404, { error: "not found" });
};
const http = tlsCert
  ? createTlsServer({ cert: readFileSync(tlsCert), key: readFileSync(tlsKey) }, handler)
  : createServer(handler);

const io = new Server(http, { pingInterval, pingTimeout, serveClient: false });
const market = io.of("/market");

market.use((socket, next) => {
  if (socket.handshake.auth?.token === token) return next();
  stats.auth_failures += 1;
  next(new Error("unauthorized"));
});

market.on("connection", (socket) => {
  stats.connects_total += 1;
  stats.x_gateway = socket.handshake.headers["x-gateway"] ?? null;
  socket.on("subscribe", (symbol, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    if (symbol === "BAD") {
      stats.refused_joins += 1;
      return reply({ error: "no such symbol" });
    }
    count(stats.joins, String(symbol));
    socket.join(`symbol:${symbol}`);
    reply({ ok: true });
  });
  socket.on("unsubscribe", (symbol, ack) => {
    count(stats.leaves, String(symbol));
    socket.leave(`symbol:${symbol}`);
    if (typeof ack === "function") ack({ ok: true });
  });
});

const seqs = {};
function emitPrice(symbol, room) {
  seqs[symbol] = (seqs[symbol] ?? 0) + 1;
  market
    .to(room)
    .emit("price", { symbol, price: 100 + (seqs[symbol] % 10), seq: seqs[symbol], boot });
}
if (tickMs > 0) {
  setInterval(() => {
    for (const [room, members] of market.adapter.rooms) {
      if (!room.startsWith("symbol:") || members.size === 0) continue;
      emitPrice(room.slice("symbol:".length), room);
    }
  }, tickMs);
}

process.on("SIGTERM", () => process.exit(0));

http.listen(port, "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: http.address().port }));
});
