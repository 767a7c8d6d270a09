// The tokens of the Attribution view: every token a button (a click makes it the target), the
// tokens before the target coloured by their score, the target marked, the chat template's
// special tokens left out unless asked for. Hovering a token shows its score in its title.

import { displayText } from "../attention/text_strip";
import { css, textOn } from "../shared/colour";
import { h } from "../shared/dom";
import { attributionColour, formatScore } from "./colour_scale";

export interface StripToken {
  piece: string;
  role: string;
  /** One of the tokenizer's special tokens (the chat template's markers). */
  special: boolean;
}

export interface StripOptions {
  hideSpecial: boolean;
  /** The position being explained (null: none picked yet). */
  target: number | null;
  /** One score per position before the target, or null while none is known. */
  scores: ArrayLike<number> | null;
  /** The colour scale's end (largest |score| among the tokens shown). */
  max: number;
  onPick(index: number): void;
}

/** Whether the token at `index` is drawn (special tokens only when they are not hidden). */
export function isShown(tokens: readonly StripToken[], index: number, hideSpecial: boolean) {
  return !(hideSpecial && tokens[index]?.special);
}

export function tokenTitle(token: StripToken, index: number, options: StripOptions): string {
  const head = `${index}: ${token.piece}`;
  if (options.target === null) return index === 0 ? head : `${head} · click to explain this token`;
  if (index === options.target) return `${head} · the token explained`;
  if (index > options.target) return `${head} · after the target (cannot affect it)`;
  const score = options.scores?.[index];
  return score === undefined ? `${head} · computing…` : `${head} · score ${formatScore(score)}`;
}

export function renderTokenStrip(
  tokens: readonly StripToken[],
  options: StripOptions,
): HTMLElement {
  const nodes: HTMLElement[] = [];
  tokens.forEach((token, index) => {
    if (!isShown(tokens, index, options.hideSpecial)) return;
    const score =
      options.target !== null && index < options.target ? options.scores?.[index] : undefined;
    const colour = score === undefined ? null : attributionColour(score, options.max);
    const classes = [
      "kw-attr-token",
      `kw-role-${token.role}`,
      token.special ? "kw-attr-special" : "",
      index === options.target ? "kw-attr-target" : "",
      score !== undefined ? "kw-attr-scored" : "",
    ].filter(Boolean);
    const button = h(
      "button",
      {
        class: classes.join(" "),
        "data-index": index,
        "data-score": score === undefined ? null : String(score),
        title: tokenTitle(token, index, options),
        disabled: index === 0, // nothing comes before the first token
        style: colour ? `background-color: ${css(colour)}; color: ${textOn(colour)}` : null,
      },
      token.special ? token.piece : displayText(token.piece),
    );
    button.addEventListener("click", () => options.onPick(index));
    nodes.push(button);
    if (token.piece.includes("↵")) nodes.push(h("br"));
  });
  return h("div", { class: "kw-attr-tokens" }, ...nodes);
}
