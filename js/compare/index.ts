// CompareView's front end: the widget's `text` scored under two models.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { h } from "../shared/dom";
import { SteerClient } from "../shared/steer_protocol";
import { CompareView } from "./compare_view";
import "../chat_widget/shell.css";
import "../chat/chat.css";
import "../shared/inspect.css";

interface CompareModel {
  text: string;
  [key: string]: unknown;
}

export function renderCompareView(model: AnyModel<CompareModel>, el: HTMLElement): () => void {
  const view = new CompareView(new SteerClient(model));
  const refresh = () => view.refresh();
  model.on("change:text", refresh);
  el.classList.add("kerasllm-widget");
  const root = h("div", { class: "kw-root" }, view.el);
  el.append(root);
  view.refresh();
  return () => {
    model.off("change:text", refresh);
    view.dispose();
    root.remove();
  };
}

export default {
  render({ model, el }: RenderProps<CompareModel>) {
    return renderCompareView(model, el);
  },
};
