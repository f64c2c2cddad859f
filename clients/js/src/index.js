// natter-client: the client library every natter browser and Node client uses.
//
// It owns what applications must never re-implement: one WebSocket speaking protocol v1
// (shared/PROTOCOL.md), reconnect with exponential backoff and jitter, resume of every
// joined room from the last `_id` seen (on any drop, on the server's `reconnect` request
// and on close 1013), sends retried with the same uuid until their echo comes back, an
// offline queue, the member list of each room, and uploads through the filestore.
// It deliberately holds no UI and no storage: the app decides what to show and keep.

const RESUME_CODES = new Set([1001, 1006, 1011, 1012, 1013]);

/** An error the server answered (or the library raised), with the protocol's code. */
export class NatterError extends Error {
  constructor(code, message, room) {
    super(message);
    this.name = "NatterError";
    this.code = code;
    this.room = room;
  }
}

/** Error codes of shared/PROTOCOL.md. */
export const ErrorCode = Object.freeze({
  PARSE: -32700, INVALID: -32600, NAME_TAKEN: -32001, METHOD: -32002, RECONNECT_FAILED: -32003,
  NOT_JOINED: -32004, RATE_LIMITED: -32005, TOO_LARGE: -32006, UNAUTHORIZED: -32007,
  JOIN_RETRY: -32008, UNAVAILABLE: -32010,
});

const KINDS = { textMessage: "text", imageMessage: "image", fileMessage: "file" };
const SEEN_MAX = 10000;

