// The inspectors' message protocol, mirrored from kerasllm_widget/widgets/inspect_protocol.py.
// tests/test_inspect_widgets.py checks that both files list the same kinds and step actions.
//
// Messages use the chat's envelope `{kind, id, ...}`. Arrays travel as binary buffers: the JSON
// part names each array's `{dtype, shape, buffer}` (plus `scale` and `gamma` for quantised
// attention maps) and the message's buffer list holds the bytes (little-endian, C order).

import type { ArrayHeader } from "./codecs";

export const INSPECT_PROTOCOL_VERSION = 1;

/** The most cells a side of the attention map a view is first sent (about its pixels); the
 *  kernel shrinks longer maps to block maxima and sends regions at full resolution on request. */
export const OVERVIEW_CELLS = 512;

/** Front end to kernel. */
export const REQUEST = {
  tokens: "tokens.request",
  preprocess: "preprocess.request",
  attentionOpen: "attention.open",
  attention: "attention.request",
  attentionOverview: "attention.overview",
  probabilities: "probabilities.request",
  step: "step.request",
} as const;

/** Kernel to front end. */
export const RESPONSE = {
  tokens: "tokens.result",
  preprocess: "preprocess.result",
  attentionSequence: "attention.sequence",
  attention: "attention.result",
  attentionThumbnails: "attention.thumbnails",
  attentionProgress: "attention.progress",
  probabilities: "probabilities.result",
  step: "step.state",
  error: "inspect.error",
} as const;

export const STEP_ACTIONS = [
  "start",
  "propose",
  "accept",
  "choose",
  "undo",
  "reset",
  "finish",
] as const;

export type StepAction = (typeof STEP_ACTIONS)[number];
export type ErrorCode = "bad_request" | "not_ready" | "superseded" | "failed";

// ---- payloads ----

export interface TokenPiece {
  id: number;
  piece: string;
  text: string;
  bytes: number[];
  is_special: boolean;
  start: number;
  end: number;
}

export interface TokenTable {
  pieces: TokenPiece[];
  num_tokens: number;
  num_chars: number;
  num_bytes: number;
}

export type CellKind = "start" | "end" | "pad" | "special" | "text";

export interface PreprocessRow {
  text: string;
  token_ids: number[];
  padding_mask: boolean[];
  labels: number[];
  sample_weight: number[];
  token_pieces: string[];
  label_pieces: string[];
  token_kinds: CellKind[];
  label_kinds: CellKind[];
  truncated: boolean;
}

export interface PreprocessTable {
  sequence_length: number;
  rows: PreprocessRow[];
}

export interface Distribution {
  token_ids: number[];
  probs: number[];
  pieces: string[];
  entropy: number;
  context_length: number;
}

export interface StepRecord {
  token_id: number;
  piece: string;
  prob: number | null;
  entropy: number | null;
  proposed_id: number;
  chosen_by: "sampler" | "user";
  top_ids: number[];
  top_probs: number[];
  top_pieces: string[];
}

// ---- messages ----

export interface TokensResult {
  kind: "tokens.result";
  id: string;
  text: string;
  tables: TokenTable[];
  labels: string[];
}

export interface PreprocessResult {
  kind: "preprocess.result";
  id: string;
  table: PreprocessTable;
}

export interface AttentionSequence {
  kind: "attention.sequence";
  id: string;
  sequence_id: string;
  pieces: string[];
  roles: string[];
  length: number;
  num_layers: number;
  num_heads: number;
}

export interface AttentionResult {
  kind: "attention.result";
  id: string;
  sequence_id: string;
  layer: number;
  head: number | "mean";
  compute_s: number;
  /** Tokens per cell side of `array` (1: full resolution). */
  block: number;
  /** The [row0, row1, col0, col1] of the map `array` covers; null: the whole map. */
  region: [number, number, number, number] | null;
  array: ArrayHeader;
  /** With an overview: the largest code of each query row at full resolution (uint8 [T]). */
  row_max?: ArrayHeader;
}

export interface AttentionThumbnails {
  kind: "attention.thumbnails";
  id: string;
  sequence_id: string;
  layer: number;
  num_layers: number;
  array: ArrayHeader;
}

/** How far the kernel's forward pass over a sequence has come (id ""; not an answer). */
export interface AttentionProgress {
  kind: "attention.progress";
  id: string;
  sequence_id: string;
  ready_layers: number;
  num_layers: number;
  reused_tokens: number;
}

export interface ProbabilitiesResult {
  kind: "probabilities.result";
  id: string;
  sequence_id: string;
  pieces: string[];
  roles: string[];
  labels: Record<string, string>;
  arrays: {
    token_ids: ArrayHeader;
    probs: ArrayHeader;
    entropy: ArrayHeader;
    top_ids: ArrayHeader;
    top_probs: ArrayHeader;
  };
}

export interface StepState {
  kind: "step.state";
  id: string;
  prompt_tail: string[];
  prompt_length: number;
  steps: StepRecord[];
  distribution: Distribution | null;
  proposal: { token_id: number; piece: string; prob: number | null } | null;
  finished: boolean;
  text: string;
}

export interface InspectError {
  kind: "inspect.error";
  id: string;
  request_kind: string;
  code: ErrorCode;
  message: string;
}

export type InspectResponse =
  | TokensResult
  | PreprocessResult
  | AttentionSequence
  | AttentionResult
  | AttentionThumbnails
  | AttentionProgress
  | ProbabilitiesResult
  | StepState
  | InspectError;

const RESPONSE_KINDS: ReadonlySet<string> = new Set(Object.values(RESPONSE));

/** A custom message narrowed to an inspector response, or null (the chat's own, or unknown). */
export function parseInspectResponse(message: unknown): InspectResponse | null {
  if (typeof message !== "object" || message === null || Array.isArray(message)) return null;
  const { kind, id } = message as Record<string, unknown>;
  if (typeof kind !== "string" || typeof id !== "string" || !RESPONSE_KINDS.has(kind)) return null;
  return message as InspectResponse;
}

let counter = 0;
const session = Math.random().toString(36).slice(2, 8);

/** A request id unique across the views of this page. */
export function newInspectId(): string {
  counter += 1;
  return `i${session}-${counter}`;
}
