import { extent, formatValue, linearScale, movingAverage, pathWithGaps } from "./chart";

describe("extent", () => {
  it("ignores missing and non-finite values", () => {
    expect(extent([3, null, Number.NaN, 1, undefined, 2])).toEqual({ min: 1, max: 3 });
  });
  it("widens a flat range and is null when empty", () => {
    expect(extent([2, 2])).toEqual({ min: 1.9, max: 2.1 });
    expect(extent([0])).toEqual({ min: -1, max: 1 });
    expect(extent([null])).toBeNull();
  });
});

describe("linearScale", () => {
  it("maps the domain onto a reversed range, as an SVG y axis", () => {
    const y = linearScale({ min: 0, max: 10 }, 100, 0);
    expect(y(0)).toBe(100);
    expect(y(10)).toBe(0);
    expect(y(2.5)).toBe(75);
  });
});

describe("pathWithGaps", () => {
  const identity = (v: number) => v;
  it("draws one segment per run of finite values", () => {
    expect(pathWithGaps([1, 2, 3, 4, 5], [5, 4, null, 2, 1], identity, identity)).toBe(
      "M1.0 5.0 L2.0 4.0 M4.0 2.0 L5.0 1.0",
    );
  });
  it("is empty without finite points", () => {
    expect(pathWithGaps([1], [null], identity, identity)).toBe("");
  });
});

describe("movingAverage", () => {
  it("averages the trailing window and skips gaps", () => {
    expect(movingAverage([2, 4, 6, 8], 2)).toEqual([2, 3, 5, 7]);
    expect(movingAverage([2, null, 4], 3)).toEqual([2, null, 3]);
  });
});

describe("formatValue", () => {
  it("uses exponents for learning rates and three digits otherwise", () => {
    expect(formatValue(0.0003)).toBe("3.00e-4");
    expect(formatValue(2.3456)).toBe("2.35");
    expect(formatValue(12)).toBe("12");
    expect(formatValue(100)).toBe("100");
    expect(formatValue(0.5)).toBe("0.5");
    expect(formatValue(12345.6)).toBe("12,346");
    expect(formatValue(null)).toBe("–");
  });
});
