// The Attribution inspector: the tokens of a text or a conversation; a click on one asks the
// kernel which earlier tokens pushed the model towards it (inspect.attribution) and colours them
// on a diverging scale. Integrated gradients reports its progress and can be stopped.

import { displayText } from "../attention/text_strip";
import { decodeArray } from "../shared/codecs";
import { h } from "../shared/dom";
import type { Answer, InspectClient, InspectError } from "../shared/inspect_client";
import {
  type AttributionResult,
  type AttributionSequence,
  REQUEST,
  RESPONSE,
} from "../shared/inspect_protocol";
import { formatScore, renderLegend, scaleMax } from "./colour_scale";
import { isShown, renderTokenStrip, type StripToken } from "./token_strip";

export const METHOD_LABELS: Readonly<Record<string, string>> = {
  grad_x_input: "gradient × input",
  integrated_gradients: "integrated gradients",
  attention_rollout: "attention rollout",
};

export const DEFAULT_STEPS = 32;

/**
 * The position of token `index` of reply number `ordinal` (0-based, counted in the order the
 * replies appear) among a conversation's token roles; null when there is no such reply. The
 * reply's tokens are those of the conversation as the chat template renders it, which match the
 * engine's own tokens except where the template trims a reply.
 */
export function replyTokenPosition(
  roles: readonly string[],
  ordinal: number,
  index: number,
): number | null {
  let seen = -1;
  for (let start = 0; start < roles.length; start++) {
    if (roles[start] !== "assistant" || roles[start - 1] === "assistant") continue;
    seen += 1;
    if (seen !== ordinal) continue;
    let end = start;
    while (roles[end + 1] === "assistant") end++;
    return Math.min(start + Math.max(0, index), end);
  }
  return null;
}

export interface AttributionViewOptions {
  client: InspectClient;
  /** The text to look at; null: the kernel's own (the widget's text, or the chat's conversation). */
  text(): string | null;
  method?: string;
  steps?: number;
  /** The user changed the method or the steps (a standalone view writes its traitlets). */
  onSettings?(method: string, steps: number): void;
}

export class AttributionView {
  readonly el: HTMLElement;
  private readonly methodSelect = h("select", { class: "kw-attr-method", "aria-label": "Method" });
  private readonly stepsInput = h("input", {
    class: "kw-attr-steps",
    type: "number",
    min: 1,
    max: 4096,
    "aria-label": "Integrated-gradient steps",
  });
  private readonly stepsLabel = h("label", { class: "kw-attr-steps-label" }, "steps ");
  private readonly hideSpecial = h("input", {
    type: "checkbox",
    class: "kw-attr-hide-special",
    checked: true,
  });
  private readonly stopButton = h(
    "button",
    { class: "kw-btn kw-attr-stop", hidden: true, title: "Stop this integrated-gradients run" },
    "Stop",
  );
  private readonly progressEl = h("progress", { class: "kw-attr-progress", hidden: true });
  private readonly statusEl = h("div", { class: "kw-attn-status kw-attr-status", role: "status" });
  private readonly errorEl = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
  private readonly legendEl = h("div", { class: "kw-attr-legend-slot", hidden: true });
  private readonly tokensEl = h("div", { class: "kw-attr-tokens-slot" });
  private sequence: AttributionSequence | null = null;
  private target: number | null = null;
  private scores: Float32Array | null = null;
  private scoredMethod = "";
  private running: string | null = null;
  private ticket = 0;
  private openTicket = 0;
  /** A reply token asked for before the conversation was open: [reply ordinal, token index]. */
  private pending: [number, number] | null = null;

