// The ChatWidget's Compare tab (shown once `chat.compare_with(other)` has set the `compare` trait):
// the conversation scored under both models, again whenever it changes.

import type { AnyModel } from "@anywidget/types";
import { onConversationChange } from "../shared/chat_tabs";
import type { ChatModel } from "../shared/protocol";
import { SteerClient } from "../shared/steer_protocol";
import { CompareView } from "./compare_view";

/** Whether the chat has a second model to compare with. */
export function hasCompare(model: AnyModel<ChatModel>): boolean {
  const names = model.get("compare") as Record<string, string> | undefined;
  return Boolean(names && Object.keys(names).length);
}

export function renderCompareTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const view = new CompareView(new SteerClient(model));
  el.append(view.el);
  view.refresh();
  const stop = onConversationChange(model, el, () => view.refresh());
  const changed = () => view.refresh();
  model.on("change:compare", changed);
  return () => {
    stop();
    model.off("change:compare", changed);
    view.dispose();
    view.el.remove();
  };
}
