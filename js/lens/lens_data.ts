// The arrays of a `lens.result`, decoded once, and the questions the grid, its tooltip and the
// chart ask of them. Pure functions over typed arrays: a view of a computed pass renders from
// these without asking the kernel again.

import { type BufferLike, decodeArray } from "../shared/codecs";
import type { LensResult } from "../shared/inspect_protocol";

export interface LensData {
  sequenceId: string;
  pieces: string[];
  roles: string[];
  layers: number;
  length: number;
  k: number;
  computeS: number;
  labels: Record<string, string>;
  /** [layers, length, k] */
  topIds: Int32Array;
  topProbs: Float32Array;
  /** [layers, length] */
  entropy: Float32Array;
  /** [length]: the token each position's chart follows (the next one; last: the model's own). */
  targetIds: Int32Array;
  /** [layers, length] */
  targetRank: Int32Array;
  targetProbs: Float32Array;
}

export function decodeLens(result: LensResult, buffers: readonly BufferLike[]): LensData {
  const array = (name: keyof LensResult["arrays"]) => decodeArray(result.arrays[name], buffers);
  const top = array("top_ids");
  return {
    sequenceId: result.sequence_id,
    pieces: result.pieces,
    roles: result.roles,
    layers: top.shape[0] ?? 0,
    length: top.shape[1] ?? 0,
    k: top.shape[2] ?? 0,
    computeS: result.compute_s,
    labels: result.labels,
    topIds: top.data as Int32Array,
    topProbs: array("top_probs").data as Float32Array,
    entropy: array("entropy").data as Float32Array,
    targetIds: array("target_ids").data as Int32Array,
    targetRank: array("target_rank").data as Int32Array,
    targetProbs: array("target_probs").data as Float32Array,
  };
}

/** The text of a token id as the kernel spelled it (its id when it sent none). */
export function label(data: LensData, tokenId: number): string {
  return data.labels[String(tokenId)] ?? `#${tokenId}`;
}

export interface Alternative {
  tokenId: number;
  piece: string;
  prob: number;
}

/** The top k after `layer` at `position`, most likely first. */
export function alternatives(data: LensData, layer: number, position: number): Alternative[] {
  const base = (layer * data.length + position) * data.k;
  const out: Alternative[] = [];
  for (let j = 0; j < data.k; j++) {
    const tokenId = data.topIds[base + j] ?? -1;
    out.push({ tokenId, piece: label(data, tokenId), prob: data.topProbs[base + j] ?? 0 });
  }
  return out;
}

/** What the cell shows: the top token after `layer` at `position` and its probability. */
export function topAt(data: LensData, layer: number, position: number): Alternative {
  const index = (layer * data.length + position) * data.k;
  const tokenId = data.topIds[index] ?? -1;
  return { tokenId, piece: label(data, tokenId), prob: data.topProbs[index] ?? 0 };
}

export interface Trajectory {
  position: number;
  tokenId: number;
  piece: string;
  /** True at the last position: the token is the model's own choice, not one that came next. */
  predicted: boolean;
  /** Per layer: rank (0 = top) and probability of that token. */
  ranks: number[];
  probs: number[];
}

/** How the token that came after `position` rises through the layers. */
export function trajectory(data: LensData, position: number): Trajectory {
  const tokenId = data.targetIds[position] ?? -1;
  const ranks: number[] = [];
  const probs: number[] = [];
  for (let layer = 0; layer < data.layers; layer++) {
    ranks.push(data.targetRank[layer * data.length + position] ?? 0);
    probs.push(data.targetProbs[layer * data.length + position] ?? 0);
  }
  return {
    position,
    tokenId,
    piece: label(data, tokenId),
    predicted: position === data.length - 1,
    ranks,
    probs,
  };
}

/** The first layer from which the followed token stays the top one (null: it never settles). */
export function settlesAt(path: Trajectory): number | null {
  let layer: number | null = null;
  for (let i = path.ranks.length - 1; i >= 0; i--) {
    if (path.ranks[i] !== 0) break;
    layer = i;
  }
  return layer;
}
