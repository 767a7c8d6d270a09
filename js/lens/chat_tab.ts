// The Lens tab of the ChatWidget: the logit lens of the whole conversation, asked for again when a
// reply has finished (and only while the tab is shown: a pass over a long chat takes a while).

import type { AnyModel } from "@anywidget/types";
import { onConversationChange } from "../shared/chat_tabs";
import { InspectClient } from "../shared/inspect_client";
import type { ChatModel } from "../shared/protocol";
import { LensView } from "./lens_view";
import "./lens.css";

export function renderLensTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const client = new InspectClient(model);
  const view = new LensView({ client });
  el.append(view.el);
  const stop = onConversationChange(model, el, () => view.refresh());
  return () => {
    stop();
    client.dispose();
    view.dispose();
  };
}
