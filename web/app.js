// natter web app: the UI over the client library (lib/ is clients/js/src). The library owns
// delivery (reconnect, resume by _id, retries by uuid, the offline queue, presence); this
// file only shows what it reports: rooms with unread counts, the conversation with history
// paging upwards, members, typing, images, files and the connection's edge and state.
import { NatterClient, ErrorCode } from "./lib/index.js";

const qs = new URLSearchParams(location.search);
const host = location.hostname || "127.0.0.1";
const WS_URLS = (qs.get("ws") || `ws://${host}:8080/chat`).split(",").map((s) => s.trim()).filter(Boolean);
const FILES_URL = qs.get("files") || `http://${host}:8090`;
const SAVED = "natter.session";

const $ = (id) => document.getElementById(id);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

// ---- identity -------------------------------------------------------------------------

function claimsOf(jwt) {
  try {
    const b64 = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(b64))));
  } catch { return null; }
}
const localUserId = localStorage.natterUserId || (localStorage.natterUserId = crypto.randomUUID());

function hue(name) { let h = 0; for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0; return h % 360; }
function initials(name) {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  return ((parts[0]?.[0] || "?") + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
}
function avatar(name, cls = "avatar") {
  return el("span", { class: cls, style: `background:hsl(${hue(name)} 55% 45%)`, text: initials(name), "aria-hidden": "true" });
}
function fmtSize(n) {
  if (n == null || isNaN(n)) return "";
  const u = ["B", "KB", "MB", "GB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${u[i]}`;
}
function fmtTime(m) {
  const d = m.ts ? new Date(m.ts) : m.date ? new Date(m.date) : new Date();
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// ---- state ----------------------------------------------------------------------------

let client = null;
let me = { name: "", userId: localUserId, token: "" };
const rooms = new Map(); // name -> {name, msgs: Map<uuid, Element>, oldestId, more, unread, loadingOlder, typing: Map}
let active = null;
let lastNode = null;
const leaving = new Map(); // "room\nname" -> timer of a "left" line not shown yet

function roomState(name) {
  if (!rooms.has(name)) rooms.set(name, { name, msgs: new Map(), container: el("div", { class: "room-msgs", "data-room": name }), oldestId: null, more: true, unread: 0, typing: new Map(), loadingOlder: false });
  return rooms.get(name);
}
function save() {
  localStorage.setItem(SAVED, JSON.stringify({ name: me.name, token: me.token, rooms: [...rooms.keys()], active }));
}

// ---- sign in --------------------------------------------------------------------------

function showSignin(error) {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").hidden = !error;
  $("signin-error").textContent = error || "";
  if (error) $("f-name").select(); else $("f-name").focus();
}

function newClient() {
  if (client) client.close();
  const claims = me.token ? claimsOf(me.token) : null;
  me.userId = claims && claims.sub ? String(claims.sub) : localUserId;
  client = new NatterClient({ url: WS_URLS, filestoreUrl: FILES_URL, userId: me.userId, userName: me.name, token: me.token || null });
  client.on("status", onStatus);
  client.on("moving", (m) => setConn("resuming", `Moving off ${m.node || "edge"} (${m.reason})…`));
  client.on("message", onMessage);
  client.on("members", ({ room }) => { if (room === active) renderMembers(); });
  // A member who leaves and is back within a few seconds (moving edges) is not announced.
  client.on("userJoined", ({ room, userName }) => {
    const key = `${room}\n${userName}`;
    if (leaving.has(key)) { clearTimeout(leaving.get(key)); leaving.delete(key); return; }
    systemLine(room, `${userName} joined`);
  });
  client.on("userLeft", ({ room, userName }) => {
    const key = `${room}\n${userName}`;
    clearTimeout(leaving.get(key));
    leaving.set(key, setTimeout(() => { leaving.delete(key); systemLine(room, `${userName} left`); }, 5000));
  });
  client.on("typing", onTyping);
  client.on("historyTruncated", ({ room }) => systemLine(room, "Some messages from while you were away are not shown (too many to replay)."));
  client.on("sendFailed", ({ uuid, message }) => {
    for (const r of rooms.values()) { const e = r.msgs.get(uuid); if (e) { e.classList.add("failed"); e.querySelector(".state").textContent = `not sent: ${message}`; } }
  });
  client.on("joinFailed", ({ room, code, message }) => {
    if (!rooms.get(room)?.joined) return; // a first join: its caller reports it
    removeRoom(room);
    toast(code === ErrorCode.NAME_TAKEN ? `You were signed out of “${room}”: the name is now taken.` : `Left “${room}”: ${message}`);
  });
  return client;
}

async function signIn(name, room, token) {
  me = { ...me, name, token };
  const claims = token ? claimsOf(token) : null;
  if (token && !claims) return showSignin("That token is not a JWT.");
  if (claims && claims.name) me.name = claims.name;
  newClient();
  $("f-join").disabled = true;
  try {
    await joinRoom(room, true);
  } catch (err) {
    client?.close();
    client = null;
    return showSignin(joinErrorText(err, me.name, room));
  } finally {
    $("f-join").disabled = false;
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = me.name;
  $("me-avatar").replaceWith(Object.assign(avatar(me.name), { id: "me-avatar" }));
}

function joinErrorText(err, name, room) {
  switch (err && err.code) {
    case ErrorCode.NAME_TAKEN: return `The name “${name}” is already taken in “${room}”. Please choose another name.`;
    case ErrorCode.UNAUTHORIZED: return `Not allowed: ${err.message}`;
    case ErrorCode.INVALID: return `That name or room is not valid: ${err.message}`;
    default: return `Could not join “${room}”: ${err && err.message ? err.message : err}`;
  }
}

async function joinRoom(room, first) {
  const isNew = !rooms.has(room);
  const r = roomState(room);
  if (isNew) $("messages").append(r.container);
  try {
    await client.joinRoom(room, { userName: me.name });
  } catch (err) {
    if (isNew) removeRoom(room, false);
    throw err;
  }
  r.joined = true;
  select(room);
  save();
  if (!first) renderRooms();
}

function removeRoom(room, signOutWhenNone = true) {
  const r = rooms.get(room);
  if (!r) return;
  r.container.remove();
  rooms.delete(room);
  if (active === room) { active = null; const next = rooms.keys().next().value; if (next) select(next); }
  renderRooms();
  save();
  if (!rooms.size && signOutWhenNone) signOut();
}

function signOut() {
  if (client) client.close();
  client = null;
  for (const r of rooms.values()) r.container.remove();
  rooms.clear();
  active = null;
  localStorage.removeItem(SAVED);
  showSignin();
}

// ---- rooms ----------------------------------------------------------------------------

function select(room) {
  active = room;
  const r = roomState(room);
  r.unread = 0;
  for (const x of rooms.values()) x.container.hidden = x.name !== room;
  $("room-title").textContent = `# ${room}`;
  renderRooms();
  renderMembers();
  renderTyping();
  updateOlder();
  document.body.classList.remove("sidebar-open");
  scrollToBottom(true);
  $("text").focus({ preventScroll: true });
  save();
}

function renderRooms() {
  const nav = $("rooms");
  nav.replaceChildren(...[...rooms.values()].map((r) => el("button", {
    class: `room${r.name === active ? " active" : ""}${r.unread ? " has-unread" : ""}`, "data-room": r.name,
    onclick: () => select(r.name),
  }, el("span", { class: "hash", text: "#" }), el("span", { class: "room-name", text: r.name }),
  r.unread ? el("span", { class: "badge", text: r.unread > 99 ? "99+" : String(r.unread) }) : null)));
  const total = [...rooms.values()].reduce((n, r) => n + r.unread, 0);
  document.title = total ? `(${total}) natter` : "natter";
}

function renderMembers() {
  if (!active || !client) return;
  const names = client.members(active);
  $("member-count").textContent = String(names.length);
  $("room-sub").textContent = `${names.length} member${names.length === 1 ? "" : "s"}`;
  $("members").replaceChildren(...names.map((n) => el("li", { class: "member", "data-name": n },
    avatar(n), el("span", { class: "member-name", text: n }), n === me.name ? el("span", { class: "you", text: "you" }) : null,
    el("span", { class: "online", "aria-label": "online" }))));
}

// ---- connection -----------------------------------------------------------------------

function setConn(state, text, node) {
  const c = $("conn");
  c.dataset.state = state;
  if (node) c.dataset.node = node;
  $("conn-text").textContent = text;
  const mini = $("conn-mini");
  mini.dataset.state = state;
  $("conn-mini-text").textContent = state === "open" ? (c.dataset.node || "online") + " ·" : state === "resuming" ? "resuming… ·" : "connecting… ·";
  $("resume-banner").hidden = state !== "resuming";
}

function onStatus(s) {
  if (s.node) lastNode = s.node;
  if (s.state === "open") setConn("open", s.node ? `Connected · ${s.node}` : "Connected", s.node || undefined);
  else if (s.state === "resuming") setConn("resuming", s.delayMs > 1000 ? `Offline — retrying in ${Math.round(s.delayMs / 1000)} s` : `Resuming${lastNode ? ` (left ${lastNode})` : ""}…`);
  else if (s.state === "connecting") setConn("connecting", "Connecting…");
  else if (s.state === "closed") setConn("closed", "Disconnected");
}

// ---- messages -------------------------------------------------------------------------

function nearBottom() { const s = $("scroller"); return s.scrollHeight - s.scrollTop - s.clientHeight < 120; }
function scrollToBottom(force) { const s = $("scroller"); if (force || nearBottom()) s.scrollTop = s.scrollHeight; }

function messageBody(m) {
  if (m.type === "image") {
    const box = el("div", { class: "image loading" });
    client.imageUrl(m).then((url) => {
      box.classList.remove("loading");
      if (!url) { box.textContent = "image unavailable"; return; }
      const stick = nearBottom();
      const img = el("img", { src: url, alt: m.fileName || "image", loading: "lazy", onload: () => stick && scrollToBottom(true),
        onclick: () => lightbox(url, m), tabindex: "0", role: "button", "aria-label": "Show the image larger" });
      box.append(img);
    }, () => { box.classList.remove("loading"); box.textContent = "image unavailable"; });
    return box;
  }
  if (m.type === "file") {
    return el("a", { class: "file", href: client.fileUrl(m), download: m.fileName || "file", target: "_blank", rel: "noopener" },
      el("span", { class: "file-icon", text: (m.fileName || "").split(".").pop().slice(0, 4).toUpperCase() || "FILE" }),
      el("span", { class: "file-meta" }, el("span", { class: "file-name", text: m.fileName || "file" }),
        el("span", { class: "file-size", text: fmtSize(m.fileSize) || "download" })));
  }
  return el("div", { class: "text", text: m.text ?? "" });
}

function messageEl(m, pending) {
  const t = m.ts ? Date.parse(m.ts) : m.date || Date.now();
  const e = el("div", { class: `msg${pending ? " pending" : ""}${m.mine ? " mine" : ""}`, "data-uuid": m.uuid, "data-id": m.id || null, "data-user": m.userName, "data-type": m.type, "data-t": String(t), title: new Date(t).toLocaleString() },
    avatar(m.userName || "?"),
    el("div", { class: "body" },
      el("div", { class: "meta" }, el("span", { class: "who", text: m.userName || "?" }), el("time", { text: fmtTime(m) }),
        el("span", { class: "state", text: pending ? "sending…" : "" })),
      messageBody(m)));
  return e;
}

function groupWith(prev, e) {
  const same = prev && prev.classList.contains("msg") && prev.dataset.user === e.dataset.user
    && Math.abs(Number(e.dataset.t) - Number(prev.dataset.t)) < 5 * 60 * 1000;
  e.classList.toggle("cont", !!same);
}

function onMessage(m) {
  const r = rooms.get(m.room);
  if (!r) return;
  const existing = r.msgs.get(m.uuid);
  if (existing) {
    if (existing.classList.contains("pending")) {
      existing.classList.remove("pending");
      existing.dataset.id = m.id;
      existing.querySelector(".state").textContent = "";
      existing.querySelector("time").textContent = fmtTime(m);
    }
    return;
  }
  const stick = nearBottom();
  const e = messageEl(m, false);
  r.msgs.set(m.uuid, e);
  groupWith(r.container.lastElementChild, e);
  r.container.append(e);
  if (m.id && (r.oldestId == null || BigInt(m.id) < BigInt(r.oldestId))) r.oldestId = m.id;
  if (r.typing.has(m.userName)) { clearTimeout(r.typing.get(m.userName)); r.typing.delete(m.userName); renderTyping(); }
  if (m.room === active) { if (stick || m.mine) scrollToBottom(true); updateOlder(); }
  else if (!m.mine) { r.unread++; renderRooms(); }
}

function systemLine(room, text) {
  const r = rooms.get(room);
  if (!r) return;
  r.container.append(el("div", { class: "sys", text }));
  if (room === active) { scrollToBottom(); renderMembers(); }
}

/** "Load older" shows while older pages may exist and the conversation fills the view (a join
 * replays the last 100 messages: a shorter conversation has nothing before it). */
function updateOlder() {
  const r = rooms.get(active);
  const sc = $("scroller");
  $("older").hidden = !r || !r.more || sc.scrollHeight <= sc.clientHeight + 40;
}

async function loadOlder() {
  const r = rooms.get(active);
  if (!r || r.loadingOlder || !r.more || !client || client.state !== "open") return;
  r.loadingOlder = true;
  $("load-older").textContent = "Loading…";
  try {
    const page = await client.getHistory(r.name, { before: r.oldestId ?? undefined, limit: 30 });
    const s = $("scroller");
    const fromBottom = s.scrollHeight - s.scrollTop;
    const frag = document.createDocumentFragment();
    const sorted = page.messages.filter((m) => m.uuid && !r.msgs.has(m.uuid)).sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
    let prev = null;
    for (const m of sorted) {
      m.mine = String(m.userId) === me.userId;
      const e = messageEl(m, false);
      groupWith(prev, e);
      prev = e;
      r.msgs.set(m.uuid, e);
      frag.append(e);
      if (r.oldestId == null || BigInt(m.id) < BigInt(r.oldestId)) r.oldestId = m.id;
    }
    const first = r.container.firstElementChild;
    r.container.prepend(frag);
    if (first && prev) groupWith(prev, first);
    r.more = page.more && page.messages.length > 0;
    s.scrollTop = s.scrollHeight - fromBottom;
  } catch (err) {
    toast(`Could not load older messages: ${err.message}`);
  } finally {
    r.loadingOlder = false;
    $("load-older").textContent = "Load older messages";
    updateOlder();
  }
}

function sendText() {
  const text = $("text").value;
  if (!text.trim() || !active) return;
  const { uuid, done } = client.send(active, text);
  const r = rooms.get(active);
  const e = messageEl({ uuid, type: "text", text, userName: me.name, mine: true, date: Date.now() }, true);
  r.msgs.set(uuid, e);
  groupWith(r.container.lastElementChild, e);
  r.container.append(e);
  scrollToBottom(true);
  $("text").value = "";
  done.catch(() => {});
}

// ---- typing ---------------------------------------------------------------------------

function onTyping({ room, userName }) {
  const r = rooms.get(room);
  if (!r || userName === me.name) return;
  clearTimeout(r.typing.get(userName));
  r.typing.set(userName, setTimeout(() => { r.typing.delete(userName); renderTyping(); }, 3500));
  if (room === active) renderTyping();
}
function renderTyping() {
  const r = rooms.get(active);
  const names = r ? [...r.typing.keys()] : [];
  $("typing").textContent = !names.length ? "" : names.length === 1 ? `${names[0]} is typing…`
    : names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : "Several people are typing…";
}

// ---- uploads --------------------------------------------------------------------------

async function upload(kind, file) {
  if (!file || !active) return;
  const room = active;
  const bar = el("div", { class: "bar" });
  const row = el("div", { class: "upload" }, el("span", { class: "upload-name", text: `${kind === "image" ? "Image" : "File"}: ${file.name} (${fmtSize(file.size)})` }), el("div", { class: "track" }, bar));
  $("uploads").append(row);
  const onProgress = ({ loaded, total }) => { if (total) bar.style.width = `${Math.round((100 * loaded) / total)}%`; };
  try {
    if (kind === "image") await client.sendImage(room, file, { onProgress, fileName: file.name });
    else await client.sendFile(room, file, { onProgress, fileName: file.name });
    row.remove();
  } catch (err) {
    row.classList.add("failed");
    row.querySelector(".upload-name").textContent = `${file.name}: upload failed (${err.message})`;
    setTimeout(() => row.remove(), 8000);
  }
}

/** The image full size over the page; a click or Escape closes it. */
function lightbox(url, m) {
  const close = () => { box.remove(); document.removeEventListener("keydown", onKey); };
  const onKey = (e) => { if (e.key === "Escape") close(); };
  const box = el("div", { class: "lightbox", onclick: close, role: "dialog", "aria-label": "Image" },
    el("img", { src: url, alt: m.fileName || "image" }),
    el("div", { class: "lightbox-cap", text: `${m.userName || ""} · ${fmtTime(m)}` }));
  document.addEventListener("keydown", onKey);
  document.body.append(box);
}

function toast(text) {
  const t = el("div", { class: "toast", role: "status", text });
  document.body.append(t);
  setTimeout(() => t.remove(), 6000);
}

// ---- wiring ---------------------------------------------------------------------------

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("f-name").value.trim(), room = $("f-room").value.trim();
  if (name && room) signIn(name, room, $("f-token").value.trim());
});
$("add-room").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const room = $("add-room-name").value.trim();
  if (!room) return;
  $("add-room-error").hidden = true;
  if (rooms.has(room)) { select(room); $("add-room-name").value = ""; return; }
  try {
    await joinRoom(room, false);
    $("add-room-name").value = "";
  } catch (err) {
    $("add-room-error").textContent = joinErrorText(err, me.name, room);
    $("add-room-error").hidden = false;
  }
});
$("composer").addEventListener("submit", (ev) => { ev.preventDefault(); sendText(); });
$("text").addEventListener("input", () => active && client && client.typing(active));
$("pick-image").addEventListener("change", (e) => { upload("image", e.target.files[0]); e.target.value = ""; });
$("pick-file").addEventListener("change", (e) => { upload("file", e.target.files[0]); e.target.value = ""; });
$("load-older").addEventListener("click", loadOlder);
$("scroller").addEventListener("scroll", () => {
  const s = $("scroller");
  if (s.scrollTop < 40 && s.scrollHeight > s.clientHeight + 40) loadOlder();
});
$("leave-room").addEventListener("click", async () => { const room = active; if (!room) return; await client.leaveRoom(room); removeRoom(room); });
$("sign-out").addEventListener("click", signOut);
$("open-sidebar").addEventListener("click", () => document.body.classList.add("sidebar-open"));
$("close-sidebar").addEventListener("click", () => document.body.classList.remove("sidebar-open"));
$("toggle-members").addEventListener("click", () => document.body.classList.toggle("members-open"));
$("close-members").addEventListener("click", () => document.body.classList.remove("members-open"));
// On narrow screens a tap beside an open panel closes it.
document.querySelector(".chat").addEventListener("click", (e) => {
  if (e.target.closest("#open-sidebar, #toggle-members")) return;
  document.body.classList.remove("sidebar-open", "members-open");
}, true);
const scroller = $("scroller");
scroller.addEventListener("dragover", (e) => e.preventDefault());
scroller.addEventListener("drop", (e) => {
  e.preventDefault();
  for (const f of e.dataTransfer.files) upload(f.type.startsWith("image/") ? "image" : "file", f);
});

// Start: a saved session resumes (its rooms rejoined); otherwise the sign-in form.
const saved = (() => { try { return JSON.parse(localStorage.getItem(SAVED)); } catch { return null; } })();
if (qs.get("token")) $("f-token").value = qs.get("token");
if (qs.get("name")) $("f-name").value = qs.get("name");
if (qs.get("room")) $("f-room").value = qs.get("room");
if (saved && saved.name && saved.rooms && saved.rooms.length) {
  (async () => {
    await signIn(saved.name, saved.rooms[0], qs.get("token") || saved.token || "");
    for (const room of saved.rooms.slice(1)) await joinRoom(room, false).catch(() => {});
    if (saved.active && rooms.has(saved.active)) select(saved.active);
  })();
} else {
  showSignin();
}
