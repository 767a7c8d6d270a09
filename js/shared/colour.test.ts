import { describe, expect, it } from "vitest";
import {
  BLUES,
  entropyColour,
  inkFor,
  inkTable,
  interpolate,
  lookupTable,
  luminance,
  NIGHT,
  parseCssColour,
  probabilityColour,
  textOn,
} from "./colour";

describe("colour scales", () => {
  it("run from background to ink, darker at every step", () => {
    const table = lookupTable(BLUES);
    expect(Array.from(table.subarray(0, 4))).toEqual([255, 255, 255, 255]);
    expect(Array.from(table.subarray(255 * 4))).toEqual([8, 48, 107, 255]);
    let previous = Number.POSITIVE_INFINITY;
    for (let code = 0; code < 256; code += 5) {
      const rgb = [
        table[code * 4] ?? 0,
        table[code * 4 + 1] ?? 0,
        table[code * 4 + 2] ?? 0,
      ] as const;
      const l = luminance(rgb);
      expect(l).toBeLessThanOrEqual(previous);
      previous = l;
    }
  });

  it("the dark-theme scale gets lighter instead", () => {
    expect(luminance(interpolate(NIGHT, 1))).toBeGreaterThan(luminance(interpolate(NIGHT, 0)));
  });

  it("clamps and survives non-numbers", () => {
    expect(interpolate(BLUES, -1)).toEqual([255, 255, 255]);
    expect(interpolate(BLUES, 2)).toEqual([8, 48, 107]);
    expect(interpolate(BLUES, Number.NaN)).toEqual([255, 255, 255]);
  });

  it("colours surprising tokens red and expected ones green", () => {
    const [r1, g1] = probabilityColour(0.0001);
    const [r2, g2] = probabilityColour(0.99);
    expect(r1).toBeGreaterThan(g1);
    expect(g2).toBeGreaterThan(r2);
    // Log-spaced: a 1% token and a 0.1% token look different.
    expect(probabilityColour(0.01)).not.toEqual(probabilityColour(0.001));
    expect(probabilityColour(-1)).toEqual([235, 235, 235]); // no prediction
  });

  it("darkens with entropy and keeps text readable", () => {
    expect(luminance(entropyColour(5))).toBeLessThan(luminance(entropyColour(0.1)));
    expect(textOn([8, 48, 107])).toBe("#ffffff");
    expect(textOn([255, 255, 255])).toBe("#000000");
  });

  it("puts text on every colour of the scales at WCAG AA contrast", () => {
    const ratio = (a: number, b: number) => (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    for (const stops of [BLUES, NIGHT]) {
      for (let t = 0; t <= 1; t += 1 / 64) {
        const background = interpolate(stops, t);
        const text = textOn(background) === "#ffffff" ? 1 : 0;
        expect(ratio(luminance(background), text)).toBeGreaterThanOrEqual(4.5);
      }
    }
  });
});

describe("inkFor", () => {
  it("parses computed colours with and without alpha", () => {
    expect(parseCssColour("rgb(1, 2, 3)")).toEqual({ rgb: [1, 2, 3], alpha: 1 });
    expect(parseCssColour("rgba(1, 2, 3, 0)")).toEqual({ rgb: [1, 2, 3], alpha: 0 });
    expect(parseCssColour("rgb(1 2 3 / 0.5)")).toEqual({ rgb: [1, 2, 3], alpha: 0.5 });
    expect(parseCssColour("transparent")).toBeNull();
  });

  it("draws on a dark panel with the night scale and on a light one with blues", () => {
    const outer = document.createElement("div");
    const inner = document.createElement("div"); // transparent: the outer background shows
    outer.append(inner);
    document.body.append(outer);
    outer.style.backgroundColor = "rgb(17, 17, 17)";
    expect(inkFor(inner)).toBe(NIGHT);
    expect(inkTable(inner).slice(0, 3)).toEqual(Uint8ClampedArray.from(NIGHT[0] ?? []));
    outer.style.backgroundColor = "rgb(250, 250, 250)";
    expect(inkFor(inner)).toBe(BLUES);
    outer.remove();
  });
});
