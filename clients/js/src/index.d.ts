// Type declarations of natter-client (src/index.js). The wire contract is shared/PROTOCOL.md.

/** Error codes of the protocol. */
export declare const ErrorCode: Readonly<{
  PARSE: -32700; INVALID: -32600; NAME_TAKEN: -32001; METHOD: -32002; RECONNECT_FAILED: -32003;
  NOT_JOINED: -32004; RATE_LIMITED: -32005; TOO_LARGE: -32006; UNAUTHORIZED: -32007;
  JOIN_RETRY: -32008; UNAVAILABLE: -32010;
}>;

/** A server error (`code` from ErrorCode, an HTTP status for uploads, 0 for local causes). */
export declare class NatterError extends Error {
  code: number;
  room?: string;
}

export type TokenSource = string | (() => string | Promise<string>);

export interface NatterOptions {
  /** Edge (or load balancer) WebSocket URL(s), e.g. `ws://127.0.0.1:8080/chat`. Several are tried in turn on every reconnect. */
  url: string | string[];
  /** The filestore's base URL (`http://127.0.0.1:8090`), for uploads and downloads. */
  filestoreUrl?: string;
  /** The userId (the token's `sub` when auth is on). Default: a random uuid. */
  userId?: string;
  /** The default user name for joins. */
  userName?: string;
  /** A JWT (or a function giving a fresh one): `?token=` on the socket, `Authorization: Bearer` on uploads. */
  token?: TokenSource;
  /** The WebSocket class: the browser's by default; in Node pass `WebSocket` from the `ws` package. */
  WebSocket?: unknown;
  /** Reconnect delays: `min(maxMs, initialMs * factor^attempt) * (1 - jitter * random)`. Defaults 250 / 8000 / 2 / 0.5. */
  backoff?: { initialMs?: number; maxMs?: number; factor?: number; jitter?: number };
  /** Resend a message whose echo has not come back after this long (same uuid). Default 8000. */
  ackTimeoutMs?: number;
  /** Ping the server this often to notice a dead socket; 0 turns it off. Default 20000. */
  pingIntervalMs?: number;
  /**
   * How rooms are resumed: `joinRoom` with `lastMessageId` (default: a name released by the
   * drop is announced again with `newUser`, so other members' lists stay right) or the
   * older system's `reconnect` (never announces).
   */
  resumeWith?: "joinRoom" | "reconnect";
  /**
   * The client's own send rate, kept under the edge's per-socket limit (50/s, burst 100 by
   * default) so that messages are not refused and stay in order. Default 40/s, burst 80.
   */
  rate?: { perSec?: number; burst?: number };
  /** Default page size of getHistory. Default 50. */
  historyLimit?: number;
}

/** A room message as events and getHistory hand it out. */
export interface Message {
  /** `_id`: decimal string, grows in the room. Null only for a message not stored yet. */
  id: string | null;
  uuid: string;
  type: "text" | "image" | "file";
  room: string;
  userId: string;
  userName: string;
  text?: string;
  fileName?: string;
  /** Sent by natter-client uploads (an extension field the filestore keeps). */
  fileSize?: number;
  mimeType?: string;
  /** The sender's clock (ms since the epoch). */
  date?: number;
  /** The server's time (RFC 3339). */
  ts?: string;
  /** Sent by this client's userId. */
  mine: boolean;
  /** The frame as received. */
  raw: unknown;
}

export interface Welcome { room: string; node: string; sessionId: string; members: string[]; lastMessageId: string | null }
export type ConnectionState = "idle" | "connecting" | "open" | "resuming" | "closed";

export interface NatterEvents {
  /** The connection changed: `node` is the edge serving it (from `welcome.node`). */
  status: { state: ConnectionState; url: string | null; node: string | null; attempt?: number; delayMs?: number };
  /** A room was joined or resumed (after every reconnect too). */
  welcome: Welcome;
  /** A room message (history, catch-up or live), each uuid once. */
  message: Message;
  /** One of this client's messages was stored (its echo came back). */
  ack: { room: string; uuid: string; id: string | null; message: Message };
  /** `send` took a message (`offline`: it waits for the socket). */
  queued: { room: string; uuid: string; text: string; offline: boolean };
  /** A message was refused for good (e.g. -32006 too large). */
  sendFailed: { room: string; uuid: string; code: number; message: string };
  /** The member list of a room changed (welcome, newUser, userLeft). */
  members: { room: string; members: string[] };
  userJoined: { room: string; userName: string };
  userLeft: { room: string; userName: string };
  typing: { room: string; userName: string };
  /** The server asked this client to move (drain: `reason: "draining"`), or it is slow. */
  moving: { reason: string; node: string | null; url: string | null };
  /** The socket closed; a resume follows unless the client was closed. */
  disconnected: { code: number; reason: string; url: string | null; node: string | null };
  /** A join or resume was refused for good; the room is dropped. */
  joinFailed: { room: string; code: number; message: string; resume: boolean };
  historyTruncated: { room: string; fromId: string };
  uploadProgress: { room: string; uuid: string; loaded: number; total?: number };
  uploaded: { room: string; uuid: string; id: string | null; size?: number };
  uploadFailed: { room: string; uuid: string; error: unknown };
  error: { error: unknown; room?: string; where?: string };
}

export interface UploadOptions {
  uuid?: string;
  fileName?: string;
  mimeType?: string;
  onProgress?: (e: { room: string; uuid: string; loaded: number; total?: number }) => void;
  /** Attempts on network errors and 5xx (same uuid). Default 8. */
  attempts?: number;
}
export type UploadData = Blob | ArrayBuffer | Uint8Array;

export declare class NatterClient {
  constructor(options: NatterOptions);
  readonly userId: string;
  readonly state: ConnectionState;
  /** The edge serving the socket (from the last welcome). */
  readonly node: string | null;
  readonly url: string | null;

  on<K extends keyof NatterEvents>(event: K, fn: (e: NatterEvents[K]) => void): () => void;
  once<K extends keyof NatterEvents>(event: K, fn: (e: NatterEvents[K]) => void): () => void;
  off<K extends keyof NatterEvents>(event: K, fn: (e: NatterEvents[K]) => void): void;

  connect(): Promise<void>;
  close(): void;
  joinRoom(room: string, opts?: { userName?: string; token?: TokenSource }): Promise<Welcome>;
  leaveRoom(room: string): Promise<void>;
  rooms(): string[];
  members(room: string): string[];
  pending(): { uuid: string; room: string; text: string }[];
  lastMessageId(room: string): string | null;

  send(room: string, text: string, opts?: { uuid?: string }): { uuid: string; done: Promise<Message> };
  typing(room: string): void;
  getHistory(room: string, opts?: { before?: string; limit?: number }): Promise<{ messages: Message[]; more: boolean }>;

  sendImage(room: string, data: UploadData, opts?: UploadOptions): Promise<{ uuid: string; id: string | null; size?: number }>;
  sendFile(room: string, data: UploadData, opts?: UploadOptions): Promise<{ uuid: string; id: string | null; size?: number }>;
  imageUrl(message: Message | string): Promise<string | null>;
  fileUrl(message: Message | string): string;
}
