import { describe, expect, it } from "vitest";
import { Channel } from "../shared/fake_channel";
import { SteerClient } from "../shared/steer_protocol";
import { formatStrength, promptLines, STRENGTH, SteeringView } from "./steering_view";

function openView() {
  const channel = new Channel();
  const view = new SteeringView(new SteerClient(channel.model));
  document.body.append(view.el);
  view.open();
  const open = channel.sent.at(-1) as Record<string, unknown>;
  channel.reply({
    kind: "steer.info",
    id: open.id,
    num_layers: 30,
    layer: 10,
    vector: null,
    applied: [],
  });
  return { channel, view };
}

const button = (view: SteeringView, name: string) =>
  view.el.querySelector(`.kw-steer-${name}`) as HTMLButtonElement;

describe("SteeringView", () => {
  it("reads one prompt per line and shows strengths with a sign", () => {
    expect(promptLines("a\n\n  b  \n")).toEqual(["a", "b"]);
    expect(formatStrength(4)).toBe("+4.0");
    expect(formatStrength(-0.5)).toBe("-0.5");
    expect(STRENGTH.min).toBe(-8);
  });

  it("sizes the layer slider from the model and computes a vector with a busy state", () => {
    const { channel, view } = openView();
    const layer = view.el.querySelector(".kw-steer-layer") as HTMLInputElement;
    expect(layer.max).toBe("29");
    expect(layer.value).toBe("10");
    expect(button(view, "ask").disabled).toBe(true); // no vector yet
    button(view, "compute").click();
    const compute = channel.last("steer.compute") as Record<string, unknown>;
    expect(compute.layer).toBe(10);
    expect((compute.positive as string[]).length).toBe(2);
    expect(view.el.getAttribute("aria-busy")).toBe("true");
    expect(button(view, "stop").hidden).toBe(false);
    expect(button(view, "compute").disabled).toBe(true);
    channel.reply({
      kind: "steer.vector",
      id: compute.id,
      layer: 10,
      norm: 3.5,
      positive: 2,
      negative: 2,
    });
    expect(view.el.getAttribute("aria-busy")).toBe("false");
    expect(view.el.querySelector(".kw-steer-vector")?.textContent).toContain("norm 3.50");
    expect(button(view, "ask").disabled).toBe(false);
  });

  it("streams both replies side by side and Stop sends steer.cancel", () => {
    const { channel, view } = openView();
    button(view, "compute").click();
    const compute = channel.last("steer.compute") as Record<string, unknown>;
    channel.reply({
      kind: "steer.vector",
      id: compute.id,
      layer: 10,
      norm: 1,
      positive: 1,
      negative: 1,
    });
    const strength = view.el.querySelector(".kw-steer-strength") as HTMLInputElement;
    strength.value = "-6.5";
    strength.dispatchEvent(new Event("input"));
    button(view, "ask").click();
    const ask = channel.last("steer.ask") as Record<string, unknown>;
    expect(ask.strength).toBe(-6.5);
    const reply = (which: string, text: string, done: boolean) =>
      channel.reply({
        kind: "steer.reply",
        id: ask.id,
        which,
        text,
        done,
        stop_reason: done ? "stop_token" : null,
      });
    reply("plain", "Fine, thanks.", true);
    reply("steered", "Awful", false);
    const plain = view.el.querySelector('[data-which="plain"]');
    const steered = view.el.querySelector('[data-which="steered"]');
    expect(plain?.textContent).toBe("Fine, thanks.");
    expect(steered?.textContent).toBe("Awful");
    expect(view.el.textContent).toContain("strength -6.5");
    button(view, "stop").click();
    expect(channel.last("steer.cancel")).toBeTruthy();
    channel.reply({
      kind: "steer.error",
      id: ask.id,
      request_kind: "steer.ask",
      code: "cancelled",
      message: "stopped",
    });
    expect(view.el.getAttribute("aria-busy")).toBe("false");
    expect((view.el.querySelector(".kw-inspect-error") as HTMLElement).hidden).toBe(true);
  });

  it("shows a kernel error and leaves the busy state", () => {
    const { channel, view } = openView();
    button(view, "compute").click();
    const compute = channel.last("steer.compute") as Record<string, unknown>;
    channel.reply({
      kind: "steer.error",
      id: compute.id,
      request_kind: "steer.compute",
      code: "failed",
      message: "ValueError: boom",
    });
    const error = view.el.querySelector(".kw-inspect-error") as HTMLElement;
    expect(error.hidden).toBe(false);
    expect(error.textContent).toContain("boom");
    expect(button(view, "compute").disabled).toBe(false);
  });
});
