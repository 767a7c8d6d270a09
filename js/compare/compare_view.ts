// The Compare view: one sequence scored under two models. Each token is coloured by how much more
// (blue) or less (red) likely model B found it than model A; a click shows both models' top-k at
// that position side by side, and "What would B say from here" continues greedily with model B
// from just before the clicked token. Used by the ChatWidget's Compare tab and by CompareView.

import { displayText } from "../attention/text_strip";
import { percent } from "../probabilities/bars";
import { type BufferLike, decodeArray } from "../shared/codecs";
import { css, textOn } from "../shared/colour";
import { h } from "../shared/dom";
import {
  type CompareResult,
  REQUEST,
  type SteerClient,
  type SteerResponse,
} from "../shared/steer_protocol";
import { differenceColour, LIMIT, legendGradient } from "./diverging";
import "../steering/steering.css";

/** What the view draws, decoded from a compare.result. */
export interface Comparison {
  sequenceId: string;
  names: [string, string];
  pieces: string[];
  roles: string[];
  labels: Record<string, string>;
  tokenIds: Int32Array;
  logprobsA: Float32Array;
  logprobsB: Float32Array;
  kl: Float32Array;
  topIdsA: Int32Array;
  topProbsA: Float32Array;
  topIdsB: Int32Array;
  topProbsB: Float32Array;
  k: number;
}

export function decodeComparison(message: CompareResult, buffers: BufferLike[]): Comparison {
  const array = (name: keyof CompareResult["arrays"]) => decodeArray(message.arrays[name], buffers);
  const topA = array("top_ids_a");
  return {
    sequenceId: message.sequence_id,
    names: message.names,
    pieces: message.pieces,
    roles: message.roles,
    labels: message.labels,
    tokenIds: array("token_ids").data as Int32Array,
    logprobsA: array("logprobs_a").data as Float32Array,
    logprobsB: array("logprobs_b").data as Float32Array,
    kl: array("kl").data as Float32Array,
    topIdsA: topA.data as Int32Array,
    topProbsA: array("top_probs_a").data as Float32Array,
    topIdsB: array("top_ids_b").data as Int32Array,
    topProbsB: array("top_probs_b").data as Float32Array,
    k: topA.shape[1] ?? 0,
  };
}

/** log p_B - log p_A of token `index` given the ones before (NaN for the first token). */
export function difference(c: Comparison, index: number): number {
  if (index < 1) return Number.NaN;
  return (c.logprobsB[index - 1] ?? Number.NaN) - (c.logprobsA[index - 1] ?? Number.NaN);
}

function topTable(c: Comparison, model: "a" | "b", index: number): HTMLElement {
  const ids = model === "a" ? c.topIdsA : c.topIdsB;
  const probs = model === "a" ? c.topProbsA : c.topProbsB;
  const actual = c.tokenIds[index];
  const rows: HTMLElement[] = [];
  for (let j = 0; j < c.k; j++) {
    const id = ids[(index - 1) * c.k + j] ?? -1;
    const label = c.labels[String(id)] ?? String(id);
    rows.push(
      h(
        "tr",
        { class: id === actual ? "kw-compare-actual" : "" },
        h("td", {}, JSON.stringify(displayText(label))),
        h("td", {}, percent(probs[(index - 1) * c.k + j] ?? Number.NaN)),
      ),
    );
  }
  return h(
    "div",
    { class: "kw-compare-list", "data-model": model },
    h(
      "div",
      { class: "kw-steer-heading" },
      `${model.toUpperCase()}: ${c.names[model === "a" ? 0 : 1]}`,
    ),
    h("table", { class: "kw-compare-top" }, h("tbody", {}, ...rows)),
  );
}

export class CompareView {
  readonly el: HTMLElement;
  private readonly header: HTMLElement;
  private readonly text: HTMLElement;
  private readonly detail: HTMLElement;
  private readonly statusLine: HTMLElement;
  private readonly errorLine: HTMLElement;
  private comparison: Comparison | null = null;
  private selected: number | null = null;
  private continuation: HTMLElement | null = null;
  private pending: string | null = null;

