// LogitLensView's front end (the `_esm` of kerasllm_widget.widgets.logit_lens_view): the lens
// inspector over the widget's `text` (or the chat it follows).

import type { AnyModel, RenderProps } from "@anywidget/types";
import { mountTextView, standalone, textBox } from "../shared/standalone";
import { LensView } from "./lens_view";
import "../chat_widget/shell.css";
import "../chat/chat.css";
import "../shared/inspect.css";
import "./lens.css";

interface LensModel {
  text: string;
  follows_chat: boolean;
  revision: number;
  [key: string]: unknown;
}

export function renderLensView(model: AnyModel<LensModel>, el: HTMLElement): () => void {
  const shell = standalone(model, el);
  const view = new LensView({ client: shell.client });
  const box = textBox(model, "Text to look through", Boolean(model.get("follows_chat")), () =>
    view.refresh(),
  );
  return mountTextView(shell, box, view, () => view.refresh());
}

export default {
  render({ model, el }: RenderProps<LensModel>) {
    return renderLensView(model, el);
  },
};
