// The inspectors' message protocol, mirrored from kerasllm_widget/widgets/inspect_protocol.py.
// tests/test_inspect_widgets.py checks that both files list the same kinds and step actions.
//
// Messages use the envelope the chat's protocol uses too, `{kind, id, ...}` (envelope.ts). Arrays travel as binary buffers: the JSON
// part names each array's `{dtype, shape, buffer}` (plus `scale` and `gamma` for quantised
// attention maps) and the message's buffer list holds the bytes (little-endian, C order).

import type { ArrayHeader } from "./codecs";
import { type Envelope, newId, parseEnvelope } from "./envelope";

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
  lens: "lens.request",
  attributionOpen: "attribution.open",
  attribution: "attribution.request",
  attributionStop: "attribution.stop",
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
  lens: "lens.result",
  lensProgress: "lens.progress",
  attributionSequence: "attribution.sequence",
  attributionProgress: "attribution.progress",
  attribution: "attribution.result",
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
export type ErrorCode = "bad_request" | "not_ready" | "superseded" | "failed" | "stopped";

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

export interface TokensResult extends Envelope<"tokens.result"> {
  text: string;
  tables: TokenTable[];
  labels: string[];
}

export interface PreprocessResult extends Envelope<"preprocess.result"> {
  table: PreprocessTable;
}

export interface AttentionSequence extends Envelope<"attention.sequence"> {
  sequence_id: string;
  pieces: string[];
  roles: string[];
  length: number;
  num_layers: number;
  num_heads: number;
}

export interface AttentionResult extends Envelope<"attention.result"> {
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

export interface AttentionThumbnails extends Envelope<"attention.thumbnails"> {
  sequence_id: string;
  layer: number;
  num_layers: number;
  array: ArrayHeader;
}

/** How far the kernel's forward pass over a sequence has come (id ""; not an answer). */
export interface AttentionProgress extends Envelope<"attention.progress"> {
  sequence_id: string;
  ready_layers: number;
  num_layers: number;
  reused_tokens: number;
}

export interface ProbabilitiesResult extends Envelope<"probabilities.result"> {
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

export interface StepState extends Envelope<"step.state"> {
  prompt_tail: string[];
  prompt_length: number;
  steps: StepRecord[];
  distribution: Distribution | null;
  proposal: { token_id: number; piece: string; prob: number | null } | null;
  finished: boolean;
  text: string;
}

/** The logit lens of one sequence: `[layers, T, k]` top ids (int32) and probabilities (float16),
 *  `[layers, T]` entropy (float16), and per position the token the chart follows (`target_ids`:
 *  the next one; at the last position the model's own choice) with its rank (int32) and
 *  probability (float16) at every layer. `labels`: the text of every id shown. */
export interface LensResult extends Envelope<"lens.result"> {
  sequence_id: string;
  pieces: string[];
  roles: string[];
  num_layers: number;
  top_k: number;
  compute_s: number;
  labels: Record<string, string>;
  arrays: {
    token_ids: ArrayHeader;
    top_ids: ArrayHeader;
    top_probs: ArrayHeader;
    entropy: ArrayHeader;
    target_ids: ArrayHeader;
    target_rank: ArrayHeader;
    target_probs: ArrayHeader;
  };
}

/** A lens pass over `length` tokens has started (id ""; not an answer). */
export interface LensProgress extends Envelope<"lens.progress"> {
  length: number;
  num_layers: number;
}

export interface AttributionSequence extends Envelope<"attribution.sequence"> {
  sequence_id: string;
  pieces: string[];
  roles: string[];
  /** Which tokens are the tokenizer's special tokens (the chat template's markers). */
  special: boolean[];
  /** The methods the kernel offers, in its order (inspect.ATTRIBUTION_METHODS). */
  methods: string[];
  max_steps: number;
}

/** Integrated-gradient steps done so far (the request's id; sent after each batch). */
export interface AttributionProgress extends Envelope<"attribution.progress"> {
  sequence_id: string;
  target_position: number;
  done: number;
  total: number;
}

export interface AttributionResult extends Envelope<"attribution.result"> {
  sequence_id: string;
  target_position: number;
  target_id: number;
  method: string;
  steps: number;
  compute_s: number;
  /** float32 [target_position]: one score per token before the target. */
  scores: ArrayHeader;
}

export interface InspectError extends Envelope<"inspect.error"> {
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
  | LensResult
  | LensProgress
  | AttributionSequence
  | AttributionProgress
  | AttributionResult
  | InspectError;

const RESPONSE_KINDS: ReadonlySet<string> = new Set(Object.values(RESPONSE));

/** A custom message narrowed to an inspector response, or null (the chat's own, or unknown). */
export function parseInspectResponse(message: unknown): InspectResponse | null {
  return parseEnvelope(message, RESPONSE_KINDS) as InspectResponse | null;
}

/** A request id unique across the views of this page. */
export function newInspectId(): string {
  return newId("i");
}
