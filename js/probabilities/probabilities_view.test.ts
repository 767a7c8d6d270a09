import { afterEach, describe, expect, it } from "vitest";
import { bytes, Channel, settle } from "../shared/fake_channel";
import { InspectClient } from "../shared/inspect_client";
import { percent } from "./bars";
import { alternativesAt, ProbabilitiesView } from "./probabilities_view";

function scoresMessage(id: unknown) {
  // Three tokens; the top 2 alternatives of each position.
  const arrays = {
    token_ids: Int32Array.from([1, 7, 9]),
    probs: Float32Array.from([-1, 0.6, 0.001]),
    entropy: Float32Array.from([-1, 1.2, 3.5]),
    top_ids: Int32Array.from([-1, -1, 7, 8, 5, 6]),
    top_probs: Float32Array.from([0, 0, 0.6, 0.3, 0.5, 0.2]),
  };
  const names = Object.keys(arrays) as Array<keyof typeof arrays>;
  const headers = Object.fromEntries(
    names.map((name, buffer) => {
      const shape = name.startsWith("top") ? [3, 2] : [3];
      const dtype = arrays[name] instanceof Int32Array ? "int32" : "float32";
      return [name, { dtype, shape, buffer }];
    }),
  );
  return {
    message: {
      kind: "probabilities.result",
      id,
      sequence_id: "s",
      pieces: ["<|im_start|>", "␣cat", "␣sat"],
      roles: ["template", "assistant", "assistant"],
      labels: { "5": "␣ran", "6": "␣slept", "7": "␣cat", "8": "␣dog" },
      arrays: headers,
    },
    buffers: names.map((name) => bytes(arrays[name])),
  };
}

afterEach(() => document.body.replaceChildren());

describe("ProbabilitiesView", () => {
  it("colours scored tokens and shows the alternatives of a clicked one", async () => {
    const channel = new Channel();
    const view = new ProbabilitiesView({
      client: new InspectClient(channel.model),
      text: () => null,
      chat: true,
    });
    document.body.append(view.el);
    const { message, buffers } = scoresMessage(channel.last("probabilities.request")?.id);
    channel.reply(message, buffers);
    await settle();
    expect(view.el.dataset.state).toBe("ready");
    const scored = [...view.el.querySelectorAll<HTMLElement>("button.kw-scored")];
    expect(scored.map((s) => s.dataset.index)).toEqual(["1", "2"]); // the first token has no prediction
    expect(scored[0]?.getAttribute("style")).toContain("background");
    scored[1]?.click();
    const rows = [...view.el.querySelectorAll(".kw-bar-row")];
    // "␣sat" (p = 0.001) was not in the top 2: it is added, marked as the token used.
    expect(rows.map((r) => r.querySelector(".kw-bar-piece")?.textContent)).toEqual([
      "␣ran",
      "␣slept",
      "␣sat",
    ]);
    expect(rows[2]?.classList.contains("kw-bar-chosen")).toBe(true);
  });

  it("shows tokens arriving live with the engine's alternatives", async () => {
    const channel = new Channel();
    const view = new ProbabilitiesView({
      client: new InspectClient(channel.model),
      text: () => null,
      chat: true,
    });
    view.addLive([
      {
        index: 0,
        token_id: 7,
        text: " cat",
        logprob: Math.log(0.6),
        top_k: [
          { token_id: 7, text: " cat", prob: 0.6 },
          { token_id: 8, text: " dog", prob: 0.3 },
        ],
      },
    ]);
    const live = view.el.querySelector<HTMLElement>(".kw-live-token");
    expect(live?.title).toBe("p = 60%");
    live?.click();
    expect(view.el.querySelectorAll(".kw-bar-row")).toHaveLength(2);
    view.endLive();
    expect((view.el.querySelector(".kw-live") as HTMLElement).hidden).toBe(true);
  });
});

describe("alternatives", () => {
  it("mark the token used when it is among the top ones", async () => {
    const channel = new Channel();
    const view = new ProbabilitiesView({
      client: new InspectClient(channel.model),
      text: () => null,
      chat: false,
    });
    const { message, buffers } = scoresMessage(channel.last("probabilities.request")?.id);
    channel.reply(message, buffers);
    await settle();
    const { decodeScores } = await import("./probabilities_view");
    const scores = decodeScores(message as never, buffers);
    const bars = alternativesAt(scores, 1);
    expect(bars.map((b) => [b.tokenId, b.mark])).toEqual([
      [7, "chosen"],
      [8, undefined],
    ]);
    expect(view.el.dataset.state).toBe("ready");
  });

  it("print percentages readably", () => {
    expect(percent(0.6)).toBe("60%");
    expect(percent(0.0123)).toBe("1.2%");
    expect(percent(0.00001)).toBe("1e-3%");
    expect(percent(Number.NaN)).toBe("–");
  });
});
