// The Attribution tab of the ChatWidget: the conversation's tokens, opened again when a reply
// has finished (and only while the tab is shown); the Chat tab's "Attribute" on a reply token
// opens this tab on that token.

import type { AnyModel } from "@anywidget/types";
import { onConversationChange } from "../shared/chat_tabs";
import { InspectClient } from "../shared/inspect_client";
import type { ChatModel } from "../shared/protocol";
import { onTabRequest } from "../shared/tab_requests";
import { AttributionView } from "./attribution_view";

export const ATTRIBUTION_TAB = "attribution";

/** What the Chat tab's "Attribute" hands over: a reply (transcript id) and a token of it. */
export interface AttributeRequest {
  reply_id: string;
  token_index: number;
}

export function renderAttributionTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const client = new InspectClient(model);
  const view = new AttributionView({ client, text: () => null });
  el.append(view.el);
  view.open();
  const stop = onConversationChange(model, el, () => view.open());
  const stopRequests = onTabRequest(el, (detail) => {
    const { reply_id, token_index } = detail as Partial<AttributeRequest>;
    const replies = (model.get("transcript") ?? []).filter((entry) => entry.role === "assistant");
    const ordinal = replies.findIndex((entry) => entry.id === reply_id);
    if (ordinal >= 0 && typeof token_index === "number") {
      view.attributeReplyToken(ordinal, token_index, true);
    }
  });
  return () => {
    stop();
    stopRequests();
    client.dispose();
    view.dispose();
  };
}
