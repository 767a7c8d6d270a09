// The ChatWidget's Training tab: the TrainingMonitor set as the chat's `training` trait (its own
// widget model, which the kernel sends as a reference), drawn by the monitor's own view.

import type { AnyModel } from "@anywidget/types";
import { h } from "../shared/dom";
import type { ChatModel } from "../shared/protocol";
import { renderMonitor } from "./monitor_view";
import type { TrainingModel } from "./protocol";

/** The chat's traits that concern this tab: a widget reference ("IPY_MODEL_<id>") or null. */
export interface TrainingChatModel extends ChatModel {
  training: string | null;
}

const PREFIX = "IPY_MODEL_";

/** Whether the chat has a training monitor to show. */
export function hasTraining(model: AnyModel<ChatModel>): boolean {
  return Boolean((model as unknown as AnyModel<TrainingChatModel>).get("training"));
}

export function renderTrainingTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const chat = model as unknown as AnyModel<TrainingChatModel>;
  let cleanup: (() => void) | null = null;
  let generation = 0;
  const attach = async () => {
    const current = ++generation;
    cleanup?.();
    cleanup = null;
    const reference = chat.get("training");
    if (!reference) {
      el.replaceChildren(
        h(
          "div",
          { class: "kw-train-none" },
          "No training: monitor = chat.training_monitor(), then fit(..., callbacks=[monitor]).",
        ),
      );
      return;
    }
    const id = reference.startsWith(PREFIX) ? reference.slice(PREFIX.length) : reference;
    try {
      const monitor = (await chat.widget_manager.get_model(id)) as AnyModel<TrainingModel>;
      if (current !== generation) return;
      el.replaceChildren();
      cleanup = renderMonitor(monitor, el);
    } catch (error) {
      if (current !== generation) return;
      el.replaceChildren(
        h("div", { class: "kw-train-error", role: "alert" }, `Training monitor: ${String(error)}`),
      );
    }
  };
  chat.on("change:training", attach);
  void attach();
  return () => {
    generation += 1;
    chat.off("change:training", attach);
    cleanup?.();
    el.replaceChildren();
  };
}
