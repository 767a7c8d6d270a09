// The Compare view's diverging scale: how much more likely model B found a token than model A,
// in nats (log p_B - log p_A). Red where B found it less likely, white where they agree, blue where
// B found it more likely (ColorBrewer RdBu, colour-blind safe); saturated at +-LIMIT nats.

import { interpolate, type Rgb } from "../shared/colour";

/** Differences beyond this many nats (a factor e^4, about 55) get the scale's end colours. */
export const LIMIT = 4;

export const RDBU: readonly Rgb[] = [
  [178, 24, 43],
  [239, 138, 98],
  [253, 219, 199],
  [247, 247, 247],
  [209, 229, 240],
  [103, 169, 207],
  [33, 102, 172],
];

/** The colour of a log-probability difference `delta` (nats); grey for no score. */
export function differenceColour(delta: number, limit = LIMIT): Rgb {
  if (!Number.isFinite(delta)) return [235, 235, 235];
  return interpolate(RDBU, (Math.max(-limit, Math.min(limit, delta)) + limit) / (2 * limit));
}

/** A CSS gradient of the whole scale, for the legend. */
export function legendGradient(): string {
  const stops = RDBU.map(([r, g, b]) => `rgb(${r}, ${g}, ${b})`);
  return `linear-gradient(to right, ${stops.join(", ")})`;
}
