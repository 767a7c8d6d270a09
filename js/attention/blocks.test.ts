import { describe, expect, it } from "vitest";
import {
  blockSpan,
  cellSpans,
  codeAt,
  coversWindow,
  type Detail,
  regionFor,
  rowCodes,
  rowSpan,
} from "./blocks";

// A 10-token map in blocks of 4: cells cover tokens 0-3, 4-7 and 8-9.
const overview = { data: Uint8Array.from([10, 0, 0, 20, 30, 0, 40, 50, 60]), rows: 3, cols: 3 };
const detail: Detail = {
  region: { row0: 4, row1: 6, col0: 2, col1: 5 },
  codes: Uint8Array.from([1, 2, 3, 4, 5, 6]),
};

describe("overview blocks", () => {
  it("maps a token to the tokens of its cell, the last cell shorter", () => {
    expect(blockSpan(0, 4, 10)).toEqual({ start: 0, end: 4 });
    expect(blockSpan(5, 4, 10)).toEqual({ start: 4, end: 8 });
    expect(blockSpan(9, 4, 10)).toEqual({ start: 8, end: 10 });
    expect(blockSpan(7, 1, 10)).toEqual({ start: 7, end: 8 });
  });

  it("reads a token's code from the detail where it has one, else from its block", () => {
    expect(codeAt(overview, 4, null, 0, 3)).toBe(10);
    expect(codeAt(overview, 4, null, 5, 1)).toBe(20);
    expect(codeAt(overview, 4, null, 9, 9)).toBe(60);
    expect(codeAt(overview, 4, detail, 4, 2)).toBe(1);
    expect(codeAt(overview, 4, detail, 5, 4)).toBe(6);
    expect(codeAt(overview, 4, detail, 5, 5)).toBe(30); // outside: the block (row 1, col 1)
    expect(codeAt(overview, 4, detail, 6, 2)).toBe(20);
    expect(Array.from(rowCodes(overview, 4, detail, 5, 10))).toEqual([
      20, 20, 4, 5, 6, 30, 30, 30, 0, 0,
    ]);
  });

  it("highlights a block at overview resolution and one token inside the detail", () => {
    expect(cellSpans(5, 9, 4, 10, null)).toEqual({
      rows: { start: 4, end: 8 },
      cols: { start: 8, end: 10 },
    });
    expect(cellSpans(5, 3, 4, 10, detail)).toEqual({
      rows: { start: 5, end: 6 },
      cols: { start: 3, end: 4 },
    });
    expect(cellSpans(5, 3, 1, 10, null).rows).toEqual({ start: 5, end: 6 });
    expect(rowSpan(5, 4, 10, detail)).toEqual({ start: 5, end: 6 });
    expect(rowSpan(2, 4, 10, detail)).toEqual({ start: 0, end: 4 });
  });

  it("asks for a region only once an overview cell grows past two pixels", () => {
    const whole = { x0: 0, y0: 0, span: 2048 };
    expect(regionFor(whole, 2048, 4, 440)).toBeNull(); // 512 cells on 440 pixels
    expect(regionFor({ x0: 100, y0: 200, span: 1000 }, 2048, 4, 440)).toBeNull();
    const zoomed = { x0: 100, y0: 200, span: 400 };
    const region = regionFor(zoomed, 2048, 4, 440);
    expect(region).toEqual({ row0: 100, row1: 700, col0: 0, col1: 600 });
    expect(region && coversWindow(region, zoomed)).toBe(true);
    expect(region && coversWindow(region, { x0: 500, y0: 200, span: 400 })).toBe(false);
    expect(regionFor(zoomed, 2048, 1, 440)).toBeNull(); // full resolution already
  });
});
