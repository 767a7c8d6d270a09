// The list of user and assistant bubbles.
//
// Entries are keyed by id and redrawn only when what they show changed, so that a reply streaming
// at the bottom does not re-render the whole conversation on every batch. User text is set as text;
// assistant text goes through the Markdown sanitizer, or, with colouring on, is shown token by
// token coloured by probability or entropy (see token_colours.ts). Any reply streamed while the
// view is open can be shown token by token ("Branch"); a click on a token opens its popover
// (token_popover.ts), whose alternatives continue the reply from there as a new branch. A message
// with siblings (branches, regenerated replies, edited questions) shows `‹ 2 / 3 ›` to move
// between them.

import { copyText, h } from "../shared/dom";
import { formatRate } from "../shared/format";
import { renderMarkdown } from "../shared/markdown";
import type { StopReason, TokenRecord, TranscriptEntry } from "../shared/protocol";
import { renderColouredReply, type TokenColouring } from "./token_colours";
import {
  focusPopover,
  renderTokenPopover,
  type TokenAction,
  type TokenTarget,
} from "./token_popover";

export interface TranscriptActions {
  regenerate(): void;
  edit(entry: TranscriptEntry, text: string): void;
  /** Continue reply `entry` from token `index` with `tokenId` or typed `text` (null: model picks). */
  branch(entry: TranscriptEntry, index: number, tokenId: number | null, text: string | null): void;
  /** Ask the kernel for the tokens of a reply this view did not see stream. */
  loadTokens(entry: TranscriptEntry): void;
  /** Show sibling `index` of `entry`. */
  switchTo(entry: TranscriptEntry, index: number): void;
  /** The action row of a token's popover (besides its alternatives and the typed continuation). */
  tokenActions: readonly TokenAction[];
}

interface Row {
  el: HTMLElement;
  signature: string;
  /** What it was drawn from, to draw it again when a token is picked. */
  redraw: () => HTMLElement;
}

const STOP_LABELS: Partial<Record<StopReason, string>> = {
  cancelled: "stopped",
  max_new_tokens: "stopped at max new tokens",
  context_full: "stopped: context full",
};

export class TranscriptView {
  readonly el: HTMLElement;
  private readonly list: HTMLElement;
  private readonly empty: HTMLElement;
  private rows = new Map<string, Row>();
  private editing: string | null = null;
  private busy = false;
  private colouring: TokenColouring | null = null;
  private tokensOf: (id: string) => readonly TokenRecord[] | undefined = () => undefined;
  /** The token whose alternatives are open: [reply id, token index]. */
  private picked: [string, number] | null = null;
  /** Replies shown token by token while colouring is off (to branch them). */
  private readonly tokenMode = new Set<string>();

  constructor(private readonly actions: TranscriptActions) {
    this.empty = h("div", { class: "kw-empty" }, "Ask the model something to start.");
    this.list = h("div", { class: "kw-list", role: "log", "aria-live": "polite" });
    this.el = h("div", { class: "kw-transcript" }, this.empty, this.list);
  }

  /**
   * Draws `entries`; `streamingText` replaces the content of the reply now streaming (the traitlet
   * only has it once the reply is done).
   */
  /**
   * Colours replies token by token (null: Markdown as usual). `tokensOf(id)` gives the engine's
   * records of a reply's tokens, where this view saw them stream.
   */
  setColouring(
    colouring: TokenColouring | null,
    tokensOf: (id: string) => readonly TokenRecord[] | undefined,
  ): void {
    this.colouring = colouring;
    this.tokensOf = tokensOf;
    this.picked = null;
  }

