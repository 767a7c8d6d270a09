// The TrainingMonitor panel: status and progress, the loss curve per step with epoch means and
// validation loss, the learning rate, the epochs table and sample answers. Everything is redrawn
// from the model's traits (at most once per frame), so a re-displayed view shows the whole run.

import type { AnyModel } from "@anywidget/types";
import { h, perFrame, svg } from "../shared/dom";
import { formatSeconds } from "../shared/format";
import { extent, formatValue, linearScale, movingAverage, pathWithGaps } from "./chart";
import { type StepPoint, TRAINING_REQUEST, type TrainingModel } from "./protocol";
import { renderStartComparison } from "./start_compare";

const WIDTH = 640;
const MARGIN = { left: 52, right: 12, top: 10, bottom: 22 };

interface Series {
  xs: number[];
  ys: (number | null)[];
  className: string;
  dots?: boolean;
}

/** A line chart of one or more series over steps, with min/max labels on the y axis. */
export function drawChart(
  height: number,
  series: Series[],
  label: string,
  lastStep: number,
): SVGSVGElement {
  const chart = svg("svg", {
    class: "kw-train-chart",
    viewBox: `0 0 ${WIDTH} ${height}`,
    role: "img",
    "aria-label": label,
  });
  const ys = extent(series.flatMap((s) => s.ys));
  if (ys === null || lastStep < 1) {
    chart.append(svg("text", { x: WIDTH / 2, y: height / 2, class: "kw-train-empty" }, "waiting"));
    return chart;
  }
  const scaleX = linearScale(
    { min: 1, max: Math.max(lastStep, 2) },
    MARGIN.left,
    WIDTH - MARGIN.right,
  );
  const scaleY = linearScale(ys, height - MARGIN.bottom, MARGIN.top);
  const axis = svg("g", { class: "kw-train-axis" });
  for (const value of [ys.min, ys.max]) {
    const y = scaleY(value);
    axis.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y }),
      svg("text", { x: MARGIN.left - 4, y: y + 4, "text-anchor": "end" }, formatValue(value)),
    );
  }
  axis.append(
    svg("text", { x: MARGIN.left, y: height - 6 }, "step 1"),
    svg(
      "text",
      { x: WIDTH - MARGIN.right, y: height - 6, "text-anchor": "end" },
      `step ${lastStep}`,
    ),
  );
  chart.append(axis);
  for (const s of series) {
    if (s.dots) {
      const group = svg("g", { class: s.className });
      s.xs.forEach((x, i) => {
        const y = s.ys[i];
        if (y === null || y === undefined || !Number.isFinite(y)) return;
        group.append(svg("circle", { cx: scaleX(x), cy: scaleY(y), r: 3.5 }));
      });
      chart.append(group);
    } else {
      chart.append(
        svg("path", { d: pathWithGaps(s.xs, s.ys, scaleX, scaleY), class: s.className }),
      );
    }
  }
  return chart;
}

function lastStepOfEpochs(steps: StepPoint[]): Map<number, number> {
  const last = new Map<number, number>();
  for (const point of steps) last.set(point.epoch, point.step);
  return last;
}

function statusLine(model: AnyModel<TrainingModel>): string {
  const progress = model.get("progress") ?? {};
  const parts: string[] = [];
  if (progress.epochs) parts.push(`epoch ${progress.epoch ?? 0}/${progress.epochs}`);
  if (progress.steps_per_epoch)
    parts.push(`step ${progress.step ?? 0}/${progress.steps_per_epoch}`);
  else if (progress.step) parts.push(`step ${progress.step}`);
  if (progress.seconds_per_step) parts.push(`${formatSeconds(progress.seconds_per_step)}/step`);
  const steps = model.get("steps") ?? [];
  const withRate = [...steps].reverse().find((p) => p.lr !== null);
  if (withRate) parts.push(`lr ${formatValue(withRate.lr)}`);
  const latest = steps.at(-1);
  if (latest) parts.push(`loss ${formatValue(latest.loss)}`);
  return parts.join(" · ");
}