  constructor(private readonly options: AttributionViewOptions) {
    for (const [value, label] of Object.entries(METHOD_LABELS)) {
      this.methodSelect.append(h("option", { value }, label));
    }
    this.methodSelect.value = options.method ?? "grad_x_input";
    this.stepsInput.value = String(options.steps ?? DEFAULT_STEPS);
    this.stepsLabel.append(this.stepsInput);
    this.methodSelect.addEventListener("change", () => this.settingsChanged());
    this.stepsInput.addEventListener("change", () => this.settingsChanged());
    this.hideSpecial.addEventListener("change", () => this.renderTokens());
    this.stopButton.addEventListener("click", () => this.stop());
    this.el = h(
      "div",
      { class: "kw-attribution", "data-state": "loading" },
      h(
        "div",
        { class: "kw-attn-controls" },
        h("label", {}, "Method ", this.methodSelect),
        this.stepsLabel,
        h("label", {}, this.hideSpecial, " hide special tokens"),
        this.progressEl,
        this.stopButton,
      ),
      this.statusEl,
      this.errorEl,
      this.legendEl,
      this.tokensEl,
    );
    this.showStepsControl();
  }

  get method(): string {
    return this.methodSelect.value;
  }

  /** The steps box as a whole number within what the kernel accepts. */
  get steps(): number {
    const most = this.sequence?.max_steps ?? 4096;
    const value = Math.round(Number(this.stepsInput.value));
    return Number.isFinite(value) ? Math.min(most, Math.max(1, value)) : DEFAULT_STEPS;
  }

  /** Opens the tokens to explain again (the text or the conversation changed). */
  open(): void {
    const ticket = ++this.openTicket;
    if (this.running !== null) this.options.client.notify(REQUEST.attributionStop);
    this.endRun();
    this.el.dataset.state = "loading";
    this.options.client
      .request<AttributionSequence>(REQUEST.attributionOpen, { text: this.options.text() })
      .then(({ message }) => {
        if (ticket !== this.openTicket) return;
        this.sequence = message;
        this.target = null;
        this.scores = null;
        this.stepsInput.max = String(message.max_steps);
        for (const option of this.methodSelect.options) {
          option.disabled = !message.methods.includes(option.value);
        }
        this.errorEl.hidden = true;
        this.el.dataset.state = "idle";
        this.statusEl.textContent =
          "Click a token: the tokens before it light up by how much each pushed the model towards it.";
        this.renderTokens();
        const pending = this.pending;
        this.pending = null;
        if (pending) this.attributeReplyToken(...pending);
      })
      .catch((error: InspectError) => {
        if (ticket !== this.openTicket || error.code === "superseded") return;
        this.showError(error.message);
      });
  }

  /** Explains the token at `position` (it becomes the target). */
  select(position: number): void {
    if (!this.sequence || position < 1 || position >= this.sequence.pieces.length) return;
    this.target = position;
    this.run();
  }

  /**
   * Explains token `index` of reply number `ordinal` of the conversation (the Chat tab's
   * "Attribute"); `reopen` reads the conversation again first.
   */
  attributeReplyToken(ordinal: number, index: number, reopen = false): void {
    if (reopen || !this.sequence) {
      this.pending = [ordinal, index];
      this.open();
      return;
    }
    const position = replyTokenPosition(this.sequence.roles, ordinal, index);
    if (position === null) {
      this.statusEl.textContent = "That reply is not part of the conversation shown here.";
      return;
    }
    this.select(position);
    this.tokensEl.querySelector(".kw-attr-target")?.scrollIntoView?.({ block: "nearest" });
  }

  /** The method and steps set from elsewhere (a standalone view's traitlets). */
  setSettings(method: string, steps: number): void {
    if (method === this.method && steps === this.steps) return;
    this.methodSelect.value = method;
    this.stepsInput.value = String(steps);
    this.showStepsControl();
    this.run();
  }

  /** Stops the integrated-gradients run in progress (it answers "stopped"). */
  stop(): void {
    if (this.running === null) return;
    this.options.client.notify(REQUEST.attributionStop);
    this.statusEl.textContent = "Stopping after the current batch of steps…";
    this.stopButton.disabled = true;
  }

  private settingsChanged(): void {
    // A box losing focus fires "change" again for a value already asked for.
    if (this.method === this.el.dataset.method && String(this.steps) === this.el.dataset.steps) {
      return;
    }
    this.showStepsControl();
    this.options.onSettings?.(this.method, this.steps);
    this.run();
  }

  private showStepsControl(): void {
    this.stepsLabel.hidden = this.method !== "integrated_gradients";
  }

