// The T x T attention heatmap on canvas: wheel to zoom about the pointer, drag to pan, double-click
// to see the whole map again; a down-sampled overview with the visible window beside it; the row
// and column under the pointer highlighted, and a tooltip with both tokens and the weight.
// The map arrives shrunk to block maxima (`block` tokens a cell side, about one cell a pixel);
// a full-resolution region (`setDetail`) is drawn over it where the user has zoomed in. All
// coordinates here are tokens; a cell outside the region stands for a block of them.

import { type ArrayHeader, dequantizeOne } from "../shared/codecs";
import { inkTable } from "../shared/colour";
import { h } from "../shared/dom";
import { cellSpans, codeAt, type Detail, rowCodes, rowSpan, type Span } from "./blocks";
import {
  type CodeGrid,
  cellAt,
  centreOn,
  fullWindow,
  levelFor,
  normaliseRows,
  paint,
  panBy,
  pyramid,
  type ViewWindow,
  zoomAt,
} from "./raster";

const SIZE = 440; // CSS pixels of the heatmap's side
const OVERVIEW = 120;
const LABEL_GUTTER = 64;
const MIN_LABEL_CELL = 11; // pixels a cell needs before its token is written beside it
// Short sequences (a teaching sentence) get their tokens written along both axes; long ones rely
// on the tooltip and the text below, and spend no room on label gutters.
const MAX_LABELLED = Math.floor(SIZE / MIN_LABEL_CELL);

export interface HeatmapEvents {
  /** The cell under the pointer (query row, key column), or nulls when it leaves. */
  hover(row: number | null, col: number | null): void;
  /** A click pins a query row (null unpins). */
  select(row: number | null): void;
  /** The window moved (zoom, pan, whole map). */
  view?(window: ViewWindow): void;
}

/** How the codes of `setData` relate to tokens. */
export interface MapShape {
  /** Tokens a side of the map. */
  length: number;
  /** Tokens per cell side (1: full resolution). */
  block: number;
  /** The largest code of each query row at full resolution (for the per-row colour scale). */
  rowMax?: Uint8Array;
}

function canvas(cls: string, side: number, height = side): HTMLCanvasElement {
  const el = h("canvas", { class: cls });
  const ratio = window.devicePixelRatio || 1;
  el.width = Math.round(side * ratio);
  el.height = Math.round(height * ratio);
  el.style.width = `${side}px`;
  el.style.height = `${height}px`;
  return el;
}

export class Heatmap {
  readonly el: HTMLElement;
  readonly canvas = canvas("kw-heatmap-canvas", SIZE);
  private readonly overlay = canvas("kw-heatmap-overlay", SIZE);
  private readonly overview = canvas("kw-heatmap-overview", OVERVIEW);
  private readonly rowLabels = canvas("kw-heatmap-rows", LABEL_GUTTER, SIZE);
  private readonly colLabels = canvas("kw-heatmap-cols", SIZE, LABEL_GUTTER);
  private readonly tooltip = h("div", { class: "kw-heatmap-tip", hidden: true });
  private levels: HTMLCanvasElement[] = [];
  private grids: CodeGrid[] = [];
  private header: ArrayHeader | null = null;
  private pieces: string[] = [];
  private length = 0;
  private window: ViewWindow = fullWindow(1);
  private hovered: { row: number; col: number } | null = null;
  private pinned: number | null = null;
  private external: number | null = null;
  private drag: { x: number; y: number; moved: boolean } | null = null;
  private codes: Uint8Array | null = null;
  private base: CodeGrid | null = null;
  private perRow = false;
  private block = 1;
  private rowMax: Uint8Array | null = null;
  private detail: Detail | null = null;
  private detailCanvas: HTMLCanvasElement | null = null;

  constructor(private readonly events: HeatmapEvents) {
    const stack = h("div", { class: "kw-heatmap-stack" }, this.canvas, this.overlay, this.tooltip);
    this.el = h(
      "div",
      { class: "kw-heatmap" },
      h(
        "div",
        { class: "kw-heatmap-grid" },
        h("div", { class: "kw-heatmap-corner" }),
        this.colLabels,
        this.rowLabels,
        stack,
      ),
      h(
        "div",
        { class: "kw-heatmap-side" },
        this.overview,
        h(
          "div",
          { class: "kw-heatmap-help kw-muted" },
          "Wheel: zoom · drag: pan · double-click: whole map · click: pin a row",
        ),
      ),
    );
    this.listen();
  }

