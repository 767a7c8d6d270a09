// The line under the toolbar: which model runs where, how much of the context is used, and how fast
// the last reply came (the engine's own figures once a reply is done, the rate drawn here while one
// streams).

import { h } from "../shared/dom";
import { formatCount, formatRate, formatSeconds } from "../shared/format";
import type { ModelInfo, Status } from "../shared/protocol";

export interface LiveFigures {
  /** Tokens per second as drawn in this view while a reply streams. */
  rate: number | null;
  /** Tokens of the reply streaming now, added to the context count. */
  streamed: number;
}

export class StatusLine {
  readonly el: HTMLElement;
  private readonly model: HTMLElement;
  private readonly state: HTMLElement;
  private readonly context: HTMLElement;
  private readonly ttft: HTMLElement;
  private readonly rate: HTMLElement;
  private readonly notice: HTMLElement;

  constructor() {
    this.model = h("span", { class: "kw-status-model" });
    this.state = h("span", { class: "kw-status-state" });
    this.context = h("span", { class: "kw-status-context", title: "Tokens used of the context" });
    this.ttft = h("span", { class: "kw-status-ttft", title: "Time to first token" });
    this.rate = h("span", { class: "kw-status-rate", title: "Decode speed" });
    this.notice = h("span", { class: "kw-status-notice", role: "note" });
    this.el = h(
      "div",
      { class: "kw-status", role: "status" },
      this.state,
      this.model,
      h("span", { class: "kw-spacer" }),
      this.context,
      this.ttft,
      this.rate,
      this.notice,
    );
  }

  update(status: Status, info: ModelInfo, live: LiveFigures | null): void {
    this.el.dataset.state = status.state;
    const parts = [info.name, info.dtype, info.backend, info.device].filter(Boolean);
    this.model.textContent = parts.join(" · ") || "no model";
    if (status.state === "loading") {
      const since = status.loading_since;
      const elapsed = since ? Math.max(0, Date.now() / 1000 - since) : null;
      this.state.textContent = `${status.message || "Loading model"}${elapsed === null ? "" : ` (${Math.round(elapsed)} s)`}`;
    } else if (status.state === "error") {
      this.state.textContent = status.message || "Error";
    } else if (status.state === "generating") {
      this.state.textContent = status.queued
        ? `Generating (${status.queued} queued)`
        : "Generating";
    } else {
      this.state.textContent = "";
    }
    this.state.hidden = this.state.textContent === "";
    const contextLength = status.context_length || info.context_length || 0;
    const used = status.tokens_used + (live?.streamed ?? 0);
    this.context.textContent = contextLength
      ? `${formatCount(used)} / ${formatCount(contextLength)} tokens`
      : "";
    const ttft = status.time_to_first_token_s;
    this.ttft.textContent =
      ttft === null || ttft === undefined ? "" : `TTFT ${formatSeconds(ttft)}`;
    const rate = live?.rate ?? status.decode_tokens_per_s;
    this.rate.textContent = rate === null || rate === undefined ? "" : formatRate(rate);
    this.ttft.hidden = this.ttft.textContent === "";
    this.rate.hidden = this.rate.textContent === "";
    // Shown whatever the state: it explains every reply's speed, not one moment.
    this.notice.textContent = status.notice ?? "";
    this.notice.hidden = this.notice.textContent === "";
  }
}
