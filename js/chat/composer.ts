// The input box and the Send/Stop button.
//
// Enter sends, Shift+Enter starts a new line, Esc stops (the chat view listens for Esc on the whole
// panel; the composer only handles keys typed into it). While a reply is generating the button is
// Stop, and Enter is refused with a visible hint rather than silently dropped.

import { h } from "../shared/dom";

export interface ComposerHandlers {
  /** Returns false when the text was not sent (the box keeps it). */
  send(text: string): boolean;
  stop(): void;
  refuse(reason: string): void;
}

export type ComposerMode = "ready" | "generating" | "disabled";

export class Composer {
  readonly el: HTMLElement;
  readonly input: HTMLTextAreaElement;
  readonly button: HTMLButtonElement;
  private mode: ComposerMode = "ready";

  constructor(private readonly handlers: ComposerHandlers) {
    this.input = h("textarea", {
      class: "kw-input",
      rows: 2,
      placeholder: "Message the model (Enter to send, Shift+Enter for a new line)",
      "aria-label": "Message",
    });
    this.button = h("button", { class: "kw-btn kw-primary kw-send", "data-mode": "send" }, "Send");
    this.el = h("div", { class: "kw-composer" }, this.input, this.button);

    this.input.addEventListener("keydown", (event) => {
      // IME composition uses Enter to pick a candidate; that Enter is not a send.
      if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener("input", () => this.autosize());
    this.button.addEventListener("click", () => {
      if (this.mode === "generating") this.handlers.stop();
      else this.submit();
    });
  }

  setMode(mode: ComposerMode, placeholder?: string): void {
    this.mode = mode;
    const generating = mode === "generating";
    this.button.textContent = generating ? "Stop" : "Send";
    this.button.dataset.mode = generating ? "stop" : "send";
    this.button.title = generating ? "Stop generating (Esc)" : "Send (Enter)";
    this.button.classList.toggle("kw-danger", generating);
    this.button.disabled = mode === "disabled";
    this.input.disabled = mode === "disabled";
    if (placeholder !== undefined) this.input.placeholder = placeholder;
  }

  private submit(): void {
    const text = this.input.value.trim();
    if (!text) return;
    if (this.mode === "generating") {
      this.handlers.refuse("Still answering: press Stop or Esc first.");
      return;
    }
    if (this.mode === "disabled") return;
    if (this.handlers.send(text)) {
      this.input.value = "";
      this.autosize();
    }
  }

  private autosize(): void {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, 200)}px`;
  }

  focus(): void {
    this.input.focus();
  }
}