  update(entries: TranscriptEntry[], busy: boolean, streaming: Map<string, string>): void {
    const stick = this.atBottom();
    this.busy = busy;
    this.empty.hidden = entries.length > 0;
    const lastAssistant = [...entries].reverse().find((e) => e.role === "assistant");
    const seen = new Set<string>();
    let previous: HTMLElement | null = null;
    for (const entry of entries) {
      seen.add(entry.id);
      const text = streaming.get(entry.id) ?? entry.content;
      const isLast = entry.id === lastAssistant?.id;
      const signature = JSON.stringify([
        text,
        entry.status,
        entry.error,
        entry.notice,
        entry.stop_reason,
        entry.stats?.decode_tokens_per_s,
        isLast,
        busy,
        this.editing === entry.id,
        this.colouring,
        entry.role === "assistant" ? (this.tokensOf(entry.id)?.length ?? 0) : 0,
        this.picked?.[0] === entry.id ? this.picked[1] : null,
        this.tokenMode.has(entry.id),
        entry.siblings,
        entry.state_id,
      ]);
      let row = this.rows.get(entry.id);
      if (!row || row.signature !== signature) {
        const redraw = () => this.renderEntry(entry, text, isLast);
        const el = redraw();
        if (row) row.el.replaceWith(el);
        row = { el, signature, redraw };
        this.rows.set(entry.id, row);
      }
      const expected: ChildNode | null = previous ? previous.nextSibling : this.list.firstChild;
      if (expected !== row.el) {
        if (previous) previous.after(row.el);
        else this.list.prepend(row.el);
      }
      previous = row.el;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.el.remove();
        this.rows.delete(id);
        if (this.editing === id) this.editing = null;
      }
    }
    if (stick) this.scrollToBottom();
  }

  scrollToBottom(): void {
    this.el.scrollTop = this.el.scrollHeight;
  }

  private atBottom(): boolean {
    return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 40;
  }

  private renderEntry(entry: TranscriptEntry, text: string, isLast: boolean): HTMLElement {
    return entry.role === "user"
      ? this.renderUser(entry, text)
      : this.renderAssistant(entry, text, isLast);
  }

  private renderUser(entry: TranscriptEntry, text: string): HTMLElement {
    const row = h("div", {
      class: "kw-msg kw-user",
      "data-role": "user",
      "data-status": entry.status,
      "data-id": entry.id,
    });
    if (this.editing === entry.id) {
      const area = h("textarea", { class: "kw-edit-input", rows: 3, "aria-label": "Edit message" });
      area.value = text;
      const save = () => {
        const value = area.value.trim();
        if (!value) return;
        this.editing = null;
        this.actions.edit(entry, value);
      };
      const cancel = () => {
        this.editing = null;
        row.replaceWith(this.renderUser(entry, text));
      };
      area.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          save();
        } else if (event.key === "Escape") {
          event.stopPropagation();
          cancel();
        }
      });
      row.append(
        h(
          "div",
          { class: "kw-bubble kw-editing" },
          area,
          h(
            "div",
            { class: "kw-edit-actions" },
            h("button", { class: "kw-btn kw-primary kw-edit-save", onclick: save }, "Send"),
            h("button", { class: "kw-btn kw-edit-cancel", onclick: cancel }, "Cancel"),
          ),
        ),
      );
      queueMicrotask(() => area.focus());
      return row;
    }
    const bubble = h("div", { class: "kw-bubble" }, h("div", { class: "kw-text" }, text));
    if (entry.status === "queued") bubble.append(h("span", { class: "kw-tag" }, "queued"));
    row.append(
      bubble,
      h(
        "div",
        { class: "kw-actions" },
        h(
          "button",
          {
            class: "kw-icon kw-edit",
            title: this.busy ? "Wait for the reply to finish to edit" : "Edit and resend",
            disabled: this.busy || entry.status === "queued",
            onclick: () => {
              this.editing = entry.id;
              row.replaceWith(this.renderUser(entry, text));
            },
          },
          "Edit",
        ),
        this.copyButton(text),
      ),
    );
    return row;
  }

  private renderAssistant(entry: TranscriptEntry, text: string, isLast: boolean): HTMLElement {
    const row = h("div", {
      class: "kw-msg kw-assistant",
      "data-role": "assistant",
      "data-status": entry.status,
      "data-id": entry.id,
    });
    if (entry.notice) row.append(h("div", { class: "kw-notice", role: "note" }, entry.notice));
    const known = this.tokensOf(entry.id);
    const tokens = known && known.length > 0 && entry.status !== "streaming" ? known : undefined;
    const body = h("div", { class: "kw-markdown" });
    if (tokens && (this.colouring !== null || this.tokenMode.has(entry.id))) {
      const selected = this.picked?.[0] === entry.id ? this.picked[1] : null;
      body.append(
        renderColouredReply(
          tokens,
          this.colouring,
          (index) => this.pick(entry, index === selected ? null : index),
          selected,
        ),
      );
      const record = selected === null ? undefined : tokens[selected];
      if (record) body.append(this.popover({ entry, index: selected ?? 0, record }));
    } else if (text) {
      body.innerHTML = renderMarkdown(text);
    }
    const bubble = h("div", { class: "kw-bubble" }, body);
    const pending = entry.status === "streaming" || entry.status === "sent";
    if (pending && !text) bubble.append(h("span", { class: "kw-thinking" }, "Thinking"));
    if (entry.status === "streaming" && text) {
      // The caret goes at the end of the last line of text, not on a line of its own.
      let target: Element = body;
      while (target.lastElementChild && target.lastElementChild.tagName !== "BR") {
        target = target.lastElementChild;
      }
      target.append(h("span", { class: "kw-caret" }));
    }
    row.append(bubble);
    if (entry.status === "error") {
      row.append(
        h(
          "div",
          { class: "kw-error", role: "alert" },
          h("strong", {}, "Generation failed: "),
          entry.error ?? "unknown error",
        ),
      );
    }
    const meta: string[] = [];
    const stopLabel = entry.stop_reason ? STOP_LABELS[entry.stop_reason] : undefined;
    if (stopLabel) meta.push(stopLabel);
    if (entry.stats && !pending) {
      meta.push(`${entry.stats.generated_tokens} tokens`);
      if (entry.stats.decode_tokens_per_s) meta.push(formatRate(entry.stats.decode_tokens_per_s));
    }
    const actions = h("div", { class: "kw-actions" });
    if (!pending) {
      if (text) actions.append(this.copyButton(text));
      if (this.colouring === null && (tokens || entry.state_id)) {
        actions.append(this.tokenToggle(entry, tokens !== undefined));
      }
      if (isLast) {
        actions.append(
          h(
            "button",
            {
              class: "kw-icon kw-regenerate",
              title: "Generate this reply again",
              disabled: this.busy,
              onclick: () => this.actions.regenerate(),
            },
            "Regenerate",
          ),
        );
      }
    }
    if (meta.length) actions.prepend(h("span", { class: "kw-meta" }, meta.join(" · ")));
    const siblings = this.siblingSwitch(entry);
    if (siblings) actions.prepend(siblings);
    row.append(actions);
    return row;
  }

  /** `‹ 2 / 3 ›` for a message with siblings (null without). */
  private siblingSwitch(entry: TranscriptEntry): HTMLElement | null {
    if (!entry.siblings) return null;
    const [index, count] = entry.siblings;
    const wait = this.busy ? " (wait for the reply to finish)" : "";
    const go = (to: number, label: string, symbol: string, name: string) =>
      h(
        "button",
        {
          class: `kw-icon ${name}`,
          title: `${label}${wait}`,
          "aria-label": label,
          disabled: this.busy || to < 0 || to >= count,
          onclick: () => this.actions.switchTo(entry, to),
        },
        symbol,
      );
    return h(
      "span",
      { class: "kw-siblings", role: "group", "aria-label": "Branches" },
      go(index - 1, "Previous branch", "‹", "kw-sibling-prev"),
      h("span", { class: "kw-sibling-count" }, `${index + 1} / ${count}`),
      go(index + 1, "Next branch", "›", "kw-sibling-next"),
    );
  }

  /** Shows a reply token by token (to branch it from a token), or as text again. */
  private tokenToggle(entry: TranscriptEntry, known: boolean): HTMLElement {
    const on = this.tokenMode.has(entry.id);
    return h(
      "button",
      {
        class: "kw-icon kw-branch-toggle",
        title: on
          ? "Show the reply as text"
          : "Show the reply token by token, to continue it from any token",
        "aria-pressed": String(on),
        onclick: () => {
          if (on) this.tokenMode.delete(entry.id);
          else this.tokenMode.add(entry.id);
          if (!known) this.actions.loadTokens(entry); // drawn when they arrive
          this.pick(entry, null);
        },
      },
      on ? "Text" : "Branch",
    );
  }

  private popover(target: TokenTarget): HTMLElement {
    const close = () => {
      this.pick(target.entry, null);
      this.rows
        .get(target.entry.id)
        ?.el.querySelector<HTMLElement>(`.kw-coloured-token[data-index="${target.index}"]`)
        ?.focus();
    };
    const popover = renderTokenPopover(target, {
      branch: (at, tokenId, text) => {
        this.tokenMode.delete(at.entry.id);
        this.pick(at.entry, null); // the branch streams in the reply's place
        this.actions.branch(at.entry, at.index, tokenId, text);
      },
      actions: this.actions.tokenActions,
      close,
      disabledReason: this.busy
        ? "Wait for the reply being made to finish to continue from here."
        : target.entry.state_id
          ? null
          : "This reply is not part of the conversation the model reads.",
    });
    // After the click that opened it has finished its way up: a notebook that activates the
    // cell on a click (Notebook 7) would take the focus back from an earlier call.
    setTimeout(() => focusPopover(popover), 0);
    return popover;
  }

  private pick(entry: TranscriptEntry, index: number | null): void {
    this.picked = index === null ? null : [entry.id, index];
    const row = this.rows.get(entry.id);
    if (!row) return;
    const el = row.redraw();
    row.el.replaceWith(el);
    row.el = el;
  }

  private copyButton(text: string): HTMLElement {
    const button = h("button", { class: "kw-icon kw-copy", title: "Copy message" }, "Copy");
    button.addEventListener("click", () => {
      void copyText(text).then((ok) => {
        button.textContent = ok ? "Copied" : "Copy failed";
        setTimeout(() => {
          button.textContent = "Copy";
        }, 1200);
      });
    });
    return button;
  }
}