function uuid4() {
  const c = globalThis.crypto;
  if (c && c.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  c.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** `a > b` for `_id`s (decimal strings of 64-bit numbers). */
function idAfter(a, b) {
  if (b == null) return true;
  if (a.length !== b.length) return a.length > b.length;
  return a > b;
}

/** A room message as the library hands it out. */
function toMessage(m) {
  const p = m.params || {};
  return {
    id: m._id != null ? String(m._id) : null,
    uuid: p.uuid,
    type: KINDS[m.method] || m.method,
    room: p.roomName,
    userId: p.userId,
    userName: p.userName,
    text: p.text,
    fileName: p.fileName,
    fileSize: typeof p.fileSize === "number" ? p.fileSize : undefined,
    mimeType: p.mimeType,
    date: p.date,
    ts: p.ts,
    raw: m,
  };
}

/**
 * A natter connection. See src/index.d.ts for the options, methods and events.
 */
export class NatterClient {
  constructor(options = {}) {
    const urls = Array.isArray(options.url) ? options.url : [options.url];
    if (!urls.length || !urls[0]) throw new TypeError("NatterClient: url is required");
    this.urls = urls;
    this.userId = String(options.userId || uuid4());
    this.userName = options.userName || null;
    this.filestoreUrl = options.filestoreUrl ? options.filestoreUrl.replace(/\/+$/, "") : null;
    this._token = options.token || null;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this._WebSocket) throw new TypeError("NatterClient: no WebSocket (in Node pass { WebSocket } from the ws package)");
    this.backoff = { initialMs: 250, maxMs: 8000, factor: 2, jitter: 0.5, ...(options.backoff || {}) };
    this.ackTimeoutMs = options.ackTimeoutMs ?? 8000;
    this.pingIntervalMs = options.pingIntervalMs ?? 20000;
    this.resumeWith = options.resumeWith || "joinRoom";
    this.historyLimit = options.historyLimit ?? 50;
    this.rate = { perSec: 40, burst: 80, ...(options.rate || {}) };
    this._bucket = { tokens: this.rate.burst, at: Date.now() };

    this.state = "idle"; // idle | connecting | open | resuming | closed
    this.node = null;
    this.url = null;
    this._urlIndex = 0;
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._nextId = 1;
    this._requests = new Map(); // id -> {resolve, reject, method, room, uuid}
    this._rooms = new Map(); // name -> room state
    this._outbox = new Map(); // uuid -> pending message
    this._listeners = new Map();
    this._imageCache = new Map();
    this._typingSent = new Map();
    this._closedByUser = false;
    this._everOpened = false;
    // A browser that comes back online retries at once instead of waiting out the backoff.
    if (typeof window !== "undefined" && typeof window.addEventListener === "function") {
      window.addEventListener("online", () => {
        if (this.state === "resuming" && !this._closedByUser) { this._attempt = 0; this._open(); }
      });
    }
  }

  // ---- events ---------------------------------------------------------------------

  /** Listen to `event`; returns a function that removes the listener. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) { this._listeners.get(event)?.delete(fn); }
  once(event, fn) { const off = this.on(event, (e) => { off(); fn(e); }); return off; }
  _emit(event, payload) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try { fn(payload); } catch (e) { if (event !== "error") this._emit("error", { error: e, where: event }); }
    }
  }

  // ---- public API -----------------------------------------------------------------

  /** Open the socket (joins call this themselves). Resolves once open. */
  connect() {
    this._closedByUser = false;
    if (this.state === "open") return Promise.resolve();
    const p = new Promise((resolve, reject) => {
      const offOpen = this.on("status", (s) => {
        if (s.state === "open") { offOpen(); offClosed(); resolve(); }
      });
      const offClosed = this.on("status", (s) => {
        if (s.state === "closed") { offOpen(); offClosed(); reject(new NatterError(0, "closed")); }
      });
    });
    if (this.state === "idle") this._open();
    return p;
  }

  /** Close for good: no reconnect. Pending messages stay in `pending()`. */
  close() {
    this._closedByUser = true;
    clearTimeout(this._timer);
    this._stopPing();
    const ws = this._ws;
    this._ws = null;
    if (ws) { this._detach(ws); try { ws.close(1000, "bye"); } catch { /* already closed */ } }
    for (const r of this._rooms.values()) r.joined = false;
    this._failRequests(new NatterError(0, "closed"));
    this._setState("closed");
  }

  /**
   * Join `room`. Resolves with `{room, node, members, sessionId}` once joined (after
   * `welcome`); rejects with a NatterError (-32001 name taken, -32007 unauthorized, ...).
   */
  joinRoom(room, opts = {}) {
    const userName = opts.userName || this.userName;
    if (!userName) return Promise.reject(new TypeError("joinRoom: userName is required"));
    let r = this._rooms.get(room);
    if (r && r.joined && r.welcome) return Promise.resolve({ ...r.welcome, members: [...r.members] });
    const fresh = !r;
    if (!r) {
      r = { name: room, userName, token: opts.token || null, joined: false, lastId: null, members: [],
        seen: new Set(), waiters: [], sessionId: null, node: null, welcome: null };
      this._rooms.set(room, r);
    }
    const p = new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
    if (!fresh) return p; // its join is under way (or waits for the socket)
    if (this.state === "open") this._sendJoin(r);
    else if (this.state === "idle" || this.state === "closed") { this._closedByUser = false; this._open(); }
    return p;
  }

  /** Leave `room` (resolves when the server said OK, or at once when offline). */
  async leaveRoom(room) {
    const r = this._rooms.get(room);
    if (!r) return;
    this._rooms.delete(room);
    clearTimeout(r.pumpTimer);
    for (const [u, m] of this._outbox) if (m.room === room) { this._outbox.delete(u); m.reject(new NatterError(0, "left the room", room)); }
    for (const w of r.waiters) w.reject(new NatterError(0, "left the room", room));
    if (this.state === "open" && r.joined) await this._request("leaveRoom", { roomName: room }).catch(() => {});
    this._emit("left", { room });
  }

  /** Rooms this client is in (joined or being resumed). */
  rooms() { return [...this._rooms.keys()]; }
  /** The member names of `room`, as last known. */
  members(room) { return [...(this._rooms.get(room)?.members || [])]; }
  /** Messages sent and not yet acknowledged (the offline queue included). */
  pending() { return [...this._outbox.values()].map((m) => ({ uuid: m.uuid, room: m.room, text: m.params.text })); }
  /** The last `_id` seen in `room`. */
  lastMessageId(room) { return this._rooms.get(room)?.lastId ?? null; }

  /**
   * Send a text message. Returns `{uuid, done}`; `done` resolves with the stored message
   * (its `_id`) when the echo arrives. While disconnected it waits in the offline queue;
   * it is retried with the same uuid until acknowledged.
   */
  send(room, text, opts = {}) {
    const r = this._rooms.get(room);
    if (!r) throw new NatterError(ErrorCode.NOT_JOINED, `not in room ${room}`, room);
    const uuid = opts.uuid || uuid4();
    const params = { userId: this.userId, roomName: room, userName: r.userName, text: String(text),
      ack: false, uuid, date: Date.now() };
    let resolve, reject;
    const done = new Promise((a, b) => { resolve = a; reject = b; });
    done.catch(() => {}); // a send nobody awaits must not become an unhandled rejection
    const m = { uuid, room, params, resolve, reject, sentAt: 0, attempts: 0, retryTimer: null, inFlight: false };
    this._outbox.set(uuid, m);
    this._emit("queued", { room, uuid, text: params.text, offline: !(this.state === "open" && r.joined) });
    this._pump(room);
    return { uuid, done };
  }

  /** Tell the room this user is typing (throttled to once per 2 s per room). */
  typing(room) {
    const r = this._rooms.get(room);
    if (!r || !r.joined || this.state !== "open") return;
    const now = Date.now();
    if (now - (this._typingSent.get(room) || 0) < 2000) return;
    this._typingSent.set(room, now);
    this._raw({ jsonrpc: "2.0", method: "typing", params: { roomName: room } });
  }

  /** Older messages: `{messages, more}`, the newest `limit` before `_id` `before` (default: the room's newest). */
  async getHistory(room, opts = {}) {
    const params = { roomName: room, limit: opts.limit ?? this.historyLimit };
    if (opts.before != null) params.before = String(opts.before);
    const res = await this._request("getHistory", params, room);
    const messages = (res.messages || []).map((m) => {
      const msg = toMessage(m);
      msg.mine = String(msg.userId) === this.userId;
      return msg;
    });
    return { messages, more: !!res.more };
  }

  // ---- uploads ----------------------------------------------------------------------

  /**
   * Upload an image (a browser File/Blob, or in Node a Blob/Buffer/Uint8Array with
   * `opts.mimeType`) to the room. Retried with the same uuid on network errors and 5xx.
   * Resolves with `{uuid, id, size}`. Progress: `opts.onProgress` and `uploadProgress` events.
   */
  async sendImage(room, data, opts = {}) {
    const r = this._roomFor(room);
    const uuid = opts.uuid || uuid4();
    const blob = toBlob(data, opts.mimeType || data.type || "image/png");
    const dataUrl = await blobToDataUrl(blob);
    const body = JSON.stringify({ jsonrpc: "2.0", method: "imageMessage", id: this._nextId++,
      params: { userId: this.userId, userName: r.userName, roomName: room, ack: false, uuid,
        date: Date.now(), fileName: opts.fileName || data.name, base64ImgString: dataUrl } });
    return this._upload("/images", body, { "Content-Type": "application/json" }, room, uuid, opts);
  }

  /** Upload a file (File/Blob/Buffer; `opts.fileName` names it). Resolves with `{uuid, id, size}`. */
  async sendFile(room, data, opts = {}) {
    const r = this._roomFor(room);
    const uuid = opts.uuid || uuid4();
    const fileName = opts.fileName || data.name || "file";
    const blob = toBlob(data, opts.mimeType || data.type || "application/octet-stream");
    const msg = { jsonrpc: "2.0", method: "fileMessage", id: this._nextId++,
      params: { userId: this.userId, userName: r.userName, roomName: room, ack: false, uuid,
        date: Date.now(), fileName, fileSize: blob.size, mimeType: blob.type || undefined, fileContents: "" } };
    const make = () => {
      const fd = new FormData();
      fd.append("message", JSON.stringify(msg));
      fd.append("files[]", blob, fileName);
      return fd;
    };
    return this._upload("/files", make, {}, room, uuid, opts);
  }

  /** A URL an `<img>` can show for an image message (a data URL), or null when unknown. */
  async imageUrl(message) {
    const uuid = typeof message === "string" ? message : message.uuid;
    if (this._imageCache.has(uuid)) return this._imageCache.get(uuid);
    const p = (async () => {
      const res = await fetch(`${this._files()}/images/${encodeURIComponent(uuid)}`, { headers: await this._authHeaders() });
      if (res.status === 404 || res.status === 204) return null;
      if (!res.ok) throw new NatterError(res.status, `GET /images: ${res.status}`);
      const full = await res.json();
      const b64 = full?.params?.base64ImgString;
      if (!b64) return null;
      return b64.startsWith("data:") ? b64 : `data:image/png;base64,${b64}`;
    })();
    this._imageCache.set(uuid, p);
    p.then((v) => { if (v == null) this._imageCache.delete(uuid); }, () => this._imageCache.delete(uuid));
    return p;
  }

  /** The download URL of a file message (carries `?token=` when a token is set). */
  fileUrl(message) {
    const uuid = typeof message === "string" ? message : message.uuid;
    const t = typeof this._token === "string" ? this._token : this._lastToken;
    const base = `${this._files()}/files/${encodeURIComponent(uuid)}`;
    return t ? `${base}?token=${encodeURIComponent(t)}` : base;
  }

  // ---- internals: connection --------------------------------------------------------

  _files() {
    if (!this.filestoreUrl) throw new TypeError("NatterClient: filestoreUrl is not set");
    return this.filestoreUrl;
  }

  _roomFor(room) {
    const r = this._rooms.get(room);
    if (!r) throw new NatterError(ErrorCode.NOT_JOINED, `not in room ${room}`, room);
    return r;
  }

  async _tokenValue() {
    if (!this._token) return null;
    const t = typeof this._token === "function" ? await this._token() : this._token;
    this._lastToken = t;
    return t;
  }

  async _authHeaders() {
    const t = await this._tokenValue();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("status", { state, url: this.url, node: this.node, ...extra });
  }

  async _open() {
    clearTimeout(this._timer);
    if (this._closedByUser) return;
    const previous = this._ws;
    this._ws = null;
    if (previous) { this._detach(previous); try { previous.close(1000, "replaced"); } catch { /* gone */ } }
    const url = this.urls[this._urlIndex % this.urls.length];
    this.url = url;
    this._setState(this._everOpened ? "resuming" : "connecting", { attempt: this._attempt });
    const gen = (this._gen = (this._gen || 0) + 1);
    let token = null;
    try { token = await this._tokenValue(); } catch (e) { this._emit("error", { error: e, where: "token" }); }
    if (this._closedByUser || gen !== this._gen) return; // closed, or a newer attempt began
    const full = token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
    let ws;
    this._wasOpen = false;
    try { ws = new this._WebSocket(full); } catch (e) { this._scheduleReconnect(); return; }
    this._ws = ws;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._wasOpen = true;
      this._everOpened = true;
      this.node = null;
      this._setState("open");
      this._startPing();
      for (const r of this._rooms.values()) this._sendJoin(r);
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let m;
      try { m = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data)); } catch { return; }
      this._handle(m);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._dropped(ev.code, ev.reason);
    };
  }

  _detach(ws) { ws.onopen = ws.onmessage = ws.onclose = null; ws.onerror = () => {}; }

  /** The socket is gone (any cause): resume everything on a fresh one. */
  _dropped(code, reason) {
    const ws = this._ws;
    this._ws = null;
    if (ws) this._detach(ws);
    this._stopPing();
    for (const r of this._rooms.values()) r.joined = false;
    for (const m of this._outbox.values()) { clearTimeout(m.retryTimer); m.inFlight = false; }
    for (const r of this._rooms.values()) clearTimeout(r.pumpTimer);
    this._failRequests(new NatterError(0, `disconnected (${code})`));
    this._emit("disconnected", { code, reason: reason || "", url: this.url, node: this.node });
    if (this._closedByUser) return;
    if (this._rooms.size === 0 && this._outbox.size === 0) { this._setState("idle"); return; }
    this._urlIndex++;
    // A working socket that dropped is resumed at once; failures to connect back off.
    const wasOpen = this._wasOpen;
    this._wasOpen = false;
    this._scheduleReconnect(wasOpen && RESUME_CODES.has(code) && this._attempt === 0 ? 0 : undefined);
  }

  _scheduleReconnect(delayMs) {
    const b = this.backoff;
    const base = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, this._attempt));
    const delay = delayMs ?? Math.round(base * (1 - b.jitter * Math.random()));
    this._attempt++;
    this._setState("resuming", { attempt: this._attempt, delayMs: delay });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** The server asked us to move (drain) or closed with 1013: reconnect now, elsewhere. */
  _move(reason) {
    this._emit("moving", { reason, node: this.node, url: this.url });
    const ws = this._ws;
    if (ws) { this._detach(ws); try { ws.close(1000, "moving"); } catch { /* gone */ } }
    this._dropped(1012, reason);
  }

  _startPing() {
    this._stopPing();
    if (!this.pingIntervalMs) return;
    this._pingTimer = setInterval(() => {
      if (this.state !== "open") return;
      const timer = setTimeout(() => this._move("ping timeout"), Math.min(10000, this.pingIntervalMs));
      this._request("ping", {}).then(() => clearTimeout(timer), () => clearTimeout(timer));
    }, this.pingIntervalMs);
  }
  _stopPing() { clearInterval(this._pingTimer); this._pingTimer = null; }

  _raw(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try { ws.send(JSON.stringify(obj)); return true; } catch { return false; }
  }

  _request(method, params, room) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      this._requests.set(id, { resolve, reject, method, room });
      if (!this._raw({ jsonrpc: "2.0", method, params, id })) {
        this._requests.delete(id);
        reject(new NatterError(0, "not connected", room));
      }
    });
  }

  _failRequests(err) {
    const reqs = [...this._requests.values()];
    this._requests.clear();
    for (const q of reqs) if (q.method !== "join" && q.method !== "text") q.reject(err);
  }

  // ---- internals: rooms and messages ------------------------------------------------

  async _sendJoin(r) {
    const resume = r.lastId != null || r.everJoined;
    const method = resume && this.resumeWith === "reconnect" && !r.forceJoin ? "reconnect" : "joinRoom";
    r.forceJoin = false;
    const params = { userId: this.userId, userName: r.userName, roomName: r.name };
    if (r.lastId != null) params.lastMessageId = r.lastId;
    if (method === "reconnect" && r.sessionId) params.sessionId = r.sessionId;
    if (r.token) params.token = typeof r.token === "function" ? await r.token() : r.token;
    const id = this._nextId++;
    this._requests.set(id, { method: "join", room: r.name, resume, resolve() {}, reject() {} });
    this._raw({ jsonrpc: "2.0", method, params, id });
  }

  _handle(m) {
    if (m.id != null && !m.method && this._requests.has(m.id)) {
      const q = this._requests.get(m.id);
      this._requests.delete(m.id);
      if (q.method === "join") return this._joinAnswer(q, m);
      if (q.method === "text") return this._textAnswer(q, m);
      if (m.error) return q.reject(new NatterError(m.error.code, m.error.message, q.room));
      return q.resolve(m.result);
    }
    switch (m.method) {
      case "welcome": return this._welcome(m.params || {});
      case "textMessage": case "imageMessage": case "fileMessage": return this._message(m);
      case "newUser": return this._presence(m.params || {}, true);
      case "userLeft": return this._presence(m.params || {}, false);
      case "typing": {
        const p = m.params || {};
        if (this._rooms.has(p.roomName)) this._emit("typing", { room: p.roomName, userName: p.userName });
        return;
      }
      case "historyTruncated": {
        const p = m.params || {};
        return this._emit("historyTruncated", { room: p.roomName, fromId: p.fromId });
      }
      case "reconnect":
        if (m.id != null) return this._move((m.params && m.params.reason) || "reconnect");
        return;
      default:
        if (m.error && m.id == null) this._emit("error", { error: new NatterError(m.error.code, m.error.message) });
    }
  }

  _joinAnswer(q, m) {
    const r = this._rooms.get(q.room);
    if (!r) return;
    if (!m.error) {
      r.joined = true;
      r.everJoined = true;
      this._attempt = 0;
      // Anything waiting for this room goes out now, once, with its uuid.
      this._pump(r.name);
      return;
    }
    const { code, message } = m.error;
    if (code === ErrorCode.JOIN_RETRY || code === ErrorCode.RECONNECT_FAILED) {
      setTimeout(() => { if (this._rooms.get(r.name) === r && this.state === "open" && !r.joined) this._sendJoin(r); },
        code === ErrorCode.JOIN_RETRY ? 500 + Math.random() * 500 : 0);
      if (code === ErrorCode.RECONNECT_FAILED) r.forceJoin = true; // joinRoom next time
      return;
    }
    // Final: the name is taken, the token refused, the request invalid.
    const err = new NatterError(code, message, r.name);
    this._rooms.delete(r.name);
    for (const w of r.waiters.splice(0)) w.reject(err);
    for (const [u, msg] of this._outbox) if (msg.room === r.name) { this._outbox.delete(u); msg.reject(err); }
    this._emit("joinFailed", { room: r.name, code, message, resume: q.resume });
    this._emit("error", { error: err, room: r.name });
  }

  _welcome(p) {
    const r = this._rooms.get(p.roomName);
    if (!r) return;
    r.sessionId = p.sessionId;
    r.node = p.node;
    this.node = p.node;
    r.members = [...new Set(p.members || [])].sort();
    const info = { room: r.name, node: p.node, sessionId: p.sessionId, members: [...r.members], lastMessageId: p.lastMessageId ?? null };
    r.welcome = info;
    this._emit("welcome", info);
    this._emit("members", { room: r.name, members: [...r.members] });
    this._setState("open");
    for (const w of r.waiters.splice(0)) w.resolve(info);
  }

  _presence(p, joined) {
    const r = this._rooms.get(p.roomName);
    if (!r || !p.userName) return;
    const has = r.members.includes(p.userName);
    if (joined && !has) r.members = [...r.members, p.userName].sort();
    else if (!joined && has) r.members = r.members.filter((n) => n !== p.userName);
    else return;
    this._emit(joined ? "userJoined" : "userLeft", { room: r.name, userName: p.userName });
    this._emit("members", { room: r.name, members: [...r.members] });
  }

  _message(m) {
    const p = m.params || {};
    const r = this._rooms.get(p.roomName);
    if (!r) return;
    const id = m._id != null ? String(m._id) : null;
    if (id != null && idAfter(id, r.lastId)) r.lastId = id;
    if (p.uuid != null) {
      if (r.seen.has(p.uuid)) return;
      r.seen.add(p.uuid);
      if (r.seen.size > SEEN_MAX) r.seen.delete(r.seen.values().next().value);
    }
    const msg = toMessage(m);
    msg.mine = String(p.userId) === this.userId;
    const pending = this._outbox.get(p.uuid);
    if (pending) {
      this._outbox.delete(p.uuid);
      clearTimeout(pending.retryTimer);
      pending.resolve(msg);
      this._emit("ack", { room: r.name, uuid: p.uuid, id, message: msg });
    }
    this._emit("message", msg);
  }

  /**
   * Sends what is due in `room`, oldest first, within the client's own rate (kept under the
   * edge's per-socket limit, so sends are not refused and stay in order). A refused or
   * unacknowledged message is sent again, in its place in the queue, with the same uuid.
   */
  _pump(roomName) {
    const r = this._rooms.get(roomName);
    if (!r) return;
    clearTimeout(r.pumpTimer);
    if (!r.joined || this.state !== "open") return;
    const wait = (r.pauseUntil || 0) - Date.now();
    if (wait > 0) { r.pumpTimer = setTimeout(() => this._pump(roomName), wait); return; }
    for (const m of this._outbox.values()) {
      if (m.room !== roomName || m.inFlight) continue;
      const t = this._takeToken();
      if (t > 0) { r.pumpTimer = setTimeout(() => this._pump(roomName), t); return; }
      if (!this._transmit(m)) return;
    }
  }

  /** 0 when a send token was taken, else the ms until one is available. */
  _takeToken() {
    const now = Date.now();
    const b = this._bucket;
    b.tokens = Math.min(this.rate.burst, b.tokens + ((now - b.at) * this.rate.perSec) / 1000);
    b.at = now;
    if (b.tokens >= 1) { b.tokens -= 1; return 0; }
    return Math.ceil(((1 - b.tokens) * 1000) / this.rate.perSec);
  }

  _transmit(m) {
    clearTimeout(m.retryTimer);
    const id = this._nextId++;
    this._requests.set(id, { method: "text", room: m.room, uuid: m.uuid, resolve() {}, reject() {} });
    m.attempts++;
    m.sentAt = Date.now();
    if (!this._raw({ jsonrpc: "2.0", method: "textMessage", params: m.params, id })) {
      this._requests.delete(id);
      return false; // goes out on the next join of its room
    }
    m.inFlight = true;
    // No echo in time (a lost publish): send it again; the uuid makes it count once.
    m.retryTimer = setTimeout(() => {
      if (this._outbox.get(m.uuid) !== m) return;
      m.inFlight = false;
      this._pump(m.room);
    }, this.ackTimeoutMs);
    return true;
  }

  _textAnswer(q, m) {
    const msg = this._outbox.get(q.uuid);
    if (!msg || !m.error) return;
    const { code, message } = m.error;
    clearTimeout(msg.retryTimer);
    msg.inFlight = false;
    if (code === ErrorCode.UNAVAILABLE || code === ErrorCode.RATE_LIMITED || code === ErrorCode.NOT_JOINED) {
      const delay = Math.min(5000, 200 * Math.pow(2, Math.min(msg.attempts, 5))) * (0.5 + Math.random() / 2);
      const r = this._rooms.get(msg.room);
      if (r) r.pauseUntil = Math.max(r.pauseUntil || 0, Date.now() + delay);
      this._pump(msg.room);
      return;
    }
    this._outbox.delete(q.uuid);
    const err = new NatterError(code, message, msg.room);
    msg.reject(err);
    this._emit("sendFailed", { room: msg.room, uuid: msg.uuid, code, message });
  }

  // ---- internals: uploads -------------------------------------------------------------

  async _upload(path, body, headers, room, uuid, opts) {
    const url = `${this._files()}${path}`;
    const progress = (loaded, total) => {
      const e = { room, uuid, loaded, total };
      if (opts.onProgress) opts.onProgress(e);
      this._emit("uploadProgress", e);
    };
    const attempts = opts.attempts ?? 8;
    let last;
    for (let i = 0; i < attempts; i++) {
      if (i > 0) await new Promise((ok) => setTimeout(ok, Math.min(8000, 300 * 2 ** i) * (0.5 + Math.random() / 2)));
      const h = { ...headers, ...(await this._authHeaders()) };
      const b = typeof body === "function" ? body() : body;
      let res;
      try {
        res = typeof XMLHttpRequest !== "undefined" ? await xhrPost(url, b, h, progress) : await fetchPost(url, b, h, progress);
      } catch (e) { last = e; continue; }
      if (res.status >= 200 && res.status < 300) {
        let info = {};
        try { info = JSON.parse(res.text); } catch { /* not JSON */ }
        this._emit("uploaded", { room, uuid, id: info._id ?? null, size: info.size });
        return { uuid, id: info._id ?? null, size: info.size };
      }
      last = new NatterError(res.status, `upload: ${res.status} ${res.text}`.trim(), room);
      if (res.status < 500 && res.status !== 429 && res.status !== 408) break;
    }
    this._emit("uploadFailed", { room, uuid, error: last });
    throw last;
  }
}