  /** Shows a new map: 8-bit codes of `ceil(length / block)` cells a side (by default the
   *  whole `length` x `length` map), and the pieces naming its rows. */
  setData(
    codes: Uint8Array,
    header: ArrayHeader,
    pieces: string[],
    keepWindow = false,
    shape?: MapShape,
  ): void {
    const cells = header.shape[0] ?? 0;
    if (codes.length !== cells * cells) throw new Error("the attention map is not square");
    const length = shape?.length ?? cells;
    const block = shape?.block ?? 1;
    if (Math.ceil(length / block) !== cells)
      throw new Error("the map's cells do not fit its tokens");
    const sameShape = length === this.length;
    this.header = header;
    this.pieces = pieces;
    this.length = length;
    this.block = block;
    this.rowMax = shape?.rowMax ?? null;
    this.codes = codes;
    this.detail = null;
    this.detailCanvas = null;
    this.build();
    if (!(keepWindow && sameShape)) this.window = fullWindow(length);
    if (this.pinned !== null && this.pinned >= length) this.pinned = null;
    this.moved();
  }

  /** Draws full-resolution codes of one region over the map (on the map's scale). */
  setDetail(detail: Detail): void {
    const { region } = detail;
    if (detail.codes.length !== (region.row1 - region.row0) * (region.col1 - region.col0)) {
      throw new Error("the region's codes do not fit it");
    }
    this.detail = detail;
    this.buildDetail();
    this.render();
  }

  /** After a zoom or pan: a region whose tokens are now smaller than a pixel is dropped (the
   *  overview's block maxima show its sharp weights; a shrunk region would lose them). */
  private moved(): void {
    if (this.detail && this.window.span > this.canvas.width) {
      this.detail = null;
      this.detailCanvas = null;
    }
    this.render();
    this.events.view?.(this.view);
  }

  /** The region drawn at full resolution, if any. */
  get detailRegion(): Detail["region"] | null {
    return this.detail ? { ...this.detail.region } : null;
  }

  /** Tokens per overview cell side. */
  get cellBlock(): number {
    return this.block;
  }

  /** Device pixels a side of the heatmap. */
  get pixels(): number {
    return this.canvas.width;
  }

  /** Colours each row relative to its own maximum (true) or to the whole map's (false). */
  setRowScale(perRow: boolean): void {
    if (perRow === this.perRow) return;
    this.perRow = perRow;
    if (this.codes === null) return;
    this.build();
    this.render();
  }

  private build(): void {
    const codes = this.codes;
    if (codes === null) return;
    const cells = Math.ceil(this.length / this.block);
    const base = { data: codes, rows: cells, cols: cells };
    const shown = this.perRow ? normaliseRows(base) : base;
    // The pyramid is of the colours shown; the value under the pointer is always read from the
    // codes as sent (`base`), whatever the colour scale.
    this.base = base;
    this.grids = pyramid(shown, OVERVIEW / 2);
    this.levels = this.grids.map((grid) => this.rasterise(grid));
    this.buildDetail();
  }

  private buildDetail(): void {
    const detail = this.detail;
    if (detail === null) return;
    const { region } = detail;
    const grid = {
      data: detail.codes,
      rows: region.row1 - region.row0,
      cols: region.col1 - region.col0,
    };
    const maxima = this.rowMax?.subarray(region.row0, region.row1);
    this.detailCanvas = this.rasterise(this.perRow ? normaliseRows(grid, maxima) : grid);
  }

  /** One canvas pixel per cell of `grid`, in the current colour table. */
  private rasterise(grid: Parameters<typeof paint>[0]): HTMLCanvasElement {
    const level = document.createElement("canvas");
    level.width = grid.cols;
    level.height = grid.rows;
    const context = level.getContext("2d");
    if (context) {
      const image = context.createImageData(grid.cols, grid.rows);
      paint(grid, inkTable(this.el), image.data);
      context.putImageData(image, 0, 0);
    }
    return level;
  }

  /** Highlights a query row chosen elsewhere (a token hovered in the text). */
  highlightRow(row: number | null): void {
    this.external = row;
    this.renderOverlay();
  }

  /** The weight of one token cell, decoded: exact inside the detail, its block's maximum elsewhere. */
  value(row: number, col: number): number {
    const base = this.base;
    if (!base || !this.header) return 0;
    return dequantizeOne(this.header, codeAt(base, this.block, this.detail, row, col));
  }

  /** A query row's weights over every key, decoded (what the text strip lights up). */
  row(row: number): Float32Array {
    const out = new Float32Array(this.length);
    const header = this.header;
    if (!this.base || !header) return out;
    const codes = rowCodes(this.base, this.block, this.detail, row, this.length);
    for (let col = 0; col < this.length; col++) out[col] = dequantizeOne(header, codes[col] ?? 0);
    return out;
  }

  /** The query tokens a highlighted row stands for at the resolution drawn there. */
  querySpan(row: number): Span {
    return rowSpan(row, this.block, this.length, this.detail);
  }

  get view(): ViewWindow {
    return { ...this.window };
  }

