import { describe, expect, it } from "vitest";
import { luminance } from "../shared/colour";
import { bytes, Channel } from "../shared/fake_channel";
import { SteerClient } from "../shared/steer_protocol";
import { CompareView, decodeComparison, difference } from "./compare_view";
import { differenceColour, RDBU } from "./diverging";

function resultMessage(id: unknown) {
  const arrays = {
    token_ids: Int32Array.from([1, 7, 9]),
    logprobs_a: Float32Array.from([-1, -2]),
    logprobs_b: Float32Array.from([-3, -0.5]),
    kl: Float32Array.from([0.2, 0.4]),
    top_ids_a: Int32Array.from([7, 8, 5, 9, 0, 0]),
    top_probs_a: Float32Array.from([0.4, 0.3, 0.5, 0.2, 0, 0]),
    top_ids_b: Int32Array.from([8, 7, 9, 5, 0, 0]),
    top_probs_b: Float32Array.from([0.5, 0.05, 0.6, 0.1, 0, 0]),
  };
  const names = Object.keys(arrays) as Array<keyof typeof arrays>;
  const headers = Object.fromEntries(
    names.map((name, buffer) => {
      const shape = name.startsWith("top") ? [3, 2] : name === "token_ids" ? [3] : [2];
      const dtype = arrays[name] instanceof Int32Array ? "int32" : "float32";
      return [name, { dtype, shape, buffer }];
    }),
  );
  return {
    message: {
      kind: "compare.result",
      id,
      sequence_id: "s1",
      names: ["A (float32)", "B (bfloat16)"],
      pieces: ["<|im_start|>", "␣cat", "␣sat"],
      roles: ["template", "assistant", "assistant"],
      labels: { "0": "x", "5": "␣on", "7": "␣cat", "8": "␣dog", "9": "␣sat" },
      arrays: headers,
    },
    buffers: names.map((name) => bytes(arrays[name])),
  };
}

describe("diverging scale", () => {
  it("runs red to white to blue and saturates", () => {
    expect(differenceColour(0)).toEqual(RDBU[3]);
    expect(differenceColour(-100)).toEqual(RDBU[0]);
    expect(differenceColour(100)).toEqual(RDBU[6]);
    expect(luminance(differenceColour(-2))).toBeLessThan(luminance(differenceColour(0)));
    expect(differenceColour(Number.NaN)).toEqual([235, 235, 235]);
  });
});

describe("CompareView", () => {
  it("colours tokens by the difference and shows both top-k lists on a click", () => {
    const channel = new Channel();
    const view = new CompareView(new SteerClient(channel.model));
    view.refresh();
    const request = channel.last("compare.request") as Record<string, unknown>;
    const { message, buffers } = resultMessage(request.id);
    channel.reply(message, buffers);
    const comparison = decodeComparison(message as never, buffers);
    expect(difference(comparison, 1)).toBeCloseTo(-2);
    expect(difference(comparison, 0)).toBeNaN();
    const tokens = view.el.querySelectorAll<HTMLElement>(".kw-compare-token");
    expect(tokens.length).toBe(3);
    expect(tokens[0]?.tagName).toBe("SPAN"); // the first token has no prediction
    expect(tokens[1]?.getAttribute("style")).toContain("background: rgb(");
    expect(tokens[1]?.getAttribute("style")).not.toBe(tokens[2]?.getAttribute("style"));
    expect(view.el.textContent).toContain("A: A (float32) · B: B (bfloat16)");

    (tokens[2] as HTMLButtonElement).click();
    const lists = view.el.querySelectorAll(".kw-compare-list");
    expect(lists.length).toBe(2);
    expect(lists[0]?.textContent).toContain('" sat"');
    expect(lists[1]?.querySelector(".kw-compare-actual")?.textContent).toContain("sat");
    expect(view.el.textContent).toContain("KL(A‖B) = 0.400");

    (view.el.querySelector(".kw-compare-continue") as HTMLButtonElement).click();
    const cont = channel.last("compare.continue") as Record<string, unknown>;
    expect(cont).toMatchObject({ sequence_id: "s1", position: 1 });
    channel.reply({
      kind: "compare.continuation",
      id: cont.id,
      sequence_id: "s1",
      position: 1,
      text: " on the mat",
      done: true,
    });
    expect(view.el.querySelector(".kw-compare-continuation")?.textContent).toBe(
      "B continues:  on the mat",
    );
  });

  it("shows why there is nothing to compare", () => {
    const channel = new Channel();
    const view = new CompareView(new SteerClient(channel.model));
    view.refresh();
    const request = channel.last("compare.request") as Record<string, unknown>;
    channel.reply({
      kind: "steer.error",
      id: request.id,
      request_kind: "compare.request",
      code: "not_ready",
      message: "there is nothing to compare yet",
    });
    expect(view.el.querySelector(".kw-inspect-error")?.textContent).toContain("nothing to compare");
  });
});
