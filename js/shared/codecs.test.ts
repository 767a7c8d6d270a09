import { describe, expect, it } from "vitest";
import {
  type ArrayHeader,
  decodeArray,
  dequantize,
  dequantizeOne,
  levels,
  scaleOf,
} from "./codecs";

describe("decodeArray", () => {
  it("reads little-endian typed arrays from DataViews at any offset", () => {
    const floats = Float32Array.from([0.5, -2, 3.25]);
    // A DataView starting at an odd byte of a larger buffer, as message buffers can be.
    const raw = new Uint8Array(1 + floats.byteLength);
    raw.set(new Uint8Array(floats.buffer), 1);
    const view = new DataView(raw.buffer, 1, floats.byteLength);
    const array = decodeArray({ dtype: "float32", shape: [3], buffer: 0 }, [view]);
    expect(Array.from(array.data as Float32Array)).toEqual([0.5, -2, 3.25]);
    expect(array.shape).toEqual([3]);
  });

  it("keeps the shape and refuses short buffers", () => {
    const ids = Int32Array.from([1, 2, 3, 4, 5, 6]);
    const array = decodeArray({ dtype: "int32", shape: [2, 3], buffer: 1 }, [
      new ArrayBuffer(0),
      ids,
    ]);
    expect(array.shape).toEqual([2, 3]);
    expect(Array.from(array.data as Int32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(() => decodeArray({ dtype: "int32", shape: [7], buffer: 0 }, [ids])).toThrow(/needs 28/);
    expect(() => decodeArray({ dtype: "int32", shape: [1], buffer: 3 }, [ids])).toThrow(
      /no buffer 3/,
    );
  });
});

describe("float16", () => {
  it("decodes half-precision bits as numpy writes them, at an odd offset too", () => {
    // numpy.array([1, 0.5, -2, 0.3333, 6.1e-5, 1e-7, 65504, 0], float16).view(uint16)
    const bits = Uint16Array.from([15360, 14336, 49152, 13653, 1023, 2, 31743, 0]);
    const raw = new Uint8Array(1 + bits.byteLength);
    raw.set(new Uint8Array(bits.buffer), 1);
    const view = new DataView(raw.buffer, 1, bits.byteLength);
    const array = decodeArray({ dtype: "float16", shape: [2, 4], buffer: 0 }, [view]);
    const values = Array.from(array.data as Float32Array);
    expect(values.slice(0, 3)).toEqual([1, 0.5, -2]);
    expect(values[3]).toBeCloseTo(0.3333, 4);
    expect(values[4]).toBeCloseTo(6.1e-5, 7); // the largest subnormal
    expect(values[5]).toBeCloseTo(1.19e-7, 9); // 2 steps of 2**-24
    expect(values.slice(6)).toEqual([65504, 0]);
    expect(array.shape).toEqual([2, 4]);
  });
});

describe("quantised codes", () => {
  // The same numbers as kerasllm_widget/inspect/quantization.py produces for [0, 0.25, 1] (gamma 0.5):
  // codes round(sqrt(x) * 255) = [0, 128, 255].
  const header: ArrayHeader = { dtype: "uint8", shape: [3], buffer: 0, scale: 1, gamma: 0.5 };

  it("inverts the square-root code", () => {
    const values = dequantize(header, Uint8Array.from([0, 128, 255]));
    expect(values[0]).toBe(0);
    expect(values[1]).toBeCloseTo(0.252, 3);
    expect(values[2]).toBeCloseTo(1, 6);
    expect(dequantizeOne(header, 255)).toBeCloseTo(1, 6);
  });

  it("uses one scale per index of the first axis when given a list", () => {
    const perHead: ArrayHeader = {
      dtype: "uint16",
      shape: [2, 2],
      buffer: 0,
      scale: [1, 0.1],
      gamma: 1,
    };
    const values = dequantize(perHead, Uint16Array.from([65535, 0, 65535, 32768]));
    expect(Array.from(values).map((v) => Number(v.toFixed(4)))).toEqual([1, 0, 0.1, 0.05]);
    expect(scaleOf(perHead, 1)).toBe(0.1);
    expect(levels("uint16")).toBe(65535);
    expect(() => levels("float32")).toThrow();
  });
});
