// A reply in the Chat tab shown token by token, each token coloured by the probability the model
// gave it or by the entropy of the distribution it was drawn from, from the generation engine's
// own stream events (`chat.token`: each token's log-probability and its top alternatives). A click
// on a token shows the alternatives the model weighed there.

import { percent, renderBars } from "../probabilities/bars";
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

/** The reply's tokens as coloured buttons; `pick(index)` runs on a click. */
export function renderColouredReply(
  records: readonly TokenRecord[],
  by: TokenColouring,
  pick: (index: number) => void,
  selected: number | null = null,
): HTMLElement {
  return h(
    "div",
    { class: "kw-coloured-reply", "data-colour-by": by },
    ...records.map((record, index) => {
      const colour = tokenColour(record, by);
      const button = h(
        "button",
        {
          class: `kw-coloured-token${index === selected ? " kw-coloured-selected" : ""}`,
          "data-index": index,
          title: tokenTitle(record),
          style: `background: ${css(colour)}; color: ${textOn(colour)}`,
        },
        record.text,
      );
      button.addEventListener("click", () => pick(index));
      return button;
    }),
  );
}

/**
 * The alternatives the model weighed at one token, as bars (the chosen token marked); with
 * `onAttribute`, an "Attribute" button that explains the token in the Attribution tab.
 */
export function renderAlternatives(
  record: TokenRecord,
  onClose: () => void,
  onAttribute?: () => void,
): HTMLElement {
  const bars = record.top_k.map((alt) => ({
    tokenId: alt.token_id,
    piece: alt.text,
    prob: alt.prob,
    mark: alt.token_id === record.token_id ? ("chosen" as const) : undefined,
  }));
  const prob = tokenProbability(record);
  if (prob >= 0 && !bars.some((bar) => bar.tokenId === record.token_id)) {
    bars.push({ tokenId: record.token_id, piece: record.text, prob, mark: "chosen" });
  }
  return h(
    "div",
    { class: "kw-alternatives", role: "dialog", "aria-label": "Alternatives" },
    h(
      "div",
      { class: "kw-prob-heading" },
      `Token ${record.index}: “${record.text}” · ${prob < 0 ? "p unknown" : `p = ${percent(prob)}`}`,
      onAttribute
        ? h(
            "button",
            {
              class: "kw-icon kw-alternatives-attribute",
              title: "Which earlier tokens pushed the model towards this one",
              onclick: onAttribute,
            },
            "Attribute",
          )
        : null,
      h("button", { class: "kw-icon kw-alternatives-close", onclick: onClose }, "Close"),
    ),
    record.top_k.length > 0
      ? renderBars(bars)
      : h(
          "div",
          { class: "kw-muted" },
          "No alternatives were recorded for this token (they are recorded while colouring is on).",
        ),
  );
}