  private render(): void {
    const context = this.canvas.getContext("2d");
    if (!context || this.levels.length === 0) return;
    const side = this.canvas.width;
    const cellsPerPixel = this.window.span / this.block / side;
    const level = levelFor(cellsPerPixel, this.levels.length);
    const source = this.levels[level];
    const scale = 2 ** level * this.block; // tokens per pixel of `source`
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, side, side);
    if (source) {
      context.drawImage(
        source,
        this.window.x0 / scale,
        this.window.y0 / scale,
        this.window.span / scale,
        this.window.span / scale,
        0,
        0,
        side,
        side,
      );
    }
    const detail = this.detail;
    if (detail && this.detailCanvas) {
      const { region } = detail;
      const f = side / this.window.span;
      context.drawImage(
        this.detailCanvas,
        (region.col0 - this.window.x0) * f,
        (region.row0 - this.window.y0) * f,
        (region.col1 - region.col0) * f,
        (region.row1 - region.row0) * f,
      );
    }
    this.renderOverview();
    this.renderLabels();
    this.renderOverlay();
  }

  private renderOverview(): void {
    const context = this.overview.getContext("2d");
    const top = this.levels[this.levels.length - 1];
    if (!context || !top) return;
    const side = this.overview.width;
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, side, side);
    context.drawImage(top, 0, 0, side, side);
    const f = side / this.length;
    context.strokeStyle = "#cf222e";
    context.lineWidth = Math.max(1, window.devicePixelRatio || 1);
    context.strokeRect(
      this.window.x0 * f,
      this.window.y0 * f,
      this.window.span * f,
      this.window.span * f,
    );
  }

  private renderLabels(): void {
    const ratio = window.devicePixelRatio || 1;
    const cell = SIZE / this.window.span;
    const show = this.length <= MAX_LABELLED;
    this.rowLabels.hidden = !show;
    this.colLabels.hidden = !show;
    this.el.querySelector(".kw-heatmap-corner")?.toggleAttribute("hidden", !show);
    if (!show) return;
    const rows = this.rowLabels.getContext("2d");
    const cols = this.colLabels.getContext("2d");
    if (!rows || !cols) return;
    rows.setTransform(ratio, 0, 0, ratio, 0, 0);
    cols.setTransform(ratio, 0, 0, ratio, 0, 0);
    rows.clearRect(0, 0, LABEL_GUTTER, SIZE);
    cols.clearRect(0, 0, SIZE, LABEL_GUTTER);
    const font = `${Math.min(12, Math.floor(cell * 0.8))}px ui-monospace, monospace`;
    rows.font = font;
    cols.font = font;
    rows.fillStyle = cols.fillStyle = getComputedStyle(this.el).color || "#1f2328";
    rows.textAlign = "right";
    rows.textBaseline = "middle";
    const first = Math.floor(this.window.x0);
    const last = Math.min(this.length, Math.ceil(this.window.x0 + this.window.span));
    for (let i = first; i < last; i++) {
      const label = (this.pieces[i] ?? "").slice(0, 9);
      const y = (i - this.window.y0 + 0.5) * cell;
      const x = (i - this.window.x0 + 0.5) * cell;
      if (y > 0 && y < SIZE) rows.fillText(label, LABEL_GUTTER - 4, y);
      if (x > 0 && x < SIZE) {
        cols.save();
        cols.translate(x, LABEL_GUTTER - 4);
        cols.rotate(-Math.PI / 2);
        cols.textAlign = "left";
        cols.textBaseline = "middle";
        cols.fillText(label, 0, 0);
        cols.restore();
      }
    }
  }

  private renderOverlay(): void {
    const context = this.overlay.getContext("2d");
    if (!context) return;
    const side = this.overlay.width;
    context.clearRect(0, 0, side, side);
    const cell = side / this.window.span;
    // A band covers the tokens the highlighted cell stands for: one, or a block of the overview.
    const band = (rows: Span | null, cols: Span | null, colour: string) => {
      context.fillStyle = colour;
      if (rows !== null) {
        const height = Math.max((rows.end - rows.start) * cell, 1);
        context.fillRect(0, (rows.start - this.window.y0) * cell, side, height);
      }
      if (cols !== null) {
        const width = Math.max((cols.end - cols.start) * cell, 1);
        context.fillRect((cols.start - this.window.x0) * cell, 0, width, side);
      }
    };
    const hovered = this.hovered;
    const row = hovered?.row ?? this.external ?? this.pinned;
    if (this.pinned !== null && this.pinned !== row)
      band(this.querySpan(this.pinned), null, "rgba(207, 34, 46, 0.12)");
    if (hovered) {
      const spans = cellSpans(hovered.row, hovered.col, this.block, this.length, this.detail);
      band(spans.rows, spans.cols, "rgba(207, 34, 46, 0.18)");
    } else if (row !== null) {
      band(this.querySpan(row), null, "rgba(207, 34, 46, 0.18)");
    }
  }

  private pointer(event: MouseEvent): { fx: number; fy: number } {
    const rect = this.overlay.getBoundingClientRect();
    return {
      fx: (event.clientX - rect.left) / rect.width,
      fy: (event.clientY - rect.top) / rect.height,
    };
  }

  private listen(): void {
    const target = this.overlay;
    target.addEventListener(
      "wheel",
      (event) => {
        if (this.length === 0) return;
        event.preventDefault();
        const { fx, fy } = this.pointer(event);
        this.window = zoomAt(this.window, this.length, event.deltaY < 0 ? 1.25 : 0.8, fx, fy);
        this.moved();
        this.hover(event); // the cell under the pointer changed with the zoom
      },
      { passive: false },
    );
    target.addEventListener("mousedown", (event) => {
      this.drag = { x: event.clientX, y: event.clientY, moved: false };
    });
    window.addEventListener("mouseup", this.endDrag);
    target.addEventListener("mousemove", (event) => {
      if (this.drag && (event.buttons & 1) === 1) {
        const dx = (event.clientX - this.drag.x) / SIZE;
        const dy = (event.clientY - this.drag.y) / SIZE;
        if (Math.abs(dx) + Math.abs(dy) > 0.003) {
          this.drag = { x: event.clientX, y: event.clientY, moved: true };
          this.window = panBy(this.window, this.length, dx, dy);
          this.moved();
        }
        return;
      }
      this.hover(event);
    });
    target.addEventListener("mouseleave", () => {
      this.hovered = null;
      this.tooltip.hidden = true;
      this.events.hover(null, null);
      this.renderOverlay();
    });
    target.addEventListener("click", (event) => {
      if (this.drag?.moved) return;
      const { fx, fy } = this.pointer(event);
      const cell = cellAt(this.window, this.length, fx, fy);
      this.pinned = cell === null || cell.row === this.pinned ? null : cell.row;
      this.events.select(this.pinned);
      this.renderOverlay();
    });
    target.addEventListener("dblclick", () => {
      this.window = fullWindow(this.length);
      this.moved();
    });
    this.overview.addEventListener("click", (event) => {
      const rect = this.overview.getBoundingClientRect();
      const col = ((event.clientX - rect.left) / rect.width) * this.length;
      const row = ((event.clientY - rect.top) / rect.height) * this.length;
      this.window = centreOn(this.window, this.length, col, row);
      this.moved();
    });
  }

  private readonly endDrag = () => {
    setTimeout(() => {
      this.drag = null;
    }, 0);
  };

  private hover(event: MouseEvent): void {
    const { fx, fy } = this.pointer(event);
    const cell = cellAt(this.window, this.length, fx, fy);
    this.hovered = cell;
    if (cell === null) {
      this.tooltip.hidden = true;
    } else {
      const weight = this.value(cell.row, cell.col);
      const { rows, cols } = cellSpans(cell.row, cell.col, this.block, this.length, this.detail);
      const masked = cols.start > rows.end - 1;
      if (rows.end - rows.start === 1 && cols.end - cols.start === 1) {
        this.tooltip.replaceChildren(
          h("span", { class: "kw-tip-q" }, this.pieces[cell.row] ?? ""),
          " → ",
          h("span", { class: "kw-tip-k" }, this.pieces[cell.col] ?? ""),
          h("span", { class: "kw-tip-v" }, `${masked ? "masked" : weight.toFixed(4)}`),
          h("span", { class: "kw-tip-pos" }, `query ${cell.row}, key ${cell.col}`),
        );
      } else {
        // A cell of the overview: the largest weight of its block (zoom in for each token's).
        this.tooltip.replaceChildren(
          h("span", { class: "kw-tip-q" }, this.pieces[rows.start] ?? ""),
          "… → ",
          h("span", { class: "kw-tip-k" }, this.pieces[cols.start] ?? ""),
          "…",
          h("span", { class: "kw-tip-v" }, `${masked ? "masked" : `max ${weight.toFixed(4)}`}`),
          h(
            "span",
            { class: "kw-tip-pos" },
            `queries ${rows.start}–${rows.end - 1}, keys ${cols.start}–${cols.end - 1}`,
          ),
        );
      }
      this.tooltip.hidden = false;
      const x = Math.min(fx * SIZE + 12, SIZE - 160);
      const y = Math.min(fy * SIZE + 12, SIZE - 40);
      this.tooltip.style.transform = `translate(${x}px, ${y}px)`;
    }
    this.events.hover(cell?.row ?? null, cell?.col ?? null);
    this.renderOverlay();
  }

  dispose(): void {
    window.removeEventListener("mouseup", this.endDrag);
    this.el.remove();
  }
}