export function renderMonitor(model: AnyModel<TrainingModel>, el: HTMLElement): () => void {
  const title = h("span", { class: "kw-train-title" });
  const badge = h("span", { class: "kw-train-status" });
  const stop = h(
    "button",
    {
      class: "kw-train-stop",
      type: "button",
      title: "Stop training after the current step",
      onclick: () => model.send({ kind: TRAINING_REQUEST.stop }),
    },
    "Stop",
  );
  const stats = h("div", { class: "kw-train-stats", "aria-live": "polite" });
  const lossBox = h("div", { class: "kw-train-loss" });
  const rateBox = h("div", { class: "kw-train-rate" });
  const epochTable = h("table", { class: "kw-train-epochs" });
  const samples = h("ol", { class: "kw-train-samples" });
  const error = h("div", { class: "kw-train-error", role: "alert" });
  const root = h(
    "div",
    { class: "kw-train-root" },
    h("div", { class: "kw-train-header" }, title, badge, stop),
    stats,
    lossBox,
    rateBox,
    epochTable,
    samples,
    error,
  );

  const draw = perFrame(() => {
    const status = model.get("status") ?? "idle";
    title.textContent = model.get("title") || "Training";
    badge.textContent = status;
    badge.dataset.status = status;
    stop.disabled = status !== "training";
    stats.textContent = statusLine(model);

    const steps = model.get("steps") ?? [];
    const epochs = model.get("epochs") ?? [];
    const xs = steps.map((p) => p.step);
    const losses = steps.map((p) => p.loss);
    const lastStep = xs.at(-1) ?? 0;
    const ends = lastStepOfEpochs(steps);
    const epochXs = epochs.map((e) => ends.get(e.epoch) ?? lastStep);
    lossBox.replaceChildren(
      drawChart(
        200,
        [
          { xs, ys: losses, className: "kw-train-raw" },
          { xs, ys: movingAverage(losses, 10), className: "kw-train-smooth" },
          { xs: epochXs, ys: epochs.map((e) => e.loss), className: "kw-train-epoch", dots: true },
          { xs: epochXs, ys: epochs.map((e) => e.val_loss), className: "kw-train-val", dots: true },
        ],
        "Loss per step, its moving average, epoch means and validation loss",
        lastStep,
      ),
      h(
        "div",
        { class: "kw-train-legend" },
        h("span", { class: "kw-train-key-raw" }, "loss"),
        h("span", { class: "kw-train-key-smooth" }, "average of 10"),
        h("span", { class: "kw-train-key-epoch" }, "epoch"),
        h("span", { class: "kw-train-key-val" }, "validation"),
      ),
    );
    const rated = steps.filter((p) => p.lr !== null);
    rateBox.hidden = rated.length === 0;
    rateBox.replaceChildren(
      drawChart(
        70,
        [{ xs: rated.map((p) => p.step), ys: rated.map((p) => p.lr), className: "kw-train-lr" }],
        "Learning rate",
        lastStep,
      ),
    );

    epochTable.hidden = epochs.length === 0;
    const metricNames = [...new Set(epochs.flatMap((e) => Object.keys(e.metrics ?? {})))];
    epochTable.replaceChildren(
      h(
        "tr",
        {},
        h("th", {}, "epoch"),
        h("th", {}, "loss"),
        h("th", {}, "val_loss"),
        ...metricNames.map((name) => h("th", {}, name)),
        h("th", {}, "time"),
      ),
      ...epochs.map((e) =>
        h(
          "tr",
          {},
          h("td", {}, String(e.epoch)),
          h("td", {}, formatValue(e.loss)),
          h("td", {}, formatValue(e.val_loss)),
          ...metricNames.map((name) => h("td", {}, formatValue(e.metrics?.[name]))),
          h("td", {}, formatSeconds(e.seconds)),
        ),
      ),
    );

    const sampleList = model.get("samples") ?? [];
    samples.hidden = sampleList.length === 0;
    const prompt = model.get("sample_prompt_text");
    samples.replaceChildren(
      ...(prompt ? [h("li", { class: "kw-train-prompt" }, `Prompt: ${prompt}`)] : []),
      ...sampleList.map((s) =>
        h(
          "li",
          {},
          h("span", { class: "kw-train-sample-epoch" }, `epoch ${s.epoch}`),
          s.text,
          s.compare ? renderStartComparison(s.compare) : null,
        ),
      ),
    );
    const message = model.get("error");
    error.hidden = !message;
    error.textContent = message ?? "";
  });

  const events = [
    "change:steps",
    "change:epochs",
    "change:samples",
    "change:progress",
    "change:status",
    "change:error",
    "change:title",
  ];
  for (const event of events) model.on(event, draw);
  el.classList.add("kerasllm-widget");
  el.append(root);
  draw();
  return () => {
    for (const event of events) model.off(event, draw);
    root.remove();
  };
}
