// The library's state machine against a scripted in-process WebSocket (no network): backoff
// bounds, resume parameters after a drain request and a 1013 close, uuid de-duplication,
// the offline queue and retries. The real-stack behaviour is in client.test.js.
import { test } from "node:test";
import assert from "node:assert/strict";
import { NatterClient } from "../src/index.js";
import { waitEvent, until } from "./support.js";

/** A fake socket: records what the client sends; the test plays the server. */
class FakeSocket {
  static all = [];
  static refuse = 0; // how many next sockets fail before opening
  constructor(url) {
    this.url = url; this.readyState = 0; this.sent = [];
    FakeSocket.all.push(this);
    queueMicrotask(() => {
      if (FakeSocket.refuse > 0) { FakeSocket.refuse--; this.readyState = 3; this.onclose?.({ code: 1006, reason: "" }); return; }
      this.readyState = 1; this.onopen?.();
    });
  }
  send(s) { this.sent.push(JSON.parse(s)); }
  close(code = 1000) { if (this.readyState === 3) return; this.readyState = 3; queueMicrotask(() => this.onclose?.({ code, reason: "" })); }
  serverSend(m) { this.onmessage?.({ data: JSON.stringify(m) }); }
  serverClose(code) { this.readyState = 3; this.onclose?.({ code, reason: "" }); }
  joins() { return this.sent.filter((m) => m.method === "joinRoom" || m.method === "reconnect"); }
  /** Answer the join of `room` like an edge: OK, welcome, then `history`. */
  accept(room, node, members, history = []) {
    const j = this.joins().find((m) => m.params.roomName === room);
    this.serverSend({ jsonrpc: "2.0", result: "OK", id: j.id });
    this.serverSend({ jsonrpc: "2.0", method: "welcome", params: { sessionId: "s", node, roomName: room, members, lastMessageId: null } });
    for (const h of history) this.serverSend(h);
    return j;
  }
}
const last = () => FakeSocket.all[FakeSocket.all.length - 1];
const msg = (room, id, uuid, text, userId = "other") => ({ jsonrpc: "2.0", method: "textMessage", id: 1, _id: String(id),
  params: { userId, userName: userId, roomName: room, text, uuid, ack: true, date: 0, ts: "2026-01-01T00:00:00Z" } });
const client = (opts = {}) => new NatterClient({ url: ["ws://a/chat", "ws://b/chat"], userId: "me", userName: "Me",
  WebSocket: FakeSocket, pingIntervalMs: 0, backoff: { initialMs: 10, maxMs: 80, factor: 2, jitter: 0.5 }, ...opts });
const nextSocket = async (n) => { while (FakeSocket.all.length < n) await new Promise((ok) => setImmediate(ok)); return FakeSocket.all[n - 1]; };

test("backoff grows exponentially with jitter, capped, and resets after a join", async () => {
  FakeSocket.all = []; FakeSocket.refuse = 6;
  const c = client();
  const delays = [];
  c.on("status", (s) => { if (s.delayMs != null) delays.push(s.delayMs); });
  const joined = c.joinRoom("r");
  const s = await nextSocket(7);
  await until(c, ["status"], () => s.readyState === 1, "the 7th socket to open", 5000);
  s.accept("r", "edge-1", ["Me"]);
  await joined;
  assert.equal(delays.length, 6);
  const caps = [10, 20, 40, 80, 80, 80];
  delays.forEach((d, i) => assert.ok(d >= caps[i] * 0.5 && d <= caps[i], `delay ${i} = ${d} outside [${caps[i] / 2}, ${caps[i]}]`));
  assert.deepEqual(FakeSocket.all.map((x) => x.url), ["ws://a/chat", "ws://b/chat", "ws://a/chat", "ws://b/chat", "ws://a/chat", "ws://b/chat", "ws://a/chat"]);
  assert.equal(c._attempt, 0);
  c.close();
});

