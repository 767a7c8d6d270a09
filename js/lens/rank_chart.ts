// The chart beside the lens grid: for one position, the probability (top panel, 0 to 1) and the
// rank (bottom panel, log scale, 1 = top) of the token that came next, at every layer. Where the
// rank line reaches the top is where the model "knows" the token.

import { displayText } from "../attention/text_strip";
import { percent } from "../probabilities/bars";
import { svg } from "../shared/dom";
import { linearScale, pathWithGaps } from "../training/chart";
import { settlesAt, type Trajectory } from "./lens_data";

const WIDTH = 280;
const PANEL = 96;
const GAP = 26;
const MARGIN = { left: 44, right: 10, top: 18, bottom: 22 };

/** Where a rank (0 = top) goes on the log axis: log10(rank + 1), so the top rank sits at 0. */
export function rankPosition(rank: number): number {
  return Math.log10(Math.max(0, rank) + 1);
}

/** Powers of ten up to the largest rank, as the rank axis's ticks (1-based ranks: 1, 10, 100...). */
export function rankTicks(maxRank: number): number[] {
  const ticks = [1];
  for (let tick = 10; tick <= maxRank + 1; tick *= 10) ticks.push(tick);
  return ticks;
}

export function renderRankChart(path: Trajectory): SVGSVGElement {
  const layers = path.ranks.length;
  const height = MARGIN.top + 2 * PANEL + GAP + MARGIN.bottom;
  const chart = svg("svg", {
    class: "kw-lens-chart",
    width: WIDTH,
    height,
    viewBox: `0 0 ${WIDTH} ${height}`,
    role: "img",
    "aria-label": `Rank and probability of “${displayText(path.piece)}” through ${layers} layers`,
    "data-position": path.position,
  });
  const xs = path.ranks.map((_, layer) => layer);
  const x = linearScale(
    { min: 0, max: Math.max(1, layers - 1) },
    MARGIN.left,
    WIDTH - MARGIN.right,
  );
  const probTop = MARGIN.top;
  const rankTop = MARGIN.top + PANEL + GAP;
  const y = linearScale({ min: 0, max: 1 }, probTop + PANEL, probTop);
  const maxRank = Math.max(...path.ranks, 9);
  const ticks = rankTicks(maxRank);
  ticks.push((ticks[ticks.length - 1] ?? 1) * 10); // the panel's bottom edge
  const deepest = rankPosition((ticks[ticks.length - 1] ?? 10) - 1);
  const r = linearScale({ min: 0, max: deepest }, rankTop, rankTop + PANEL);

  const axis = svg("g", { class: "kw-lens-axis" });
  for (const p of [0, 0.5, 1]) {
    axis.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(p), y2: y(p) }),
      svg("text", { x: MARGIN.left - 4, y: y(p) + 3, "text-anchor": "end" }, `${p * 100}%`),
    );
  }
  for (const tick of ticks) {
    const at = r(rankPosition(tick - 1));
    axis.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: at, y2: at }),
      svg("text", { x: MARGIN.left - 4, y: at + 3, "text-anchor": "end" }, `#${tick}`),
    );
  }
  const layerTicks = [0, Math.floor((layers - 1) / 2), layers - 1].filter(
    (v, i, all) => all.indexOf(v) === i,
  );
  for (const layer of layerTicks)
    axis.append(
      svg("text", { x: x(layer), y: height - 6, "text-anchor": "middle" }, String(layer)),
    );
  const title = (at: number, text: string) =>
    svg("text", { x: MARGIN.left, y: at, class: "kw-lens-axis-title" }, text);
  axis.append(
    title(probTop - 6, "probability"),
    title(rankTop - 6, "rank (log scale, #1 = top)"),
    svg(
      "text",
      {
        x: x((layers - 1) / 4),
        y: height - 6,
        "text-anchor": "middle",
        class: "kw-lens-axis-title",
      },
      "layer",
    ),
  );
  chart.append(axis);

  chart.append(
    svg("path", { class: "kw-lens-prob-line", d: pathWithGaps(xs, path.probs, x, y) }),
    svg("path", {
      class: "kw-lens-rank-line",
      d: pathWithGaps(xs, path.ranks.map(rankPosition), x, r),
    }),
  );
  const dots = svg("g", { class: "kw-lens-dots" });
  for (let layer = 0; layer < layers; layer++) {
    const rank = path.ranks[layer] ?? 0;
    const prob = path.probs[layer] ?? 0;
    const title = `layer ${layer}: rank ${rank + 1}, ${percent(prob)}`;
    dots.append(
      svg(
        "circle",
        { cx: x(layer), cy: y(prob), r: 2.5, class: "kw-lens-prob-dot" },
        svg("title", {}, title),
      ),
      svg(
        "circle",
        { cx: x(layer), cy: r(rankPosition(rank)), r: 2.5, class: "kw-lens-rank-dot" },
        svg("title", {}, title),
      ),
    );
  }
  chart.append(dots);
  return chart;
}

/** The sentence under the chart: which token it follows and from which layer it is the top. */
export function chartCaption(path: Trajectory): string {
  const token = `“${displayText(path.piece)}”`;
  const what = path.predicted
    ? `${token}, the model's own choice after the last token`
    : `${token}, the token that came next`;
  const settled = settlesAt(path);
  const last = path.ranks.length - 1;
  const end = `at the last layer rank ${(path.ranks[last] ?? 0) + 1}, ${percent(path.probs[last] ?? 0)}`;
  if (settled !== null) return `${what}: the top token from layer ${settled} on (${end}).`;
  const topLayers = path.ranks.flatMap((rank, layer) => (rank === 0 ? [layer] : []));
  if (topLayers.length === 0) return `${what}: never the top token (${end}).`;
  const which = topLayers.length === 1 ? `layer ${topLayers[0]}` : `${topLayers.length} layers`;
  return `${what}: the top token at ${which}, not at the last (${end}).`;
}
