// The web app (web/) in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against the real stack: two pages on two edges, text, an image and a
// file; one edge drained, then the other killed; a taken name. Screenshots of the main
// states go to $NATTER_JS_TEST_OUT (default target/js-test/).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { chromium } from "playwright-core";
import { startStack, ROOT, bounded, makeClient } from "./support.js";

const OUT = process.env.NATTER_JS_TEST_OUT || path.join(ROOT, "target/js-test");
const CHROMIUM = process.env.NATTER_CHROMIUM || "/usr/bin/chromium";
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const T = 20000;

let stack, server, browser, base;
const shots = [];
async function shot(page, name) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file });
  shots.push(file);
}

/** A static server for web/ (its lib/ is the library) on a free 127.0.0.1 port. */
function serveWeb() {
  const dir = path.join(ROOT, "web");
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml" };
  const s = http.createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const file = path.join(dir, path.normalize(p).replace(/^(\.\.[/\\])+/, ""), p.endsWith("/") ? "index.html" : "");
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { "Content-Type": types[path.extname(file)] || "application/octet-stream", "Cache-Control": "no-store" });
      res.end(data);
    });
  });
  return new Promise((ok) => s.listen(0, "127.0.0.1", () => ok(s)));
}

/** A 240×150 PNG with a gradient (something to look at in a preview). */
function gradientPng(w = 240, h = 150) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0;
    for (let x = 0; x < w; x++) {
      const o = y * (w * 3 + 1) + 1 + x * 3;
      raw[o] = 60 + Math.round((150 * x) / w); raw[o + 1] = 70 + Math.round((120 * y) / h); raw[o + 2] = 214;
    }
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(zlib.crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr),
    chunk("IDAT", zlib.deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  stack = await startStack();
  server = await serveWeb();
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await bounded(chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true, timeout: T }), 30000, "chromium to start");
});
after(async () => {
  await browser?.close();
  server?.close();
  await stack?.stop();
  if (shots.length) console.log(`# screenshots:\n${shots.map((s) => `#   ${s}`).join("\n")}`);
});

async function open(edges, viewport = { width: 1280, height: 760 }) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  page.setDefaultTimeout(T);
  const ws = edges.map((i) => stack.edges[i].ws).join(",");
  await page.goto(`${base}?ws=${encodeURIComponent(ws)}&files=${encodeURIComponent(stack.filestore)}`);
  return page;
}

async function signIn(page, name, room) {
  await page.fill("#f-name", name);
  await page.fill("#f-room", room);
  await page.click("#f-join");
}

/** The page's conversation: uuids and texts of the messages shown (in order). */
const shown = (page) => page.$$eval("#messages .room-msgs:not([hidden]) .msg", (els) => els.map((e) => ({
  uuid: e.dataset.uuid, type: e.dataset.type, pending: e.classList.contains("pending"),
  text: e.querySelector(".text")?.textContent ?? e.querySelector(".file-name")?.textContent ?? "image",
})));

