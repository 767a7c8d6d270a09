// The Cache tab's messages, mirrored from kerasllm_widget/widgets/kv_cache_protocol.py.
// tests/test_kv_cache.py checks that both files list the same kinds.
//
// `cache.request` asks for the chat's key/value cache; `cache.result` answers with the description
// (`inspect.kv_cache`) and four per-slot arrays as binary buffers: token ids, message index,
// template flag and source (0 reused, 1 prefilled, 2 generated).

import { type ArrayHeader, type BufferLike, decodeArray } from "../shared/codecs";
import { type Envelope, newId, parseEnvelope } from "../shared/envelope";

/** Front end to kernel. */
export const REQUEST = {
  cache: "cache.request",
} as const;

/** Kernel to front end. */
export const RESPONSE = {
  cache: "cache.result",
  error: "cache.error",
} as const;

/** Where a slot's keys and values came from in the last request. */
export const SOURCES = ["reused", "prefilled", "generated"] as const;
export type Source = (typeof SOURCES)[number];

export interface CacheMessage {
  role: "system" | "user" | "assistant" | "template";
  turn: number;
  label: string;
  content: string;
}

export interface CacheFields {
  pieces: string[];
  messages: CacheMessage[];
  dropped: CacheMessage[];
  capacity: number;
  used: number;
  bytes_per_token: number;
  layers: number;
  kv_heads: number;
  head_dim: number;
  dtype: string;
  running: boolean;
  context_length: number;
  counts: Record<Source, number>;
}

export interface CacheResult extends Envelope<"cache.result"> {
  cache: CacheFields;
  arrays: {
    token_ids: ArrayHeader;
    message: ArrayHeader;
    template: ArrayHeader;
    source: ArrayHeader;
  };
}

export interface CacheError extends Envelope<"cache.error"> {
  code: string;
  message: string;
}

export type CacheResponse = CacheResult | CacheError;

/** One slot of the cache, as the view draws it. */
export interface Slot {
  tokenId: number;
  piece: string;
  message: number;
  template: boolean;
  source: Source;
}

/** The description with its arrays decoded into slots. */
export interface CacheDescription extends CacheFields {
  slots: Slot[];
}

const RESPONSE_KINDS: ReadonlySet<string> = new Set(Object.values(RESPONSE));

/** A custom message narrowed to a Cache tab answer, or null (another view's, or unknown). */
export function parseCacheResponse(message: unknown): CacheResponse | null {
  return parseEnvelope(message, RESPONSE_KINDS) as CacheResponse | null;
}

/** The slots of a `cache.result`, from its binary buffers. */
export function decodeCache(
  message: CacheResult,
  buffers: readonly BufferLike[],
): CacheDescription {
  const ids = decodeArray(message.arrays.token_ids, buffers).data;
  const owner = decodeArray(message.arrays.message, buffers).data;
  const template = decodeArray(message.arrays.template, buffers).data;
  const source = decodeArray(message.arrays.source, buffers).data;
  const slots: Slot[] = [];
  for (let i = 0; i < ids.length; i++) {
    slots.push({
      tokenId: Number(ids[i]),
      piece: message.cache.pieces[i] ?? "",
      message: Number(owner[i]),
      template: Number(template[i]) !== 0,
      source: SOURCES[Number(source[i])] ?? "generated",
    });
  }
  return { ...message.cache, slots };
}

/** A request id unique across the views of this page. */
export function newCacheId(): string {
  return newId("c");
}
