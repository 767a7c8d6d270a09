// The text itself as attention's canvas (bertviz's "head view", drawn on the tokens instead of as
// lines): hovering a token lights up the tokens it attends to, in proportion to the weight.

import { h } from "../shared/dom";

/** How a piece reads in running text: visible-space marks back to spaces, newline marks break. */
export function displayText(piece: string): string {
  return piece.replace(/␣/g, " ").replace(/⇥/g, "\t").replace(/␍/g, "");
}

/**
 * Background strengths for one query's weights: the square root of each weight relative to the
 * largest, so that a token with a tenth of the top weight is still visibly lit.
 */
export function strengths(weights: ArrayLike<number>): Float32Array {
  let top = 0;
  for (let i = 0; i < weights.length; i++) top = Math.max(top, weights[i] ?? 0);
  const out = new Float32Array(weights.length);
  if (top <= 0) return out;
  for (let i = 0; i < weights.length; i++) out[i] = Math.sqrt(Math.max(0, weights[i] ?? 0) / top);
  return out;
}

export interface TextStripEvents {
  hover(index: number | null): void;
  select(index: number): void;
}

export class TextStrip {
  readonly el = h("div", { class: "kw-strip", "aria-label": "Tokens of the sequence" });
  private spans: HTMLElement[] = [];
  private lit: number[] = [];
  private focus: number[] = [];

  constructor(private readonly events: TextStripEvents) {}

  setTokens(pieces: string[], roles: string[]): void {
    const nodes: HTMLElement[] = [];
    this.spans = pieces.map((piece, index) => {
      const special = /^<\|.*\|>$|^<\/?s>$/.test(piece);
      const span = h(
        "span",
        {
          class: `kw-strip-token kw-role-${roles[index] ?? "text"}${special ? " kw-strip-special" : ""}`,
          "data-index": index,
          title: `${index}: ${piece}`,
        },
        special ? piece : displayText(piece),
      );
      span.addEventListener("mouseenter", () => this.events.hover(index));
      span.addEventListener("mouseleave", () => this.events.hover(null));
      span.addEventListener("click", () => this.events.select(index));
      nodes.push(span);
      if (piece.includes("↵")) nodes.push(h("br")); // the text keeps its lines
      return span;
    });
    this.el.replaceChildren(...nodes);
    this.lit = [];
    this.focus = [];
  }

  /** Lights the keys of `query` by `weights` (its row of the map); null clears. `until`: the
   *  query stands for tokens `query .. until - 1` (a cell of a shrunk map), all marked. */
  light(query: number | null, weights: ArrayLike<number> | null, until?: number): void {
    for (const index of this.lit) this.spans[index]?.style.removeProperty("background-color");
    this.lit = [];
    for (const index of this.focus) this.spans[index]?.classList.remove("kw-strip-focus");
    this.focus = [];
    if (query === null || weights === null) return;
    for (let index = query; index < Math.max(query + 1, until ?? 0); index++) {
      this.spans[index]?.classList.add("kw-strip-focus");
      this.focus.push(index);
    }
    const values = strengths(weights);
    for (let i = 0; i < values.length; i++) {
      const v = values[i] ?? 0;
      if (v < 0.02) continue;
      this.spans[i]?.style.setProperty(
        "background-color",
        `rgba(33, 113, 181, ${(0.85 * v).toFixed(3)})`,
      );
      this.lit.push(i);
    }
  }
}
