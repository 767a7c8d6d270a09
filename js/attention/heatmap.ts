// The T x T attention heatmap on canvas: wheel to zoom about the pointer, drag to pan, double-click
// to see the whole map again; a down-sampled overview with the visible window beside it; the row
// and column under the pointer highlighted, and a tooltip with both tokens and the weight.

import { type ArrayHeader, dequantizeOne } from "../shared/codecs";
import { lookupTable } from "../shared/colour";
import { h } from "../shared/dom";
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
  private readonly table = lookupTable();
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

  /** Shows a new map: 8-bit codes, `length` x `length`, and the pieces naming its rows. */
  setData(codes: Uint8Array, header: ArrayHeader, pieces: string[], keepWindow = false): void {
    const length = header.shape[0] ?? 0;
    if (codes.length !== length * length) throw new Error("the attention map is not square");
    const sameShape = length === this.length;
    this.header = header;
    this.pieces = pieces;
    this.length = length;
    this.codes = codes;
    this.build();
    if (!(keepWindow && sameShape)) this.window = fullWindow(length);
    if (this.pinned !== null && this.pinned >= length) this.pinned = null;
    this.render();
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
    const base = { data: codes, rows: this.length, cols: this.length };
    const shown = this.perRow ? normaliseRows(base) : base;
    // The pyramid is of the colours shown; the value under the pointer is always read from the
    // codes as sent (`base`), whatever the colour scale.
    this.base = base;
    this.grids = pyramid(shown, OVERVIEW / 2);
    this.levels = this.grids.map((grid) => {
      const level = document.createElement("canvas");
      level.width = grid.cols;
      level.height = grid.rows;
      const context = level.getContext("2d");
      if (context) {
        const image = context.createImageData(grid.cols, grid.rows);
        paint(grid, this.table, image.data);
        context.putImageData(image, 0, 0);
      }
      return level;
    });
  }

  /** Highlights a query row chosen elsewhere (a token hovered in the text). */
  highlightRow(row: number | null): void {
    this.external = row;
    this.renderOverlay();
  }

  /** The weight of one cell, decoded. */
  value(row: number, col: number): number {
    const base = this.base;
    if (!base || !this.header) return 0;
    return dequantizeOne(this.header, base.data[row * base.cols + col] ?? 0);
  }

  /** A query row's weights, decoded (what the text strip lights up). */
  row(row: number): Float32Array {
    const out = new Float32Array(this.length);
    for (let col = 0; col < this.length; col++) out[col] = this.value(row, col);
    return out;
  }

  get view(): ViewWindow {
    return { ...this.window };
  }

  private render(): void {
    const context = this.canvas.getContext("2d");
    if (!context || this.levels.length === 0) return;
    const side = this.canvas.width;
    const cellsPerPixel = this.window.span / side;
    const level = levelFor(cellsPerPixel, this.levels.length);
    const source = this.levels[level];
    const scale = 2 ** level;
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
    const band = (row: number | null, col: number | null, colour: string) => {
      context.fillStyle = colour;
      if (row !== null) context.fillRect(0, (row - this.window.y0) * cell, side, Math.max(cell, 1));
      if (col !== null) context.fillRect((col - this.window.x0) * cell, 0, Math.max(cell, 1), side);
    };
    const row = this.hovered?.row ?? this.external ?? this.pinned;
    if (this.pinned !== null && this.pinned !== row)
      band(this.pinned, null, "rgba(207, 34, 46, 0.12)");
    if (row !== null) band(row, this.hovered?.col ?? null, "rgba(207, 34, 46, 0.18)");
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
        this.render();
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
          this.render();
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
      this.render();
    });
    this.overview.addEventListener("click", (event) => {
      const rect = this.overview.getBoundingClientRect();
      const col = ((event.clientX - rect.left) / rect.width) * this.length;
      const row = ((event.clientY - rect.top) / rect.height) * this.length;
      this.window = centreOn(this.window, this.length, col, row);
      this.render();
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
      this.tooltip.replaceChildren(
        h("span", { class: "kw-tip-q" }, this.pieces[cell.row] ?? ""),
        " → ",
        h("span", { class: "kw-tip-k" }, this.pieces[cell.col] ?? ""),
        h("span", { class: "kw-tip-v" }, `${cell.col > cell.row ? "masked" : weight.toFixed(4)}`),
        h("span", { class: "kw-tip-pos" }, `query ${cell.row}, key ${cell.col}`),
      );
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
