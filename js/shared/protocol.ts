// The chat widget's message protocol, mirrored from kerasllm_widget/widgets/protocol.py.
// Kinds are named here once; tests/test_chat_widget.py checks that both files list the same kinds.
//
// Every custom message is an envelope `{kind, id, ...}` (envelope.ts, shared with the inspectors):
// `id` is the request the message belongs to, the id a view chose for its `chat.send` or one the
// kernel chose for a send made from Python. Durable state (transcript, status, settings, model info) is in traitlets, not in messages; the
// messages carry what is transient (token deltas, errors of one request, catch-up snapshots).

import { type Envelope, envelope, isRecord, newId, parseEnvelope } from "./envelope";

export const PROTOCOL_VERSION = 1;

/** Front end to kernel. */
export const REQUEST = {
  send: "chat.send",
  regenerate: "chat.regenerate",
  edit: "chat.edit",
  cancel: "chat.cancel",
  clear: "chat.clear",
  sync: "chat.sync",
  branch: "chat.branch",
  switch: "chat.switch",
  exportTree: "chat.export_tree",
  getTokens: "chat.get_tokens",
} as const;

/** Kernel to front end. */
export const RESPONSE = {
  token: "chat.token",
  done: "chat.done",
  error: "chat.error",
  snapshot: "chat.snapshot",
  tree: "chat.tree",
  tokens: "chat.tokens",
} as const;

export type RequestKind = (typeof REQUEST)[keyof typeof REQUEST];
export type ResponseKind = (typeof RESPONSE)[keyof typeof RESPONSE];

/** Why a request failed; `generation` errors also land in the transcript as an error bubble. */
export type ErrorCode = "bad_request" | "not_ready" | "nothing_to_do" | "generation" | "load";

export type StopReason =
  | "stop_token"
  | "stop_string"
  | "max_new_tokens"
  | "cancelled"
  | "context_full"
  | "error";

// ---- requests ----

export interface SendRequest extends Envelope<"chat.send"> {
  text: string;
}
export type RegenerateRequest = Envelope<"chat.regenerate">;
export interface EditRequest extends Envelope<"chat.edit"> {
  message_id: string;
  text: string;
}
export type CancelRequest = Envelope<"chat.cancel">;
export type ClearRequest = Envelope<"chat.clear">;
export type SyncRequest = Envelope<"chat.sync">;
/** Continue reply `message_id` from its first `token_index` tokens and `token_id` or the typed
 * `text` (both null: the model picks); it streams in place of the reply, which stays a sibling. */
export interface BranchRequest extends Envelope<"chat.branch"> {
  message_id: string;
  token_index: number;
  token_id: number | null;
  text: string | null;
}
/** Show sibling `index` of message `message_id` (an entry with `siblings`). */
export interface SwitchRequest extends Envelope<"chat.switch"> {
  message_id: string;
  index: number;
}
/** Ask for the whole conversation tree (answered by `chat.tree`), for the JSON export. */
export type ExportTreeRequest = Envelope<"chat.export_tree">;
/** Ask for a finished reply's token records (answered by `chat.tokens`), to branch it in a view
 * that did not see it stream. */
export interface GetTokensRequest extends Envelope<"chat.get_tokens"> {
  message_id: string;
}
export type Request =
  | GetTokensRequest
  | ExportTreeRequest
  | BranchRequest
  | SwitchRequest
  | SendRequest
  | RegenerateRequest
  | EditRequest
  | CancelRequest
  | ClearRequest
  | SyncRequest;

// ---- responses ----

export interface Alternative {
  token_id: number;
  text: string;
  prob: number;
}

/** One generated token, as `TokenEvent.to_dict()` writes it. */
export interface TokenRecord {
  index: number;
  token_id: number;
  text: string;
  logprob: number | null;
  top_k: Alternative[];
}

export interface TokenBatch extends Envelope<"chat.token"> {
  reply_id: string;
  tokens: TokenRecord[];
}

export interface ReplyStats {
  prompt_tokens: number;
  generated_tokens: number;
  time_to_first_token_s: number | null;
  prefill_tokens_per_s: number | null;
  decode_tokens_per_s: number | null;
}

export interface DoneMessage extends Envelope<"chat.done"> {
  reply_id: string;
  stop_reason: StopReason;
  text: string;
  notice: string;
  stats: ReplyStats;
}

export interface ErrorMessage extends Envelope<"chat.error"> {
  reply_id: string | null;
  code: ErrorCode;
  message: string;
}

