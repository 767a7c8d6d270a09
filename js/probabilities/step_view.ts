// Step mode: a reply built one token at a time. The next-token distribution is shown as bars
// with the sampler's pick marked; Accept takes it, a click on any bar takes that token instead,
// and the next distribution follows from whatever was chosen. Finish lets the engine write the rest.

import { displayText } from "../attention/text_strip";
import { h } from "../shared/dom";
import type { InspectClient } from "../shared/inspect_client";
import { REQUEST, type StepAction, type StepState } from "../shared/inspect_protocol";
import { percent, renderBars } from "./bars";

export class StepView {
  readonly el: HTMLElement;
  private readonly replyEl = h("div", { class: "kw-step-reply", "aria-live": "polite" });
  private readonly barsEl = h("div", { class: "kw-step-bars" });
  private readonly infoEl = h("div", { class: "kw-step-info kw-muted" });
  private readonly errorEl = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
  private readonly buttons: Record<string, HTMLButtonElement> = {};
  private state: StepState | null = null;
  private busy = false;

  constructor(
    private readonly client: InspectClient,
    private readonly text: () => string | null,
  ) {
    const button = (action: StepAction, label: string, title: string, primary = false) => {
      const el = h(
        "button",
        { class: `kw-btn kw-step-${action}${primary ? " kw-primary" : ""}`, title },
        label,
      );
      el.addEventListener("click", () => this.act(action));
      this.buttons[action] = el;
      return el;
    };
    this.el = h(
      "section",
      { class: "kw-step", "data-state": "idle" },
      h(
        "div",
        { class: "kw-step-controls" },
        button("start", "Start", "Start a reply from the prompt", true),
        button("accept", "Accept ▸", "Take the sampler's pick"),
        button("propose", "Resample", "Ask the sampler again"),
        button("undo", "Undo", "Take the last token back"),
        button("finish", "Finish", "Let the model write the rest"),
      ),
      this.errorEl,
      this.replyEl,
      this.infoEl,
      this.barsEl,
    );
    this.render();
  }

  act(action: StepAction, tokenId?: number): void {
    if (this.busy) return;
    this.busy = true;
    this.el.dataset.state = "busy";
    this.updateButtons();
    const fields: Record<string, unknown> = { action };
    if (action === "start") fields.text = this.text();
    if (tokenId !== undefined) fields.token_id = tokenId;
    this.client
      .request<StepState>(REQUEST.step, fields)
      .then(({ message }) => {
        this.state = message;
        this.errorEl.hidden = true;
      })
      .catch((error: Error) => {
        this.errorEl.textContent = error.message;
        this.errorEl.hidden = false;
      })
      .finally(() => {
        this.busy = false;
        this.el.dataset.state = this.state ? "ready" : "idle";
        this.render();
      });
  }

  private render(): void {
    const state = this.state;
    this.updateButtons();
    if (state === null) {
      this.replyEl.replaceChildren(
        h("span", { class: "kw-muted" }, "Start to see the first distribution."),
      );
      this.barsEl.replaceChildren();
      this.infoEl.textContent = "";
      return;
    }
    this.el.dataset.steps = String(state.steps.length);
    this.replyEl.replaceChildren(
      h(
        "span",
        { class: "kw-step-prompt", title: `${state.prompt_length} prompt tokens` },
        `…${state.prompt_tail.map(displayText).join("")}`,
      ),
      ...state.steps.map((step, index) =>
        h(
          "span",
          {
            class: `kw-step-token kw-step-by-${step.chosen_by}`,
            "data-index": index,
            title: `${step.piece} · p = ${step.prob === null ? "–" : percent(step.prob)}${step.chosen_by === "user" ? " · chosen by you" : ""}`,
          },
          displayText(step.piece),
        ),
      ),
    );
    const distribution = state.distribution;
    if (distribution === null) {
      this.infoEl.textContent = "The reply has ended. Undo a step or start again.";
      this.barsEl.replaceChildren();
      return;
    }
    const proposal = state.proposal;
    this.infoEl.textContent =
      `Next token after ${distribution.context_length} tokens · entropy ${distribution.entropy.toFixed(2)} nats` +
      (proposal
        ? ` · the sampler picks “${proposal.piece}”${proposal.prob === null ? "" : ` (${percent(proposal.prob)})`}`
        : "");
    this.barsEl.replaceChildren(
      renderBars(
        distribution.token_ids.map((tokenId, i) => ({
          tokenId,
          piece: distribution.pieces[i] ?? "",
          prob: distribution.probs[i] ?? 0,
          mark: proposal?.token_id === tokenId ? "proposal" : undefined,
        })),
        (tokenId) => this.act("choose", tokenId),
      ),
    );
  }

  private updateButtons(): void {
    const started = this.state !== null;
    const open = started && !this.state?.finished;
    const set = (name: string, enabled: boolean) => {
      const button = this.buttons[name];
      if (button) button.disabled = this.busy || !enabled;
    };
    set("start", true);
    set("accept", open);
    set("propose", open);
    set("undo", started && (this.state?.steps.length ?? 0) > 0);
    set("finish", open);
    const start = this.buttons.start;
    if (start) start.textContent = started ? "Restart" : "Start";
  }
}
