// The Probabilities inspector: every token of the sequence coloured by the probability the model
// gave it (or the entropy of the distribution it came from), the alternatives at a clicked
// position as bars, tokens of a reply arriving live with their probabilities, and the step mode.

import { displayText } from "../attention/text_strip";
import { decodeArray } from "../shared/codecs";
import { css, probabilityColour, textOn } from "../shared/colour";
import { h } from "../shared/dom";
import { type InspectClient, InspectError } from "../shared/inspect_client";
import { type ProbabilitiesResult, REQUEST } from "../shared/inspect_protocol";
import type { TokenRecord } from "../shared/protocol";
import { type Bar, percent, renderBars } from "./bars";
import { type ColourBy, renderScoredText, type ScoredToken } from "./scored_text";
import { StepView } from "./step_view";

export interface Scores {
  tokens: ScoredToken[];
  tokenIds: Int32Array;
  topIds: Int32Array;
  topProbs: Float32Array;
  k: number;
  labels: Record<string, string>;
}

/** The arrays of a `probabilities.result`, decoded. */
export function decodeScores(
  result: ProbabilitiesResult,
  buffers: Parameters<typeof decodeArray>[1],
): Scores {
  const probs = decodeArray(result.arrays.probs, buffers).data as Float32Array;
  const entropy = decodeArray(result.arrays.entropy, buffers).data as Float32Array;
  const top = decodeArray(result.arrays.top_ids, buffers);
  return {
    tokens: result.pieces.map((piece, i) => ({
      piece,
      role: result.roles[i] ?? "text",
      prob: probs[i] ?? -1,
      entropy: entropy[i] ?? -1,
    })),
    tokenIds: decodeArray(result.arrays.token_ids, buffers).data as Int32Array,
    topIds: top.data as Int32Array,
    topProbs: decodeArray(result.arrays.top_probs, buffers).data as Float32Array,
    k: top.shape[1] ?? 0,
    labels: result.labels,
  };
}

/** The bars for position `index`: the top alternatives, and the token actually there. */
export function alternativesAt(scores: Scores, index: number): Bar[] {
  const actual = scores.tokenIds[index] ?? -1;
  const bars: Bar[] = [];
  for (let j = 0; j < scores.k; j++) {
    const tokenId = scores.topIds[index * scores.k + j] ?? -1;
    if (tokenId < 0) continue;
    bars.push({
      tokenId,
      piece: scores.labels[String(tokenId)] ?? String(tokenId),
      prob: scores.topProbs[index * scores.k + j] ?? 0,
      mark: tokenId === actual ? "chosen" : undefined,
    });
  }
  if (!bars.some((bar) => bar.tokenId === actual)) {
    const token = scores.tokens[index];
    bars.push({
      tokenId: actual,
      piece: token?.piece ?? "",
      prob: token?.prob ?? 0,
      mark: "chosen",
    });
  }
  return bars;
}

export interface ProbabilitiesViewOptions {
  client: InspectClient;
  /** Text for the step mode's prompt; null: the kernel's own (the text, or the chat's prompt). */
  text(): string | null;
  /** Chats have roles: colour only the replies by default. */
  chat: boolean;
}

export class ProbabilitiesView {
  readonly el: HTMLElement;
  private readonly colourSelect = h("select", { class: "kw-colour-by", "aria-label": "Colour by" });
  private readonly repliesOnly = h("input", {
    type: "checkbox",
    class: "kw-replies-only",
    checked: true,
  });
  private readonly textEl = h("div", { class: "kw-scored-slot" });
  private readonly detailEl = h("div", { class: "kw-prob-detail" });
  private readonly liveEl = h("div", { class: "kw-live", hidden: true });
  private readonly errorEl = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
  private readonly statusEl = h("div", { class: "kw-attn-status", role: "status" });
  readonly step: StepView;
  private scores: Scores | null = null;
  private selected: number | null = null;
  private ticket = 0;
  private live: TokenRecord[] = [];

