// TokenInspector's front end (the `_esm` of kerasllm_widget.widgets.token_inspector): the token
// view over the widget's `text` and `sequence_length` traitlets.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { InspectClient } from "../shared/inspect_client";
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
  const client = new InspectClient(model);
  const view = new TokenView({
    client,
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
  const onText = () => view.setText(model.get("text") ?? "");
  const onLength = () => view.setSequenceLength(model.get("sequence_length") ?? 16);
  model.on("change:text", onText);
  model.on("change:sequence_length", onLength);
  el.classList.add("kerasllm-widget");
  const root = document.createElement("div");
  root.className = "kw-root kw-inspector-root";
  root.append(view.el);
  el.append(root);
  return () => {
    model.off("change:text", onText);
    model.off("change:sequence_length", onLength);
    client.dispose();
    view.dispose();
    root.remove();
  };
}

export default {
  render({ model, el }: RenderProps<TokenInspectorModel>) {
    return renderTokenInspector(model, el);
  },
};
