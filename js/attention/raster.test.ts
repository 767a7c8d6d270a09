import { describe, expect, it } from "vitest";
import { BLUES, lookupTable } from "../shared/colour";
import {
  cellAt,
  fullWindow,
  levelFor,
  maxPool2,
  normaliseRows,
  paint,
  panBy,
  pyramid,
  zoomAt,
} from "./raster";

describe("max pooling", () => {
  it("keeps a one-cell line through every level", () => {
    const n = 100;
    const data = new Uint8Array(n * n);
    for (let r = 1; r < n; r++) data[r * n + r - 1] = 200; // "look one token back"
    const levels = pyramid({ data, rows: n, cols: n }, 8);
    expect(levels.map((l) => l.rows)).toEqual([100, 50, 25, 13, 7]);
    for (const level of levels) {
      for (let r = 1; r < level.rows; r++) {
        // The line survives on (or next to) the diagonal of every level.
        const row = level.data.subarray(r * level.cols, (r + 1) * level.cols);
        expect(Math.max(...row)).toBe(200);
      }
    }
  });

  it("pools odd edges", () => {
    const grid = { data: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9]), rows: 3, cols: 3 };
    expect(Array.from(maxPool2(grid).data)).toEqual([5, 6, 8, 9]);
  });

  it("picks the level that matches the screen", () => {
    expect(levelFor(0.5, 5)).toBe(0);
    expect(levelFor(1, 5)).toBe(0);
    expect(levelFor(4.3, 5)).toBe(2);
    expect(levelFor(1000, 5)).toBe(4);
  });
});

describe("painting", () => {
  it("looks every code up in the table", () => {
    const table = lookupTable(BLUES);
    const pixels = paint({ data: Uint8Array.from([0, 255]), rows: 1, cols: 2 }, table);
    expect(Array.from(pixels.subarray(0, 4))).toEqual([255, 255, 255, 255]);
    expect(Array.from(pixels.subarray(4, 8))).toEqual([8, 48, 107, 255]);
  });
});

describe("view window", () => {
  it("zooms about the pointer and never leaves the map", () => {
    const full = fullWindow(1000);
    const zoomed = zoomAt(full, 1000, 4, 0.5, 0.5);
    expect(zoomed).toEqual({ x0: 375, y0: 375, span: 250 });
    // The cell under the pointer stays under it.
    expect(cellAt(zoomed, 1000, 0.5, 0.5)).toEqual(cellAt(full, 1000, 0.5, 0.5));
    const corner = zoomAt(full, 1000, 4, 0, 1);
    expect(corner).toEqual({ x0: 0, y0: 750, span: 250 });
    expect(zoomAt(full, 1000, 0.5, 0.5, 0.5)).toEqual(full); // no zooming out past the whole map
    expect(zoomAt(full, 1000, 1e6, 0.5, 0.5).span).toBe(8); // nor in past 8 cells
  });

  it("pans by drags and clamps at the edges", () => {
    const zoomed = { x0: 100, y0: 100, span: 100 };
    expect(panBy(zoomed, 1000, 0.5, -0.25)).toEqual({ x0: 50, y0: 125, span: 100 });
    expect(panBy(zoomed, 1000, 5, 5)).toEqual({ x0: 0, y0: 0, span: 100 });
  });

  it("maps points to cells", () => {
    const window = fullWindow(10);
    expect(cellAt(window, 10, 0.05, 0.95)).toEqual({ row: 9, col: 0 });
    expect(cellAt(window, 10, 1, 0.5)).toBeNull();
  });
});

describe("row scaling", () => {
  it("stretches each row to its maximum and leaves empty rows empty", () => {
    const grid = { data: Uint8Array.from([255, 0, 0, 51, 17, 0, 0, 0, 0]), rows: 3, cols: 3 };
    expect(Array.from(normaliseRows(grid).data)).toEqual([255, 0, 0, 255, 85, 0, 0, 0, 0]);
  });

  it("scales a region's rows by the whole rows' maxima", () => {
    const region = { data: Uint8Array.from([51, 17, 10, 0]), rows: 2, cols: 2 };
    // Row 0's largest weight lies outside the region (code 102): the region is dimmer than 255.
    expect(Array.from(normaliseRows(region, [102, 10]).data)).toEqual([128, 43, 255, 0]);
  });
});
