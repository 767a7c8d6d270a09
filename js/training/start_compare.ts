// Under a sample answer of the Training tab: its tokens coloured by how much more (blue) or less
// (red) likely the current weights find each than the weights training started from (for LoRA,
// the base model), on the Compare view's diverging scale, with the mean KL(start || now).

import { displayText } from "../attention/text_strip";
import { differenceColour } from "../compare/diverging";
import { css, textOn } from "../shared/colour";
import { h } from "../shared/dom";
import type { StartComparison } from "./protocol";

/** What "start" means for this run, as the line's label says it. */
export function startLabel(comparison: StartComparison): string {
  return comparison.start === "lora" ? "the base model (no adapters)" : "the starting weights";
}

export function renderStartComparison(comparison: StartComparison): HTMLElement {
  const tokens = comparison.pieces.map((piece, i) => {
    const start = comparison.logprob_start[i] ?? Number.NaN;
    const now = comparison.logprob_now[i] ?? Number.NaN;
    const colour = differenceColour(now - start);
    return h(
      "span",
      {
        class: "kw-train-delta-token",
        title: `${piece}: log p now ${now.toFixed(2)}, at the start ${start.toFixed(2)} · KL ${(comparison.kl[i] ?? Number.NaN).toFixed(3)} nats`,
        style: `background: ${css(colour)}; color: ${textOn(colour)}`,
      },
      displayText(piece),
    );
  });
  return h(
    "div",
    { class: "kw-train-delta" },
    h(
      "span",
      { class: "kw-train-delta-label" },
      `vs ${startLabel(comparison)}: mean KL ${comparison.mean_kl.toFixed(3)} nats · `,
    ),
    ...tokens,
  );
}
