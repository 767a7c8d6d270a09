import { describe, expect, it } from "vitest";
import { displayText, strengths, TextStrip } from "./text_strip";

describe("text strip", () => {
  it("reads pieces as running text", () => {
    expect(displayText("␣world")).toBe(" world");
    expect(displayText("a⇥b")).toBe("a\tb");
  });

  it("lights keys by the square root of their share of the top weight", () => {
    const values = strengths([0.64, 0.16, 0, 0.2]);
    expect(Array.from(values).map((v) => Number(v.toFixed(3)))).toEqual([1, 0.5, 0, 0.559]);
    expect(Array.from(strengths([0, 0]))).toEqual([0, 0]);
  });

  it("lights and clears tokens, and breaks lines where the text does", () => {
    const hovered: Array<number | null> = [];
    const strip = new TextStrip({ hover: (i) => hovered.push(i), select: () => {} });
    strip.setTokens(
      ["<|begin_of_text|>", "Hi", "↵", "there"],
      ["template", "user", "user", "user"],
    );
    const spans = [...strip.el.querySelectorAll<HTMLElement>(".kw-strip-token")];
    expect(spans).toHaveLength(4);
    expect(strip.el.querySelectorAll("br")).toHaveLength(1);
    expect(spans[0]?.classList.contains("kw-strip-special")).toBe(true);
    strip.light(3, [0.9, 0.01, 0, 0.09]);
    expect(spans[3]?.classList.contains("kw-strip-focus")).toBe(true);
    expect(spans[0]?.style.backgroundColor).not.toBe("");
    expect(spans[2]?.style.backgroundColor).toBe(""); // zero weight stays unlit
    strip.light(null, null);
    expect(spans[0]?.style.backgroundColor).toBe("");
    spans[1]?.dispatchEvent(new Event("mouseenter"));
    expect(hovered).toEqual([1]);
  });

  it("marks every query token of a cell of a shrunk map", () => {
    const strip = new TextStrip({ hover: () => {}, select: () => {} });
    strip.setTokens(["a", "b", "c", "d", "e"], ["text", "text", "text", "text", "text"]);
    const focused = () =>
      Array.from(strip.el.querySelectorAll(".kw-strip-focus")).map((el) => el.textContent);
    strip.light(2, [1, 0, 0.5, 0, 0], 4);
    expect(focused()).toEqual(["c", "d"]);
    strip.light(1, [1, 0, 0, 0, 0]);
    expect(focused()).toEqual(["b"]);
    strip.light(null, null);
    expect(focused()).toEqual([]);
  });
});
