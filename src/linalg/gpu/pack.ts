/**
 * Packing of float tensors into one `array<u32>` storage buffer: F16 and
 * BF16 bytes go up as they are (two per word, decoded exactly in the
 * shader), F32 as they are, and F64 as df32 pairs (hi, lo), which keep 48
 * of its 53 significand bits.
 *
 * @module
 */

import type { FloatDType } from "../../safetensors/dtype.ts";
import type { FloatData } from "../backend.ts";
import { RangeReader } from "../range_reader.ts";

/**
 * Element format codes, as `FMT_*` in `shaders/df32.wgsl`.
 *
 * @example
 * ```ts
 * import { Format } from "./pack.ts";
 * if (Format.BF16 !== 1) throw new Error("FMT_BF16 is 1 in df32.wgsl");
 * ```
 */
export const Format = { F16: 0, BF16: 1, F32: 2, DF32: 3 } as const;

/** An element format code. */
export type Format = typeof Format[keyof typeof Format];

function formatOf(dtype: FloatDType): Format {
  return dtype === "F64" ? Format.DF32 : Format[dtype];
}

/** Where a packed tensor lies: its format and its first element's index. */
export interface Packed {
  /** Element format. */
  readonly format: Format;
  /** Index of the first element, in elements of `format`. */
  readonly base: number;
}

/**
 * Lays out tensors in one word buffer: `add*` reserves space and returns the
 * tensor's element base; `finish()` allocates and fills the bytes.
 *
 * @example
 * ```ts
 * import { Packer } from "./pack.ts";
 * const p = new Packer();
 * const a = p.add("F16", new Uint8Array(6)); // 3 halves -> 2 words
 * const b = p.addFloat64(new Float64Array([1 / 3]));
 * // One F64 value goes as a df32 pair (2 words) at df32 element 1 = word 2; 4 words in all.
 * const bytes = p.finish().byteLength;
 * if (a.base !== 0 || b.base !== 1 || bytes !== 16) throw new Error(`${a.base} ${b.base} ${bytes}`);
 * ```
 */
export class Packer {
  #words = 0;
  #writes: ((into: Uint8Array, reader: RangeReader) => void)[] = [];

  /** Words reserved so far. */
  get words(): number {
    return this.#words;
  }

  /** Words that `add(dtype, bytes)` would take (with alignment). */
  static wordsFor(dtype: FloatDType, byteLength: number): number {
    return dtype === "F64" ? byteLength / 4 + 1 : Math.ceil(byteLength / 4);
  }

  /** Reserves a tensor's raw little-endian bytes. */
  add(dtype: FloatDType, bytes: Uint8Array): Packed {
    if (dtype === "F64") {
      const n = bytes.byteLength / 8;
      const aligned = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
      return this.addFloat64(new Float64Array(aligned.buffer, aligned.byteOffset, n));
    }
    const format = formatOf(dtype);
    const word = this.#words;
    this.#words += Math.ceil(bytes.byteLength / 4);
    this.#writes.push((into) => into.set(bytes, word * 4));
    return { format, base: format === Format.F32 ? word : word * 2 };
  }

  /**
   * Reserves a factor's data. Data stored in a file is read at {@link finish} straight into the
   * packed bytes (no copy of its own in between).
   */
  addData(data: FloatData): Packed {
    const source = data.source;
    if (!source || data.dtype === "F64") return this.add(data.dtype, data.bytes);
    const format = formatOf(data.dtype);
    const word = this.#words;
    this.#words += Math.ceil(source.byteLength / 4);
    this.#writes.push((into, reader) =>
      reader.read(source, into.subarray(word * 4, word * 4 + source.byteLength))
    );
    return { format, base: format === Format.F32 ? word : word * 2 };
  }

  /** Reserves float64 values as df32 pairs. */
  addFloat64(values: Float64Array): Packed {
    this.#words += this.#words & 1; // pairs start on an even word
    const word = this.#words;
    this.#words += 2 * values.length;
    this.#writes.push((into) => {
      const f = new Float32Array(into.buffer, into.byteOffset + word * 4, 2 * values.length);
      for (let i = 0; i < values.length; i++) {
        const hi = Math.fround(values[i]);
        f[2 * i] = hi;
        f[2 * i + 1] = Math.fround(values[i] - hi);
      }
    });
    return { format: Format.DF32, base: word / 2 };
  }

  /** The packed bytes (a whole number of words, at least one). */
  finish(): Uint8Array {
    const out = new Uint8Array(Math.max(1, this.#words) * 4);
    const reader = new RangeReader();
    try {
      for (const w of this.#writes) w(out, reader);
    } finally {
      reader.close();
    }
    this.#writes = [];
    return out;
  }
}
