// The Logit-lens inspector: asks the kernel for the lens of the sequence (one pass, kept there),
// shows that a pass is running and for how long, then draws the grid, the top-k of a hovered
// cell and, for a clicked position, the chart of the next token's rank through the layers.

import { displayText } from "../attention/text_strip";
import { percent } from "../probabilities/bars";
import { h } from "../shared/dom";
import { type InspectClient, InspectError } from "../shared/inspect_client";
import { type LensProgress, type LensResult, REQUEST, RESPONSE } from "../shared/inspect_protocol";
import { type ColourBy, LensGrid } from "./grid";
import { alternatives, decodeLens, type LensData, trajectory } from "./lens_data";
import { chartCaption, renderRankChart } from "./rank_chart";

export interface LensViewOptions {
  client: InspectClient;
}

export class LensView {
  readonly el: HTMLElement;
  private readonly colourSelect = h("select", {
    class: "kw-lens-colour",
    "aria-label": "Colour by",
  });
  private readonly statusEl = h("div", { class: "kw-attn-status kw-lens-status", role: "status" });
  private readonly errorEl = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
  private readonly gridSlot = h("div", { class: "kw-lens-grid-slot" });
  private readonly chartSlot = h(
    "div",
    { class: "kw-lens-chart-slot" },
    h(
      "div",
      { class: "kw-muted" },
      "Click a position (a token at the top) to chart its next token.",
    ),
  );
  private readonly tip = h("div", { class: "kw-lens-tip", role: "tooltip", hidden: true });
  private grid: LensGrid | null = null;
  private data: LensData | null = null;
  private selected: number | null = null;
  private ticket = 0;
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly stopListening: () => void;

  constructor(private readonly options: LensViewOptions) {
    this.colourSelect.append(
      h("option", { value: "probability" }, "probability of the top token"),
      h("option", { value: "entropy" }, "entropy"),
    );
    this.colourSelect.addEventListener("change", () => this.grid?.colour(this.colourBy()));
    this.el = h(
      "div",
      { class: "kw-lens", "data-state": "loading" },
      h(
        "div",
        { class: "kw-attn-controls" },
        h("label", {}, "Colour by ", this.colourSelect),
        h("button", { class: "kw-btn kw-refresh", onclick: () => this.refresh() }, "Refresh"),
      ),
      this.statusEl,
      this.errorEl,
      h("div", { class: "kw-lens-body" }, this.gridSlot, this.chartSlot),
      this.tip,
    );
    this.stopListening = options.client.listen(RESPONSE.lensProgress, ({ message }) =>
      this.computing(message as LensProgress),
    );
    this.refresh();
  }

  /** Asks for the lens of the sequence as it is now (the kernel keeps each pass it made). */
  refresh(): void {
    const ticket = ++this.ticket;
    if (this.el.dataset.state !== "computing") this.el.dataset.state = "loading";
    this.options.client
      .request<LensResult>(REQUEST.lens, { text: null })
      .then(({ message, buffers }) => {
        if (ticket !== this.ticket) return;
        this.stopTimer();
        this.show(decodeLens(message, buffers));
      })
      .catch((error: Error) => {
        if (ticket !== this.ticket) return;
        if (error instanceof InspectError && error.code === "superseded") return;
        this.stopTimer();
        this.el.dataset.state = "error";
        this.errorEl.textContent = error.message;
        this.errorEl.hidden = false;
      });
  }

  private colourBy(): ColourBy {
    return this.colourSelect.value as ColourBy;
  }

  /** A pass started in the kernel: say so, with the seconds it has been running. */
  private computing(progress: LensProgress): void {
    this.stopTimer();
    this.el.dataset.state = "computing";
    const started = performance.now();
    const say = () => {
      const seconds = Math.round((performance.now() - started) / 1000);
      this.statusEl.textContent = `Computing the lens of ${progress.length} tokens through ${progress.num_layers} layers… ${seconds} s`;
    };
    say();
    this.timer = setInterval(say, 1000);
  }

  private stopTimer(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private show(data: LensData): void {
    const previous = this.data;
    this.data = data;
    this.errorEl.hidden = true;
    this.tip.hidden = true;
    this.grid = new LensGrid(data, this.colourBy(), {
      hover: (cell) => this.hover(cell),
      select: (position) => this.select(position),
    });
    this.gridSlot.replaceChildren(this.grid.el);
    this.statusEl.textContent =
      `${data.layers} layers x ${data.length} positions: the top next token after each layer ` +
      `(computed in ${data.computeS.toFixed(1)} s). Hover a cell for its top ${data.k}; ` +
      "click a position to chart its next token; underlined: the token that came next.";
    this.el.dataset.state = "ready";
    this.el.dataset.length = String(data.length);
    // The same position stays charted when the sequence only grew (a chat's next turn).
    const keep =
      previous !== null && this.selected !== null && this.selected < data.length - 1
        ? this.selected
        : data.length - 1;
    this.select(keep);
    this.grid.select(keep);
  }

  private hover(cell: { layer: number; position: number; target: HTMLElement } | null): void {
    const data = this.data;
    if (!data || !cell) {
      this.tip.hidden = true;
      return;
    }
    const piece = displayText(data.pieces[cell.position] ?? "");
    this.tip.replaceChildren(
      h("div", { class: "kw-lens-tip-head" }, `Layer ${cell.layer}, after “${piece}”`),
      ...alternatives(data, cell.layer, cell.position).map((alt) =>
        h(
          "div",
          {
            class:
              alt.tokenId === data.targetIds[cell.position]
                ? "kw-lens-tip-row kw-lens-tip-next"
                : "kw-lens-tip-row",
          },
          h("span", { class: "kw-lens-tip-piece" }, alt.piece),
          h("span", { class: "kw-lens-tip-prob" }, percent(alt.prob)),
        ),
      ),
    );
    this.tip.hidden = false;
    // Beside the cell, inside the view (the tip is positioned against .kw-lens): right of it
    // and level with it, or left of it and above where the view ends first.
    const box = cell.target.getBoundingClientRect();
    const root = this.el.getBoundingClientRect();
    const { offsetWidth: width, offsetHeight: height } = this.tip;
    let left = box.right - root.left + 4;
    if (left + width > root.width) left = box.left - root.left - width - 4;
    let top = box.top - root.top;
    if (top + height > root.height) top = box.bottom - root.top - height;
    this.tip.style.left = `${Math.max(0, left)}px`;
    this.tip.style.top = `${Math.max(0, top)}px`;
  }

  private select(position: number): void {
    const data = this.data;
    if (!data) return;
    this.selected = position;
    this.el.dataset.selected = String(position);
    const path = trajectory(data, position);
    this.chartSlot.replaceChildren(
      h(
        "div",
        { class: "kw-prob-heading" },
        `Position ${position}: after “${displayText(data.pieces[position] ?? "")}”`,
      ),
      renderRankChart(path),
      h("div", { class: "kw-lens-caption" }, chartCaption(path)),
    );
  }

  dispose(): void {
    this.ticket++;
    this.stopTimer();
    this.stopListening();
    this.el.remove();
  }
}
