// The key/value cache of a chat, drawn slot by slot: one cell per cached token, coloured by the
// message it belongs to (a legend names them), hatched where the last request reused the slot from
// the cache kept after the turn before, round where the reply generated it; template tokens are
// faded. Above the cells, the capacity bar (slots used of those allocated) and the bytes each
// token costs; below them, the messages dropped because the context filled.

import { h } from "../shared/dom";
import { formatCount } from "../shared/format";
import type { CacheDescription, CacheMessage, Slot, Source } from "./protocol";

/** The least time between two redraws while a reply streams (it grows by a slot per token). */
export const REDRAW_MS = 100;

/** What a streamed token adds: its id and text (a `chat.token` record). */
export interface LiveToken {
  token_id: number;
  text: string;
}

const HUES: Record<CacheMessage["role"], number> = {
  system: 275,
  user: 212,
  assistant: 140,
  template: 30,
};

/** The colour of a message's cells: a hue per role, turns alternating in lightness. */
export function messageColour(message: CacheMessage | undefined): string {
  if (!message) return "hsl(0 0% 62%)"; // no longer in the conversation
  if (message.role === "template") return "hsl(30 10% 58%)";
  const light = message.turn % 2 === 0 ? 38 : 52;
  return `hsl(${HUES[message.role]} 62% ${light}%)`;
}

/** Bytes as the view writes them: "256 B", "11.8 KiB". */
export function formatBytes(count: number): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

const SOURCE_LABELS: Record<Source, string> = {
  reused: "reused from the kept cache",
  prefilled: "computed by prefill",
  generated: "generated",
};

