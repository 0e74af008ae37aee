/**
 * One factor matrix of a structured adapter (a LoHa or LoKr factor), and
 * float data formed on demand from such factors.
 *
 * A structured layer's LoRA factors (Khatri–Rao products, identity sides) are
 * not stored anywhere: {@link FormedFloatData} forms them each time a backend
 * reads `bytes` and keeps nothing, so only the layers a backend is working on
 * hold formed bytes and memory stays bounded by the backend's own batching.
 *
 * @module
 */

import { LoraError } from "../errors.ts";
import { decodeFloats, dtypeSize, type FloatDType } from "../safetensors/dtype.ts";
import type { FloatData, KhatriRaoData } from "./backend.ts";

/** A 2-D factor (conv factors flattened over in·kh·kw), with the name used in messages. */
export interface FactorMatrix {
  /** Its bytes (read on use where it lies in a file). */
  readonly data: FloatData;
  /** Rows. */
  readonly rows: number;
  /** Columns (the product of the trailing dims). */
  readonly cols: number;
  /** Tensor name, for messages. */
  readonly name: string;
  /** File it lies in, for messages. */
  readonly file?: string;
}

/**
 * How messages name a factor: `file: tensor 'name'`.
 *
 * @example
 * ```ts
 * import { factorLabel } from "./factor_matrix.ts";
 * const m = { data: { dtype: "F32" as const, bytes: new Uint8Array(4) }, rows: 1, cols: 1 };
 * if (factorLabel({ ...m, name: "x", file: "a.safetensors" }) !== "a.safetensors: tensor 'x'") {
 *   throw new Error("label");
 * }
 * ```
 */
export function factorLabel(m: FactorMatrix): string {
  return m.file === undefined ? `tensor '${m.name}'` : `${m.file}: tensor '${m.name}'`;
}

/**
 * Float data formed by a function on every read of `bytes`, never kept: a
 * backend that reads it twice forms it twice, which costs far less than what
 * it computes from it, while memory never holds more than the layers being
 * worked on. It has no `source`, so a CPU worker receives the formed bytes.
 *
 * @example
 * ```ts
 * import { FormedFloatData } from "./factor_matrix.ts";
 * let count = 0;
 * const forms = () => count;
 * const data = new FormedFloatData("F32", 2, () => {
 *   count++;
 *   return new Uint8Array(new Float32Array([1, 2]).buffer);
 * });
 * if (data.byteLength !== 8 || forms() !== 0) throw new Error("its length forms nothing");
 * if (data.bytes.byteLength !== 8 || data.bytes.byteLength !== 8 || forms() !== 2) {
 *   throw new Error("formed on every read");
 * }
 * ```
 */
export class FormedFloatData implements FloatData {
  /** Element type of the formed bytes. */
  readonly dtype: FloatDType;
  /** Length of the formed bytes, known without forming them (validation reads this). */
  readonly byteLength: number;
  /** How a worker forms the same bytes itself, where `form` is a Khatri–Rao product. */
  readonly khatriRao?: KhatriRaoData;
  readonly #form: () => Uint8Array;

  /** Data of `elements` values of `dtype` that `form` produces (as `khatriRao` says, if given). */
  constructor(
    dtype: FloatDType,
    elements: number,
    form: () => Uint8Array,
    khatriRao?: KhatriRaoData,
  ) {
    this.dtype = dtype;
    this.byteLength = elements * dtypeSize(dtype);
    this.#form = form;
    if (khatriRao) this.khatriRao = khatriRao;
  }

  /** The bytes, formed now. */
  get bytes(): Uint8Array {
    return this.#form();
  }
}

/**
 * A factor's values as f32, checked finite: a NaN or infinity is a
 * {@link LoraError} naming the tensor (it would make every singular value of
 * the layer meaningless).
 *
 * @example
 * ```ts
 * import { decodeFactor } from "./factor_matrix.ts";
 * const bytes = new Uint8Array(new Float32Array([1, NaN]).buffer);
 * const m = { data: { dtype: "F32" as const, bytes }, rows: 1, cols: 2, name: "x" };
 * try {
 *   decodeFactor(m);
 *   throw new Error("unreachable");
 * } catch (e) {
 *   if (!(e as Error).message.includes("tensor 'x'")) throw e;
 * }
 * ```
 */
export function decodeFactor(m: FactorMatrix): Float32Array {
  const values = decodeFloats(m.data.bytes, m.data.dtype, Float32Array);
  if (values.length !== m.rows * m.cols) {
    throw new LoraError(
      `${factorLabel(m)}: holds ${values.length} values, expected ${m.rows}×${m.cols}`,
    );
  }
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      throw new LoraError(
        `${factorLabel(m)}: value ${i} (row ${Math.floor(i / m.cols)}) is ${
          values[i]
        }, not a finite number`,
      );
    }
  }
  return values;
}

/**
 * The bytes of an f32 array (a view of the same memory).
 *
 * @example
 * ```ts
 * import { f32Bytes } from "./factor_matrix.ts";
 * if (f32Bytes(new Float32Array(3)).byteLength !== 12) throw new Error("4 bytes a value");
 * ```
 */
export function f32Bytes(values: Float32Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

/**
 * The n × n identity as f32 bytes (the free side of a full factor written as a product).
 *
 * @example
 * ```ts
 * import { identityF32 } from "./factor_matrix.ts";
 * const i = new Float32Array(identityF32(2).buffer);
 * if (i.join() !== "1,0,0,1") throw new Error("identity");
 * ```
 */
export function identityF32(n: number): Uint8Array {
  const values = new Float32Array(n * n);
  for (let i = 0; i < n; i++) values[i * n + i] = 1;
  return f32Bytes(values);
}
