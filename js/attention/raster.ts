// Pure pixel work of the attention heatmap, kept apart from the DOM so that it is unit-tested:
// codes -> RGBA through a lookup table, max-pooled levels for zoomed-out drawing (a nearest-pixel
// shrink of a 2,048-token map would drop the one-cell lines that matter), and the view transform.

/** A 2-D grid of 8-bit codes, row-major. */
export interface CodeGrid {
  data: Uint8Array;
  rows: number;
  cols: number;
}

/** RGBA pixels of a grid, each code looked up in a 256 x RGBA table. */
export function paint(
  grid: CodeGrid,
  table: Uint8ClampedArray,
  out?: Uint8ClampedArray,
): Uint8ClampedArray {
  const pixels = out ?? new Uint8ClampedArray(grid.rows * grid.cols * 4);
  const { data } = grid;
  for (let i = 0; i < data.length; i++) {
    const c = (data[i] ?? 0) * 4;
    const p = i * 4;
    pixels[p] = table[c] ?? 0;
    pixels[p + 1] = table[c + 1] ?? 0;
    pixels[p + 2] = table[c + 2] ?? 0;
    pixels[p + 3] = table[c + 3] ?? 255;
  }
  return pixels;
}

/**
 * Each row stretched to its own maximum. Codes are square roots of p / max, so dividing by the
 * row's largest code gives exactly the square root of p / rowmax: a query whose weights are all
 * small (a long sequence, with most mass on a sink) still shows where its attention goes.
 */
export function normaliseRows(grid: CodeGrid, maxima?: ArrayLike<number>): CodeGrid {
  // `maxima`: each row's largest code over the whole map, for a grid that holds part of its rows
  // (a zoomed region): the region is then coloured as the whole rows are.
  const out = new Uint8Array(grid.data.length);
  for (let r = 0; r < grid.rows; r++) {
    const row = grid.data.subarray(r * grid.cols, (r + 1) * grid.cols);
    let top = maxima?.[r] ?? 0;
    for (let c = 0; c < row.length; c++) top = Math.max(top, row[c] ?? 0);
    if (top === 0) continue;
    const f = 255 / top;
    for (let c = 0; c < row.length; c++) out[r * grid.cols + c] = Math.round((row[c] ?? 0) * f);
  }
  return { data: out, rows: grid.rows, cols: grid.cols };
}

/** Halves a grid by taking the maximum of each 2 x 2 block (odd edges keep their last cells). */
export function maxPool2(grid: CodeGrid): CodeGrid {
  const rows = Math.ceil(grid.rows / 2);
  const cols = Math.ceil(grid.cols / 2);
  const out = new Uint8Array(rows * cols);
  const { data } = grid;
  for (let r = 0; r < grid.rows; r++) {
    const base = r * grid.cols;
    const target = (r >> 1) * cols;
    for (let c = 0; c < grid.cols; c++) {
      const value = data[base + c] ?? 0;
      const index = target + (c >> 1);
      if (value > (out[index] ?? 0)) out[index] = value;
    }
  }
  return { data: out, rows, cols };
}

/** The grid and its max-pooled halvings, down to `minSize` cells a side. */
export function pyramid(grid: CodeGrid, minSize = 64): CodeGrid[] {
  const levels = [grid];
  let last = grid;
  while (Math.max(last.rows, last.cols) > minSize) {
    last = maxPool2(last);
    levels.push(last);
  }
  return levels;
}

/** The level to draw when one screen pixel covers `cellsPerPixel` cells of the full grid. */
export function levelFor(cellsPerPixel: number, levels: number): number {
  if (!(cellsPerPixel > 1)) return 0;
  return Math.min(levels - 1, Math.floor(Math.log2(cellsPerPixel)));
}

/** Which part of a `length` x `length` map is on screen: its top-left cell and cells per side. */
export interface ViewWindow {
  x0: number;
  y0: number;
  span: number;
}

export function fullWindow(length: number): ViewWindow {
  return { x0: 0, y0: 0, span: length };
}

function clampWindow(window: ViewWindow, length: number): ViewWindow {
  const span = Math.min(length, Math.max(Math.min(8, length), window.span));
  const limit = length - span;
  return {
    x0: Math.min(limit, Math.max(0, window.x0)),
    y0: Math.min(limit, Math.max(0, window.y0)),
    span,
  };
}

/** Zooms by `factor` (> 1 zooms in) keeping the cell under the point (fx, fy) in [0, 1]^2 fixed. */
export function zoomAt(
  window: ViewWindow,
  length: number,
  factor: number,
  fx: number,
  fy: number,
): ViewWindow {
  const span = window.span / factor;
  const cx = window.x0 + fx * window.span;
  const cy = window.y0 + fy * window.span;
  return clampWindow({ x0: cx - fx * span, y0: cy - fy * span, span }, length);
}

/** Moves the window by a drag of (dx, dy) in fractions of the canvas side. */
export function panBy(window: ViewWindow, length: number, dx: number, dy: number): ViewWindow {
  return clampWindow(
    { x0: window.x0 - dx * window.span, y0: window.y0 - dy * window.span, span: window.span },
    length,
  );
}

/** Centres the window on a cell (a click on the overview). */
export function centreOn(window: ViewWindow, length: number, col: number, row: number): ViewWindow {
  return clampWindow(
    { x0: col - window.span / 2, y0: row - window.span / 2, span: window.span },
    length,
  );
}

/** The (row, col) cell under a point (fx, fy) in [0, 1)^2 of the canvas, or null outside. */
export function cellAt(
  window: ViewWindow,
  length: number,
  fx: number,
  fy: number,
): { row: number; col: number } | null {
  if (fx < 0 || fy < 0 || fx >= 1 || fy >= 1) return null;
  const row = Math.floor(window.y0 + fy * window.span);
  const col = Math.floor(window.x0 + fx * window.span);
  if (row < 0 || col < 0 || row >= length || col >= length) return null;
  return { row, col };
}
