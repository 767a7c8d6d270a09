// The popover of one token of a reply: the alternatives the model weighed there, each a button
// that continues the reply from that token with it (a branch), a box to type one's own
// continuation, and a row of actions. An action is one entry of the `actions` list the panel
// passes in, so a new one (another analysis of the token) is a one-line addition there.
//
// Keyboard: focus starts on the first alternative, the arrows move between alternatives, Esc
// closes the popover (and gives the focus back to the token).

import { percent, renderBars } from "../probabilities/bars";
import { h } from "../shared/dom";
import type { TokenRecord, TranscriptEntry } from "../shared/protocol";
import { tokenProbability } from "./token_colours";

/** The token a popover is about: reply `entry`, its token `index`, what the engine reported. */
export interface TokenTarget {
  entry: TranscriptEntry;
  index: number;
  record: TokenRecord;
}

/** One button of the popover's action row. */
export interface TokenAction {
  label: string;
  title: string;
  /** A class for the button (tests and styles find it by it). */
  name: string;
  run(target: TokenTarget): void;
}

export interface TokenPopoverOptions {
  /** Continue the reply from the token: with `tokenId`, or the typed `text` (null: the model picks). */
  branch(target: TokenTarget, tokenId: number | null, text: string | null): void;
  actions: readonly TokenAction[];
  close(): void;
  /** Why nothing can be done now (a reply is being made, the reply is not in the conversation). */
  disabledReason: string | null;
}

export function renderTokenPopover(target: TokenTarget, options: TokenPopoverOptions): HTMLElement {
  const { record } = target;
  const disabled = options.disabledReason !== null;
  const bars = record.top_k.map((alt) => ({
    tokenId: alt.token_id,
    piece: readable(alt.text),
    prob: alt.prob,
    mark: alt.token_id === record.token_id ? ("chosen" as const) : undefined,
  }));
  const prob = tokenProbability(record);
  if (prob >= 0 && !bars.some((bar) => bar.tokenId === record.token_id)) {
    bars.push({ tokenId: record.token_id, piece: readable(record.text), prob, mark: "chosen" });
  }
  const alternatives =
    bars.length > 0
      ? renderBars(bars, (tokenId) => options.branch(target, tokenId, null))
      : h(
          "div",
          { class: "kw-muted" },
          "No alternatives were recorded for this token (they are recorded while colouring is on).",
        );
  const rows = [...alternatives.querySelectorAll<HTMLButtonElement>("button.kw-bar-row")];
  for (const row of rows) {
    row.title = `Continue from here with this token (${row.title})`;
    row.disabled = disabled;
  }

  const input = h("input", {
    class: "kw-branch-text",
    type: "text",
    placeholder: "Type your own continuation",
    "aria-label": "Type your own continuation",
    disabled,
  });
  const typed = h(
    "form",
    { class: "kw-branch-typed" },
    input,
    h("button", { class: "kw-btn kw-branch-go", type: "submit", disabled }, "Continue"),
  );
  typed.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) options.branch(target, null, input.value);
  });

  const actions = h(
    "div",
    { class: "kw-token-actions" },
    ...options.actions.map((action) =>
      h(
        "button",
        {
          class: `kw-btn kw-token-action ${action.name}`,
          title: action.title,
          disabled,
          onclick: () => action.run(target),
        },
        action.label,
      ),
    ),
  );

  const popover = h(
    "div",
    {
      class: "kw-alternatives kw-token-popover",
      role: "dialog",
      "aria-label": `Token ${record.index}`,
      // The notebook's own shortcuts (arrows select cells, Esc leaves edit mode) stay out.
      "data-lm-suppress-shortcuts": "true",
    },
    h(
      "div",
      { class: "kw-prob-heading" },
      `Token ${record.index}: “${record.text}” · ${prob < 0 ? "p unknown" : `p = ${percent(prob)}`}`,
      h(
        "button",
        { class: "kw-icon kw-alternatives-close", onclick: () => options.close() },
        "Close",
      ),
    ),
    alternatives,
    typed,
    actions,
  );
  if (options.disabledReason) {
    popover.append(h("div", { class: "kw-muted kw-branch-disabled" }, options.disabledReason));
  }
  popover.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      options.close();
      return;
    }
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const at = rows.indexOf(document.activeElement as HTMLButtonElement);
    if (at < 0) return;
    event.preventDefault();
    const next = (at + (event.key === "ArrowDown" ? 1 : -1) + rows.length) % rows.length;
    rows[next]?.focus();
  });
  return popover;
}

/** A token's text where a line break or a tab can be seen (a bare newline reads as nothing). */
export function readable(text: string): string {
  return text.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

/** Gives the focus to the popover's first alternative (or its text box) once it is drawn. */
export function focusPopover(popover: HTMLElement): void {
  const first =
    popover.querySelector<HTMLElement>("button.kw-bar-row:not([disabled])") ??
    popover.querySelector<HTMLElement>(".kw-branch-text:not([disabled])") ??
    popover.querySelector<HTMLElement>(".kw-alternatives-close");
  first?.focus();
}
