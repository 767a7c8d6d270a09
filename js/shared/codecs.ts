// Binary arrays from the kernel: `{dtype, shape, buffer}` headers over DataViews, and the
// gamma-compressed 8/16-bit codes attention maps travel in (kerasllm_widget/inspect/quantization.py):
// value = scale * (code / levels) ** (1 / gamma), with one scale or one per index of axis 0.

export type DType =
  | "uint8"
  | "uint16"
  | "int32"
  | "int64"
  | "float16"
  | "float32"
  | "float64"
  | "bool";

export interface ArrayHeader {
  dtype: DType;
  shape: number[];
  buffer: number;
  /** Quantised arrays only: the largest value (or one per index of the first axis). */
  scale?: number | number[];
  gamma?: number;
}

export type TypedArray =
  | Uint8Array
  | Uint16Array
  | Int32Array
  | BigInt64Array
  | Float32Array
  | Float64Array;

export interface NdArray<T extends TypedArray = TypedArray> {
  data: T;
  shape: number[];
}

const BYTES: Record<DType, number> = {
  uint8: 1,
  bool: 1,
  uint16: 2,
  int32: 4,
  int64: 8,
  float16: 2,
  float32: 4,
  float64: 8,
};

export function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Anything a kernel buffer may arrive as: a DataView (anywidget), an ArrayBuffer or a typed array. */
export type BufferLike = DataView | ArrayBuffer | ArrayBufferView;

function bytesOf(buffer: BufferLike): { buffer: ArrayBufferLike; offset: number; length: number } {
  if (buffer instanceof ArrayBuffer) return { buffer, offset: 0, length: buffer.byteLength };
  return { buffer: buffer.buffer, offset: buffer.byteOffset, length: buffer.byteLength };
}

/**
 * The typed array a header describes. Copies only when the bytes are not aligned for the type
 * (a DataView into a larger message buffer may start at any byte); float16 arrives as a
 * Float32Array (a copy: not every browser has Float16Array).
 */
export function decodeArray(header: ArrayHeader, buffers: readonly BufferLike[]): NdArray {
  const source = buffers[header.buffer];
  if (source === undefined) throw new Error(`message has no buffer ${header.buffer}`);
  const { buffer, offset, length } = bytesOf(source);
  const count = size(header.shape);
  const width = BYTES[header.dtype];
  if (width === undefined) throw new Error(`unsupported dtype ${header.dtype}`);
  if (count * width > length) {
    throw new Error(
      `buffer holds ${length} bytes; ${header.dtype}${JSON.stringify(header.shape)} needs ${count * width}`,
    );
  }
  let base = buffer;
  let start = offset;
  if (offset % width !== 0) {
    base = new Uint8Array(buffer, offset, count * width).slice().buffer;
    start = 0;
  }
  const data = view(header.dtype, base, start, count);
  return { data, shape: [...header.shape] };
}

function view(dtype: DType, buffer: ArrayBufferLike, offset: number, count: number): TypedArray {
  switch (dtype) {
    case "uint8":
    case "bool":
      return new Uint8Array(buffer, offset, count);
    case "uint16":
      return new Uint16Array(buffer, offset, count);
    case "int32":
      return new Int32Array(buffer, offset, count);
    case "int64":
      return new BigInt64Array(buffer, offset, count);
    case "float16":
      return halfToFloat(new Uint16Array(buffer, offset, count));
    case "float32":
      return new Float32Array(buffer, offset, count);
    case "float64":
      return new Float64Array(buffer, offset, count);
  }
}

let halfTable: Float32Array | null = null;

/** IEEE 754 half-precision bits -> float32, through a table of all 65,536 values (built once). */
export function halfToFloat(bits: Uint16Array): Float32Array {
  if (halfTable === null) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const exponent = (h >> 10) & 0x1f;
      const fraction = h & 0x3ff;
      halfTable[h] =
        exponent === 0
          ? sign * 2 ** -14 * (fraction / 1024)
          : exponent === 31
            ? fraction === 0
              ? sign * Number.POSITIVE_INFINITY
              : Number.NaN
            : sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
    }
  }
  const table = halfTable;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i] ?? 0] ?? 0;
  return out;
}

/** How many code levels an integer dtype has (255 for uint8). */
export function levels(dtype: DType): number {
  if (dtype === "uint8") return 255;
  if (dtype === "uint16") return 65535;
  throw new Error(`${dtype} is not a quantised code type`);
}

/** The scale of the `row`-th index of the first axis (or the one scale of the array). */
export function scaleOf(header: ArrayHeader, row = 0): number {
  const scale = header.scale ?? 1;
  if (typeof scale === "number") return scale;
  return scale[row] ?? 0;
}

/** Float values of quantised codes: `scale * (code / levels) ** (1 / gamma)`. */
export function dequantize(header: ArrayHeader, codes: Uint8Array | Uint16Array): Float32Array {
  const top = levels(header.dtype);
  const inverse = 1 / (header.gamma ?? 1);
  const rows = header.shape[0] ?? 1;
  const perRow = rows > 0 ? codes.length / rows : codes.length;
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    const scale = scaleOf(header, Math.floor(i / perRow));
    const code = codes[i] ?? 0;
    out[i] = code === 0 ? 0 : scale * (code / top) ** inverse;
  }
  return out;
}

/** One value of a quantised array without decoding the whole of it. */
export function dequantizeOne(header: ArrayHeader, code: number, row = 0): number {
  if (code === 0) return 0;
  return scaleOf(header, row) * (code / levels(header.dtype)) ** (1 / (header.gamma ?? 1));
}