  private run(): void {
    const sequence = this.sequence;
    const target = this.target;
    if (!sequence || target === null) return;
    this.endRun();
    const ticket = ++this.ticket;
    const method = this.method;
    const steps = this.steps;
    const gradual = method === "integrated_gradients";
    this.scores = null;
    this.errorEl.hidden = true;
    this.el.dataset.state = "running";
    this.el.dataset.method = method;
    this.el.dataset.target = String(target);
    this.el.dataset.steps = String(steps);
    this.stopButton.hidden = !gradual;
    this.stopButton.disabled = false;
    this.progressEl.hidden = !gradual;
    this.progressEl.max = steps;
    this.progressEl.value = 0;
    const what = `“${displayText(sequence.pieces[target] ?? "")}” (position ${target})`;
    this.statusEl.textContent = `Explaining ${what} by ${METHOD_LABELS[method] ?? method}…`;
    this.renderTokens();
    this.running = this.options.client.stream(
      REQUEST.attribution,
      { sequence_id: sequence.sequence_id, target_position: target, method, steps },
      (answer) => {
        if (ticket === this.ticket) this.received(answer, what);
      },
      (error) => {
        if (ticket !== this.ticket) return;
        this.running = null;
        this.stopButton.hidden = true;
        this.progressEl.hidden = true;
        if (error.code === "stopped") {
          this.el.dataset.state = "stopped";
          this.statusEl.textContent = `Stopped: ${error.message}. Click a token or change the method to start again.`;
        } else if (error.code !== "superseded") {
          this.showError(error.message);
        }
      },
    );
  }

  private received({ message, buffers }: Answer, what: string): void {
    if (message.kind === RESPONSE.attributionProgress) {
      this.progressEl.max = message.total;
      this.progressEl.value = message.done;
      if (this.stopButton.disabled) return; // "Stopping…" stays until the answer
      this.statusEl.textContent = `Explaining ${what} by integrated gradients: ${message.done} of ${message.total} steps`;
      return;
    }
    if (message.kind !== RESPONSE.attribution) return;
    const result = message as AttributionResult;
    this.endRun();
    this.scores = decodeArray(result.scores, buffers).data as Float32Array;
    this.scoredMethod = result.method;
    this.el.dataset.state = "ready";
    const steps = result.method === "integrated_gradients" ? `, ${result.steps} steps` : "";
    const label = METHOD_LABELS[result.method] ?? result.method;
    this.statusEl.textContent = `${label.charAt(0).toUpperCase()}${label.slice(1)} for ${what}${steps} in ${result.compute_s.toFixed(2)} s. Hover a token for its score.`;
    this.renderTokens();
  }

  private endRun(): void {
    if (this.running !== null) {
      this.options.client.endStream(this.running);
      this.running = null;
    }
    this.stopButton.hidden = true;
    this.progressEl.hidden = true;
  }

  private renderTokens(): void {
    const sequence = this.sequence;
    if (!sequence) return;
    const tokens: StripToken[] = sequence.pieces.map((piece, i) => ({
      piece,
      role: sequence.roles[i] ?? "text",
      special: sequence.special[i] ?? false,
    }));
    const hide = this.hideSpecial.checked;
    const scores = this.scores;
    const max = scores ? scaleMax(scores, (i) => isShown(tokens, i, hide)) : 0;
    this.tokensEl.replaceChildren(
      renderTokenStrip(tokens, {
        hideSpecial: hide,
        target: this.target,
        scores,
        max,
        onPick: (index) => this.select(index),
      }),
    );
    this.legendEl.hidden = scores === null;
    this.legendEl.replaceChildren(
      scores ? renderLegend(max, this.scoredMethod !== "attention_rollout") : "",
    );
    this.legendEl.title = scores ? `scale: ±${formatScore(max)}` : "";
  }

  private showError(message: string): void {
    this.el.dataset.state = "error";
    this.errorEl.textContent = message;
    this.errorEl.hidden = false;
  }

  dispose(): void {
    this.endRun();
    this.el.remove();
  }
}