test("a drain request moves to the next URL and resumes from the last _id; duplicates are dropped", async () => {
  FakeSocket.all = []; FakeSocket.refuse = 0;
  const c = client();
  const got = [];
  c.on("message", (m) => got.push(m.uuid));
  const joined = c.joinRoom("r");
  const s1 = await nextSocket(1);
  await new Promise((ok) => setImmediate(ok));
  const j1 = s1.accept("r", "edge-1", ["Me", "Bo"], [msg("r", 7, "u7", "a"), msg("r", 9, "u9", "b"), msg("r", 9, "u9", "b")]);
  await joined;
  assert.equal(j1.method, "joinRoom");
  assert.equal(j1.params.lastMessageId, undefined);
  assert.deepEqual(got, ["u7", "u9"]);
  // Offline: queued, not sent.
  const moving = waitEvent(c, "moving", () => true, "moving", 2000);
  s1.serverSend({ jsonrpc: "2.0", method: "reconnect", params: { reason: "draining" }, id: 3 });
  assert.equal((await moving).reason, "draining");
  const queued = c.send("r", "while moving");
  const s2 = await nextSocket(2);
  assert.equal(s2.url, "ws://b/chat");
  await until(c, ["status"], () => s2.readyState === 1, "s2 open", 2000);
  await new Promise((ok) => setImmediate(ok));
  assert.equal(s2.sent.filter((m) => m.method === "textMessage").length, 0, "nothing sent before the join");
  const j2 = s2.accept("r", "edge-2", ["Me", "Bo"], [msg("r", 9, "u9", "b"), msg("r", 10, "u10", "c")]);
  assert.equal(j2.params.lastMessageId, "9");
  assert.equal(c.node, "edge-2");
  const texts = s2.sent.filter((m) => m.method === "textMessage");
  assert.equal(texts.length, 1);
  assert.equal(texts[0].params.uuid, queued.uuid);
  s2.serverSend({ ...msg("r", 11, queued.uuid, "while moving", "me"), params: { ...texts[0].params, ack: true } });
  assert.equal((await queued.done).id, "11");
  assert.deepEqual(got, ["u7", "u9", "u10", queued.uuid]);
  // A 1013 close resumes at once (attempt 0), from _id 11.
  s2.serverClose(1013);
  const s3 = await nextSocket(3);
  await until(c, ["status"], () => s3.readyState === 1, "s3 open", 2000);
  await new Promise((ok) => setImmediate(ok));
  assert.equal(s3.joins()[0].params.lastMessageId, "11");
  c.close();
});

test("-32010 retries the same uuid; -32006 fails the send; resumeWith reconnect uses reconnect", async () => {
  FakeSocket.all = []; FakeSocket.refuse = 0;
  const c = client({ resumeWith: "reconnect" });
  const joined = c.joinRoom("r");
  const s1 = await nextSocket(1);
  await new Promise((ok) => setImmediate(ok));
  s1.accept("r", "edge-1", ["Me"]);
  await joined;
  const a = c.send("r", "retry me");
  const first = s1.sent.filter((m) => m.method === "textMessage")[0];
  s1.serverSend({ jsonrpc: "2.0", error: { code: -32010, message: "unavailable" }, id: first.id });
  const retried = await (async () => {
    for (let i = 0; i < 500; i++) {
      const t = s1.sent.filter((m) => m.method === "textMessage");
      if (t.length === 2) return t[1];
      await new Promise((ok) => setTimeout(ok, 5));
    }
    throw new Error("no retry");
  })();
  assert.equal(retried.params.uuid, a.uuid);
  const b = c.send("r", "x".repeat(10));
  const bReq = s1.sent.filter((m) => m.method === "textMessage").pop();
  s1.serverSend({ jsonrpc: "2.0", error: { code: -32006, message: "too large" }, id: bReq.id });
  await assert.rejects(b.done, (e) => e.code === -32006);
  s1.serverClose(1006);
  const s2 = await nextSocket(2);
  await until(c, ["status"], () => s2.readyState === 1, "s2 open", 2000);
  await new Promise((ok) => setImmediate(ok));
  assert.equal(s2.joins()[0].method, "reconnect");
  assert.deepEqual(c.pending().map((p) => p.uuid), [a.uuid]);
  c.close();
});

test("sends stay under the client's rate (burst, then perSec), in order", async () => {
  FakeSocket.all = []; FakeSocket.refuse = 0;
  const c = client({ rate: { perSec: 200, burst: 5 } });
  const joined = c.joinRoom("r");
  const s1 = await nextSocket(1);
  await new Promise((ok) => setImmediate(ok));
  s1.accept("r", "edge-1", ["Me"]);
  await joined;
  const sent = Array.from({ length: 12 }, (_, i) => c.send("r", `m${i}`));
  const texts = () => s1.sent.filter((m) => m.method === "textMessage");
  assert.equal(texts().length, 5, "the burst goes out at once");
  for (let i = 0; i < 400 && texts().length < 12; i++) await new Promise((ok) => setTimeout(ok, 5));
  assert.deepEqual(texts().map((m) => m.params.text), sent.map((_, i) => `m${i}`));
  c.close();
});
