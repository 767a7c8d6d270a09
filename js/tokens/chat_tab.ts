// The Tokens tab of the ChatWidget: the conversation as the model reads it (chat template and
// all), tokenized, with the preprocessor's view; editable for experiments, and reloaded when the
// conversation changes unless the text was edited.

import type { AnyModel } from "@anywidget/types";
import { onConversationChange } from "../shared/chat_tabs";
import { InspectClient } from "../shared/inspect_client";
import type { ChatModel } from "../shared/protocol";
import { TokenView } from "./token_view";

export function renderTokensTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const client = new InspectClient(model);
  let edited = false;
  const view = new TokenView({
    client,
    text: null,
    sequenceLength: 0,
    reloadLabel: "Show the conversation",
    onText: () => {
      edited = true;
    },
  });
  view.el.querySelector(".kw-reload")?.addEventListener("click", () => {
    edited = false;
  });
  el.append(view.el);
  const stop = onConversationChange(model, el, () => {
    if (!edited) view.reload();
  });
  return () => {
    stop();
    client.dispose();
    view.dispose();
  };
}
