import { afterEach, describe, expect, it } from "vitest";
import { luminance } from "../shared/colour";
import { bytes, Channel, settle } from "../shared/fake_channel";
import { InspectClient } from "../shared/inspect_client";
import { requestTab, TAB_REQUEST } from "../shared/tab_requests";
import { AttributionView, replyTokenPosition } from "./attribution_view";
import { attributionColour, formatScore, NEUTRAL, scaleMax } from "./colour_scale";

// <|im_start|> user ↵ Hi <|im_end|> ↵ <|im_start|> assistant ↵ Hello ␣there <|im_end|>
const SEQUENCE = {
  kind: "attribution.sequence",
  sequence_id: "s1",
  pieces: [
    "<|im_start|>",
    "user",
    "↵",
    "Hi",
    "<|im_end|>",
    "↵",
    "<|im_start|>",
    "assistant",
    "↵",
    "Hello",
    "␣there",
    "<|im_end|>",
  ],
  roles: [
    "template",
    "template",
    "template",
    "user",
    "template",
    "template",
    "template",
    "template",
    "template",
    "assistant",
    "assistant",
    "template",
  ],
  special: [true, false, false, false, true, false, true, false, false, false, false, true],
  methods: ["grad_x_input", "integrated_gradients", "attention_rollout"],
  max_steps: 4096,
};

function opened(): { channel: Channel; view: AttributionView } {
  const channel = new Channel();
  const view = new AttributionView({ client: new InspectClient(channel.model), text: () => null });
  document.body.append(view.el);
  view.open();
  channel.reply({ ...SEQUENCE, id: channel.last("attribution.open")?.id });
  return { channel, view };
}

function result(channel: Channel, scores: number[], method = "grad_x_input") {
  const request = channel.last("attribution.request");
  channel.reply(
    {
      kind: "attribution.result",
      id: request?.id,
      sequence_id: "s1",
      target_position: request?.target_position,
      target_id: 7,
      method,
      steps: 1,
      compute_s: 0.1,
      scores: { dtype: "float32", shape: [scores.length], buffer: 0 },
    },
    [bytes(Float32Array.from(scores))],
  );
}

const tokens = (view: AttributionView) => [
  ...view.el.querySelectorAll<HTMLButtonElement>(".kw-attr-token"),
];
const token = (view: AttributionView, index: number) =>
  view.el.querySelector<HTMLButtonElement>(`.kw-attr-token[data-index="${index}"]`);

afterEach(() => document.body.replaceChildren());

describe("the colour scale", () => {
  it("gives positive and negative scores different hues and zero the neutral colour", () => {
    const [pr, pg, pb] = attributionColour(0.5, 1);
    const [nr, ng, nb] = attributionColour(-0.5, 1);
    expect(pg).toBeGreaterThan(pr); // green: raised it
    expect(pg).toBeGreaterThan(pb);
    expect(nr).toBeGreaterThan(ng); // magenta: lowered it
    expect(nb).toBeGreaterThan(ng);
    expect(attributionColour(0, 1)).toEqual(NEUTRAL);
    // Stronger means darker, on both sides.
    expect(luminance(attributionColour(1, 1))).toBeLessThan(luminance(attributionColour(0.3, 1)));
    expect(luminance(attributionColour(-1, 1))).toBeLessThan(luminance(attributionColour(-0.3, 1)));
    expect(attributionColour(2, 1)).toEqual(attributionColour(1, 1)); // clamped at the scale's end
    expect(attributionColour(0.5, 0)).toEqual(NEUTRAL);
    expect(formatScore(0.1234)).toBe("+0.123");
    expect(formatScore(-0.5)).toBe("−0.500");
  });

  it("ends at the largest magnitude among the tokens shown", () => {
    const scores = [9, -0.4, 0.2];
    expect(scaleMax(scores, () => true)).toBe(9);
    expect(scaleMax(scores, (i) => i > 0)).toBeCloseTo(0.4);
  });
});

