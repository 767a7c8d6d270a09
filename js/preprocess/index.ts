// PreprocessorInspector's front end: the texts (one per line) and sequence_length as inputs over
// the widget's traitlets, and the preprocessor's table of them as one batch.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { debounce, h } from "../shared/dom";
import { type PreprocessResult, REQUEST } from "../shared/inspect_protocol";
import { standalone } from "../shared/standalone";
import { renderPreprocessTable } from "./table";
import "../chat_widget/shell.css";
import "../chat/chat.css";
import "../shared/inspect.css";

interface PreprocessorModel {
  texts: string[];
  sequence_length: number;
  [key: string]: unknown;
}

export function renderPreprocessor(
  model: AnyModel<PreprocessorModel>,
  el: HTMLElement,
): () => void {
  const shell = standalone(model, el);
  const textsInput = h("textarea", {
    class: "kw-token-input",
    rows: 3,
    spellcheck: "false",
    "aria-label": "Texts, one per line",
  });
  const lengthInput = h("input", {
    class: "kw-seq-length",
    type: "number",
    min: 1,
    max: 4096,
    "aria-label": "sequence_length",
  });
  const tableEl = h("div", { class: "kw-pre-slot" });
  const errorEl = h("div", { class: "kw-inspect-error", role: "alert", hidden: true });
  let latest = 0;

  const texts = () => model.get("texts") ?? [];
  const show = () => {
    textsInput.value = texts().join("\n");
    lengthInput.value = String(model.get("sequence_length") ?? 8);
  };
  const refresh = () => {
    const ticket = ++latest;
    shell.client
      .request<PreprocessResult>(REQUEST.preprocess, {
        texts: texts(),
        sequence_length: model.get("sequence_length") ?? 8,
      })
      .then(({ message }) => {
        if (ticket !== latest) return;
        errorEl.hidden = true;
        tableEl.replaceChildren(renderPreprocessTable(message.table));
      })
      .catch((error: Error) => {
        if (ticket !== latest) return;
        errorEl.textContent = error.message;
        errorEl.hidden = false;
      });
  };
  const write = debounce(() => {
    const lines = textsInput.value.split("\n").filter((line) => line.length > 0);
    const length = Math.round(Number(lengthInput.value));
    model.set("texts", lines.length > 0 ? lines : [""]);
    if (length >= 1 && length <= 4096) model.set("sequence_length", length);
    model.save_changes();
    refresh();
  }, 200);
  textsInput.addEventListener("input", write);
  lengthInput.addEventListener("change", write);
  const onChange = () => {
    if (document.activeElement !== textsInput) show();
    refresh();
  };
  shell.on(["texts", "sequence_length"], onChange);
  const cleanup = shell.mount(
    [
      h(
        "div",
        { class: "kw-preprocessor" },
        h("label", { class: "kw-field" }, "Texts (one per line, one batch)", textsInput),
        h("label", { class: "kw-field kw-field-inline" }, "sequence_length ", lengthInput),
        errorEl,
        tableEl,
      ),
    ],
    () => write.cancel(),
  );
  show();
  refresh();
  return cleanup;
}

export default {
  render({ model, el }: RenderProps<PreprocessorModel>) {
    return renderPreprocessor(model, el);
  },
};
