import { FakeModel, nextFrame } from "../shared/fake_model";
import { formatBytes, KvCacheView, messageColour } from "./cache_view";
import { renderCacheTab } from "./chat_tab";
import { type CacheMessage, type CacheResult, decodeCache } from "./protocol";

const MESSAGES: CacheMessage[] = [
  { role: "system", turn: 0, label: "system", content: "Be brief." },
  { role: "user", turn: 1, label: "user 1", content: "Hi" },
  { role: "assistant", turn: 1, label: "assistant 1", content: "Hello" },
];

/** A `cache.result` as the kernel sends it: JSON plus four little-endian buffers. */
function result(
  id: string,
  source: number[],
  message: number[],
  extra: Partial<CacheResult["cache"]> = {},
): { content: CacheResult; buffers: DataView[] } {
  const n = source.length;
  const ids = new Int32Array(n).map((_, i) => 100 + i);
  const owners = new Int32Array(message);
  const template = new Uint8Array(n).map((_, i) => (i === 0 ? 1 : 0));
  const sources = new Uint8Array(source);
  const header = (dtype: "int32" | "uint8", buffer: number) => ({ dtype, shape: [n], buffer });
  return {
    content: {
      kind: "cache.result",
      id,
      cache: {
        pieces: Array.from({ length: n }, (_, i) => `t${i}`),
        messages: MESSAGES,
        dropped: [],
        capacity: 16,
        used: n,
        bytes_per_token: 256,
        layers: 2,
        kv_heads: 2,
        head_dim: 8,
        dtype: "float32",
        running: false,
        context_length: 64,
        counts: { reused: 0, prefilled: 0, generated: 0 },
        ...extra,
      },
      arrays: {
        token_ids: header("int32", 0),
        message: header("int32", 1),
        template: header("uint8", 2),
        source: header("uint8", 3),
      },
    },
    buffers: [ids, owners, template, sources].map((a) => new DataView(a.buffer)),
  };
}

describe("KV cache view", () => {
  it("decodes the slots and draws one cell per slot, marked by source and template", () => {
    const { content, buffers } = result("c1", [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]);
    const description = decodeCache(content, buffers);
    expect(description.slots.map((s) => s.source)).toEqual([
      "reused",
      "reused",
      "prefilled",
      "prefilled",
      "generated",
      "generated",
    ]);
    const view = new KvCacheView();
    view.show(description);
    const cells = view.el.querySelectorAll(".kw-kv-grid .kw-kv-cell");
    expect(cells).toHaveLength(6);
    expect(view.el.querySelectorAll(".kw-kv-grid .kw-kv-reused")).toHaveLength(2);
    expect(view.el.querySelectorAll(".kw-kv-grid .kw-kv-template")).toHaveLength(1);
    expect(view.el.textContent).toContain("6 of 16 slots used");
    // 2 layers x 2 x 2 kv heads x 8 x 4 bytes = 256 B per token; 6 used of 16 allocated.
    expect(view.el.textContent).toContain("256 B per token");
    expect(view.el.textContent).toContain("1.5 KiB used of 4.0 KiB allocated");
    const legend = view.el.querySelector(".kw-kv-legend")?.textContent ?? "";
    for (const label of ["system", "user 1", "assistant 1", "reused"])
      expect(legend).toContain(label);
    const bar = view.el.querySelector(".kw-kv-bar-part.kw-kv-reused") as HTMLElement;
    expect(bar.style.width).toBe(`${(100 * 2) / 16}%`);
  });

  it("lists dropped messages and colours turns apart", () => {
    const { content, buffers } = result("c1", [0, 1], [0, 1], {
      dropped: [{ role: "user", turn: 1, label: "user 1", content: "An old question" }],
    });
    const view = new KvCacheView();
    view.show(decodeCache(content, buffers));
    expect(view.el.querySelector(".kw-kv-dropped")?.textContent).toContain("An old question");
    expect(messageColour(MESSAGES[1])).not.toBe(
      messageColour({ ...MESSAGES[1], turn: 2 } as CacheMessage),
    );
    expect(formatBytes(1536)).toBe("1.5 KiB");
  });
});

describe("Cache tab of the chat", () => {
  it("asks again once a model that was loading is ready", () => {
    const model = new FakeModel<Record<string, unknown>>({
      transcript: [],
      status: { state: "loading" },
    });
    const el = document.createElement("div");
    // biome-ignore lint/suspicious/noExplicitAny: the fake stands in for the chat's model
    const cleanup = renderCacheTab(model.asModel() as any, el);
    const first = model.sent[0] as { id: string };
    model.kernelSends({
      kind: "cache.error",
      id: first.id,
      code: "not_ready",
      message: "the model is still loading",
    });
    expect(el.textContent).toContain("the model is still loading");
    model.kernelSets("status", { state: "ready" });
    expect(model.sent).toHaveLength(2);
    cleanup();
  });

  it("asks for the cache, grows by a slot per streamed token, and asks again at a new reply", async () => {
    const model = new FakeModel<Record<string, unknown>>({ transcript: [] });
    const el = document.createElement("div");
    // biome-ignore lint/suspicious/noExplicitAny: the fake stands in for the chat's model
    const cleanup = renderCacheTab(model.asModel() as any, el);
    const first = model.sent[0] as { kind: string; id: string };
    expect(first.kind).toBe("cache.request");
    const done = result(first.id, [1, 1, 2], [0, 1, 2]);
    model.kernelSends(done.content, done.buffers);
    expect(el.querySelectorAll(".kw-kv-grid .kw-kv-cell")).toHaveLength(3);

    // A new reply: the tab asks for the cache (now holding the new prompt) and adds its tokens.
    const token = (i: number) => ({
      index: i,
      token_id: 7 + i,
      text: `w${i}`,
      logprob: -1,
      top_k: [],
    });
    model.kernelSends({ kind: "chat.token", id: "r2", reply_id: "a2", tokens: [token(0)] });
    const second = model.sent[1] as { kind: string; id: string };
    expect(second.kind).toBe("cache.request");
    const running = result(second.id, [0, 0, 0, 1], [0, 1, 2, 3], {
      running: true,
      messages: [...MESSAGES, { role: "assistant", turn: 2, label: "assistant 2", content: "" }],
    });
    model.kernelSends(running.content, running.buffers);
    expect(el.querySelectorAll(".kw-kv-grid .kw-kv-cell")).toHaveLength(5);
    model.kernelSends({
      kind: "chat.token",
      id: "r2",
      reply_id: "a2",
      tokens: [token(1), token(2)],
    });
    await new Promise((resolve) => setTimeout(resolve, 150));
    await nextFrame();
    expect(el.querySelectorAll(".kw-kv-grid .kw-kv-cell")).toHaveLength(7);
    expect(el.querySelectorAll(".kw-kv-grid .kw-kv-generated")).toHaveLength(3);
    expect(model.sent).toHaveLength(2); // one request per reply, not one per token
    // An answer to an older request is not drawn over the newer one.
    model.kernelSends(result(first.id, [0], [0]).content, result(first.id, [0], [0]).buffers);
    expect(el.querySelectorAll(".kw-kv-grid .kw-kv-cell")).toHaveLength(7);
    cleanup();
    expect(model.listenerCount()).toBe(0);
  });
});
