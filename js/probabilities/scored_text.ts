// A sequence's tokens coloured by how probable the model found each one (or by the entropy of
// the distribution it came from); a click opens the alternatives the model weighed there.

import { displayText } from "../attention/text_strip";
import { css, entropyColour, probabilityColour, textOn } from "../shared/colour";
import { h } from "../shared/dom";
import { percent } from "./bars";

export type ColourBy = "probability" | "entropy";

export interface ScoredToken {
  piece: string;
  role: string;
  /** Probability of this token given the ones before (-1: none, the first token). */
  prob: number;
  /** Entropy in nats of the distribution it was drawn from (-1: none). */
  entropy: number;
}

export function tokenTitle(token: ScoredToken, index: number): string {
  if (token.prob < 0) return `${index}: ${token.piece} (the first token has no prediction)`;
  return `${index}: ${token.piece} · p = ${percent(token.prob)} · entropy ${token.entropy.toFixed(2)} nats`;
}

export function renderScoredText(
  tokens: ScoredToken[],
  colourBy: ColourBy,
  onPick: (index: number) => void,
  selected: number | null,
  onlyRoles: ReadonlySet<string> | null,
): HTMLElement {
  const nodes: HTMLElement[] = [];
  tokens.forEach((token, index) => {
    const scored = token.prob >= 0 && (onlyRoles === null || onlyRoles.has(token.role));
    const colour =
      colourBy === "probability" ? probabilityColour(token.prob) : entropyColour(token.entropy);
    const span = h(
      scored ? "button" : "span",
      {
        class: `kw-scored kw-role-${token.role}${scored ? "" : " kw-scored-context"}${index === selected ? " kw-scored-selected" : ""}`,
        "data-index": index,
        title: tokenTitle(token, index),
        style: scored ? `background: ${css(colour)}; color: ${textOn(colour)}` : "",
      },
      /^<\|.*\|>$/.test(token.piece) ? token.piece : displayText(token.piece),
    );
    if (scored) span.addEventListener("click", () => onPick(index));
    nodes.push(span);
    if (token.piece.includes("↵")) nodes.push(h("br"));
  });
  return h("div", { class: "kw-scored-text" }, ...nodes);
}
