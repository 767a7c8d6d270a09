// The attention inspector: layer and head pickers, the heatmap of the chosen head (or the head
// average), the text lit by what a token attends to, and on demand the layers x heads grid.
// Each layer is computed by the kernel only when asked and arrives as 8-bit codes, shrunk to block
// maxima of about the heatmap's pixels; zooming in fetches the region on screen at full
// resolution. Answers about an older sequence or selection are dropped, so fast clicking never
// draws a stale map.

const REGION_DELAY_MS = 120; // a zoom or pan settles before its region is asked for

import { decodeArray } from "../shared/codecs";
import { h } from "../shared/dom";
import { type Answer, type InspectClient, InspectError } from "../shared/inspect_client";
import {
  type AttentionProgress,
  type AttentionResult,
  type AttentionSequence,
  type AttentionThumbnails,
  OVERVIEW_CELLS,
  REQUEST,
  RESPONSE,
} from "../shared/inspect_protocol";
import { coversWindow, type Region, regionFor } from "./blocks";
import { Heatmap } from "./heatmap";
import { ModelGrid } from "./model_view";
import type { ViewWindow } from "./raster";
import { TextStrip } from "./text_strip";

export type HeadChoice = number | "mean";

export interface AttentionViewOptions {
  client: InspectClient;
  /** The text to look at; null means the kernel's own (the widget's text or the chat). */
  text(): string | null;
  layer: number;
  head: HeadChoice;
  onSelection?(layer: number, head: HeadChoice): void;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MB`;
}

export class AttentionView {
  readonly el: HTMLElement;
  private readonly layerSelect = h("select", { class: "kw-layer", "aria-label": "Layer" });
  private readonly headSelect = h("select", { class: "kw-head", "aria-label": "Head" });
  private readonly statusEl = h("div", { class: "kw-attn-status", role: "status" });
  private readonly passBar = h("progress", { class: "kw-attn-pass-bar", max: 1, value: 0 });
  private readonly passText = h("span", { class: "kw-attn-pass-text" });
  private readonly passEl = h(
    "div",
    { class: "kw-attn-pass kw-muted", hidden: true },
    this.passBar,
    this.passText,
  );
  private readonly stopProgress: () => void;
  /** Layers whose forward pass the kernel has finished (a map of one of them is quick). */
  private readyLayers = 0;
  private readonly errorEl = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
  private readonly gridButton = h(
    "button",
    { class: "kw-btn kw-model-view-btn" },
    "Model view: all layers",
  );
  private readonly rowScale = h("input", { type: "checkbox", class: "kw-row-scale" });
  private readonly heatmap: Heatmap;
  private readonly strip: TextStrip;
  private readonly grid: ModelGrid;
  private readonly gridEl: HTMLElement;
  private sequence: AttentionSequence | null = null;
  private layer: number;
  private head: HeadChoice;
  private ticket = 0;
  private pinned: number | null = null;
  private overviewId: string | null = null;
  private regionTimer: ReturnType<typeof setTimeout> | null = null;
  private regionTicket = 0;
  private asked: Region | null = null; // the region last asked for, of the map drawn now

  constructor(private readonly options: AttentionViewOptions) {
    this.layer = options.layer;
    this.head = options.head;
    this.heatmap = new Heatmap({
      hover: (row) => this.showQuery(row ?? this.pinned),
      select: (row) => {
        this.pinned = row;
        this.showQuery(row);
      },
      view: (window) => this.scheduleRegion(window),
    });
    this.strip = new TextStrip({
      hover: (index) => {
        const row = index ?? this.pinned;
        this.heatmap.highlightRow(row);
        this.showQuery(row);
      },
      select: (index) => {
        this.pinned = this.pinned === index ? null : index;
        this.heatmap.highlightRow(this.pinned);
        this.showQuery(this.pinned);
      },
    });
    this.grid = new ModelGrid((layer, head) => this.choose(layer, head));
    this.gridEl = h("div", { class: "kw-model-view", hidden: true }, this.grid.el);
    this.layerSelect.addEventListener("change", () =>
      this.choose(Number(this.layerSelect.value), this.head),
    );
    this.headSelect.addEventListener("change", () => {
      const value = this.headSelect.value;
      this.choose(this.layer, value === "mean" ? "mean" : Number(value));
    });
    this.gridButton.addEventListener("click", () => this.startOverview());
    this.rowScale.addEventListener("change", () => this.heatmap.setRowScale(this.rowScale.checked));
    this.el = h(
      "div",
      { class: "kw-attention", "data-state": "opening" },
      h(
        "div",
        { class: "kw-attn-controls" },
        h("label", {}, "Layer ", this.layerSelect),
        h("label", {}, "Head ", this.headSelect),
        h(
          "label",
          { title: "Colour each query row relative to its largest weight" },
          this.rowScale,
          " scale rows",
        ),
        this.gridButton,
      ),
      this.statusEl,
      this.passEl,
      this.errorEl,
      this.heatmap.el,
      h(
        "div",
        { class: "kw-strip-caption kw-muted" },
        "Hover a token to light up what it attends to; click to keep it.",
      ),
      this.strip.el,
      this.gridEl,
    );
    this.stopProgress = options.client.listen(RESPONSE.attentionProgress, ({ message }) =>
      this.showProgress(message as AttentionProgress),
    );
    this.open();
  }

  /** The kernel's forward pass over the sequence, shown while it runs. */
  private showProgress(progress: AttentionProgress): void {
    if (progress.sequence_id !== this.sequence?.sequence_id) return;
    this.readyLayers = progress.ready_layers;
    const done = progress.ready_layers >= progress.num_layers;
    this.passEl.hidden = done;
    this.el.dataset.readyLayers = String(progress.ready_layers);
    this.passBar.max = progress.num_layers;
    this.passBar.value = progress.ready_layers;
    const reused = progress.reused_tokens > 0 ? ` (${progress.reused_tokens} tokens reused)` : "";
    this.passText.textContent = ` Forward pass: ${progress.ready_layers} of ${progress.num_layers} layers ready${reused}`;
    if (this.el.dataset.state === "loading") this.statusEl.textContent = this.loadingText();
  }

  private loadingText(): string {
    if (this.layer < this.readyLayers || this.sequence === null) {
      return `Computing layer ${this.layer}…`;
    }
    return `Computing layer ${this.layer}: the forward pass is at layer ${this.readyLayers} of ${this.sequence.num_layers}…`;
  }

  /** Asks the kernel which tokens to show (again: the text or the conversation changed). */
  open(): void {
    const ticket = ++this.ticket;
    this.el.dataset.state = "opening";
    this.stopOverview();
    this.options.client
      .request<AttentionSequence>(REQUEST.attentionOpen, { text: this.options.text() })
      .then(({ message }) => {
        if (ticket !== this.ticket) return;
        const changed = this.sequence?.sequence_id !== message.sequence_id;
        this.sequence = message;
        this.fillPickers(message);
        if (changed) {
          this.pinned = null;
          this.readyLayers = 0;
          this.passEl.hidden = true;
          // Long sequences spread attention thin beside the first token: rows scaled on their
          // own show where it goes. Short ones read better on one scale.
          this.rowScale.checked = message.length > 256;
          this.heatmap.setRowScale(this.rowScale.checked);
          this.strip.setTokens(message.pieces, message.roles);
          this.grid.reset(message.num_layers, message.num_heads);
          this.gridEl.hidden = true;
        }
        this.request(changed);
      })
      .catch((error: Error) => this.fail(error, ticket));
  }

  /** Selects a layer and head (from the pickers, the grid, or the kernel's traitlets). */
  choose(layer: number, head: HeadChoice): void {
    if (layer === this.layer && head === this.head && this.el.dataset.state !== "error") return;
    this.layer = layer;
    this.head = head;
    this.options.onSelection?.(layer, head);
    if (this.sequence) {
      this.syncPickers();
      this.request(false);
    }
  }

  private fillPickers(sequence: AttentionSequence): void {
    this.layer = Math.min(Math.max(0, this.layer), sequence.num_layers - 1);
    if (this.head !== "mean" && this.head >= sequence.num_heads) this.head = "mean";
    this.layerSelect.replaceChildren(
      ...Array.from({ length: sequence.num_layers }, (_, i) =>
        h("option", { value: i }, String(i)),
      ),
    );
    this.headSelect.replaceChildren(
      h("option", { value: "mean" }, "average of heads"),
      ...Array.from({ length: sequence.num_heads }, (_, i) => h("option", { value: i }, String(i))),
    );
    this.syncPickers();
  }

  private syncPickers(): void {
    this.layerSelect.value = String(this.layer);
    this.headSelect.value = String(this.head);
    this.grid.setSelected(this.layer, this.head);
  }

  private request(fresh: boolean): void {
    const sequence = this.sequence;
    if (!sequence) return;
    const ticket = ++this.ticket;
    const started = performance.now();
    const { layer, head } = this;
    this.el.dataset.state = "loading";
    this.statusEl.textContent = this.loadingText();
    this.options.client
      .request<AttentionResult>(REQUEST.attention, {
        sequence_id: sequence.sequence_id,
        layer,
        head,
        cells: OVERVIEW_CELLS,
      })
      .then((answer) => {
        if (ticket !== this.ticket) return;
        this.draw(answer, sequence, started, fresh);
      })
      .catch((error: Error) => this.fail(error, ticket));
  }

  private draw(
    answer: Answer<AttentionResult>,
    sequence: AttentionSequence,
    started: number,
    fresh: boolean,
  ): void {
    const { message, buffers } = answer;
    const array = decodeArray(message.array, buffers);
    const rowMax = message.row_max
      ? (decodeArray(message.row_max, buffers).data as Uint8Array)
      : undefined;
    this.asked = null;
    this.regionTicket++; // a region of the map drawn before is not this map's
    this.heatmap.setData(array.data as Uint8Array, message.array, sequence.pieces, !fresh, {
      length: sequence.length,
      block: message.block ?? 1,
      rowMax,
    });
    this.el.dataset.block = String(message.block ?? 1);
    delete this.el.dataset.detail;
    this.showQuery(this.pinned);
    this.errorEl.hidden = true;
    const bytes = array.data.byteLength;
    requestAnimationFrame(() => {
      const drawn = performance.now() - started;
      const which = message.head === "mean" ? "average of heads" : `head ${message.head}`;
      this.statusEl.textContent =
        `Layer ${message.layer}, ${which} · ${sequence.length} tokens · ${formatBytes(bytes)} sent · ` +
        `computed in ${(message.compute_s * 1000).toFixed(0)} ms · shown ${drawn.toFixed(0)} ms after asking`;
      this.el.dataset.state = "ready";
      this.el.dataset.drawnMs = drawn.toFixed(1);
      this.el.dataset.bytes = String(bytes);
      this.el.dataset.layer = String(message.layer);
      this.el.dataset.head = String(message.head);
    });
  }

  private showQuery(row: number | null): void {
    if (row === null) {
      this.strip.light(null, null);
      return;
    }
    const span = this.heatmap.querySpan(row);
    this.strip.light(span.start, this.heatmap.row(row), span.end);
  }

  /** After a zoom or pan settles: the region on screen at full resolution, unless it is here. */
  private scheduleRegion(window: ViewWindow): void {
    if (this.regionTimer !== null) clearTimeout(this.regionTimer);
    this.regionTimer = setTimeout(() => {
      this.regionTimer = null;
      this.requestRegion(window);
    }, REGION_DELAY_MS);
  }

  private requestRegion(window: ViewWindow): void {
    const sequence = this.sequence;
    if (!sequence || this.el.dataset.state !== "ready") return;
    const have = this.heatmap.detailRegion ?? this.asked;
    if (have && coversWindow(have, window)) return;
    const region = regionFor(window, sequence.length, this.heatmap.cellBlock, this.heatmap.pixels);
    if (region === null) return;
    this.asked = region;
    const ticket = ++this.regionTicket;
    const started = performance.now();
    this.options.client
      .request<AttentionResult>(REQUEST.attention, {
        sequence_id: sequence.sequence_id,
        layer: this.layer,
        head: this.head,
        region: [region.row0, region.row1, region.col0, region.col1],
      })
      .then(({ message, buffers }) => {
        if (ticket !== this.regionTicket || !message.region) return;
        const [row0, row1, col0, col1] = message.region;
        const codes = decodeArray(message.array, buffers).data as Uint8Array;
        this.heatmap.setDetail({ region: { row0, row1, col0, col1 }, codes });
        this.asked = null; // from now on the heatmap's own region says what is here
        this.showQuery(this.pinned);
        this.el.dataset.detail = message.region.join(",");
        this.el.dataset.detailMs = (performance.now() - started).toFixed(1);
      })
      .catch((error: Error) => {
        if (ticket !== this.regionTicket) return;
        this.asked = null;
        if (error instanceof InspectError && error.code === "superseded") return;
        this.errorEl.textContent = error.message;
        this.errorEl.hidden = false;
      });
  }

  private startOverview(): void {
    const sequence = this.sequence;
    if (!sequence) return;
    this.stopOverview();
    this.gridEl.hidden = false;
    this.grid.reset(sequence.num_layers, sequence.num_heads);
    this.grid.setSelected(this.layer, this.head);
    this.gridButton.disabled = true;
    this.overviewId = this.options.client.stream(
      REQUEST.attentionOverview,
      { sequence_id: sequence.sequence_id, size: 44 },
      ({ message, buffers }) => {
        const thumbnails = message as AttentionThumbnails;
        if (thumbnails.sequence_id !== this.sequence?.sequence_id) return;
        const codes = decodeArray(thumbnails.array, buffers).data as Uint8Array;
        this.grid.setLayer(thumbnails.layer, thumbnails.array, codes);
        this.gridEl.dataset.filled = String(this.grid.filled);
        if (thumbnails.layer + 1 >= thumbnails.num_layers) this.stopOverview();
      },
      () => this.stopOverview(),
    );
  }

  private stopOverview(): void {
    if (this.overviewId !== null) this.options.client.endStream(this.overviewId);
    this.overviewId = null;
    this.gridButton.disabled = false;
  }

  private fail(error: Error, ticket: number): void {
    if (ticket !== this.ticket) return;
    if (error instanceof InspectError && error.code === "superseded") return;
    this.el.dataset.state = "error";
    this.errorEl.textContent = error.message;
    this.errorEl.hidden = false;
    this.statusEl.textContent = "";
  }

  dispose(): void {
    if (this.regionTimer !== null) clearTimeout(this.regionTimer);
    this.stopProgress();
    this.stopOverview();
    this.heatmap.dispose();
    this.el.remove();
  }
}
