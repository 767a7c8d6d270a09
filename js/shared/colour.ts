// Colour scales of the inspectors. Heatmaps index a 256-entry lookup table with the 8-bit codes
// the kernel sends: codes are square-root compressed, so equal steps of the table are equal
// steps of sqrt(p), which keeps small attention weights visible beside a strong attention sink.

export type Rgb = readonly [number, number, number];

/** Sequential "ink" scale: background white through blue to deep navy (ColorBrewer Blues). */
export const BLUES: readonly Rgb[] = [
  [255, 255, 255],
  [198, 219, 239],
  [107, 174, 214],
  [33, 113, 181],
  [8, 48, 107],
];

/** For dark themes: black through teal to pale yellow (perceptually increasing lightness). */
export const NIGHT: readonly Rgb[] = [
  [13, 17, 23],
  [33, 78, 109],
  [38, 145, 140],
  [141, 203, 95],
  [250, 240, 170],
];

/** Linear interpolation between evenly spaced stops, `t` in [0, 1]. */
export function interpolate(stops: readonly Rgb[], t: number): Rgb {
  if (stops.length === 0) return [0, 0, 0];
  const clamped = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const position = clamped * (stops.length - 1);
  const index = Math.min(stops.length - 2, Math.floor(position));
  const low = stops[Math.max(0, index)] ?? stops[0];
  const high = stops[Math.max(0, index) + 1] ?? low;
  if (low === undefined || high === undefined) return [0, 0, 0];
  const f = position - Math.max(0, index);
  return [
    Math.round(low[0] + (high[0] - low[0]) * f),
    Math.round(low[1] + (high[1] - low[1]) * f),
    Math.round(low[2] + (high[2] - low[2]) * f),
  ];
}

/** A 256 x RGBA table: entry `code` is the colour of code / 255. */
export function lookupTable(stops: readonly Rgb[] = BLUES): Uint8ClampedArray {
  const table = new Uint8ClampedArray(256 * 4);
  for (let code = 0; code < 256; code++) {
    const [r, g, b] = interpolate(stops, code / 255);
    table.set([r, g, b, 255], code * 4);
  }
  return table;
}

/** Relative luminance (WCAG), to check that a scale runs one way and to pick readable text. */
export function luminance([r, g, b]: Rgb): number {
  const channel = (c: number) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
}

export function css([r, g, b]: Rgb, alpha = 1): string {
  return alpha >= 1 ? `rgb(${r}, ${g}, ${b})` : `rgba(${r}, ${g}, ${b}, ${alpha.toFixed(3)})`;
}

/**
 * Background for a token the model gave probability `p`: red when it was a surprise, through
 * amber, to green when it was expected. Log-spaced, because 0.01 and 0.001 are different stories.
 */
export function probabilityColour(p: number): Rgb {
  if (!Number.isFinite(p) || p < 0) return [235, 235, 235];
  const t = Math.min(1, Math.max(0, 1 + Math.log10(Math.max(p, 1e-4)) / 4));
  return interpolate(
    [
      [248, 150, 140],
      [252, 205, 140],
      [250, 240, 170],
      [190, 230, 170],
      [150, 215, 160],
    ],
    t,
  );
}

/** Background for a position whose distribution had `entropy` nats: white (sure) to violet. */
export function entropyColour(entropy: number, maxEntropy = 6): Rgb {
  if (!Number.isFinite(entropy) || entropy < 0) return [235, 235, 235];
  return interpolate(
    [
      [255, 255, 255],
      [218, 210, 240],
      [170, 150, 220],
      [120, 90, 190],
    ],
    entropy / maxEntropy,
  );
}

/** Black or white, whichever contrasts more with `background` (the WCAG ratio): on any colour
 *  the better of the two reaches at least 4.58:1, so text on a scale's cells passes AA. */
export function textOn(background: Rgb): string {
  const l = luminance(background);
  return 1.05 / (l + 0.05) >= (l + 0.05) / 0.05 ? "#ffffff" : "#000000";
}

/** Parses a computed CSS colour (`rgb(r, g, b)`, `rgba(r, g, b, a)`, `rgb(r g b / a)`). */
export function parseCssColour(text: string): { rgb: Rgb; alpha: number } | null {
  const match = /rgba?\(([^)]*)\)/.exec(text);
  if (!match) return null;
  const parts = (match[1] ?? "")
    .split(/[\s,/]+/)
    .filter(Boolean)
    .map(Number);
  const [r, g, b, alpha = 1] = parts;
  if (r === undefined || g === undefined || b === undefined) return null;
  if (![r, g, b, alpha].every(Number.isFinite)) return null;
  return { rgb: [r, g, b], alpha };
}

/** The background `el` is drawn on: the first ancestor (or itself) whose background is opaque. */
export function backgroundOf(el: Element | null): Rgb | null {
  for (let node = el; node !== null; node = node.parentElement) {
    const colour = parseCssColour(getComputedStyle(node).backgroundColor);
    if (colour !== null && colour.alpha > 0) return colour.rgb;
  }
  return null;
}

/** The heatmap scale that reads on `el`'s background: `BLUES` on light, `NIGHT` on dark. */
export function inkFor(el: Element): readonly Rgb[] {
  const background = backgroundOf(el);
  return background !== null && luminance(background) < 0.2 ? NIGHT : BLUES;
}

const TABLES = new Map<readonly Rgb[], Uint8ClampedArray>();

/** `lookupTable` of `inkFor(el)`, built once per scale: read at each draw, so a theme change
 *  between two draws takes effect at the next. */
export function inkTable(el: Element): Uint8ClampedArray {
  const stops = inkFor(el);
  let table = TABLES.get(stops);
  if (table === undefined) {
    table = lookupTable(stops);
    TABLES.set(stops, table);
  }
  return table;
}
