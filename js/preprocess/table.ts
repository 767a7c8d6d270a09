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

function rowGroup(row: PreprocessRow, index: number): HTMLElement {
  const positions = row.token_ids.map((_, i) => h("th", { scope: "col" }, String(i)));
  const line = (name: string, cells: HTMLTableCellElement[], note?: string) =>
    h("tr", { "data-row": name }, h("th", { scope: "row", title: note ?? "" }, name), ...cells);
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
        row.token_pieces.map((p, i) => {
          const kind = row.token_kinds[i] ?? "text";
          return cell(kind === "pad" ? "pad" : p, kind, `token ${i}: ${p}`);
        }),
      ),
      line(
        "token_ids",
        row.token_ids.map((id, i) =>
          cell(String(id), row.token_kinds[i] ?? "text", row.token_pieces[i] ?? ""),
        ),
        "what the model reads",
      ),
      line(
        "padding_mask",
        row.padding_mask.map((m, i) =>
          cell(m ? "True" : "False", row.token_kinds[i] ?? "text", "padding_mask"),
        ),
        "True on real tokens",
      ),
      line(
        "labels",
        row.labels.map((id, i) =>
          cell(String(id), row.label_kinds[i] ?? "text", row.label_pieces[i] ?? ""),
        ),
        "token_ids shifted left by one: what the model should predict",
      ),
      line(
        "sample_weight",
        row.sample_weight.map((w, i) =>
          cell(
            w === 1 ? "1" : w === 0 ? "0" : w.toFixed(2),
            row.label_kinds[i] ?? "text",
            "weight of this label in the loss",
          ),
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