async function sendText(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

async function waitText(page, text) {
  await page.waitForFunction((t) => [...document.querySelectorAll(".msg:not(.pending) .text")].some((e) => e.textContent === t), text);
}

/** Waits until the page's member list is exactly `names` (and its count says so). */
async function members(page, names) {
  await page.waitForFunction((want) => [...document.querySelectorAll("#members li")].map((l) => l.dataset.name).join() === want.join()
    && document.getElementById("member-count").textContent === String(want.length), names);
}

async function waitEdge(page, node) {
  await page.waitForFunction((n) => { const c = document.getElementById("conn"); return c.dataset.state === "open" && c.dataset.node === n; }, node);
}

test("two pages on two edges: members, text, image, file; a drain, then a kill; every message once", async () => {
  const room = "Design Review";
  const ann = await open([0, 1]);
  const bob = await open([1, 0], { width: 390, height: 844 });
  await shot(ann, "01-sign-in");
  await signIn(ann, "Ann", room);
  await waitEdge(ann, "edge-1");
  await signIn(bob, "Bob", room);
  await waitEdge(bob, "edge-2");
  // Cy can reach edge-2 only: when it dies, Cy waits offline (and queues) until it is back.
  const cy = await open([1]);
  await signIn(cy, "Cy", room);
  await waitEdge(cy, "edge-2");
  for (const p of [ann, bob, cy]) await members(p, ["Ann", "Bob", "Cy"]);

  // Typing, then text both ways.
  await bob.type("#text", "hel");
  await ann.waitForFunction(() => document.getElementById("typing").textContent.includes("Bob is typing"));
  await sendText(bob, "hello Ann — the new mockups are in");
  await sendText(ann, "Thanks Bob, looking now.");
  for (const p of [ann, bob]) {
    await waitText(p, "hello Ann — the new mockups are in");
    await waitText(p, "Thanks Bob, looking now.");
  }

  // An image and a file.
  await ann.setInputFiles("#pick-image", { name: "mockup.png", mimeType: "image/png", buffer: gradientPng() });
  const fileBody = Buffer.from("Quarterly figures\n".repeat(200));
  await bob.setInputFiles("#pick-file", { name: "figures-q3.csv", mimeType: "text/csv", buffer: fileBody });
  for (const p of [ann, bob]) {
    await p.waitForFunction(() => [...document.querySelectorAll(".msg .image img")].some((i) => i.complete && i.naturalWidth === 240));
    await p.waitForSelector(".msg .file .file-name:text('figures-q3.csv')");
    assert.equal(await p.textContent(".msg .file .file-size"), "3.5 KB");
    const href = await p.getAttribute(".msg .file", "href");
    const res = await fetch(href);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), fileBody);
  }
  await shot(ann, "02-conversation-desktop");
  await shot(bob, "03-conversation-phone");
  assert.ok(await bob.isHidden("#older"), "nothing older to load");
  await bob.click("#open-sidebar");
  await bob.waitForFunction(() => document.getElementById("sidebar").getBoundingClientRect().left >= 0);
  await shot(bob, "03b-phone-rooms");
  await bob.click("#close-sidebar");

  // Drain edge-1: Ann moves to edge-2, nothing lost or doubled.
  const drained = stack.command("term 0");
  await waitEdge(ann, "edge-2");
  await sendText(ann, "after the drain (Ann)");
  await sendText(bob, "after the drain (Bob)");
  assert.match((await drained).exited, /exit status: 0/);
  await stack.command("restart 0");
  for (const p of [ann, bob]) {
    await waitText(p, "after the drain (Ann)");
    await waitText(p, "after the drain (Bob)");
  }

  // Kill edge-2 (all three pages are on it now): Ann and Bob resume on edge-1; Cy is
  // offline until edge-2 is back, and what it sends meanwhile goes out once.
  await stack.command("kill 1");
  await sendText(bob, "sent while edge-2 was dead");
  await cy.waitForSelector('#conn[data-state="resuming"]');
  await sendText(cy, "queued while offline (Cy)");
  await cy.waitForSelector(".msg.pending");
  await shot(cy, "04-offline-resuming");
  await waitEdge(ann, "edge-1");
  await waitEdge(bob, "edge-1");
  await sendText(ann, "after the kill (Ann)");
  await stack.command("restart 1");
  await waitEdge(cy, "edge-2");
  for (const p of [ann, bob, cy]) {
    await waitText(p, "sent while edge-2 was dead");
    await waitText(p, "after the kill (Ann)");
    await waitText(p, "queued while offline (Cy)");
    await members(p, ["Ann", "Bob", "Cy"]);
  }
  await shot(ann, "05-after-drain-and-kill");

  const expected = ["queued while offline (Cy)", "hello Ann — the new mockups are in", "Thanks Bob, looking now.", "image", "figures-q3.csv",
    "after the drain (Ann)", "after the drain (Bob)", "sent while edge-2 was dead", "after the kill (Ann)"];
  const views = [];
  for (const p of [ann, bob, cy]) {
    await p.waitForFunction(() => !document.querySelector(".msg.pending"));
    const msgs = await shown(p);
    assert.equal(new Set(msgs.map((m) => m.uuid)).size, msgs.length, "a message shown twice");
    assert.deepEqual([...msgs.map((m) => m.text)].sort(), [...expected].sort());
    views.push(msgs.map((m) => m.uuid));
  }
  assert.deepEqual(new Set(views[0]), new Set(views[1]));
  assert.deepEqual(new Set(views[0]), new Set(views[2]));
  for (const p of [ann, bob, cy]) await p.context().close();
});

test("a taken name shows a clear error", async () => {
  const room = "Names";
  const ann = await open([0]);
  await signIn(ann, "Ann", room);
  await waitEdge(ann, "edge-1");
  const other = await open([1]);
  await signIn(other, "Ann", room);
  await other.waitForSelector("#signin-error:not([hidden])");
  assert.match(await other.textContent("#signin-error"), /“Ann” is already taken in “Names”/);
  assert.ok(await other.isVisible("#signin"));
  await shot(other, "06-name-taken");
  // Another name works from the same page.
  await signIn(other, "Ann B.", room);
  await waitEdge(other, "edge-2");
  await ann.waitForSelector('#members li[data-name="Ann B."]', { state: "attached" });

  // Ann joins a second room; what arrives in the first one counts as unread there.
  await ann.fill("#add-room-name", "Random");
  await ann.press("#add-room-name", "Enter");
  await ann.waitForSelector('#rooms .room.active[data-room="Random"]');
  await sendText(other, "are you around?");
  await sendText(other, "ping me when you are");
  await ann.waitForSelector('#rooms .room[data-room="Names"] .badge:text("2")');
  await shot(ann, "07-unread");
  await ann.click('#rooms .room[data-room="Names"]');
  await waitText(ann, "ping me when you are");
  assert.equal(await ann.$('#rooms .room[data-room="Names"] .badge'), null);
  await ann.context().close();
  await other.context().close();
});

test("history pages upwards: scrolling to the top loads older messages, each once", async () => {
  const room = "Long History";
  const bot = makeClient({ url: stack.edges[0].ws, userName: "Archivist" });
  await bot.joinRoom(room);
  const sends = [];
  for (let i = 1; i <= 130; i++) sends.push(bot.send(room, `line ${i}`));
  await bounded(Promise.all(sends.map((x) => x.done)), T, "130 messages stored");
  bot.close();
  const page = await open([1]);
  await signIn(page, "Reader", room);
  await waitText(page, "line 130");
  const first = (await shown(page)).length;
  assert.equal(first, 100); // what a join replays (--max-messages-history)
  await page.$eval("#scroller", (s) => { s.scrollTop = 0; s.dispatchEvent(new Event("scroll")); });
  await waitText(page, "line 1");
  const msgs = await shown(page);
  assert.equal(msgs.length, 130);
  assert.equal(new Set(msgs.map((m) => m.uuid)).size, 130);
  assert.deepEqual(msgs.map((m) => m.text), Array.from({ length: 130 }, (_, i) => `line ${i + 1}`));
  await page.waitForSelector("#older", { state: "hidden" });
  await shot(page, "08-history-paged");
  await page.context().close();
});
