// AttentionView's front end (the `_esm` of kerasllm_widget.widgets.attention_view): the attention
// inspector over the widget's `text`, `layer` and `head` traitlets (head -1 is the head average).

import type { AnyModel, RenderProps } from "@anywidget/types";
import { debounce, h } from "../shared/dom";
import { InspectClient } from "../shared/inspect_client";
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
  const client = new InspectClient(model);
  const followsChat = Boolean(model.get("follows_chat"));
  const input = h("textarea", {
    class: "kw-token-input",
    rows: 2,
    spellcheck: "false",
    "aria-label": "Text to look at",
    hidden: followsChat,
  });
  input.value = model.get("text") ?? "";
  const view = new AttentionView({
    client,
    text: () => (followsChat ? null : (model.get("text") ?? "")),
    layer: model.get("layer") ?? 0,
    head: headOf(model.get("head") ?? -1),
    onSelection: (layer, head) => {
      model.set("layer", layer);
      model.set("head", head === "mean" ? -1 : head);
      model.save_changes();
    },
  });
  const typed = debounce(() => {
    model.set("text", input.value);
    model.save_changes();
    view.open();
  }, 400);
  input.addEventListener("input", typed);
  const onText = () => {
    if (input.value !== model.get("text")) {
      input.value = model.get("text") ?? "";
      view.open();
    }
  };
  const onSelection = () => view.choose(model.get("layer") ?? 0, headOf(model.get("head") ?? -1));
  const onRevision = () => view.open();
  model.on("change:text", onText);
  model.on("change:layer", onSelection);
  model.on("change:head", onSelection);
  model.on("change:revision", onRevision);
  el.classList.add("kerasllm-widget");
  const root = h("div", { class: "kw-root kw-inspector-root" }, input, view.el);
  el.append(root);
  return () => {
    typed.cancel();
    model.off("change:text", onText);
    model.off("change:layer", onSelection);
    model.off("change:head", onSelection);
    model.off("change:revision", onRevision);
    client.dispose();
    view.dispose();
    root.remove();
  };
}

export default {
  render({ model, el }: RenderProps<AttentionModel>) {
    return renderAttentionView(model, el);
  },
};