export class KvCacheView {
  readonly el: HTMLElement;
  private readonly numbers = h("div", { class: "kw-kv-numbers" });
  private readonly bar = h("div", { class: "kw-kv-bar", role: "img" });
  private readonly barCaption = h("div", { class: "kw-kv-bar-caption" });
  private readonly legend = h("div", { class: "kw-kv-legend" });
  private readonly grid = h("div", { class: "kw-kv-grid" });
  private readonly detail = h("div", { class: "kw-kv-detail" }, "Point at a slot to see it.");
  private readonly dropped = h("div", { class: "kw-kv-dropped" });
  private readonly note = h("div", { class: "kw-kv-note", role: "status" });
  private description: CacheDescription | null = null;
  private live: LiveToken[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  private drawnAt = 0;

  constructor() {
    this.el = h(
      "div",
      { class: "kw-kv" },
      this.note,
      this.numbers,
      this.bar,
      this.barCaption,
      this.legend,
      this.grid,
      this.detail,
      this.dropped,
    );
    this.note.textContent = "Loading the cache…";
    this.grid.addEventListener("mouseover", (event) => this.point(event.target));
  }

  /** Shows a description from the kernel; a finished one holds the reply, so live tokens go. */
  show(description: CacheDescription): void {
    this.description = description;
    if (!description.running) this.live = [];
    this.draw();
  }

  /** A new reply starts: its tokens come as live slots until the kernel describes the cache. */
  startReply(): void {
    this.live = [];
  }

  /** Tokens of the reply being made: drawn at most every `REDRAW_MS`. */
  addTokens(tokens: readonly LiveToken[]): void {
    this.live.push(...tokens);
    const wait = this.drawnAt + REDRAW_MS - performance.now();
    if (wait <= 0) this.draw();
    else if (this.timer === null) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.draw();
      }, wait);
    }
  }

  error(message: string): void {
    this.note.textContent = message;
  }

  /** The slots drawn now: the kernel's, then the reply's tokens streamed since. */
  slots(): Slot[] {
    const description = this.description;
    if (!description) return [];
    const reply = description.messages.length - 1;
    const live = description.running
      ? this.live.map((token) => ({
          tokenId: token.token_id,
          piece: token.text,
          message: reply,
          template: false,
          source: "generated" as const,
        }))
      : [];
    return [...description.slots, ...live];
  }

  private draw(): void {
    this.drawnAt = performance.now();
    const description = this.description;
    if (!description) return;
    const slots = this.slots();
    // For tests and scripts: how many slots are drawn, and whether a reply is still streaming.
    this.el.dataset.used = String(slots.length);
    this.el.dataset.running = String(description.running);
    this.note.textContent =
      slots.length === 0
        ? "The cache is empty: send a message and its tokens fill it."
        : description.running
          ? "A reply is being generated: its slots are added as its tokens arrive."
          : "";
    this.drawNumbers(description, slots.length);
    this.drawBar(description, slots);
    this.drawLegend(description, slots);
    this.grid.replaceChildren(
      ...slots.map((slot, index) => {
        const message = description.messages[slot.message];
        const cell = h("span", {
          class: `kw-kv-cell kw-kv-${slot.source}${slot.template ? " kw-kv-template" : ""}${
            message ? "" : " kw-kv-stale"
          }`,
          "data-slot": index,
          title: describeSlot(index, slot, message),
        });
        cell.style.setProperty("--kw-kv-colour", messageColour(message));
        return cell;
      }),
    );
    this.drawDropped(description);
  }

  private drawNumbers(description: CacheDescription, used: number): void {
    const perToken = description.bytes_per_token;
    const itemsize =
      perToken && description.layers
        ? perToken / (description.layers * 2 * description.kv_heads * description.head_dim)
        : 0;
    this.numbers.replaceChildren(
      h(
        "div",
        {},
        h("b", {}, `${formatCount(used)} of ${formatCount(description.capacity)} slots used`),
        ` · context ${formatCount(description.context_length)} tokens`,
      ),
      h(
        "div",
        { class: "kw-kv-bytes" },
        `${formatBytes(perToken)} per token = ${description.layers} layers × 2 (keys, values) × ${
          description.kv_heads
        } kv heads × ${description.head_dim} × ${itemsize} bytes (${description.dtype}) · `,
        h("b", {}, formatBytes(perToken * used)),
        ` used of ${formatBytes(perToken * description.capacity)} allocated`,
      ),
    );
  }

  private drawBar(description: CacheDescription, slots: Slot[]): void {
    const capacity = Math.max(description.capacity, slots.length, 1);
    const counts: Record<Source, number> = { reused: 0, prefilled: 0, generated: 0 };
    for (const slot of slots) counts[slot.source] += 1;
    const parts = (["reused", "prefilled", "generated"] as const).map((source) => {
      const part = h("span", {
        class: `kw-kv-bar-part kw-kv-${source}`,
        title: `${counts[source]} ${SOURCE_LABELS[source]}`,
      });
      part.style.width = `${(100 * counts[source]) / capacity}%`;
      return part;
    });
    this.bar.replaceChildren(...parts);
    const free = Math.max(0, description.capacity - slots.length);
    this.barCaption.textContent = `${counts.reused} reused · ${counts.prefilled} prefilled · ${
      counts.generated
    } generated · ${free} free (the cache doubles when the chat needs more)`;
    this.bar.setAttribute(
      "aria-label",
      `${slots.length} of ${description.capacity} slots used: ${counts.reused} reused, ${counts.prefilled} prefilled, ${counts.generated} generated`,
    );
  }

  private drawLegend(description: CacheDescription, slots: Slot[]): void {
    const present = new Set(slots.map((slot) => slot.message));
    const entries = description.messages
      .map((message, index) => ({ message, index }))
      .filter(({ index }) => present.has(index))
      .map(({ message }) => swatch(messageColour(message), message.label, ""));
    if (present.has(-1)) {
      entries.push(swatch(messageColour(undefined), "no longer in the chat", " kw-kv-stale"));
    }
    const sources = (["reused", "prefilled", "generated"] as const).map((source) =>
      swatch("var(--kw-fg-muted)", SOURCE_LABELS[source], ` kw-kv-${source}`),
    );
    this.legend.replaceChildren(
      h("div", { class: "kw-kv-legend-row" }, ...entries),
      h(
        "div",
        { class: "kw-kv-legend-row" },
        ...sources,
        swatch("var(--kw-fg-muted)", "template token", " kw-kv-template"),
      ),
    );
  }

  private drawDropped(description: CacheDescription): void {
    if (description.dropped.length === 0) {
      this.dropped.replaceChildren();
      return;
    }
    this.dropped.replaceChildren(
      h("div", {}, "Dropped from the prompt because the context filled (the system prompt stays):"),
      ...description.dropped.map((message) =>
        h(
          "div",
          { class: "kw-kv-dropped-message" },
          h("b", {}, message.label),
          ` ${preview(message.content)}`,
        ),
      ),
    );
  }

  private point(target: EventTarget | null): void {
    if (!(target instanceof HTMLElement) || !target.dataset.slot) return;
    const index = Number(target.dataset.slot);
    const slot = this.slots()[index];
    if (!slot) return;
    this.detail.textContent = describeSlot(index, slot, this.description?.messages[slot.message]);
  }

  dispose(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}

function swatch(colour: string, label: string, extra: string): HTMLElement {
  const cell = h("span", { class: `kw-kv-cell kw-kv-swatch${extra}` });
  cell.style.setProperty("--kw-kv-colour", colour);
  return h("span", { class: "kw-kv-legend-entry" }, cell, label);
}

function describeSlot(index: number, slot: Slot, message: CacheMessage | undefined): string {
  const owner = message ? message.label : "no longer in the chat";
  const kind = slot.template ? "template token of" : "text of";
  return `slot ${index}: ${JSON.stringify(slot.piece)} (id ${slot.tokenId}) · ${kind} ${owner} · ${SOURCE_LABELS[slot.source]}`;
}

function preview(text: string, width = 80): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return JSON.stringify(flat.length <= width ? flat : `${flat.slice(0, width - 1)}…`);
}
