/**
 * safetensors dtypes: names, element sizes, layout order and float codecs.
 *
 * Decoders assume a little-endian host (every platform Deno ships for).
 *
 * @module
 */

/** Every dtype the safetensors format defines, in the format's enum order. */
export const DTYPES = [
  "BOOL",
  "U8",
  "I8",
  "F8_E5M2",
  "F8_E4M3",
  "I16",
  "U16",
  "F16",
  "BF16",
  "I32",
  "U32",
  "F32",
  "F64",
  "I64",
  "U64",
] as const;

/** A safetensors element type. */
export type DType = typeof DTYPES[number];

/** The float dtypes resize-lora reads as numbers and writes. */
export type FloatDType = "F16" | "BF16" | "F32" | "F64";

/** The 8-bit float dtypes, read in base checkpoints (never written). */
export type Fp8DType = "F8_E4M3" | "F8_E5M2";

/** The dtypes a base weight may have: the float dtypes and the 8-bit floats. */
export type BaseDType = FloatDType | Fp8DType;

const SIZES: Record<DType, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

/**
 * Bytes per element of a dtype.
 *
 * @example
 * ```ts
 * import { dtypeSize } from "./dtype.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(dtypeSize("BF16"), 2);
 * ```
 */
export function dtypeSize(dtype: DType): number {
  return SIZES[dtype];
}

/**
 * Whether a string names a safetensors dtype.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isDType } from "./dtype.ts";
 * assert.ok(isDType("F16"));
 * assert.ok(!isDType("Q4"));
 * ```
 */
export function isDType(name: unknown): name is DType {
  return typeof name === "string" && Object.hasOwn(SIZES, name);
}

/**
 * Whether a dtype is one of the float types resize-lora can decode.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isFloatDType } from "./dtype.ts";
 * assert.ok(isFloatDType("BF16"));
 * assert.ok(!isFloatDType("I64"));
 * ```
 */
export function isFloatDType(dtype: DType): dtype is FloatDType {
  return dtype === "F16" || dtype === "BF16" || dtype === "F32" ||
    dtype === "F64";
}

/**
 * Whether a dtype is one resize-lora reads in a base weight (a float type or an 8-bit float).
 *
 * @example
 * ```ts
 * import { isBaseDType } from "./dtype.ts";
 * console.log(isBaseDType("F8_E4M3"), isBaseDType("I8")); // true false
 * ```
 */
export function isBaseDType(dtype: DType): dtype is BaseDType {
  return isFloatDType(dtype) || dtype === "F8_E4M3" || dtype === "F8_E5M2";
}

/**
 * The value of an 8-bit float. `F8_E4M3` is the "fn" variant PyTorch and
 * safetensors mean: bias 7, no infinities, NaN only at S.1111.111, largest
 * finite ±448. `F8_E5M2` is the top byte of an IEEE half: bias 15, infinities
 * and NaNs at exponent 31.
 *
 * @example
 * ```ts
 * import { fp8Value } from "./dtype.ts";
 * console.log(fp8Value(0x7e, "F8_E4M3"), fp8Value(0x01, "F8_E4M3")); // 448 0.001953125
 * console.log(fp8Value(0x7c, "F8_E5M2"), fp8Value(0x7f, "F8_E4M3")); // Infinity NaN
 * ```
 */
export function fp8Value(byte: number, dtype: Fp8DType): number {
  const sign = byte & 0x80 ? -1 : 1;
  if (dtype === "F8_E5M2") {
    const e = (byte >> 2) & 0x1f, m = byte & 3;
    if (e === 0x1f) return m === 0 ? sign * Infinity : NaN;
    return sign * (e === 0 ? m * 2 ** -16 : (1 + m / 4) * 2 ** (e - 15));
  }
  const e = (byte >> 3) & 0xf, m = byte & 7;
  if (e === 0xf && m === 7) return NaN;
  return sign * (e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7));
}

/** Every byte's value, per 8-bit float dtype (decoding is a table lookup). */
const FP8_TABLES = new Map<Fp8DType, Float64Array>();

