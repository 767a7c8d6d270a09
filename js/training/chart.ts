// Small, dependency-free helpers for the training curves: extents, scales and SVG paths.
// Pure functions, so that they are unit-tested without a DOM.

export interface Extent {
  min: number;
  max: number;
}

/** The range of the finite values, widened when flat so a scale never divides by zero. */
export function extent(values: Iterable<number | null | undefined>): Extent | null {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (const value of values) {
    if (value === null || value === undefined || !Number.isFinite(value)) continue;
    if (value < min) min = value;
    if (value > max) max = value;
  }
  if (min > max) return null;
  if (min === max) {
    const pad = Math.abs(min) * 0.05 || 1;
    return { min: min - pad, max: max + pad };
  }
  return { min, max };
}

/** Maps `domain` linearly onto `[start, end]` (end may be below start, as SVG's y axis is). */
export function linearScale(domain: Extent, start: number, end: number): (value: number) => number {
  const span = domain.max - domain.min || 1;
  return (value) => start + ((value - domain.min) / span) * (end - start);
}

/**
 * An SVG path through the points, lifted over missing values: a null y ends one segment, and the
 * next finite y starts another, so a NaN loss shows as a gap rather than a dive to zero.
 */
export function pathWithGaps(
  xs: readonly number[],
  ys: readonly (number | null)[],
  scaleX: (value: number) => number,
  scaleY: (value: number) => number,
): string {
  const parts: string[] = [];
  let drawing = false;
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i];
    const y = ys[i];
    if (x === undefined || y === null || y === undefined || !Number.isFinite(y)) {
      drawing = false;
      continue;
    }
    parts.push(`${drawing ? "L" : "M"}${scaleX(x).toFixed(1)} ${scaleY(y).toFixed(1)}`);
    drawing = true;
  }
  return parts.join(" ");
}

/** Trailing moving average over the finite values of the last `window` entries. */
export function movingAverage(
  values: readonly (number | null)[],
  window: number,
): (number | null)[] {
  const out: (number | null)[] = [];
  let sum = 0;
  let count = 0;
  const queue: (number | null)[] = [];
  for (const value of values) {
    queue.push(value);
    if (value !== null && Number.isFinite(value)) {
      sum += value;
      count += 1;
    }
    if (queue.length > window) {
      const dropped = queue.shift();
      if (dropped !== null && dropped !== undefined && Number.isFinite(dropped)) {
        sum -= dropped;
        count -= 1;
      }
    }
    out.push(value === null || count === 0 ? null : sum / count);
  }
  return out;
}

/** Three significant digits; learning rates and other small numbers in exponent form. */
export function formatValue(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && magnitude < 1e-2) return value.toExponential(2);
  if (magnitude >= 1000) return Math.round(value).toLocaleString("en-US");
  const text = value.toPrecision(3);
  return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}
