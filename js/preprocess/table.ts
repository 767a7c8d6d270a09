// The preprocessor's table: for each text, rows token_ids / padding_mask / labels / sample_weight
// over the positions 0..N-1, as the seed prints them, with start, end and padding cells marked.
// Each row is a real <table>, so the numbers can be copied and read by screen readers.

import { h } from "../shared/dom";
import type { CellKind, PreprocessRow, PreprocessTable } from "../shared/inspect_protocol";

const KIND_TITLES: Record<CellKind, string> = {
  start: "start token",
  end: "end token",
  pad: "padding",
  special: "special token",
  text: "text",
};

function cell(value: string, kind: CellKind, title: string): HTMLTableCellElement {
  return h(
    "td",
    { class: `kw-cell kw-cell-${kind}`, title: `${title} (${KIND_TITLES[kind]})` },
    value,
  );
}

/** One cell per position: `text(value, i)` shown, coloured by the position's kind. */
function cells<T>(
  values: readonly T[],
  kinds: readonly CellKind[],
  text: (value: T, i: number) => string,
  title: (i: number) => string,
): HTMLTableCellElement[] {
  return values.map((value, i) => cell(text(value, i), kinds[i] ?? "text", title(i)));
}

function rowGroup(row: PreprocessRow, index: number): HTMLElement {
  const positions = row.token_ids.map((_, i) => h("th", { scope: "col" }, String(i)));
  const line = (name: string, cells: HTMLTableCellElement[], note?: string) =>
    h("tr", { "data-row": name }, h("th", { scope: "row", title: note ?? "" }, name), ...cells);
  const tokenPiece = (i: number) => row.token_pieces[i] ?? "";
  const labelPiece = (i: number) => row.label_pieces[i] ?? "";
  const table = h(
    "table",
    { class: "kw-pre-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "position"), ...positions)),
    h(
      "tbody",
      {},
      line(
        "piece",
        // Padding repeats the pad id, which is often a real token ("!" is 0 in Llama 3): the mask,
        // not the id, makes it padding, so the cell says so instead of showing "!".
        cells(
          row.token_pieces,
          row.token_kinds,
          (p, i) => (row.token_kinds[i] === "pad" ? "pad" : p),
          (i) => `token ${i}: ${tokenPiece(i)}`,
        ),
      ),
      line(
        "token_ids",
        cells(row.token_ids, row.token_kinds, String, tokenPiece),
        "what the model reads",
      ),
      line(
        "padding_mask",
        cells(
          row.padding_mask,
          row.token_kinds,
          (m) => (m ? "True" : "False"),
          () => "padding_mask",
        ),
        "True on real tokens",
      ),
      line(
        "labels",
        cells(row.labels, row.label_kinds, String, labelPiece),
        "token_ids shifted left by one: what the model should predict",
      ),
      line(
        "sample_weight",
        cells(
          row.sample_weight,
          row.label_kinds,
          (w) => (w === 1 ? "1" : w === 0 ? "0" : w.toFixed(2)),
          () => "weight of this label in the loss",
        ),
        "which labels count in the loss",
      ),
    ),
  );
  return h(
    "section",
    { class: "kw-pre-group", "data-index": index },
    h(
      "div",
      { class: "kw-pre-caption" },
      h("span", { class: "kw-pre-text" }, JSON.stringify(row.text)),
      row.truncated ? h("span", { class: "kw-badge kw-badge-warn" }, "cut to fit") : null,
    ),
    h("div", { class: "kw-pre-scroll" }, table),
  );
}

export function renderPreprocessTable(table: PreprocessTable): HTMLElement {
  const legend = h(
    "div",
    { class: "kw-legend" },
    ...(["start", "end", "pad", "special"] as CellKind[]).map((kind) =>
      h("span", { class: `kw-cell kw-cell-${kind} kw-legend-item` }, KIND_TITLES[kind]),
    ),
  );
  return h("div", { class: "kw-pre" }, legend, ...table.rows.map(rowGroup));
}
