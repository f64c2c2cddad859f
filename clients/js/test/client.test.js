// The library against the real stack: two edges, an archiver, a filestore, nats-server and
// Postgres (started by natter-js-harness). Each test uses its own room and clients.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, makeClient, waitEvent, until, onceInOrder, PNG } from "./support.js";

let stack;
const clients = [];
const client = (opts) => { const c = makeClient({ filestoreUrl: stack.filestore, backoff: { initialMs: 100, maxMs: 1000 }, ...opts }); clients.push(c); return c; };
const e = (i) => stack.edges[i].ws;

before(async () => { stack = await startStack(); });
after(async () => { for (const c of clients) c.close(); await stack?.stop(); });

test("two clients on two edges exchange messages in order, exactly once", async () => {
  const room = "Exchange Room";
  const ann = client({ url: e(0), userName: "Ann" });
  const bob = client({ url: e(1), userName: "Bob" });
  const wa = await ann.joinRoom(room);
  assert.equal(wa.node, "edge-1");
  const joinedBob = until(ann, ["members"], () => ann.members(room).includes("Bob"), "Ann to see Bob");
  const wb = await bob.joinRoom(room);
  assert.equal(wb.node, "edge-2");
  assert.deepEqual(wb.members, ["Ann", "Bob"]);
  await joinedBob;

  const sent = [];
  for (let i = 0; i < 5; i++) {
    sent.push(ann.send(room, `ann ${i}`), bob.send(room, `bob ${i}`));
  }
  const acks = await Promise.all(sent.map((s) => s.done));
  assert.ok(acks.every((m) => m.id));
  for (const c of [ann, bob]) {
    await until(c, ["message"], () => c.texts(room).length >= 10, "10 messages");
    assert.equal(onceInOrder(c.messages(room)), null);
    assert.deepEqual(c.texts(room).filter((t) => t.startsWith("ann")), ["ann 0", "ann 1", "ann 2", "ann 3", "ann 4"]);
    assert.deepEqual(c.texts(room).filter((t) => t.startsWith("bob")), ["bob 0", "bob 1", "bob 2", "bob 3", "bob 4"]);
  }
  assert.deepEqual(ann.messages(room).map((m) => m.uuid), bob.messages(room).map((m) => m.uuid));

  // A late joiner gets the history on join, and pages further back with getHistory.
  const cat = client({ url: e(1), userName: "Cat" });
  await cat.joinRoom(room);
  await until(cat, ["message"], () => cat.texts(room).length >= 10, "history on join");
  const ids = cat.messages(room).map((m) => m.id);
  const page = await cat.getHistory(room, { before: ids[5], limit: 3 });
  assert.equal(page.messages.length, 3);
  assert.ok(page.more);
  assert.deepEqual(page.messages.map((m) => m.id).sort(), ids.slice(2, 5).sort());
});

test("uploads round-trip: an image and a file, announced and resolved to URLs", async () => {
  const room = "Upload Room";
  const ann = client({ url: e(0), userName: "Ann" });
  const bob = client({ url: e(1), userName: "Bob" });
  await ann.joinRoom(room);
  await bob.joinRoom(room);
  const progress = [];
  const img = await ann.sendImage(room, PNG, { mimeType: "image/png", fileName: "dot.png", onProgress: (p) => progress.push(p) });
  assert.ok(img.id);
  assert.ok(progress.length > 0);
  const bytes = Buffer.from("hello, file\n".repeat(1000));
  const file = await bob.sendFile(room, bytes, { fileName: "notes v1.txt", mimeType: "text/plain" });
  assert.ok(file.id);
  for (const c of [ann, bob]) {
    await until(c, ["message"], () => c.messages(room).length >= 2, "the two announcements");
    const [im, fm] = c.messages(room);
    assert.equal(im.type, "image");
    assert.equal(im.uuid, img.uuid);
    assert.equal(fm.type, "file");
    assert.equal(fm.fileName, "notes v1.txt");
    assert.equal(fm.fileSize, bytes.length);
    const url = await c.imageUrl(im);
    assert.ok(url.startsWith("data:image/png;base64,"));
    assert.deepEqual(Buffer.from(url.split(",")[1], "base64"), PNG);
    const res = await fetch(c.fileUrl(fm));
    assert.equal(res.status, 200);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), bytes);
  }
  // The same uuid again is stored and announced once.
  await ann.sendImage(room, PNG, { mimeType: "image/png", uuid: img.uuid });
  const more = await bob.getHistory(room, { limit: 10 });
  assert.equal(more.messages.filter((m) => m.uuid === img.uuid).length, 1);
});

test("a drain moves a client to the other edge with nothing lost or duplicated; members stay right", async () => {
  const room = "Drain Room";
  const ann = client({ url: [e(0), e(1)], userName: "Ann" });
  const bob = client({ url: e(1), userName: "Bob" });
  assert.equal((await ann.joinRoom(room)).node, "edge-1");
  await bob.joinRoom(room);
  await until(bob, ["members"], () => bob.members(room).includes("Ann"), "Bob to see Ann");
  for (let i = 0; i < 5; i++) await bob.send(room, `before ${i}`).done;

  const moving = waitEvent(ann, "moving", (m) => m.reason === "draining", "the drain request");
  const moved = waitEvent(ann, "welcome", (w) => w.node === "edge-2", "Ann's welcome on edge-2");
  const drained = stack.command("term 0");
  await moving;
  const during = [];
  for (let i = 0; i < 5; i++) during.push(bob.send(room, `during ${i}`), ann.send(room, `ann ${i}`));
  await moved;
  await Promise.all(during.map((s) => s.done));
  assert.match((await drained).exited, /exit status: 0/);
  for (const c of [ann, bob]) {
    await until(c, ["message"], () => c.texts(room).length >= 15, "15 messages");
    assert.equal(onceInOrder(c.messages(room)), null);
  }
  await until(bob, ["members"], () => bob.members(room).join() === "Ann,Bob", "Bob's member list after the move");
  assert.deepEqual(ann.members(room), ["Ann", "Bob"]);
  await stack.command("restart 0");
});

