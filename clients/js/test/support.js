// Test support: the real stack (natter-js-harness, a Rust binary of this repo started on
// free 127.0.0.1 ports), and bounded waits on client events. No fixed sleeps anywhere.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import fs from "node:fs";
import WebSocket from "ws";
import { NatterClient } from "../src/index.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const WAIT_MS = 20000;

/** Start the stack; resolves with `{edges:[{ws,ops}], filestore, command(line), stop()}`. */
export async function startStack(env = {}) {
  const bin = process.env.NATTER_JS_HARNESS || path.join(ROOT, "target/debug/natter-js-harness");
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build --bins\` first`);
  const child = spawn(bin, [], { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, ...env } });
  const lines = createInterface({ input: child.stdout });
  const queue = [];
  const waiting = [];
  lines.on("line", (l) => (waiting.length ? waiting.shift()(l) : queue.push(l)));
  const next = (what) => bounded(new Promise((ok) => (queue.length ? ok(queue.shift()) : waiting.push(ok))), 90000, what);
  const exited = new Promise((ok) => child.on("exit", ok));
  const info = JSON.parse(await Promise.race([next("the stack to start"), exited.then((c) => { throw new Error(`harness exited (${c})`); })]));
  info.command = async (line) => {
    child.stdin.write(line + "\n");
    const answer = JSON.parse(await next(line));
    if (answer.error) throw new Error(answer.error);
    return answer;
  };
  info.stop = async () => { child.stdin.end(); await bounded(exited, 30000, "the stack to stop"); };
  return info;
}

/** `p`, or a rejection naming `what` after `ms`. */
export function bounded(p, ms, what) {
  let t;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, fail) => { t = setTimeout(() => fail(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms); }),
  ]);
}

/** The next `event` of `client` whose payload satisfies `pred` (checked first by `now()` when given). */
export function waitEvent(client, event, pred = () => true, what = event, ms = WAIT_MS) {
  return bounded(new Promise((ok) => {
    const off = client.on(event, (e) => { if (pred(e)) { off(); ok(e); } });
  }), ms, what);
}

/** Resolves once `cond()` holds, re-checked on every `event` of `client`. */
export function until(client, events, cond, what, ms = WAIT_MS) {
  if (cond()) return Promise.resolve();
  const offs = [];
  return bounded(new Promise((ok) => {
    for (const ev of events) offs.push(client.on(ev, () => { if (cond()) ok(); }));
  }), ms, what).finally(() => offs.forEach((o) => o()));
}

/** A client for tests, recording every message it is handed, per room. */
export function makeClient(opts) {
  const c = new NatterClient({ WebSocket, pingIntervalMs: 0, ...opts });
  c.log = new Map();
  c.statuses = [];
  c.on("message", (m) => {
    if (!c.log.has(m.room)) c.log.set(m.room, []);
    c.log.get(m.room).push(m);
  });
  c.on("status", (s) => c.statuses.push(s.state));
  c.texts = (room) => (c.log.get(room) || []).filter((m) => m.type === "text").map((m) => m.text);
  c.messages = (room) => c.log.get(room) || [];
  return c;
}

/** Asserting helper: every uuid once and `_id`s ascending. */
export function onceInOrder(msgs) {
  const uuids = msgs.map((m) => m.uuid);
  if (new Set(uuids).size !== uuids.length) return `a message was handed out twice: ${uuids}`;
  for (let i = 1; i < msgs.length; i++) {
    if (BigInt(msgs[i].id) <= BigInt(msgs[i - 1].id)) return `_ids not ascending: ${msgs.map((m) => m.id)}`;
  }
  return null;
}

/** A 1×1 PNG. */
export const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==", "base64");
