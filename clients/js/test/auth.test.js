// Tokens (protocol v1.1) against a stack whose edges and filestore require them: the socket
// carries ?token=, joins are refused without one, uploads carry Authorization: Bearer and
// downloads ?token=; a token given as a function is asked again on every reconnect.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, makeClient, until, waitEvent } from "./support.js";

let stack;
const clients = [];
const client = (opts) => { const c = makeClient({ filestoreUrl: stack.filestore, backoff: { initialMs: 100, maxMs: 1000 }, ...opts }); clients.push(c); return c; };
const token = async (user, name, room) => (await stack.command(`token ${user} ${name} ${room}`)).token;

before(async () => { stack = await startStack({ NATTER_JS_AUTH: "required" }); });
after(async () => { for (const c of clients) c.close(); await stack?.stop(); });

test("joins need a valid token for that user, name and room", async () => {
  const room = "Secure Room";
  const none = client({ url: stack.edges[0].ws, userId: "u-ann", userName: "Ann" });
  await assert.rejects(none.joinRoom(room), (e) => e.code === -32007);
  none.close();
  const t = await token("u-ann", "Ann", room);
  const wrongName = client({ url: stack.edges[0].ws, userId: "u-ann", userName: "Anna", token: t });
  await assert.rejects(wrongName.joinRoom(room), (e) => e.code === -32007);
  wrongName.close();
  const wrongRoom = client({ url: stack.edges[0].ws, userId: "u-ann", userName: "Ann", token: t });
  await assert.rejects(wrongRoom.joinRoom("Elsewhere"), (e) => e.code === -32007);
  wrongRoom.close();
});

test("with tokens: messages, an upload and its download; a token function is asked again on reconnect", async () => {
  const room = "Secure Room";
  let asked = 0;
  const annToken = await token("u-ann", "Ann", room);
  const ann = client({ url: [stack.edges[0].ws, stack.edges[1].ws], userId: "u-ann", userName: "Ann", token: () => { asked++; return annToken; } });
  const bob = client({ url: stack.edges[1].ws, userId: "u-bob", userName: "Bob", token: await token("u-bob", "Bob", room) });
  await ann.joinRoom(room);
  await bob.joinRoom(room);
  assert.equal((await ann.send(room, "hello with a token").done).text, "hello with a token");
  const bytes = Buffer.from("secret notes\n");
  const up = await bob.sendFile(room, bytes, { fileName: "secret.txt" });
  assert.ok(up.id);
  await until(ann, ["message"], () => ann.messages(room).some((m) => m.type === "file"), "the file announcement");
  const file = ann.messages(room).find((m) => m.type === "file");
  assert.match(ann.fileUrl(file), /\?token=/);
  const res = await fetch(ann.fileUrl(file));
  assert.equal(res.status, 200);
  assert.deepEqual(Buffer.from(await res.arrayBuffer()), bytes);
  assert.equal((await fetch(ann.fileUrl(file).split("?")[0])).status, 401);

  const before = asked;
  const back = waitEvent(ann, "welcome", (w) => w.node === "edge-2", "Ann on edge-2");
  await stack.command("kill 0");
  await back;
  assert.ok(asked > before, "the token function was asked again");
  await ann.send(room, "still me").done;
  await until(bob, ["message"], () => bob.texts(room).includes("still me"), "Bob to get it");
  await stack.command("restart 0");
});
