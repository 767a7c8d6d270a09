import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { chatState, FakeModel, nextFrame, READY } from "../shared/fake_model";
import type { ChatModel, TokenRecord, TranscriptEntry } from "../shared/protocol";
import { renderChat } from "./chat_view";
import { readable } from "./token_popover";

function record(index: number, text: string, prob: number): TokenRecord {
  return {
    index,
    token_id: 100 + index,
    text,
    logprob: Math.log(prob),
    top_k: [
      { token_id: 100 + index, text, prob },
      { token_id: 900 + index, text: `alt${index}`, prob: (1 - prob) / 2 },
    ],
  };
}

const STATS = {
  prompt_tokens: 3,
  generated_tokens: 3,
  time_to_first_token_s: 0.1,
  prefill_tokens_per_s: null,
  decode_tokens_per_s: 10,
};

describe("branching a reply from one of its tokens", () => {
  it("shows line breaks and tabs in the alternatives, and an empty token as ∅", () => {
    expect(readable("\n\n")).toBe("↵↵");
    expect(readable("\tx")).toBe("⇥x");
    expect(readable("")).toBe("∅");
  });

  let model: FakeModel<ChatModel>;
  let el: HTMLElement;
  let cleanup: () => void;
  const reply = () => el.querySelector('[data-role="assistant"]') as HTMLElement;
  const sent = (kind: string) =>
    model.sent.filter((m) => (m as { kind: string }).kind === kind) as Record<string, unknown>[];

  beforeEach(async () => {
    model = new FakeModel(chatState());
    el = document.createElement("div");
    document.body.append(el);
    cleanup = renderChat(model.asModel(), el);
    const entries: TranscriptEntry[] = [
      { id: "u1", role: "user", content: "Hi", status: "sent", request_id: "k1", state_id: "m1" },
      { id: "a1", role: "assistant", content: "", status: "streaming", request_id: "k1" },
    ];
    model.kernelSets("transcript", entries);
    model.kernelSets("status", { ...READY, state: "generating" });
    const records = [record(0, "Hello", 0.9), record(1, ",", 0.6), record(2, " you", 0.5)];
    model.kernelSends({ kind: "chat.token", id: "k1", reply_id: "a1", tokens: records });
    model.kernelSends({
      kind: "chat.done",
      id: "k1",
      reply_id: "a1",
      stop_reason: "stop_token",
      text: "Hello, you",
      notice: "",
      stats: STATS,
    });
    model.kernelSets("status", READY);
    model.kernelSets("transcript", [
      entries[0] as TranscriptEntry,
      { ...entries[1], content: "Hello, you", status: "done", state_id: "m2" } as TranscriptEntry,
    ]);
    await nextFrame();
  });

  afterEach(() => {
    cleanup();
    el.remove();
  });

  function openToken(index: number): HTMLElement {
    reply().querySelector<HTMLButtonElement>(".kw-branch-toggle")?.click();
    const tokens = [...reply().querySelectorAll<HTMLButtonElement>(".kw-coloured-token")];
    expect(tokens.map((t) => t.textContent)).toEqual(["Hello", ",", " you"]);
    // Plain tokens: colouring is off.
    expect(tokens[0]?.getAttribute("style")).toBeNull();
    tokens[index]?.click();
    const popover = reply().querySelector<HTMLElement>(".kw-token-popover");
    if (!popover) throw new Error("no popover");
    return popover;
  }

  it("continues from a token with an alternative, the typed text, or the model's pick", async () => {
    let popover = openToken(1);
    const rows = [...popover.querySelectorAll<HTMLButtonElement>("button.kw-bar-row")];
    expect(rows.map((r) => r.querySelector(".kw-bar-piece")?.textContent)).toEqual([",", "alt1"]);
    rows[1]?.click();
    expect(sent("chat.branch")[0]).toMatchObject({
      message_id: "a1",
      token_index: 1,
      token_id: 901,
      text: null,
    });
    expect(reply().querySelector(".kw-token-popover")).toBeNull();

    popover = openToken(2);
    const box = popover.querySelector<HTMLInputElement>(".kw-branch-text");
    if (!box) throw new Error("no text box");
    box.value = " there";
    popover.querySelector<HTMLFormElement>(".kw-branch-typed")?.requestSubmit();
    expect(sent("chat.branch")[1]).toMatchObject({
      token_index: 2,
      token_id: null,
      text: " there",
    });

    popover = openToken(0);
    popover.querySelector<HTMLButtonElement>(".kw-branch-here")?.click();
    expect(sent("chat.branch")[2]).toMatchObject({ token_index: 0, token_id: null, text: null });
  });

  it("moves between alternatives with the arrows and closes on Esc", async () => {
    const popover = openToken(1);
    await new Promise((resolve) => setTimeout(resolve, 0)); // it takes the focus once drawn
    const rows = [...popover.querySelectorAll<HTMLButtonElement>("button.kw-bar-row")];
    expect(document.activeElement).toBe(rows[0]);
    popover.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
    expect(document.activeElement).toBe(rows[1]);
    popover.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
    expect(document.activeElement).toBe(rows[0]);
    popover.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
    expect(reply().querySelector(".kw-token-popover")).toBeNull();
    expect(sent("chat.cancel")).toHaveLength(0);
  });

  it("asks the kernel for the tokens of a reply this view did not see stream", async () => {
    const [user, answer] = model.get("transcript");
    const other = { ...answer, id: "a2", state_id: "m3" } as TranscriptEntry;
    model.kernelSets("transcript", [user as TranscriptEntry, other]);
    await nextFrame();
    reply().querySelector<HTMLButtonElement>(".kw-branch-toggle")?.click();
    expect(sent("chat.get_tokens")[0]).toMatchObject({ message_id: "a2" });
    model.kernelSends({
      kind: "chat.tokens",
      id: (sent("chat.get_tokens")[0] as { id: string }).id,
      reply_id: "a2",
      tokens: [record(0, "Hello", 0.9), record(1, " again", 0.5)],
    });
    await nextFrame();
    const tokens = [...reply().querySelectorAll(".kw-coloured-token")].map((t) => t.textContent);
    expect(tokens).toEqual(["Hello", " again"]);
  });

  it("shows ‹ 2 / 3 › on a message with siblings and asks the kernel to switch", async () => {
    const [user, answer] = model.get("transcript");
    model.kernelSets("transcript", [
      user as TranscriptEntry,
      { ...answer, siblings: [1, 3] } as TranscriptEntry,
    ]);
    await nextFrame();
    expect(reply().querySelector(".kw-sibling-count")?.textContent).toBe("2 / 3");
    reply().querySelector<HTMLButtonElement>(".kw-sibling-prev")?.click();
    expect(sent("chat.switch")[0]).toMatchObject({ message_id: "a1", index: 0 });
    reply().querySelector<HTMLButtonElement>(".kw-sibling-next")?.click();
    expect(sent("chat.switch")[1]).toMatchObject({ message_id: "a1", index: 2 });
    model.kernelSets("status", { ...READY, state: "generating" });
    await nextFrame();
    expect(reply().querySelector<HTMLButtonElement>(".kw-sibling-next")?.disabled).toBe(true);
  });
});