  constructor(private readonly client: SteerClient) {
    this.header = h("div", { class: "kw-steer-heading" });
    this.statusLine = h("div", { class: "kw-muted", role: "status" });
    this.errorLine = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
    this.text = h("div", { class: "kw-compare-text" });
    this.detail = h("div", { class: "kw-compare-detail" });
    const legend = h(
      "span",
      { class: "kw-compare-legend" },
      `B less likely (−${LIMIT} nats)`,
      h("span", { class: "kw-compare-scale", style: `background: ${legendGradient()}` }),
      `B more likely (+${LIMIT})`,
    );
    this.el = h(
      "div",
      { class: "kw-inspector-root kw-compare" },
      h(
        "div",
        { class: "kw-steer-row" },
        this.header,
        h(
          "button",
          { class: "kw-btn kw-compare-refresh", onclick: () => this.refresh() },
          "Compare",
        ),
        legend,
      ),
      this.statusLine,
      this.errorLine,
      this.text,
      this.detail,
    );
  }

  /** Scores the sequence (the conversation, or the widget's text) under both models again. */
  refresh(): void {
    if (this.pending) this.client.forget(this.pending);
    this.statusLine.textContent = "Scoring under both models…";
    this.el.setAttribute("aria-busy", "true");
    this.pending = this.client.send(REQUEST.compare, {}, (message, buffers) =>
      this.onResult(message, buffers),
    );
  }

  /** Asks model B to continue greedily from just before token `index`. */
  continueFrom(index: number): void {
    const c = this.comparison;
    if (!c || index < 1) return;
    this.continuation = h("div", { class: "kw-compare-continuation" }, "…");
    this.detail.querySelector(".kw-compare-continuation")?.remove();
    this.detail.append(this.continuation);
    const target = this.continuation;
    this.client.send(
      REQUEST.continue,
      { sequence_id: c.sequenceId, position: index - 1 },
      (message) => {
        if (message.kind === "compare.continuation") {
          target.textContent = `B continues: ${message.text}${message.done ? "" : "…"}`;
        } else if (message.kind === "steer.error") {
          target.textContent = message.message;
        }
      },
    );
  }

  select(index: number): void {
    const c = this.comparison;
    if (!c || index < 1 || index >= c.pieces.length) return;
    this.selected = index;
    this.drawText();
    const delta = difference(c, index);
    const kl = c.kl[index - 1] ?? Number.NaN;
    this.detail.replaceChildren(
      h(
        "div",
        { class: "kw-muted" },
        `Token ${index} ${JSON.stringify(displayText(c.pieces[index] ?? ""))}: log p_B − log p_A = ${delta.toFixed(2)} nats · KL(A‖B) = ${kl.toFixed(3)} nats`,
      ),
      h("div", { class: "kw-steer-columns" }, topTable(c, "a", index), topTable(c, "b", index)),
      h(
        "button",
        { class: "kw-btn kw-compare-continue", onclick: () => this.continueFrom(index) },
        "What would B say from here",
      ),
    );
  }

  dispose(): void {
    this.client.dispose();
  }

  private onResult(message: SteerResponse, buffers: BufferLike[]): void {
    this.el.setAttribute("aria-busy", "false");
    if (message.kind === "steer.error") {
      this.statusLine.textContent = "";
      this.errorLine.textContent = message.message;
      this.errorLine.hidden = false;
      return;
    }
    if (message.kind !== "compare.result") return;
    this.errorLine.hidden = true;
    this.comparison = decodeComparison(message, buffers);
    this.selected = null;
    this.detail.replaceChildren();
    const c = this.comparison;
    let total = 0;
    for (const value of c.kl) total += value;
    this.header.textContent = `A: ${c.names[0]} · B: ${c.names[1]}`;
    this.statusLine.textContent = `${c.pieces.length} tokens · mean KL(A‖B) ${(total / Math.max(1, c.kl.length)).toFixed(3)} nats · click a token`;
    this.drawText();
  }

  private drawText(): void {
    const c = this.comparison;
    if (!c) return;
    const nodes: HTMLElement[] = [];
    c.pieces.forEach((piece, index) => {
      const delta = difference(c, index);
      const scored = index > 0;
      const colour = differenceColour(delta);
      const token = h(
        scored ? "button" : "span",
        {
          class: `kw-compare-token${scored ? "" : " kw-compare-context"}${index === this.selected ? " kw-compare-selected" : ""}`,
          "data-index": index,
          title: scored ? `${index}: ${piece} · Δ ${delta.toFixed(2)} nats` : `${index}: ${piece}`,
          style: scored ? `background: ${css(colour)}; color: ${textOn(colour)}` : "",
        },
        /^<\|.*\|>$/.test(piece) ? piece : displayText(piece),
      );
      if (scored) token.addEventListener("click", () => this.select(index));
      nodes.push(token);
      if (piece.includes("↵")) nodes.push(h("br"));
    });
    this.text.replaceChildren(...nodes);
  }
}
