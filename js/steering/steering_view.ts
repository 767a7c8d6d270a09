// The ChatWidget's Steering tab: prompts for and against a concept give a direction in the
// residual stream after one decoder layer ("Compute vector", on the kernel's worker); "Ask" then
// answers one question twice, without and with strength x vector added, both greedy, side by side.
// The strength is a traced number in the engine's compiled edit: moving it compiles nothing.

import type { AnyModel } from "@anywidget/types";
import { h } from "../shared/dom";
import type { ChatModel } from "../shared/protocol";
import {
  REQUEST,
  SteerClient,
  type SteerResponse,
  type VectorSummary,
} from "../shared/steer_protocol";
import "./steering.css";

export const STRENGTH = { min: -8, max: 8, step: 0.5, initial: 2 } as const;

export const DEFAULT_FOR = "I love this, it is wonderful!\nWhat a happy, delightful day.";
export const DEFAULT_AGAINST = "I hate this, it is terrible.\nWhat a sad, miserable day.";
export const DEFAULT_QUESTION = "How was your weekend?";

/** One prompt per non-empty line. */
export function promptLines(text: string): string[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
}

/** The strength as the slider label shows it (a sign, one decimal). */
export function formatStrength(value: number): string {
  return `${value > 0 ? "+" : ""}${value.toFixed(1)}`;
}

export function describeVector(vector: VectorSummary | null): string {
  if (!vector) return "No vector yet: write prompts for and against, then Compute vector.";
  return `Vector at layer ${vector.layer}: norm ${vector.norm.toFixed(2)}, from ${vector.positive} prompt(s) for and ${vector.negative} against.`;
}

type Busy = "compute" | "ask" | null;

export class SteeringView {
  readonly el: HTMLElement;
  private readonly forBox: HTMLTextAreaElement;
  private readonly againstBox: HTMLTextAreaElement;
  private readonly layer: HTMLInputElement;
  private readonly layerLabel: HTMLElement;
  private readonly strength: HTMLInputElement;
  private readonly strengthLabel: HTMLElement;
  private readonly question: HTMLInputElement;
  private readonly computeButton: HTMLButtonElement;
  private readonly askButton: HTMLButtonElement;
  private readonly stopButton: HTMLButtonElement;
  private readonly applyButton: HTMLButtonElement;
  private readonly vectorLine: HTMLElement;
  private readonly statusLine: HTMLElement;
  private readonly errorLine: HTMLElement;
  private readonly replies: Record<"plain" | "steered", HTMLElement>;
  private readonly steeredHeading: HTMLElement;
  private vector: VectorSummary | null = null;
  private applied: number[] = [];
  private busy: Busy = null;
  private running: string | null = null;

  constructor(private readonly client: SteerClient) {
    this.forBox = h("textarea", { class: "kw-token-input kw-steer-prompts", rows: 3 });
    this.forBox.value = DEFAULT_FOR;
    this.againstBox = h("textarea", { class: "kw-token-input kw-steer-prompts", rows: 3 });
    this.againstBox.value = DEFAULT_AGAINST;
    this.layer = h("input", {
      type: "range",
      min: 0,
      max: 0,
      step: 1,
      value: 0,
      class: "kw-steer-layer",
      "aria-label": "layer",
    });
    this.layerLabel = h("span", { class: "kw-steer-value" }, "0");
    this.strength = h("input", {
      type: "range",
      min: STRENGTH.min,
      max: STRENGTH.max,
      step: STRENGTH.step,
      value: STRENGTH.initial,
      class: "kw-steer-strength",
      "aria-label": "strength",
    });
    this.strengthLabel = h("span", { class: "kw-steer-value" }, formatStrength(STRENGTH.initial));
    this.question = h("input", {
      type: "text",
      class: "kw-token-input kw-steer-question",
      "aria-label": "question",
    });
    this.question.value = DEFAULT_QUESTION;
    this.computeButton = h(
      "button",
      { class: "kw-btn kw-steer-compute", onclick: () => this.compute() },
      "Compute vector",
    );
    this.askButton = h(
      "button",
      { class: "kw-btn kw-steer-ask", onclick: () => this.ask() },
      "Ask",
    );
    this.stopButton = h(
      "button",
      { class: "kw-btn kw-steer-stop", onclick: () => this.stop(), hidden: true },
      "Stop",
    );
    this.applyButton = h(
      "button",
      { class: "kw-btn kw-steer-apply", onclick: () => this.apply() },
      "Steer the chat",
    );
    this.vectorLine = h("div", { class: "kw-muted kw-steer-vector" }, describeVector(null));
    this.statusLine = h("div", { class: "kw-muted kw-steer-status", role: "status" });
    this.errorLine = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
    this.replies = {
      plain: h("div", { class: "kw-steer-reply", "data-which": "plain" }),
      steered: h("div", { class: "kw-steer-reply", "data-which": "steered" }),
    };
    this.steeredHeading = h("div", { class: "kw-steer-heading" }, "Steered");
    this.layer.addEventListener("input", () => this.showLayer());
    this.strength.addEventListener("input", () => {
      this.strengthLabel.textContent = formatStrength(Number(this.strength.value));
    });
    this.question.addEventListener("keydown", (event) => {
      if (event.key === "Enter") this.ask();
    });
    this.el = h(
      "div",
      { class: "kw-inspector-root kw-steer" },
      h(
        "div",
        { class: "kw-steer-columns" },
        h("label", { class: "kw-field" }, "For (one prompt per line)", this.forBox),
        h("label", { class: "kw-field" }, "Against (one prompt per line)", this.againstBox),
      ),
      h(
        "div",
        { class: "kw-steer-row" },
        h("label", { class: "kw-steer-slider" }, "Layer ", this.layer, this.layerLabel),
        this.computeButton,
        this.vectorLine,
      ),
      h(
        "div",
        { class: "kw-steer-row" },
        h("label", { class: "kw-steer-slider" }, "Strength ", this.strength, this.strengthLabel),
        this.applyButton,
      ),
      h("div", { class: "kw-steer-row" }, this.question, this.askButton, this.stopButton),
      this.statusLine,
      this.errorLine,
      h(
        "div",
        { class: "kw-steer-columns kw-steer-answers" },
        h("div", {}, h("div", { class: "kw-steer-heading" }, "Unsteered"), this.replies.plain),
        h("div", {}, this.steeredHeading, this.replies.steered),
      ),
    );
    this.render();
  }

