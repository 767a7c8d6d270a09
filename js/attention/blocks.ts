// How an overview cell maps to tokens. The kernel first sends a map shrunk to block maxima (each
// cell: the largest weight of `block` x `block` tokens; the last cells may cover fewer), then the
// full-resolution codes of the region the user zooms into. Pure functions, unit-tested.

import type { CodeGrid, ViewWindow } from "./raster";

/** Tokens `start` .. `end - 1`. */
export interface Span {
  start: number;
  end: number;
}

/** Query rows `row0 .. row1 - 1` and key columns `col0 .. col1 - 1` of the map. */
export interface Region {
  row0: number;
  row1: number;
  col0: number;
  col1: number;
}

/** Full-resolution codes of one region, row-major. */
export interface Detail {
  region: Region;
  codes: Uint8Array;
}

/** The tokens covered by the cell that holds token `index` (cells of `block` tokens). */
export function blockSpan(index: number, block: number, length: number): Span {
  const start = Math.floor(index / block) * block;
  return { start, end: Math.min(length, start + block) };
}

export function inRegion(region: Region, row: number, col: number): boolean {
  return row >= region.row0 && row < region.row1 && col >= region.col0 && col < region.col1;
}

/** The code of token cell (row, col): the detail's when it covers the cell, else its block's. */
export function codeAt(
  overview: CodeGrid,
  block: number,
  detail: Detail | null,
  row: number,
  col: number,
): number {
  if (detail && inRegion(detail.region, row, col)) {
    const { region } = detail;
    return detail.codes[(row - region.row0) * (region.col1 - region.col0) + col - region.col0] ?? 0;
  }
  return overview.data[Math.floor(row / block) * overview.cols + Math.floor(col / block)] ?? 0;
}

/** The codes of query `row` over every key (what the text strip lights), at the best resolution
 *  known for each key. */
export function rowCodes(
  overview: CodeGrid,
  block: number,
  detail: Detail | null,
  row: number,
  length: number,
): Uint8Array {
  const out = new Uint8Array(length);
  for (let col = 0; col < length; col++) out[col] = codeAt(overview, block, detail, row, col);
  return out;
}

/** The rows and columns of tokens the cell under token (row, col) stands for, as drawn: one
 *  token where the detail covers it, a block elsewhere. */
export function cellSpans(
  row: number,
  col: number,
  block: number,
  length: number,
  detail: Detail | null,
): { rows: Span; cols: Span } {
  if (block === 1 || (detail && inRegion(detail.region, row, col))) {
    return { rows: { start: row, end: row + 1 }, cols: { start: col, end: col + 1 } };
  }
  return { rows: blockSpan(row, block, length), cols: blockSpan(col, block, length) };
}

/** The query rows a highlighted token `row` stands for: itself where the detail has its row,
 *  its block elsewhere. */
export function rowSpan(row: number, block: number, length: number, detail: Detail | null): Span {
  if (block === 1 || (detail && row >= detail.region.row0 && row < detail.region.row1)) {
    return { start: row, end: row + 1 };
  }
  return blockSpan(row, block, length);
}

/**
 * The region to fetch at full resolution for a window `pixels` device pixels wide, or null while
 * the overview is fine enough (a cell at most 2 pixels wide). The window grows by a quarter of its
 * span on each side, so that a little panning needs no new request.
 */
export function regionFor(
  window: ViewWindow,
  length: number,
  block: number,
  pixels: number,
): Region | null {
  if (block <= 1 || (pixels * block) / window.span <= 2) return null;
  const margin = Math.ceil(window.span / 4);
  const clamp = (v: number) => Math.min(length, Math.max(0, v));
  return {
    row0: clamp(Math.floor(window.y0) - margin),
    row1: clamp(Math.ceil(window.y0 + window.span) + margin),
    col0: clamp(Math.floor(window.x0) - margin),
    col1: clamp(Math.ceil(window.x0 + window.span) + margin),
  };
}

/** Whether `region` holds every token of the window. */
export function coversWindow(region: Region, window: ViewWindow): boolean {
  return (
    region.row0 <= Math.floor(window.y0) &&
    region.col0 <= Math.floor(window.x0) &&
    region.row1 >= Math.ceil(window.y0 + window.span) &&
    region.col1 >= Math.ceil(window.x0 + window.span)
  );
}
