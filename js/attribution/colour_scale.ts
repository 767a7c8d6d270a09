// The Attribution view's diverging colour scale: green for tokens that raised the target's
// log-probability, magenta for those that lowered it, near-white for none (ColorBrewer PiYG,
// readable with the common colour-vision deficiencies). One scale per result, symmetric around
// zero, its end at the largest magnitude among the tokens shown.

import { css, interpolate, type Rgb } from "../shared/colour";
import { h } from "../shared/dom";

export const NEUTRAL: Rgb = [247, 247, 247];
/** From zero to the largest positive score. */
export const RAISED: readonly Rgb[] = [NEUTRAL, [230, 245, 208], [161, 215, 106], [77, 146, 33]];
/** From zero to the largest negative score. */
export const LOWERED: readonly Rgb[] = [NEUTRAL, [253, 224, 239], [233, 163, 201], [197, 27, 125]];

/** The background of a token whose score is `score` on a scale ending at `max` (> 0). */
export function attributionColour(score: number, max: number): Rgb {
  if (!Number.isFinite(score) || !(max > 0)) return NEUTRAL;
  const t = Math.min(1, Math.abs(score) / max);
  return interpolate(score >= 0 ? RAISED : LOWERED, t);
}

/** The largest |score| among the positions `shown` keeps (0 when there is none). */
export function scaleMax(scores: ArrayLike<number>, shown: (index: number) => boolean): number {
  let max = 0;
  for (let i = 0; i < scores.length; i++) {
    const value = Math.abs(scores[i] ?? 0);
    if (shown(i) && Number.isFinite(value) && value > max) max = value;
  }
  return max;
}

/** A score as the view writes it: signed, three significant digits. */
export function formatScore(score: number): string {
  if (!Number.isFinite(score)) return "–";
  if (score === 0) return "0";
  const text = Math.abs(score) < 1e-3 ? score.toExponential(2) : score.toPrecision(3);
  return score > 0 ? `+${text}` : text.replace("-", "−");
}

/**
 * The legend: a bar from −max through 0 to +max, with what each end means; unsigned scores
 * (attention rollout, a share of the attention flow) get the positive half only.
 */
export function renderLegend(max: number, signed = true): HTMLElement {
  const stops = signed ? [...LOWERED].reverse().concat(RAISED.slice(1)) : [...RAISED];
  const gradient = stops
    .map((colour, i) => `${css(colour)} ${((i / (stops.length - 1)) * 100).toFixed(1)}%`)
    .join(", ");
  return h(
    "div",
    { class: "kw-attr-legend", "data-max": max },
    h("span", { class: "kw-attr-legend-end" }, signed ? `${formatScore(-max)} lowered it` : "0"),
    h("span", {
      class: "kw-attr-legend-bar",
      style: `background: linear-gradient(to right, ${gradient})`,
    }),
    h(
      "span",
      { class: "kw-attr-legend-end" },
      signed ? `${formatScore(max)} raised it` : `${formatScore(max)} of the attention flow`,
    ),
  );
}
