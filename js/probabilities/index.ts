// ProbabilitiesView's front end: the probabilities inspector over the widget's `text`.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { mountTextView, standalone, textBox } from "../shared/standalone";
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
  const shell = standalone(model, el);
  const followsChat = Boolean(model.get("follows_chat"));
  const view = new ProbabilitiesView({ client: shell.client, text: () => null, chat: followsChat });
  const box = textBox(model, "Text to score", followsChat, () => view.refresh());
  return mountTextView(shell, box, view, () => view.refresh());
}

export default {
  render({ model, el }: RenderProps<ProbabilitiesModel>) {
    return renderProbabilitiesView(model, el);
  },
};