test("an edge killed with -9: its client resumes on the other, offline sends go out once", async () => {
  const room = "Kill Room";
  const cy = client({ url: [e(1), e(0)], userName: "Cy" });
  const dee = client({ url: e(0), userName: "Dee" });
  assert.equal((await cy.joinRoom(room)).node, "edge-2");
  await dee.joinRoom(room);
  await until(cy, ["members"], () => cy.members(room).includes("Dee"), "Cy to see Dee");
  for (let i = 0; i < 5; i++) await cy.send(room, `before ${i}`).done;

  const queued = [];
  const offline = waitEvent(cy, "disconnected", () => true, "Cy's drop").then(() => {
    for (let i = 0; i < 5; i++) queued.push(cy.send(room, `offline ${i}`));
  });
  const resumed = waitEvent(cy, "welcome", (w) => w.node === "edge-1", "Cy's welcome on edge-1");
  const flags = [];
  cy.on("queued", (q) => flags.push(q.offline));
  await stack.command("kill 1");
  await offline;
  await resumed;
  for (let i = 0; i < 5; i++) queued.push(dee.send(room, `dee ${i}`));
  await Promise.all(queued.map((s) => s.done));
  assert.deepEqual(flags.slice(0, 5), [true, true, true, true, true]);
  for (const c of [cy, dee]) {
    await until(c, ["message"], () => c.texts(room).length >= 15, "15 messages");
    assert.equal(onceInOrder(c.messages(room)), null);
    assert.equal(c.texts(room).filter((t) => t.startsWith("offline")).length, 5);
  }
  assert.deepEqual(cy.pending(), []);
  // Cy's sessions on the dead edge expire silently; Cy never left, so nobody saw it leave.
  assert.deepEqual(dee.members(room), ["Cy", "Dee"]);
  await stack.command("restart 1");
});

test("messages sent while offline are delivered once after reconnect", async () => {
  const room = "Offline Room";
  const eve = client({ url: e(0), userName: "Eve", backoff: { initialMs: 50, maxMs: 300 } });
  const fay = client({ url: e(1), userName: "Fay" });
  await eve.joinRoom(room);
  await fay.joinRoom(room);
  const dropped = waitEvent(eve, "disconnected", () => true, "Eve's drop");
  await stack.command("kill 0");
  await dropped;
  const sends = [0, 1, 2].map((i) => eve.send(room, `offline ${i}`));
  assert.equal(eve.pending().length, 3);
  assert.notEqual(eve.state, "open");
  const back = waitEvent(eve, "welcome", () => true, "Eve back");
  await stack.command("restart 0");
  await back;
  await Promise.all(sends.map((s) => s.done));
  await until(fay, ["message"], () => fay.texts(room).length >= 3, "Fay to get the 3");
  assert.deepEqual(fay.texts(room), ["offline 0", "offline 1", "offline 2"]);
  assert.equal(onceInOrder(fay.messages(room)), null);
  assert.equal(onceInOrder(eve.messages(room)), null);
  assert.deepEqual(eve.texts(room), ["offline 0", "offline 1", "offline 2"]);
});

test("member lists follow joins, leaves and drops; a taken name is refused", async () => {
  const room = "Presence Room";
  const gil = client({ url: e(0), userName: "Gil" });
  const hal = client({ url: e(1), userName: "Hal" });
  const ivy = client({ url: e(0), userName: "Ivy" });
  await gil.joinRoom(room);
  await hal.joinRoom(room);
  await ivy.joinRoom(room);
  // Each client's own view, re-checked on its own events (a condition over all three,
  // re-checked only on one client's events, waits forever once that client is complete
  // before the others).
  const seesAll = (c) => () => c.members(room).join() === "Gil,Hal,Ivy";
  await Promise.all([gil, hal, ivy].map((c) => until(c, ["members"], seesAll(c), "everyone to see everyone")));

  await ivy.leaveRoom(room);
  await until(gil, ["members"], () => gil.members(room).join() === "Gil,Hal", "Gil to see Ivy leave");
  await until(hal, ["members"], () => hal.members(room).join() === "Gil,Hal", "Hal to see Ivy leave");
  hal.close();
  await until(gil, ["members"], () => gil.members(room).join() === "Gil", "Gil to see Hal drop");
  await ivy.joinRoom(room);
  await until(gil, ["members"], () => gil.members(room).join() === "Gil,Ivy", "Gil to see Ivy back");

  const impostor = client({ url: e(1), userName: "Gil" });
  await assert.rejects(impostor.joinRoom(room), (err) => err.code === -32001);
  assert.deepEqual(impostor.rooms(), []);
});