/** The reply being generated, whole so far: a view opened mid-reply starts from it. */
export interface SnapshotMessage extends Envelope<"chat.snapshot"> {
  reply_id: string | null;
  text: string;
  count: number;
  tokens: TokenRecord[];
}

/** The conversation tree as `ChatState.to_json` writes it (null: no model yet). */
export interface TreeMessage extends Envelope<"chat.tree"> {
  document: string | null;
}

/** A finished reply's tokens (as it streamed, or decoded from its ids without probabilities). */
export interface TokensMessage extends Envelope<"chat.tokens"> {
  reply_id: string;
  tokens: TokenRecord[];
}

export type Response =
  | TokenBatch
  | DoneMessage
  | ErrorMessage
  | SnapshotMessage
  | TreeMessage
  | TokensMessage;

// ---- durable state (traitlets) ----

export type EntryStatus = "queued" | "sent" | "streaming" | "done" | "cancelled" | "error";

export interface TranscriptEntry {
  id: string;
  role: "user" | "assistant";
  content: string;
  status: EntryStatus;
  request_id: string;
  stop_reason?: StopReason;
  notice?: string;
  error?: string;
  stats?: ReplyStats;
  /** The id of the ChatState message this entry stands for, once the model read it. */
  state_id?: string;
  /** [shown index, count] when the message has siblings (branches, regenerated replies). */
  siblings?: [number, number];
}

export type WidgetState = "loading" | "ready" | "generating" | "error";

export interface Status {
  state: WidgetState;
  message: string;
  tokens_used: number;
  context_length: number;
  queued: number;
  time_to_first_token_s: number | null;
  decode_tokens_per_s: number | null;
  loading_since: number | null;
  /** A standing remark on how the model runs (the native CPU kernel is off, why, what to install). */
  notice?: string;
}

export interface ModelInfo {
  name?: string;
  dtype?: string;
  backend?: string;
  device?: string;
  context_length?: number;
}

/** The traitlets the chat front end reads and writes (names as in chat_widget.py). */
export interface ChatModel {
  transcript: TranscriptEntry[];
  status: Status;
  model_info: ModelInfo;
  system_prompt: string;
  temperature: number;
  top_p: number;
  top_k: number;
  min_p: number;
  repetition_penalty: number;
  max_new_tokens: number;
  seed: number | null;
  [key: string]: unknown;
}

const RESPONSE_KINDS: ReadonlySet<string> = new Set(Object.values(RESPONSE));

/**
 * Narrows a custom message to a response this view understands, or returns null. Messages from a
 * newer kernel with kinds this bundle does not know are ignored rather than thrown on.
 */
export function parseResponse(raw: unknown): Response | null {
  const message = parseEnvelope(raw, RESPONSE_KINDS);
  if (message === null) return null;
  switch (message.kind) {
    case RESPONSE.token:
      if (typeof message.reply_id !== "string" || !Array.isArray(message.tokens)) return null;
      if (!message.tokens.every(isTokenRecord)) return null;
      return message as unknown as TokenBatch;
    case RESPONSE.done:
      if (typeof message.reply_id !== "string" || typeof message.text !== "string") return null;
      return message as unknown as DoneMessage;
    case RESPONSE.error:
      if (typeof message.message !== "string" || typeof message.code !== "string") return null;
      return message as unknown as ErrorMessage;
    case RESPONSE.snapshot:
      if (typeof message.text !== "string" || typeof message.count !== "number") return null;
      return message as unknown as SnapshotMessage;
    case RESPONSE.tokens:
      if (typeof message.reply_id !== "string" || !Array.isArray(message.tokens)) return null;
      if (!message.tokens.every(isTokenRecord)) return null;
      return message as unknown as TokensMessage;
    case RESPONSE.tree:
      if (typeof message.document !== "string" && message.document !== null) return null;
      return message as unknown as TreeMessage;
    default:
      return null;
  }
}

function isTokenRecord(value: unknown): value is TokenRecord {
  return (
    isRecord(value) &&
    typeof value.index === "number" &&
    typeof value.text === "string" &&
    typeof value.token_id === "number"
  );
}

/** A request id unique across the views of this page. */
export function newRequestId(): string {
  return newId("v");
}

export function request<K extends Request["kind"]>(
  kind: K,
  fields: Omit<Extract<Request, { kind: K }>, "kind" | "id">,
): Extract<Request, { kind: K }> {
  return envelope(kind, newRequestId(), fields) as Extract<Request, { kind: K }>;
}
