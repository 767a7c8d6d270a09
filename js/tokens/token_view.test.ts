import { afterEach, describe, expect, it, vi } from "vitest";
import { Channel, settle } from "../shared/fake_channel";
import { InspectClient } from "../shared/inspect_client";
import type { TokenTable } from "../shared/inspect_protocol";
import { countsLine, hexBytes } from "./chips";
import { TokenView } from "./token_view";

const HELLO: TokenTable = {
  pieces: [
    {
      id: 9906,
      piece: "Hello",
      text: "Hello",
      bytes: [72, 101, 108, 108, 111],
      is_special: false,
      start: 0,
      end: 5,
    },
    {
      id: 128009,
      piece: "<|eot_id|>",
      text: "<|eot_id|>",
      bytes: [],
      is_special: true,
      start: 5,
      end: 15,
    },
  ],
  num_tokens: 2,
  num_chars: 15,
  num_bytes: 15,
};

function setup(text: string | null = "Hello") {
  const channel = new Channel();
  const view = new TokenView({ client: new InspectClient(channel.model), text, sequenceLength: 6 });
  document.body.append(view.el);
  return { channel, view };
}

afterEach(() => {
  document.body.replaceChildren();
  vi.useRealTimers();
});

describe("TokenView", () => {
  it("asks for the tokens of its text and draws them as chips", async () => {
    const { channel, view } = setup();
    const request = channel.last("tokens.request");
    expect(request?.text).toBe("Hello");
    channel.reply({
      kind: "tokens.result",
      id: request?.id,
      text: "Hello",
      tables: [HELLO],
      labels: ["llama"],
    });
    await settle();
    const chips = [...view.el.querySelectorAll(".kw-chip")];
    expect(chips.map((c) => c.getAttribute("data-id"))).toEqual(["9906", "128009"]);
    expect(chips[1]?.classList.contains("kw-chip-special")).toBe(true);
    expect(view.el.querySelector(".kw-counts")?.textContent).toContain("2 tokens");
    // A click keeps the token's detail: its bytes in hex.
    (chips[0] as HTMLElement).click();
    expect(view.el.querySelector(".kw-token-detail")?.textContent).toContain("48 65 6C 6C 6F");
    // The preprocessor table is asked for the same text.
    expect(channel.last("preprocess.request")).toMatchObject({
      texts: ["Hello"],
      sequence_length: 6,
    });
  });

  it("drops the answer to an older text", async () => {
    vi.useFakeTimers();
    const { channel, view } = setup();
    const old = channel.last("tokens.request");
    const input = view.el.querySelector("textarea") as HTMLTextAreaElement;
    input.value = "Hi";
    input.dispatchEvent(new Event("input"));
    vi.advanceTimersByTime(200);
    const fresh = channel.last("tokens.request");
    expect(fresh?.text).toBe("Hi");
    channel.reply({
      kind: "tokens.result",
      id: fresh?.id,
      text: "Hi",
      tables: [{ ...HELLO, pieces: HELLO.pieces.slice(0, 1) }],
      labels: [],
    });
    channel.reply({
      kind: "tokens.result",
      id: old?.id,
      text: "Hello",
      tables: [HELLO],
      labels: [],
    });
    await settle();
    expect(view.el.querySelectorAll(".kw-chip")).toHaveLength(1);
  });

  it("loads the kernel's own text when given none, and compares two tokenizers", async () => {
    const { channel, view } = setup(null);
    const request = channel.last("tokens.request");
    expect(request?.text).toBeNull();
    channel.reply({
      kind: "tokens.result",
      id: request?.id,
      text: "Hello<|eot_id|>",
      tables: [HELLO, HELLO],
      labels: ["a", "b"],
    });
    await settle();
    expect((view.el.querySelector("textarea") as HTMLTextAreaElement).value).toBe(
      "Hello<|eot_id|>",
    );
    expect(view.el.querySelector(".kw-token-tables")?.classList.contains("kw-compare")).toBe(true);
    expect([...view.el.querySelectorAll(".kw-token-label")].map((l) => l.textContent)).toEqual([
      "a",
      "b",
    ]);
  });

  it("shows errors from the kernel", async () => {
    const { channel, view } = setup();
    channel.reply({
      kind: "inspect.error",
      id: channel.last("tokens.request")?.id,
      code: "failed",
      message: "no tokenizer",
    });
    await settle();
    const error = view.el.querySelector(".kw-inspect-error") as HTMLElement;
    expect(error.hidden).toBe(false);
    expect(error.textContent).toBe("no tokenizer");
  });
});

describe("chip helpers", () => {
  it("format bytes and counts", () => {
    expect(hexBytes([0xf0, 0x9f, 0x99, 0x82])).toBe("F0 9F 99 82");
    expect(countsLine(HELLO)).toBe(
      "15 characters · 15 bytes · 2 tokens · 7.50 characters per token",
    );
  });
});