  /** Asks the kernel for the model's layers and the tab's vector so far. */
  open(): void {
    this.client.send(REQUEST.open, {}, (message) => this.onMessage(message));
  }

  compute(): void {
    const positive = promptLines(this.forBox.value);
    const negative = promptLines(this.againstBox.value);
    if (!positive.length || !negative.length) {
      this.showError("Write at least one prompt for and one against (one per line).");
      return;
    }
    this.start("compute", REQUEST.compute, {
      positive,
      negative,
      layer: Number(this.layer.value),
    });
  }

  ask(): void {
    const question = this.question.value.trim();
    if (!question) {
      this.showError("Type a question to ask.");
      return;
    }
    if (!this.vector) {
      this.showError("Compute a vector first.");
      return;
    }
    for (const reply of Object.values(this.replies)) reply.textContent = "";
    const strength = Number(this.strength.value);
    this.steeredHeading.textContent = `Steered (layer ${this.vector.layer}, strength ${formatStrength(strength)})`;
    this.start("ask", REQUEST.ask, { question, strength });
  }

  stop(): void {
    this.client.send(REQUEST.cancel, {}, () => {});
  }

  apply(): void {
    const on = this.applied.length === 0;
    if (on && !this.vector) {
      this.showError("Compute a vector first.");
      return;
    }
    const strength = on ? Number(this.strength.value) : null;
    this.client.send(REQUEST.apply, { strength }, (message) => this.onMessage(message));
  }

  dispose(): void {
    this.client.dispose();
  }

  private start(busy: Busy, kind: string, fields: Record<string, unknown>): void {
    if (this.busy) return;
    this.busy = busy;
    this.errorLine.hidden = true;
    this.running = this.client.send(kind, fields, (message) => this.onMessage(message));
    this.render();
  }

  private finish(): void {
    if (this.running) this.client.forget(this.running);
    this.running = null;
    this.busy = null;
    this.render();
  }

  private onMessage(message: SteerResponse): void {
    switch (message.kind) {
      case "steer.info":
        this.layer.max = String(Math.max(0, message.num_layers - 1));
        if (!this.vector) this.layer.value = String(message.layer);
        this.vector = message.vector ?? this.vector;
        this.applied = message.applied;
        this.showLayer();
        this.render();
        return;
      case "steer.vector":
        this.vector = message;
        this.finish();
        return;
      case "steer.reply":
        this.replies[message.which].textContent = message.text;
        if (message.done && message.which === "steered") this.finish();
        return;
      case "steer.error":
        if (message.request_kind === REQUEST.open && message.code === "not_ready") {
          this.statusLine.textContent = "The model is loading…";
          return;
        }
        if (message.code !== "cancelled") this.showError(message.message);
        if (message.id === this.running) this.finish();
        return;
      default:
        return;
    }
  }

  private showLayer(): void {
    this.layerLabel.textContent = this.layer.value;
  }

  private showError(text: string): void {
    this.errorLine.textContent = text;
    this.errorLine.hidden = false;
  }

  private render(): void {
    const busy = this.busy !== null;
    this.el.classList.toggle("kw-busy", busy);
    this.el.setAttribute("aria-busy", String(busy));
    this.computeButton.disabled = busy;
    this.askButton.disabled = busy || !this.vector;
    this.stopButton.hidden = !busy;
    this.applyButton.textContent = this.applied.length
      ? "Stop steering the chat"
      : "Steer the chat";
    this.applyButton.disabled = !this.vector && !this.applied.length;
    this.vectorLine.textContent = describeVector(this.vector);
    this.statusLine.textContent =
      this.busy === "compute"
        ? "Computing the vector…"
        : this.busy === "ask"
          ? "Answering twice: unsteered, then steered…"
          : this.applied.length
            ? `The chat's replies are steered at layer ${this.applied.join(", ")}.`
            : "";
  }
}

export function renderSteeringTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const view = new SteeringView(new SteerClient(model));
  el.append(view.el);
  view.open();
  // Opened while the model loads: ask again once it is there.
  const ready = () => {
    if (model.get("status")?.state === "ready") view.open();
  };
  model.on("change:model_info", ready);
  return () => {
    model.off("change:model_info", ready);
    view.dispose();
    view.el.remove();
  };
}
