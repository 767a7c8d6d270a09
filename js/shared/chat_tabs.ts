// What the inspector tabs of the ChatWidget share: knowing when the conversation changed (the
// transcript traitlet, once no reply is streaming) and deferring work while the tab is hidden, so
// that a chat does not compute attention after every reply for a tab nobody is looking at.

import type { AnyModel } from "@anywidget/types";
import type { ChatModel, TranscriptEntry } from "./protocol";

/** A fingerprint of the finished turns: it changes when the conversation the model reads changes. */
export function conversationKey(entries: readonly TranscriptEntry[]): string {
  if (entries.some((entry) => entry.status === "streaming" || entry.status === "queued")) return "";
  return entries.map((entry) => `${entry.id}:${entry.status}:${entry.content.length}`).join("|");
}

/**
 * Calls `refresh` when the conversation changed and the tab (the element `panel`) is shown:
 * at once if it is visible, else the next time it is shown. Returns the cleanup.
 */
export function onConversationChange(
  model: AnyModel<ChatModel>,
  panel: HTMLElement,
  refresh: () => void,
): () => void {
  let seen = conversationKey(model.get("transcript") ?? []);
  let stale = false;
  const visible = () => !panel.hidden && panel.closest("[hidden]") === null;
  const changed = () => {
    const key = conversationKey(model.get("transcript") ?? []);
    if (key === "" || key === seen) return;
    seen = key;
    if (visible()) refresh();
    else stale = true;
  };
  const observer = new MutationObserver(() => {
    if (stale && visible()) {
      stale = false;
      refresh();
    }
  });
  observer.observe(panel, { attributes: true, attributeFilter: ["hidden"] });
  model.on("change:transcript", changed);
  return () => {
    observer.disconnect();
    model.off("change:transcript", changed);
  };
}
