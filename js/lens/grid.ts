// The lens grid: one row per layer, one column per position, each cell the top next token after
// that layer, coloured by its probability (or by the entropy there). The token strip heads the
// columns and the layer labels stay at the left while the grid scrolls (CSS sticky); the column
// headers are the keyboard's way in: arrows move between them, Enter or a click selects one.

import { displayText } from "../attention/text_strip";
import { percent } from "../probabilities/bars";
import { BLUES, css, entropyColour, interpolate, type Rgb, textOn } from "../shared/colour";
import { h } from "../shared/dom";
import { type LensData, topAt } from "./lens_data";

export type ColourBy = "probability" | "entropy";

export interface GridEvents {
  /** The pointer is over a cell (null: it left the grid). */
  hover(cell: { layer: number; position: number; target: HTMLElement } | null): void;
  select(position: number): void;
}

/**
 * A cell's background: its top token's probability on the sequential blues (white at 0, navy at
 * 1: a top token is rarely below 1%, so the chat's log-spaced red-to-green scale would paint
 * nearly every cell green), or the entropy of the whole distribution.
 */
export function cellColour(data: LensData, layer: number, position: number, by: ColourBy): Rgb {
  if (by === "entropy") return entropyColour(data.entropy[layer * data.length + position] ?? -1);
  return interpolate(BLUES, topAt(data, layer, position).prob);
}

export class LensGrid {
  readonly el: HTMLElement;
  private readonly headers: HTMLButtonElement[] = [];
  private readonly cells: HTMLElement[] = [];
  private selected: number | null = null;

  constructor(
    private readonly data: LensData,
    colourBy: ColourBy,
    private readonly events: GridEvents,
  ) {
    const grid = h("div", {
      class: "kw-lens-grid",
      role: "grid",
      "aria-label": `Logit lens: ${data.layers} layers x ${data.length} positions`,
      style: `grid-template-columns: auto repeat(${data.length}, var(--kw-lens-cell-width))`,
      // The arrow keys move between columns here; without this, Notebook 7's command-mode
      // shortcuts (Lumino) take them first.
      "data-lm-suppress-shortcuts": "true",
    });
    const fragment = document.createDocumentFragment();
    fragment.append(h("div", { class: "kw-lens-corner" }, "layer"));
    for (let position = 0; position < data.length; position++) {
      const piece = data.pieces[position] ?? "";
      const header = h(
        "button",
        {
          class: `kw-lens-col kw-role-${data.roles[position] ?? "text"}`,
          "data-position": position,
          tabindex: position === 0 ? 0 : -1,
          title: `position ${position}: “${displayText(piece)}” (click for the rank of the next token through the layers)`,
        },
        piece,
      );
      this.headers.push(header);
      fragment.append(header);
    }
    for (let layer = 0; layer < data.layers; layer++) {
      fragment.append(h("div", { class: "kw-lens-layer" }, String(layer)));
      for (let position = 0; position < data.length; position++) {
        const top = topAt(data, layer, position);
        // A hit: the layer already names the token that came next.
        const hit = position < data.length - 1 && top.tokenId === data.targetIds[position];
        const cell = h(
          "div",
          {
            class: hit ? "kw-lens-cell kw-lens-hit" : "kw-lens-cell",
            role: "gridcell",
            "data-layer": layer,
            "data-position": position,
            title: `layer ${layer}, after “${displayText(data.pieces[position] ?? "")}”: “${displayText(top.piece)}” ${percent(top.prob)}`,
          },
          top.piece,
        );
        this.cells.push(cell);
        fragment.append(cell);
      }
    }
    grid.append(fragment);
    this.colour(colourBy);
    grid.addEventListener("mouseover", (event) => {
      const cell = (event.target as HTMLElement).closest<HTMLElement>(".kw-lens-cell");
      if (!cell) return;
      events.hover({
        layer: Number(cell.dataset.layer),
        position: Number(cell.dataset.position),
        target: cell,
      });
    });
    grid.addEventListener("mouseleave", () => events.hover(null));
    grid.addEventListener("click", (event) => {
      const target = (event.target as HTMLElement).closest<HTMLElement>("[data-position]");
      if (target) this.choose(Number(target.dataset.position));
    });
    grid.addEventListener("keydown", (event) => this.key(event));
    this.el = h("div", { class: "kw-lens-scroll" }, grid);
  }

  /** Recolours every cell (the colour mode changed). */
  colour(by: ColourBy): void {
    const { data } = this;
    for (let layer = 0; layer < data.layers; layer++) {
      for (let position = 0; position < data.length; position++) {
        const cell = this.cells[layer * data.length + position];
        if (!cell) continue;
        const colour = cellColour(data, layer, position, by);
        cell.style.background = css(colour);
        cell.style.color = textOn(colour);
      }
    }
  }

  /** Marks column `position` as the one charted, and brings its header into view. */
  select(position: number): void {
    const { data } = this;
    if (this.selected !== null) this.mark(this.selected, false);
    this.selected = position;
    this.mark(position, true);
    for (const [index, header] of this.headers.entries())
      header.tabIndex = index === position ? 0 : -1;
    this.headers[position]?.scrollIntoView?.({ block: "nearest", inline: "nearest" });
    if (position < 0 || position >= data.length) this.selected = null;
  }

  private mark(position: number, on: boolean): void {
    const header = this.headers[position];
    header?.classList.toggle("kw-lens-selected", on);
    header?.setAttribute("aria-pressed", String(on));
    for (let layer = 0; layer < this.data.layers; layer++)
      this.cells[layer * this.data.length + position]?.classList.toggle("kw-lens-selected", on);
  }

  private choose(position: number): void {
    this.select(position);
    this.events.select(position);
  }

  private key(event: KeyboardEvent): void {
    const header = (event.target as HTMLElement).closest<HTMLElement>(".kw-lens-col");
    if (!header) return;
    const position = Number(header.dataset.position);
    const last = this.data.length - 1;
    const next =
      event.key === "ArrowRight"
        ? Math.min(last, position + 1)
        : event.key === "ArrowLeft"
          ? Math.max(0, position - 1)
          : event.key === "Home"
            ? 0
            : event.key === "End"
              ? last
              : null;
    if (next === null) return;
    event.preventDefault();
    this.choose(next);
    this.headers[next]?.focus();
  }
}
