// The Cache tab of the ChatWidget: how the chat "remembers". It asks the kernel for the key/value
// cache when shown, when the conversation changes and when a reply starts (its prompt is then in
// the cache); the reply's own slots are added from the chat's token messages as they stream.

import type { AnyModel } from "@anywidget/types";
import { onConversationChange } from "../shared/chat_tabs";
import type { BufferLike } from "../shared/codecs";
import { envelope } from "../shared/envelope";
import { type ChatModel, parseResponse } from "../shared/protocol";
import { KvCacheView } from "./cache_view";
import { decodeCache, newCacheId, parseCacheResponse, REQUEST } from "./protocol";

export function renderCacheTab(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const view = new KvCacheView();
  let asked: string | null = null; // only the latest request's answer is drawn
  let reply: string | null = null;
  let described = false; // an answer came (before it, a model still loading is asked again)
  const ask = () => {
    asked = newCacheId();
    model.send(envelope(REQUEST.cache, asked, {}));
  };
  const onMessage = (raw: unknown, buffers?: BufferLike[]) => {
    const chat = parseResponse(raw);
    if (chat?.kind === "chat.token") {
      if (chat.reply_id !== reply) {
        reply = chat.reply_id;
        view.startReply();
        ask(); // the new turn's prompt is in the cache now
      }
      view.addTokens(chat.tokens);
      return;
    }
    const answer = parseCacheResponse(raw);
    if (answer === null || answer.id !== asked) return;
    if (answer.kind === "cache.error") {
      if (answer.code !== "superseded") view.error(`Cache: ${answer.message}`);
      return;
    }
    described = true;
    view.show(decodeCache(answer, buffers ?? []));
  };
  const onStatus = () => {
    if (!described && model.get("status")?.state === "ready") ask(); // the model has loaded
  };
  model.on("msg:custom", onMessage);
  model.on("change:status", onStatus);
  el.append(view.el);
  ask();
  const stop = onConversationChange(model, el, ask);
  return () => {
    stop();
    model.off("msg:custom", onMessage);
    model.off("change:status", onStatus);
    view.dispose();
  };
}