function toBlob(data, type) {
  if (typeof Blob !== "undefined" && data instanceof Blob) return data;
  return new Blob([data], { type });
}

async function blobToDataUrl(blob) {
  if (typeof FileReader !== "undefined") {
    return new Promise((ok, fail) => {
      const r = new FileReader();
      r.onload = () => ok(r.result);
      r.onerror = () => fail(r.error);
      r.readAsDataURL(blob);
    });
  }
  const buf = Buffer.from(await blob.arrayBuffer());
  return `data:${blob.type || "image/png"};base64,${buf.toString("base64")}`;
}

function xhrPost(url, body, headers, progress) {
  return new Promise((ok, fail) => {
    const x = new XMLHttpRequest();
    x.open("POST", url);
    for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
    x.upload.onprogress = (e) => progress(e.loaded, e.lengthComputable ? e.total : undefined);
    x.onload = () => ok({ status: x.status, text: x.responseText });
    x.onerror = () => fail(new NatterError(0, "upload: network error"));
    x.ontimeout = () => fail(new NatterError(0, "upload: timed out"));
    x.timeout = 120000;
    x.send(body);
  });
}

async function fetchPost(url, body, headers, progress) {
  const res = await fetch(url, { method: "POST", headers, body, signal: AbortSignal.timeout(120000) });
  const text = await res.text();
  const size = typeof body === "string" ? body.length : undefined;
  progress(size ?? 1, size ?? 1);
  return { status: res.status, text };
}
