/**
 * The generator under the synthetic files: its version, the seeded random streams (one per
 * tensor name) and the float encodings it writes.
 *
 * @module
 */

import { dtypeSize, encodeFloats } from "../safetensors/dtype.ts";

/** Version of the generator; bumped whenever the bytes it writes change. */
export const SYNTHETIC_VERSION = 1;

/** Metadata key under which generated files record how they were made (JSON). */
export const SYNTHETIC_METADATA_KEY = "resize_lora.synthetic";

/** Float dtypes the generator writes. */
export type SyntheticDType = "F16" | "BF16" | "F32";

// ------------------------------------------------------------------ random numbers

/** FNV-1a over the UTF-16 code units of a string. */
function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** xoshiro128** seeded through splitmix32: fast, and good enough for weights. */
export class Rng {
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  constructor(seed: number, name: string) {
    let x = (seed ^ Math.imul(hashName(name), 0x9e3779b9)) >>> 0;
    const next = () => {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) | 0;
    };
    this.#s0 = next();
    this.#s1 = next();
    this.#s2 = next();
    this.#s3 = next() | 1; // never the all-zero state
  }

  /** Fills `out[from, to)` with uniform values in `[-a, a)`. */
  fill(out: Float32Array, from: number, to: number, a: number): void {
    let s0 = this.#s0, s1 = this.#s1, s2 = this.#s2, s3 = this.#s3;
    const k = a * 2 ** -31;
    for (let i = from; i < to; i++) {
      const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = rotl(s3, 11);
      out[i] = r * k;
    }
    this.#s0 = s0;
    this.#s1 = s1;
    this.#s2 = s2;
    this.#s3 = s3;
  }

  /** One uniform value in `[0, 1)`. */
  next(): number {
    const one = new Float32Array(1);
    this.fill(one, 0, 1, 1);
    return (one[0] + 1) / 2;
  }

  /** A random unit vector (uniform entries, normalised). */
  unit(n: number): Float32Array {
    const v = new Float32Array(n);
    this.fill(v, 0, n, 1);
    let ss = 0;
    for (let i = 0; i < n; i++) ss += v[i] * v[i];
    const inv = ss > 0 ? 1 / Math.sqrt(ss) : 0;
    for (let i = 0; i < n; i++) v[i] *= inv;
    return v;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ------------------------------------------------------------------ tensor values

/** Elements generated per step: bounds the scratch memory of a tensor. */
export const CHUNK = 1 << 16;

/** Writes float32 values into a tensor's byte buffer at an element offset. */
export function store(
  out: Uint8Array,
  dtype: SyntheticDType,
  at: number,
  values: Float32Array,
): void {
  switch (dtype) {
    case "F16":
      new Float16Array(out.buffer, out.byteOffset + 2 * at, values.length).set(values);
      break;
    case "F32":
      new Float32Array(out.buffer, out.byteOffset + 4 * at, values.length).set(values);
      break;
    case "BF16":
      out.set(encodeFloats(values, "BF16"), 2 * at);
      break;
  }
}
/** Float32 values encoded as `dtype`. */
export function encode(values: Float32Array, dtype: SyntheticDType): Uint8Array {
  const out = new Uint8Array(values.length * dtypeSize(dtype));
  store(out, dtype, 0, values);
  return out;
}
