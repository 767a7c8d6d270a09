// The "model view": a layers x heads grid of thumbnails (block maxima of each head's map), filled
// layer by layer as the kernel streams them. A click on a thumbnail selects that layer and head.

import { type ArrayHeader, size } from "../shared/codecs";
import { inkTable } from "../shared/colour";
import { h } from "../shared/dom";
import { paint } from "./raster";

const CELL = 44; // CSS pixels of a thumbnail

export class ModelGrid {
  readonly el = h("div", { class: "kw-model-grid" });
  private cells: HTMLCanvasElement[][] = [];
  private selected: [number, number] | null = null;
  filled = 0;

  constructor(private readonly select: (layer: number, head: number) => void) {}

  reset(numLayers: number, numHeads: number): void {
    this.filled = 0;
    this.cells = [];
    const header = h(
      "div",
      { class: "kw-grid-row kw-grid-head" },
      h("span", { class: "kw-grid-label" }, ""),
      ...Array.from({ length: numHeads }, (_, head) =>
        h("span", { class: "kw-grid-col" }, `h${head}`),
      ),
    );
    const rows = Array.from({ length: numLayers }, (_, layer) => {
      const canvases = Array.from({ length: numHeads }, (_, head) => {
        const cell = h("canvas", {
          class: "kw-thumb kw-thumb-empty",
          width: CELL,
          height: CELL,
          title: `layer ${layer}, head ${head}`,
          "data-layer": layer,
          "data-head": head,
        });
        cell.addEventListener("click", () => this.select(layer, head));
        return cell;
      });
      this.cells.push(canvases);
      return h(
        "div",
        { class: "kw-grid-row" },
        h("span", { class: "kw-grid-label" }, `L${layer}`),
        ...canvases,
      );
    });
    this.el.replaceChildren(header, ...rows);
    this.mark();
  }

  /** Draws one layer's thumbnails: `codes` is [heads, s, s] with one scale per head. */
  setLayer(layer: number, header: ArrayHeader, codes: Uint8Array): void {
    const [heads = 0, rows = 0, cols = 0] = header.shape;
    const per = rows * cols;
    if (codes.length < size(header.shape)) return;
    const table = inkTable(this.el);
    for (let head = 0; head < heads; head++) {
      const target = this.cells[layer]?.[head];
      if (!target) continue;
      target.width = cols;
      target.height = rows;
      const context = target.getContext("2d");
      if (!context) continue;
      const image = context.createImageData(cols, rows);
      paint({ data: codes.subarray(head * per, (head + 1) * per), rows, cols }, table, image.data);
      context.putImageData(image, 0, 0);
      target.classList.remove("kw-thumb-empty");
    }
    this.filled = Math.max(this.filled, layer + 1);
  }

  setSelected(layer: number, head: number | "mean"): void {
    this.selected = head === "mean" ? null : [layer, head];
    this.mark();
  }

  private mark(): void {
    this.cells.forEach((row, layer) => {
      row.forEach((cell, head) => {
        const on =
          this.selected !== null && this.selected[0] === layer && this.selected[1] === head;
        cell.classList.toggle("kw-thumb-selected", on);
      });
    });
  }
}
