// The Attention tab of the ChatWidget: the attention of the whole conversation, opened again when
// a reply has finished (and only while the tab is shown).

import type { AnyModel } from "@anywidget/types";
import { onConversationChange } from "../shared/chat_tabs";
import { InspectClient } from "../shared/inspect_client";
import type { ChatModel } from "../shared/protocol";
import { AttentionView } from "./attention_view";

export function renderAttentionTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const client = new InspectClient(model);
  const view = new AttentionView({ client, text: () => null, layer: 0, head: "mean" });
  el.append(view.el);
  const stop = onConversationChange(model, el, () => view.open());
  return () => {
    stop();
    client.dispose();
    view.dispose();
  };
}