function fp8Table(dtype: Fp8DType): Float64Array {
  let table = FP8_TABLES.get(dtype);
  if (!table) {
    table = Float64Array.from({ length: 256 }, (_, b) => fp8Value(b, dtype));
    FP8_TABLES.set(dtype, table);
  }
  return table;
}

/**
 * Rank of a dtype in the format's enum order; the reference writer lays
 * tensors out by descending rank, then by name.
 *
 * @example
 * ```ts
 * import { dtypeRank } from "./dtype.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(dtypeRank("F32") > dtypeRank("F16"), true);
 * ```
 */
export function dtypeRank(dtype: DType): number {
  return DTYPES.indexOf(dtype);
}

/** A number array resize-lora decodes float tensors into. */
export type FloatArray = Float32Array | Float64Array;

function aligned(bytes: Uint8Array, alignment: number): Uint8Array {
  return bytes.byteOffset % alignment === 0 ? bytes : bytes.slice();
}

/**
 * Decodes little-endian float bytes into a new array of the requested kind.
 *
 * @example
 * ```ts
 * import { decodeFloats } from "./dtype.ts";
 * import assert from "node:assert/strict";
 * const bytes = new Uint8Array(new Float16Array([1.5, -2]).buffer);
 * assert.deepEqual(decodeFloats(bytes, "F16", Float32Array), new Float32Array([1.5, -2]));
 * ```
 */
export function decodeFloats<T extends FloatArray>(
  bytes: Uint8Array,
  dtype: BaseDType,
  kind: { new (length: number): T },
): T {
  const size = SIZES[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new RangeError(
      `${bytes.byteLength} bytes is not a whole number of ${dtype} values`,
    );
  }
  const n = bytes.byteLength / size;
  const out = new kind(n);
  const src = aligned(bytes, size);
  switch (dtype) {
    case "F16":
      out.set(new Float16Array(src.buffer, src.byteOffset, n));
      break;
    case "BF16": {
      const h = new Uint16Array(src.buffer, src.byteOffset, n);
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i++) bits[i] = h[i] << 16;
      out.set(new Float32Array(bits.buffer));
      break;
    }
    case "F32":
      out.set(new Float32Array(src.buffer, src.byteOffset, n));
      break;
    case "F64":
      out.set(new Float64Array(src.buffer, src.byteOffset, n));
      break;
    case "F8_E4M3":
    case "F8_E5M2": {
      const table = fp8Table(dtype);
      for (let i = 0; i < n; i++) out[i] = table[src[i]];
      break;
    }
  }
  return out;
}

/**
 * Encodes numbers as little-endian bytes of a float dtype, rounding to
 * nearest, ties to even (F16 and BF16 keep NaN a NaN and overflow to ±inf).
 *
 * @example
 * ```ts
 * import { encodeFloats } from "./dtype.ts";
 * import assert from "node:assert/strict";
 * const bytes = encodeFloats(new Float32Array([1, 2 / 3]), "F16");
 * assert.deepEqual(new Float16Array(bytes.buffer)[1], 0.66650390625);
 * ```
 */
export function encodeFloats(
  values: ArrayLike<number>,
  dtype: FloatDType,
): Uint8Array {
  switch (dtype) {
    case "F16":
      return new Uint8Array(Float16Array.from(values).buffer);
    case "F32":
      return new Uint8Array(Float32Array.from(values).buffer);
    case "F64":
      return new Uint8Array(Float64Array.from(values).buffer);
    case "BF16": {
      const n = values.length;
      const f = new Float32Array(1);
      const bits = new Uint32Array(f.buffer);
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        const v = values[i];
        f[0] = v;
        let b = bits[0];
        if (v !== v) {
          out[i] = (b >>> 16) | 0x40; // quiet NaN, sign kept
          continue;
        }
        // A double is first rounded to odd at float32 precision (exact when it
        // already is a float32), so the float32 → BF16 round-to-nearest-even
        // below cannot round twice.
        if (f[0] !== v) {
          if (Math.abs(f[0]) > Math.abs(v)) b -= 1;
          b |= 1;
        }
        out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
      }
      return new Uint8Array(out.buffer);
    }
  }
}
