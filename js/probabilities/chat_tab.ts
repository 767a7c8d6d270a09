// The Probabilities tab of the ChatWidget: tokens of a reply as they arrive, with the engine's
// probability and alternatives for each; then the whole conversation scored in one pass; and the
// step mode continuing the conversation one token at a time.

import type { AnyModel } from "@anywidget/types";
import { onConversationChange } from "../shared/chat_tabs";
import { InspectClient } from "../shared/inspect_client";
import { type ChatModel, parseResponse } from "../shared/protocol";
import { ProbabilitiesView } from "./probabilities_view";

/** How many alternatives the engine records per token while this tab exists. */
export const ALTERNATIVES = 5;

export function renderProbabilitiesTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const client = new InspectClient(model);
  const view = new ProbabilitiesView({ client, text: () => null, chat: true });
  // The engine computes alternatives only when asked (the traitlet is 0 until this tab opens).
  if (Number(model.get("top_k_alternatives") ?? 0) < ALTERNATIVES) {
    model.set("top_k_alternatives", ALTERNATIVES);
    model.save_changes();
  }
  const onMessage = (raw: unknown) => {
    const message = parseResponse(raw);
    if (message?.kind === "chat.token") view.addLive(message.tokens);
  };
  model.on("msg:custom", onMessage);
  el.append(view.el);
  const stop = onConversationChange(model, el, () => view.endLive());
  return () => {
    stop();
    model.off("msg:custom", onMessage);
    client.dispose();
    view.dispose();
  };
}
