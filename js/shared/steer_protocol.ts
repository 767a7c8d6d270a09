// The Steering and Compare tabs' message protocol, mirrored from
// kerasllm_widget/widgets/steer_protocol.py; tests/test_steering_panel.py checks that both files
// list the same kinds. Messages use the shared envelope `{kind, id, ...}` (envelope.ts); arrays
// travel as binary buffers named by `{dtype, shape, buffer}` headers (codecs.ts).

import type { AnyModel } from "@anywidget/types";
import type { ArrayHeader, BufferLike } from "./codecs";
import { envelope, newId, parseEnvelope } from "./envelope";

export const STEER_PROTOCOL_VERSION = 1;

/** Front end to kernel. */
export const REQUEST = {
  open: "steer.open",
  compute: "steer.compute",
  ask: "steer.ask",
  apply: "steer.apply",
  cancel: "steer.cancel",
  compare: "compare.request",
  continue: "compare.continue",
} as const;

/** Kernel to front end. */
export const RESPONSE = {
  info: "steer.info",
  vector: "steer.vector",
  reply: "steer.reply",
  error: "steer.error",
  compare: "compare.result",
  continuation: "compare.continuation",
} as const;

export type ErrorCode = "bad_request" | "not_ready" | "cancelled" | "failed";

export interface VectorSummary {
  layer: number;
  norm: number;
  positive: number;
  negative: number;
}

export interface SteerInfo {
  kind: "steer.info";
  id: string;
  num_layers: number;
  layer: number;
  vector: VectorSummary | null;
  applied: number[];
}

export interface SteerVector extends VectorSummary {
  kind: "steer.vector";
  id: string;
}

export interface SteerReply {
  kind: "steer.reply";
  id: string;
  which: "plain" | "steered";
  text: string;
  done: boolean;
  stop_reason: string | null;
}

export interface SteerError {
  kind: "steer.error";
  id: string;
  request_kind: string;
  code: ErrorCode;
  message: string;
}

export interface CompareResult {
  kind: "compare.result";
  id: string;
  sequence_id: string;
  names: [string, string];
  pieces: string[];
  roles: string[];
  labels: Record<string, string>;
  arrays: Record<
    | "token_ids"
    | "logprobs_a"
    | "logprobs_b"
    | "kl"
    | "top_ids_a"
    | "top_probs_a"
    | "top_ids_b"
    | "top_probs_b",
    ArrayHeader
  >;
}

export interface CompareContinuation {
  kind: "compare.continuation";
  id: string;
  sequence_id: string;
  position: number;
  text: string;
  done: boolean;
}

export type SteerResponse =
  | SteerInfo
  | SteerVector
  | SteerReply
  | SteerError
  | CompareResult
  | CompareContinuation;

const RESPONSE_KINDS: ReadonlySet<string> = new Set(Object.values(RESPONSE));

/** A custom message narrowed to a Steering/Compare response, or null (someone else's). */
export function parseSteerResponse(raw: unknown): SteerResponse | null {
  return parseEnvelope(raw, RESPONSE_KINDS) as SteerResponse | null;
}

export type SteerListener = (message: SteerResponse, buffers: BufferLike[]) => void;

/**
 * Requests of the Steering and Compare views: each gets an id, and every answer with that id
 * (several for a streamed reply, then possibly `steer.error`) goes to the request's listener.
 */
export class SteerClient {
  private readonly listeners = new Map<string, SteerListener>();
  private readonly handler: (message: unknown, buffers?: BufferLike[]) => void;

  constructor(private readonly model: Pick<AnyModel, "send" | "on" | "off">) {
    this.handler = (raw, buffers) => {
      const message = parseSteerResponse(raw);
      if (message) this.listeners.get(message.id)?.(message, buffers ?? []);
    };
    model.on("msg:custom", this.handler);
  }

  /** Sends `kind` with `fields`; `listener` gets its answers until `forget(id)`. */
  send(kind: string, fields: Record<string, unknown>, listener: SteerListener): string {
    const id = newId("s");
    this.listeners.set(id, listener);
    this.model.send(envelope(kind, id, fields));
    return id;
  }

  forget(id: string): void {
    this.listeners.delete(id);
  }

  dispose(): void {
    this.model.off("msg:custom", this.handler);
    this.listeners.clear();
  }
}
