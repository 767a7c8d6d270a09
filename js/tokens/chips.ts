// Token chips: one per token, its readable piece over its id, special tokens marked. A chip's
// detail (id, bytes, decoded text, offsets) shows on hover and stays on click.

import { h } from "../shared/dom";
import type { TokenPiece, TokenTable } from "../shared/inspect_protocol";

export function hexBytes(bytes: readonly number[]): string {
  return bytes.map((b) => b.toString(16).toUpperCase().padStart(2, "0")).join(" ");
}

/** The decoded text of a token shown with escapes, so that "\n" and " " are visible. */
export function quoted(text: string): string {
  return JSON.stringify(text);
}

export function countsLine(table: TokenTable): string {
  const ratio = table.num_tokens > 0 ? (table.num_chars / table.num_tokens).toFixed(2) : "–";
  return `${table.num_chars} characters · ${table.num_bytes} bytes · ${table.num_tokens} tokens · ${ratio} characters per token`;
}

export interface ChipEvents {
  hover(piece: TokenPiece | null, index: number): void;
  select(piece: TokenPiece, index: number): void;
}

export function renderChips(table: TokenTable, events: ChipEvents): HTMLElement {
  const list = h("div", { class: "kw-chips", role: "list" });
  table.pieces.forEach((piece, index) => {
    const chip = h(
      "button",
      {
        class: `kw-chip${piece.is_special ? " kw-chip-special" : ""}${index % 2 ? " kw-chip-odd" : ""}`,
        role: "listitem",
        "data-id": piece.id,
        "data-index": index,
        title: `id ${piece.id} · bytes ${hexBytes(piece.bytes)}`,
      },
      h("span", { class: "kw-chip-piece" }, piece.piece),
      h("span", { class: "kw-chip-id" }, String(piece.id)),
    );
    chip.addEventListener("mouseenter", () => events.hover(piece, index));
    chip.addEventListener("mouseleave", () => events.hover(null, index));
    chip.addEventListener("focus", () => events.hover(piece, index));
    chip.addEventListener("click", () => events.select(piece, index));
    list.append(chip);
  });
  return list;
}

export function renderDetail(piece: TokenPiece | null): HTMLElement {
  if (piece === null) {
    return h(
      "div",
      { class: "kw-token-detail kw-muted" },
      "Hover or click a token to see its bytes.",
    );
  }
  const row = (label: string, value: string) =>
    h(
      "div",
      { class: "kw-detail-row" },
      h("span", { class: "kw-detail-label" }, label),
      h("code", {}, value),
    );
  return h(
    "div",
    { class: "kw-token-detail" },
    row("id", String(piece.id)),
    row("piece", piece.piece),
    row("text", quoted(piece.text)),
    row("bytes", hexBytes(piece.bytes) || "(none)"),
    row("characters", piece.end > piece.start ? `${piece.start}–${piece.end}` : "added"),
    piece.is_special
      ? h("div", { class: "kw-detail-note" }, "A special token: one id, never split.")
      : null,
  );
}