describe("AttributionView", () => {
  it("hides the special tokens unless asked, and a click makes a token the target", async () => {
    const { channel, view } = opened();
    await settle();
    expect(view.el.dataset.state).toBe("idle");
    const shown = tokens(view).map((t) => Number(t.dataset.index));
    expect(shown).toEqual([1, 2, 3, 5, 7, 8, 9, 10]); // no <|im_start|> or <|im_end|>
    const box = view.el.querySelector<HTMLInputElement>(".kw-attr-hide-special");
    if (!box) throw new Error("no special-token toggle");
    box.checked = false;
    box.dispatchEvent(new Event("change"));
    expect(tokens(view)).toHaveLength(12);

    token(view, 10)?.click();
    const request = channel.last("attribution.request");
    expect(request).toMatchObject({
      sequence_id: "s1",
      target_position: 10,
      method: "grad_x_input",
    });
    expect(view.el.dataset.state).toBe("running");
    expect(token(view, 10)?.classList.contains("kw-attr-target")).toBe(true);
    result(channel, [5, 0.5, 0.1, 0.4, 0, -0.2, 0, 0, 0, 0.3]);
    await settle();
    expect(view.el.dataset.state).toBe("ready");
    // Positive scores green, negative magenta, the target framed and not coloured.
    const hello = token(view, 3)?.style.backgroundColor ?? "";
    expect(token(view, 3)?.title).toContain("score +0.400");
    expect(token(view, 5)?.title).toContain("score −0.200");
    expect(hello).not.toBe(token(view, 5)?.style.backgroundColor);
    expect(token(view, 10)?.style.backgroundColor).toBe("");
    expect(token(view, 10)?.title).toContain("the token explained");
    // Specials shown: the scale ends at <|im_start|>'s 5; hidden again: at 0.5.
    expect(view.el.querySelector(".kw-attr-legend")?.getAttribute("data-max")).toBe("5");
    box.checked = true;
    box.dispatchEvent(new Event("change"));
    expect(view.el.querySelector(".kw-attr-legend")?.getAttribute("data-max")).toBe("0.5");
    expect(token(view, 1)?.style.backgroundColor).toMatch(/rgb/); // 0.5: the scale's end, darkest green
  });

  it("switching the method asks again; integrated gradients shows progress and can stop", async () => {
    const { channel, view } = opened();
    await settle();
    token(view, 9)?.click();
    const select = view.el.querySelector<HTMLSelectElement>(".kw-attr-method");
    if (!select) throw new Error("no method switch");
    select.value = "integrated_gradients";
    select.dispatchEvent(new Event("change"));
    const request = channel.last("attribution.request");
    expect(request).toMatchObject({
      method: "integrated_gradients",
      steps: 32,
      target_position: 9,
    });
    // The steps box losing focus fires "change" again: the same settings are not asked twice.
    const asked = channel.sent.length;
    view.el.querySelector(".kw-attr-steps")?.dispatchEvent(new Event("change"));
    expect(channel.sent.length).toBe(asked);
    const stop = view.el.querySelector<HTMLButtonElement>(".kw-attr-stop");
    expect(stop?.hidden).toBe(false);
    channel.reply({
      kind: "attribution.progress",
      id: request?.id,
      sequence_id: "s1",
      target_position: 9,
      done: 8,
      total: 32,
    });
    expect(view.el.querySelector<HTMLProgressElement>(".kw-attr-progress")?.value).toBe(8);
    expect(view.el.querySelector(".kw-attr-status")?.textContent).toContain("8 of 32 steps");
    stop?.click();
    expect(channel.last("attribution.stop")).toBeDefined();
    channel.reply({
      kind: "inspect.error",
      id: request?.id,
      request_kind: "attribution.request",
      code: "stopped",
      message: "stopped after 8 of 32 steps",
    });
    await settle();
    expect(view.el.dataset.state).toBe("stopped");
    expect(view.el.querySelector(".kw-attr-status")?.textContent).toContain("after 8 of 32 steps");
    expect(stop?.hidden).toBe(true);
    expect(tokens(view).length).toBe(8); // the tokens stay, the target still marked
    expect(token(view, 9)?.classList.contains("kw-attr-target")).toBe(true);
  });

  it("finds a reply's token among the conversation's, and takes a request from the Chat tab", async () => {
    expect(replyTokenPosition(SEQUENCE.roles, 0, 1)).toBe(10);
    expect(replyTokenPosition(SEQUENCE.roles, 0, 99)).toBe(10); // clamped to the reply
    expect(replyTokenPosition(SEQUENCE.roles, 1, 0)).toBeNull();
    // The event the Chat tab's "Attribute" sends reaches whoever listens above it.
    const chat = document.createElement("div");
    document.body.append(chat);
    let seen: unknown = null;
    document.body.addEventListener("kw-show-tab", (event) => {
      seen = (event as CustomEvent).detail;
    });
    requestTab(chat, "attribution", { reply_id: "a1", token_index: 1 });
    expect(seen).toEqual({ tab: "attribution", detail: { reply_id: "a1", token_index: 1 } });
    expect(TAB_REQUEST).toBe("kw-tab-request");
    const { channel, view } = opened();
    await settle();
    view.attributeReplyToken(0, 0, true); // reads the conversation again first
    channel.reply({ ...SEQUENCE, id: channel.last("attribution.open")?.id });
    await settle();
    expect(channel.last("attribution.request")).toMatchObject({ target_position: 9 });
  });
});
