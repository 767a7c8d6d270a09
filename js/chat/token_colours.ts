// A reply in the Chat tab shown token by token, each token coloured by the probability the model
// gave it or by the entropy of the distribution it was drawn from, from the generation engine's
// own stream events (`chat.token`: each token's log-probability and its top alternatives). A click
// on a token opens its popover (token_popover.ts).

import { percent } from "../probabilities/bars";
import { css, entropyColour, probabilityColour, type Rgb, textOn } from "../shared/colour";
import { h } from "../shared/dom";
import type { TokenRecord } from "../shared/protocol";

export type TokenColouring = "probability" | "entropy";

/** The probability of the chosen token, or -1 when the engine did not report it. */
export function tokenProbability(record: TokenRecord): number {
  return record.logprob === null || !Number.isFinite(record.logprob)
    ? -1
    : Math.exp(record.logprob);
}

/**
 * The entropy in nats of the distribution a token was drawn from, as far as its recorded top
 * alternatives tell: the probability outside them counts as one more outcome, so this is a lower
 * bound (exact when the alternatives hold all the mass). -1 when no alternatives were recorded.
 */
export function alternativesEntropy(record: TokenRecord): number {
  if (record.top_k.length === 0) return -1;
  let mass = 0;
  let nats = 0;
  for (const { prob } of record.top_k) {
    if (prob > 0) {
      nats -= prob * Math.log(prob);
      mass += prob;
    }
  }
  const rest = 1 - mass;
  if (rest > 1e-9) nats -= rest * Math.log(rest);
  return Math.max(0, nats);
}

export function tokenColour(record: TokenRecord, by: TokenColouring): Rgb {
  return by === "probability"
    ? probabilityColour(tokenProbability(record))
    : entropyColour(alternativesEntropy(record));
}

export function tokenTitle(record: TokenRecord): string {
  const prob = tokenProbability(record);
  const parts = [`token ${record.index}`, prob < 0 ? "p unknown" : `p = ${percent(prob)}`];
  const nats = alternativesEntropy(record);
  if (nats >= 0) parts.push(`entropy ≥ ${nats.toFixed(2)} nats`);
  return parts.join(" · ");
}

/** The reply's tokens as buttons, coloured `by` (null: plain); `pick(index)` runs on a click. */
export function renderColouredReply(
  records: readonly TokenRecord[],
  by: TokenColouring | null,
  pick: (index: number) => void,
  selected: number | null = null,
): HTMLElement {
  return h(
    "div",
    { class: "kw-coloured-reply", "data-colour-by": by ?? "none" },
    ...records.map((record, index) => {
      const colour = by ? tokenColour(record, by) : null;
      const button = h(
        "button",
        {
          class: `kw-coloured-token${index === selected ? " kw-coloured-selected" : ""}`,
          "data-index": index,
          title: tokenTitle(record),
          style: colour ? `background: ${css(colour)}; color: ${textOn(colour)}` : null,
        },
        record.text,
      );
      button.addEventListener("click", () => pick(index));
      return button;
    }),
  );
}