  constructor(private readonly options: ProbabilitiesViewOptions) {
    this.colourSelect.append(
      h("option", { value: "probability" }, "probability"),
      h("option", { value: "entropy" }, "entropy"),
    );
    this.colourSelect.addEventListener("change", () => this.renderText());
    this.repliesOnly.addEventListener("change", () => this.renderText());
    this.step = new StepView(options.client, options.text);
    this.el = h(
      "div",
      { class: "kw-probabilities", "data-state": "loading" },
      h(
        "div",
        { class: "kw-attn-controls" },
        h("label", {}, "Colour by ", this.colourSelect),
        options.chat ? h("label", {}, this.repliesOnly, " replies only") : null,
        h("button", { class: "kw-btn kw-refresh", onclick: () => this.refresh() }, "Refresh"),
      ),
      this.statusEl,
      this.errorEl,
      this.liveEl,
      this.textEl,
      this.detailEl,
      h(
        "details",
        { class: "kw-step-section", open: !options.chat },
        h("summary", {}, "Step mode: generate one token at a time"),
        this.step.el,
      ),
    );
    this.refresh();
  }

  /** Scores the sequence again (the text or the conversation changed). */
  refresh(): void {
    const ticket = ++this.ticket;
    this.el.dataset.state = "loading";
    this.options.client
      .request<ProbabilitiesResult>(REQUEST.probabilities, {})
      .then(({ message, buffers }) => {
        if (ticket !== this.ticket) return;
        this.scores = decodeScores(message, buffers);
        this.selected = null;
        this.errorEl.hidden = true;
        this.statusEl.textContent = `${this.scores.tokens.length} tokens scored in one pass (temperature 1). Click a token for its alternatives.`;
        this.renderText();
        this.detailEl.replaceChildren();
        this.el.dataset.state = "ready";
      })
      .catch((error: Error) => {
        if (ticket !== this.ticket) return;
        if (error instanceof InspectError && error.code === "superseded") return;
        this.el.dataset.state = "error";
        this.errorEl.textContent = error.message;
        this.errorEl.hidden = false;
      });
  }

  /** Tokens of a reply being generated, with the engine's own probabilities and alternatives. */
  addLive(records: TokenRecord[]): void {
    this.live.push(...records);
    this.liveEl.hidden = false;
    this.liveEl.replaceChildren(
      h("div", { class: "kw-muted" }, "Arriving now (probabilities from the generation engine):"),
      h(
        "div",
        { class: "kw-scored-text" },
        ...this.live.map((record, index) => {
          const prob = record.logprob === null ? -1 : Math.exp(record.logprob);
          const colour = probabilityColour(prob);
          const span = h(
            "button",
            {
              class: "kw-scored kw-live-token",
              "data-index": index,
              style: `background: ${css(colour)}; color: ${textOn(colour)}`,
              title: `p = ${percent(prob)}`,
            },
            displayText(record.text || "·"),
          );
          span.addEventListener("click", () => this.showLive(record));
          return span;
        }),
      ),
    );
  }

  /** The reply ended: the live tokens give way to the scored conversation. */
  endLive(): void {
    this.live = [];
    this.liveEl.hidden = true;
    this.refresh();
  }

  private showLive(record: TokenRecord): void {
    const bars: Bar[] = record.top_k.map((alt) => ({
      tokenId: alt.token_id,
      piece: alt.text,
      prob: alt.prob,
      mark: alt.token_id === record.token_id ? "chosen" : undefined,
    }));
    this.detailEl.replaceChildren(
      h(
        "div",
        { class: "kw-prob-heading" },
        `Token ${record.index} of the reply: “${displayText(record.text)}”`,
      ),
      bars.length > 0
        ? renderBars(bars)
        : h("div", { class: "kw-muted" }, "No alternatives were recorded for this token."),
    );
  }

  private renderText(): void {
    const scores = this.scores;
    if (!scores) return;
    const roles = this.options.chat && this.repliesOnly.checked ? new Set(["assistant"]) : null;
    this.textEl.replaceChildren(
      renderScoredText(
        scores.tokens,
        this.colourSelect.value as ColourBy,
        (index) => this.pick(index),
        this.selected,
        roles,
      ),
    );
  }

  private pick(index: number): void {
    const scores = this.scores;
    if (!scores) return;
    this.selected = index;
    this.renderText();
    const token = scores.tokens[index];
    this.detailEl.replaceChildren(
      h(
        "div",
        { class: "kw-prob-heading" },
        `Position ${index}: “${displayText(token?.piece ?? "")}” had p = ${percent(token?.prob ?? -1)}; ` +
          `entropy of the distribution ${token && token.entropy >= 0 ? token.entropy.toFixed(2) : "–"} nats`,
      ),
      renderBars(alternativesAt(scores, index)),
    );
  }

  dispose(): void {
    this.el.remove();
  }
}
