import { describe, expect, it } from "vitest";
import { RDBU } from "../compare/diverging";
import { renderStartComparison, startLabel } from "./start_compare";

const comparison = {
  pieces: ["I", "␣am", "␣Kera"],
  logprob_start: [-1, -2, -9],
  logprob_now: [-1, -3, -0.5],
  kl: [0.01, 0.2, 1.5],
  mean_kl: 0.57,
  start: "lora" as const,
};

describe("renderStartComparison", () => {
  it("colours each reply token by log p now - log p at the start, with the mean KL", () => {
    const el = renderStartComparison(comparison);
    const tokens = el.querySelectorAll<HTMLElement>(".kw-train-delta-token");
    expect([...tokens].map((t) => t.textContent)).toEqual(["I", " am", " Kera"]);
    const [r, g, b] = RDBU[3] ?? [0, 0, 0];
    expect(tokens[0]?.getAttribute("style")).toContain(`rgb(${r}, ${g}, ${b})`); // unchanged
    const [r6, g6, b6] = RDBU[6] ?? [0, 0, 0];
    expect(tokens[2]?.getAttribute("style")).toContain(`rgb(${r6}, ${g6}, ${b6})`); // learned
    expect(el.textContent).toContain("the base model (no adapters): mean KL 0.570 nats");
    expect(startLabel({ ...comparison, start: "copy" })).toBe("the starting weights");
  });
});
