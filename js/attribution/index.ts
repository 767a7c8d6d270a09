// AttributionView's front end: the attribution inspector over the widget's `text` (or the chat
// it follows), its method and steps in step with the `method` and `steps` traitlets.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { mountTextView, standalone, textBox } from "../shared/standalone";
import { AttributionView } from "./attribution_view";
import "../chat_widget/shell.css";
import "../chat/chat.css";
import "../shared/inspect.css";
import "./attribution.css";

interface AttributionModel {
  text: string;
  follows_chat: boolean;
  revision: number;
  method: string;
  steps: number;
  [key: string]: unknown;
}

export function renderAttributionView(
  model: AnyModel<AttributionModel>,
  el: HTMLElement,
): () => void {
  const shell = standalone(model, el);
  const view = new AttributionView({
    client: shell.client,
    text: () => null,
    method: model.get("method"),
    steps: model.get("steps"),
    onSettings: (method, steps) => {
      model.set("method", method);
      model.set("steps", steps);
      model.save_changes();
    },
  });
  const box = textBox(model, "Text to explain", Boolean(model.get("follows_chat")), () =>
    view.open(),
  );
  shell.on(["method", "steps"], () => view.setSettings(model.get("method"), model.get("steps")));
  view.open();
  return mountTextView(shell, box, view, () => view.open());
}

export default {
  render({ model, el }: RenderProps<AttributionModel>) {
    return renderAttributionView(model, el);
  },
};
