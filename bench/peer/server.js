// One Socket.IO v4 server as a Node team would run it behind a load balancer: websocket
// transport only, the official Redis adapter so rooms span every process of the cluster.
// Room semantics are natter's as natter-bench uses them: `join` {room, name} is
// acknowledged "OK"; `message` {room, text, uuid, ...} from a member is broadcast to the
// whole room (the sender included, like natter's echo) and acknowledged "OK" to the sender.
// Messages are not stored.
//
//   node server.js <port> <redis-url>
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.argv[2] || process.env.PORT || 3000);
const redisUrl = process.argv[3] || process.env.REDIS_URL || "redis://127.0.0.1:6379";

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const io = new Server({ transports: ["websocket"], serveClient: false });
  io.adapter(createAdapter(pub, sub));

  io.on("connection", (socket) => {
    socket.on("join", (p, ack) => {
      const reply = typeof ack === "function" ? ack : () => {};
      if (!p || typeof p.room !== "string" || typeof p.name !== "string") return reply("ERR");
      socket.join(p.room);
      reply("OK");
    });
    socket.on("message", (m, ack) => {
      const reply = typeof ack === "function" ? ack : () => {};
      if (!m || typeof m.room !== "string" || !socket.rooms.has(m.room)) return reply("ERR");
      io.to(m.room).emit("message", { ...m, ack: true, ts: new Date().toISOString() });
      reply("OK");
    });
  });

  // Loopback only, like every process natter-bench starts. A port taken meanwhile (the
  // harness picked it free a moment ago) ends the process, and the harness tries another.
  const server = http.createServer();
  io.attach(server);
  server.on("error", (e) => {
    console.error(`listen: ${e.message}`);
    process.exit(1);
  });
  server.listen(port, "127.0.0.1", () => console.log(`socket.io listening on 127.0.0.1:${port}`));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
