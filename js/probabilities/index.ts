// ProbabilitiesView's front end: the probabilities inspector over the widget's `text`.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { debounce, h } from "../shared/dom";
import { InspectClient } from "../shared/inspect_client";
import { ProbabilitiesView } from "./probabilities_view";
import "../chat_widget/shell.css";
import "../chat/chat.css";
import "../shared/inspect.css";

interface ProbabilitiesModel {
  text: string;
  follows_chat: boolean;
  revision: number;
  [key: string]: unknown;
}

export function renderProbabilitiesView(
  model: AnyModel<ProbabilitiesModel>,
  el: HTMLElement,
): () => void {
  const client = new InspectClient(model);
  const followsChat = Boolean(model.get("follows_chat"));
  const input = h("textarea", {
    class: "kw-token-input",
    rows: 2,
    spellcheck: "false",
    "aria-label": "Text to score",
    hidden: followsChat,
  });
  input.value = model.get("text") ?? "";
  const view = new ProbabilitiesView({ client, text: () => null, chat: followsChat });
  const typed = debounce(() => {
    model.set("text", input.value);
    model.save_changes();
    view.refresh();
  }, 400);
  input.addEventListener("input", typed);
  const onChange = () => {
    if (input.value !== model.get("text")) input.value = model.get("text") ?? "";
    view.refresh();
  };
  model.on("change:text", onChange);
  model.on("change:revision", onChange);
  el.classList.add("kerasllm-widget");
  const root = h("div", { class: "kw-root kw-inspector-root" }, input, view.el);
  el.append(root);
  return () => {
    typed.cancel();
    model.off("change:text", onChange);
    model.off("change:revision", onChange);
    client.dispose();
    view.dispose();
    root.remove();
  };
}

export default {
  render({ model, el }: RenderProps<ProbabilitiesModel>) {
    return renderProbabilitiesView(model, el);
  },
};
