// TokenInspector's front end (the `_esm` of kerasllm_widget.widgets.token_inspector): the token
// view over the widget's `text` and `sequence_length` traitlets.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { standalone } from "../shared/standalone";
import { TokenView } from "./token_view";
import "../chat_widget/shell.css";
import "../chat/chat.css";
import "../shared/inspect.css";

interface TokenInspectorModel {
  text: string;
  labels: string[];
  sequence_length: number;
  revision: number;
  [key: string]: unknown;
}

export function renderTokenInspector(
  model: AnyModel<TokenInspectorModel>,
  el: HTMLElement,
): () => void {
  const shell = standalone(model, el);
  const view = new TokenView({
    client: shell.client,
    text: model.get("text") ?? "",
    sequenceLength: model.get("sequence_length") ?? 16,
    onText: (text) => {
      model.set("text", text);
      model.save_changes();
    },
    onSequenceLength: (length) => {
      model.set("sequence_length", length);
      model.save_changes();
    },
  });
  shell.on(["text"], () => view.setText(model.get("text") ?? ""));
  shell.on(["sequence_length"], () => view.setSequenceLength(model.get("sequence_length") ?? 16));
  return shell.mount([view.el], () => view.dispose());
}

export default {
  render({ model, el }: RenderProps<TokenInspectorModel>) {
    return renderTokenInspector(model, el);
  },
};
