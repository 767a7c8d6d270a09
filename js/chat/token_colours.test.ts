import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { luminance, type Rgb } from "../shared/colour";
import { chatState, FakeModel, nextFrame, READY } from "../shared/fake_model";
import type { ChatModel, TokenRecord, TranscriptEntry } from "../shared/protocol";
import { renderChat } from "./chat_view";
import {
  alternativesEntropy,
  renderColouredReply,
  tokenColour,
  tokenProbability,
} from "./token_colours";

function record(index: number, text: string, prob: number, alternatives: number[] = []) {
  return {
    index,
    token_id: 100 + index,
    text,
    logprob: prob < 0 ? null : Math.log(prob),
    top_k: alternatives.map((p, j) => ({
      token_id: j === 0 ? 100 + index : 900 + j,
      text: j === 0 ? text : `alt${j}`,
      prob: p,
    })),
  } satisfies TokenRecord;
}

const redness = ([r, g]: Rgb) => r - g;

describe("token colouring", () => {
  it("reads each token's probability from its log-probability", () => {
    expect(tokenProbability(record(0, "a", 0.25))).toBeCloseTo(0.25, 6);
    expect(tokenProbability(record(0, "a", -1))).toBe(-1);
  });

  it("takes the entropy from the alternatives, the rest of the mass as one outcome", () => {
    expect(alternativesEntropy(record(0, "a", 0.25, [0.25, 0.25, 0.25, 0.25]))).toBeCloseTo(
      Math.log(4),
      6,
    );
    // 0.5 on the token, 0.5 outside the recorded alternatives: two outcomes of one half.
    expect(alternativesEntropy(record(0, "a", 0.5, [0.5]))).toBeCloseTo(Math.log(2), 6);
    expect(alternativesEntropy(record(0, "a", 1, [1]))).toBeCloseTo(0, 9);
    expect(alternativesEntropy(record(0, "a", 0.5))).toBe(-1);
  });

  it("colours surprising tokens red and expected ones green; uncertain positions darker", () => {
    const expected = tokenColour(record(0, "a", 0.95), "probability");
    const surprising = tokenColour(record(1, "b", 0.001), "probability");
    expect(redness(surprising)).toBeGreaterThan(20);
    expect(redness(expected)).toBeLessThan(0);
    const sure = tokenColour(record(0, "a", 0.97, [0.97, 0.02, 0.01]), "entropy");
    const unsure = tokenColour(record(1, "b", 0.2, [0.2, 0.2, 0.2, 0.2, 0.2]), "entropy");
    expect(luminance(unsure)).toBeLessThan(luminance(sure) - 0.2);
    // Unknown values are neutral grey, never mistaken for a sure or an unlikely token.
    expect(tokenColour(record(2, "c", -1), "probability")).toEqual([235, 235, 235]);
    expect(tokenColour(record(2, "c", 0.5), "entropy")).toEqual([235, 235, 235]);
  });

  it("renders one button per token, the reply's text unchanged", () => {
    const records = [record(0, "Hello", 0.9), record(1, ",\n", 0.5), record(2, " world", 0.01)];
    let picked = -1;
    const el = renderColouredReply(records, "probability", (i) => {
      picked = i;
    });
    const buttons = [...el.querySelectorAll<HTMLButtonElement>(".kw-coloured-token")];
    expect(buttons.map((b) => b.textContent).join("")).toBe("Hello,\n world");
    expect(buttons[0]?.getAttribute("style")).toContain("background: rgb(");
    expect(buttons[0]?.getAttribute("style")).not.toBe(buttons[2]?.getAttribute("style"));
    expect(buttons[2]?.title).toContain("p = 1.0%");
    buttons[2]?.click();
    expect(picked).toBe(2);
  });
});

describe("the Chat tab's colouring toggle", () => {
  let model: FakeModel<ChatModel>;
  let el: HTMLElement;
  let cleanup: () => void;

  beforeEach(() => {
    model = new FakeModel({ ...chatState(), top_k_alternatives: 0 } as ChatModel);
    el = document.createElement("div");
    document.body.append(el);
    cleanup = renderChat(model.asModel(), el);
  });

  afterEach(() => {
    cleanup();
    el.remove();
  });

  async function streamReply(): Promise<void> {
    const entries: TranscriptEntry[] = [
      { id: "u1", role: "user", content: "Hi", status: "sent", request_id: "k1" },
      { id: "a1", role: "assistant", content: "", status: "streaming", request_id: "k1" },
    ];
    model.kernelSets("status", { ...READY, state: "generating" });
    model.kernelSets("transcript", entries);
    const records = [
      record(0, "**Hello", 0.9, [0.9, 0.05]),
      record(1, "**", 0.6, [0.6, 0.3]),
      record(2, " you", 0.002, [0.7, 0.2, 0.002]),
    ];
    model.kernelSends({ kind: "chat.token", id: "k1", reply_id: "a1", tokens: records });
    model.kernelSends({
      kind: "chat.done",
      id: "k1",
      reply_id: "a1",
      stop_reason: "stop_token",
      text: "**Hello** you",
      notice: "",
      stats: {
        prompt_tokens: 3,
        generated_tokens: 3,
        time_to_first_token_s: 0.1,
        prefill_tokens_per_s: null,
        decode_tokens_per_s: 10,
      },
    });
    model.kernelSets("status", READY);
    model.kernelSets("transcript", [
      { ...entries[0], status: "sent" } as TranscriptEntry,
      { ...entries[1], content: "**Hello** you", status: "done" } as TranscriptEntry,
    ]);
    await nextFrame();
  }

  function choose(value: string): void {
    const select = el.querySelector<HTMLSelectElement>(".kw-colour-by");
    if (!select) throw new Error("no colouring toggle");
    select.value = value;
    select.dispatchEvent(new Event("change"));
  }

  it("shows a finished reply token by token, and its alternatives on a click", async () => {
    await streamReply();
    const reply = () => el.querySelector('[data-role="assistant"]') as HTMLElement;
    expect(reply().querySelector("strong")?.textContent).toBe("Hello"); // Markdown while off
    choose("probability");
    // Colouring asks the engine to record alternatives for the replies to come.
    expect(model.get("top_k_alternatives" as keyof ChatModel)).toBe(5);
    const tokens = [...reply().querySelectorAll<HTMLButtonElement>(".kw-coloured-token")];
    expect(tokens.map((t) => t.textContent)).toEqual(["**Hello", "**", " you"]);
    tokens[2]?.click();
    const rows = [...reply().querySelectorAll(".kw-alternatives .kw-bar-row")];
    expect(rows).toHaveLength(3);
    expect(reply().querySelector(".kw-bar-chosen .kw-bar-piece")?.textContent).toBe(" you");
    reply().querySelector<HTMLButtonElement>(".kw-alternatives-close")?.click();
    expect(reply().querySelector(".kw-alternatives")).toBeNull();
    choose("entropy");
    expect(reply().querySelector(".kw-coloured-reply")?.getAttribute("data-colour-by")).toBe(
      "entropy",
    );
    choose("");
    expect(reply().querySelector(".kw-coloured-token")).toBeNull();
    expect(reply().querySelector("strong")?.textContent).toBe("Hello");
  });
});
