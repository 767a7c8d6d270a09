// AttentionView's front end (the `_esm` of kerasllm_widget.widgets.attention_view): the attention
// inspector over the widget's `text`, `layer` and `head` traitlets (head -1 is the head average).

import type { AnyModel, RenderProps } from "@anywidget/types";
import { standalone, textBox } from "../shared/standalone";
import { AttentionView, type HeadChoice } from "./attention_view";
import "../chat_widget/shell.css";
import "../chat/chat.css";
import "../shared/inspect.css";

interface AttentionModel {
  text: string;
  layer: number;
  head: number;
  follows_chat: boolean;
  revision: number;
  notice: string;
  [key: string]: unknown;
}

const headOf = (value: number): HeadChoice => (value < 0 ? "mean" : value);

export function renderAttentionView(model: AnyModel<AttentionModel>, el: HTMLElement): () => void {
  const shell = standalone(model, el);
  const followsChat = Boolean(model.get("follows_chat"));
  const view = new AttentionView({
    client: shell.client,
    text: () => (followsChat ? null : (model.get("text") ?? "")),
    layer: model.get("layer") ?? 0,
    head: headOf(model.get("head") ?? -1),
    onSelection: (layer, head) => {
      model.set("layer", layer);
      model.set("head", head === "mean" ? -1 : head);
      model.save_changes();
    },
  });
  const box = textBox(model, "Text to look at", followsChat, () => view.open());
  shell.on(["text"], () => {
    if (box.sync()) view.open();
  });
  shell.on(["layer", "head"], () =>
    view.choose(model.get("layer") ?? 0, headOf(model.get("head") ?? -1)),
  );
  shell.on(["revision"], () => view.open());
  return shell.mount([box.input, view.el], () => {
    box.cancel();
    view.dispose();
  });
}

export default {
  render({ model, el }: RenderProps<AttentionModel>) {
    return renderAttentionView(model, el);
  },
};
