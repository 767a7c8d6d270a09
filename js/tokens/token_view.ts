// The token inspector: an editable text, its tokens as chips (two tokenizers side by side when a
// comparison is set), the selected token's bytes, and the preprocessor's table for the text.
// Typing is debounced; answers to an older text are dropped, so fast typing never shows stale chips.

import { renderPreprocessTable } from "../preprocess/table";
import { debounce, h } from "../shared/dom";
import type { InspectClient } from "../shared/inspect_client";
import {
  type PreprocessResult,
  REQUEST,
  type TokenPiece,
  type TokensResult,
} from "../shared/inspect_protocol";
import { countsLine, renderChips, renderDetail } from "./chips";

export interface TokenViewOptions {
  client: InspectClient;
  /** The starting text; null asks the kernel for its own (the chat's conversation). */
  text: string | null;
  sequenceLength: number;
  onText?(text: string): void;
  onSequenceLength?(length: number): void;
  /** A button that reloads the kernel's own text (the Tokens tab of a chat). */
  reloadLabel?: string;
}

export class TokenView {
  readonly el: HTMLElement;
  private readonly input: HTMLTextAreaElement;
  private readonly tablesEl = h("div", { class: "kw-token-tables" });
  private readonly detailEl = h("div", { class: "kw-token-detail-slot" });
  private readonly preEl = h("div", { class: "kw-pre-slot" });
  private readonly errorEl = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
  private readonly lengthInput: HTMLInputElement;
  private latest = 0;
  private pinned: TokenPiece | null = null;
  private readonly scheduled = debounce(() => this.refresh(), 150);

  constructor(private readonly options: TokenViewOptions) {
    this.input = h("textarea", {
      class: "kw-token-input",
      rows: 4,
      spellcheck: "false",
      placeholder: "Type text to tokenize",
      "aria-label": "Text to tokenize",
    });
    this.input.value = options.text ?? "";
    this.input.addEventListener("input", () => {
      options.onText?.(this.input.value);
      this.scheduled();
    });
    this.lengthInput = h("input", {
      class: "kw-seq-length",
      type: "number",
      min: 1,
      max: 4096,
      value: options.sequenceLength,
      "aria-label": "sequence_length",
    });
    this.lengthInput.addEventListener("change", () => {
      const value = Math.round(Number(this.lengthInput.value));
      if (!(value >= 1 && value <= 4096)) return;
      options.onSequenceLength?.(value);
      this.refreshPreprocess(this.input.value, ++this.latest);
    });
    const reload = options.reloadLabel
      ? h(
          "button",
          { class: "kw-btn kw-reload", onclick: () => this.load(null) },
          options.reloadLabel,
        )
      : null;
    this.el = h(
      "div",
      { class: "kw-tokens" },
      h("div", { class: "kw-token-toolbar" }, reload),
      this.input,
      this.errorEl,
      this.tablesEl,
      this.detailEl,
      h(
        "details",
        { class: "kw-pre-section", open: options.sequenceLength > 0 },
        h(
          "summary",
          {},
          "What the preprocessor makes of it: ",
          h("label", {}, "sequence_length ", this.lengthInput),
        ),
        this.preEl,
      ),
    );
    this.detailEl.append(renderDetail(null));
    this.load(options.text);
  }

  get text(): string {
    return this.input.value;
  }

  /** Shows a text set from outside (the kernel changed the `text` traitlet). */
  setText(text: string): void {
    if (text === this.input.value) return;
    this.input.value = text;
    this.scheduled();
  }

  setSequenceLength(length: number): void {
    if (String(length) === this.lengthInput.value) return;
    this.lengthInput.value = String(length);
    this.refreshPreprocess(this.input.value, ++this.latest);
  }

  /** Shows the kernel's own text again (the chat's conversation changed). */
  reload(): void {
    this.load(null);
  }

  private load(text: string | null): void {
    const ticket = ++this.latest;
    this.options.client
      .request<TokensResult>(REQUEST.tokens, { text, compare: true })
      .then(({ message }) => {
        if (ticket !== this.latest) return;
        if (text === null) this.input.value = message.text;
        this.showTables(message);
        this.refreshPreprocess(message.text, ticket);
      })
      .catch((error: Error) => this.showError(error));
  }

  private refresh(): void {
    this.load(this.input.value);
  }

  private refreshPreprocess(text: string, ticket: number): void {
    const length = Math.round(Number(this.lengthInput.value));
    if (!(length >= 1)) return;
    this.options.client
      .request<PreprocessResult>(REQUEST.preprocess, { texts: [text], sequence_length: length })
      .then(({ message }) => {
        if (ticket !== this.latest) return;
        this.preEl.replaceChildren(renderPreprocessTable(message.table));
      })
      .catch((error: Error) => this.showError(error));
  }

  private showTables(message: TokensResult): void {
    this.errorEl.hidden = true;
    this.pinned = null;
    const columns = message.tables.map((table, i) =>
      h(
        "section",
        { class: "kw-token-table", "data-tokenizer": i },
        message.tables.length > 1
          ? h("h4", { class: "kw-token-label" }, message.labels[i] ?? "")
          : null,
        h("div", { class: "kw-counts" }, countsLine(table)),
        renderChips(table, {
          hover: (piece) => this.showDetail(piece ?? this.pinned),
          select: (piece) => {
            this.pinned = piece;
            this.showDetail(piece);
          },
        }),
      ),
    );
    this.tablesEl.classList.toggle("kw-compare", columns.length > 1);
    this.tablesEl.replaceChildren(...columns);
    this.showDetail(null);
  }

  private showDetail(piece: TokenPiece | null): void {
    this.detailEl.replaceChildren(renderDetail(piece));
  }

  private showError(error: Error): void {
    if ((error as { code?: string }).code === "superseded") return;
    this.errorEl.textContent = error.message;
    this.errorEl.hidden = false;
  }

  dispose(): void {
    this.scheduled.cancel();
    this.el.remove();
  }
}
