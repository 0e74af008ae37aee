/**
 * Reads base weights (or row blocks of them) straight from checkpoint files
 * by absolute offset, one open handle per file, without loading the file.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import { type BaseDType, dtypeSize, type Fp8DType, fp8Value } from "../../safetensors/dtype.ts";
import { readSyncFully } from "../../safetensors/read_sync.ts";
import type { BaseWeightRef } from "../backend.ts";

/**
 * A weight's bytes as the GPU takes them: F16/BF16/F32 (F64 is narrowed to F32; 8-bit floats
 * are widened to F16, which holds every one of their values exactly, NaN and ±inf included).
 */
export interface WeightBytes {
  /** Element type of `bytes`. */
  readonly dtype: "F16" | "BF16" | "F32";
  /** Row-major elements. */
  readonly bytes: Uint8Array;
}

/**
 * Names a weight in error messages.
 *
 * @example
 * ```ts
 * import { weightName } from "./weights.ts";
 * const name = weightName({ path: "b.safetensors", dtype: "F16", offset: 80, rows: 2, cols: 3 });
 * if (name !== "b.safetensors: base weight at byte 80 (2×3 F16)") throw new Error(name);
 * ```
 */
export function weightName(ref: BaseWeightRef): string {
  return `${ref.path}: base weight at byte ${ref.offset} (${ref.rows}×${ref.cols} ${ref.dtype})`;
}

/**
 * Reads weights of several checkpoints, synchronously, in bounded chunks (from
 * the page cache these run at memory speed, where an async read of a whole
 * weight into fresh memory runs at a fraction); call
 * {@link WeightReader.close} when done.
 *
 * @example
 * ```ts ignore
 * import { WeightReader } from "./weights.ts";
 * const reader = new WeightReader();
 * const w = reader.read({ path: "base.safetensors", dtype: "F16", offset: 1024, rows: 4, cols: 8 });
 * reader.close();
 * ```
 */
export class WeightReader {
  #files = new Map<string, Deno.FsFile>();

  /** Reads a whole weight into a buffer of its own (F64 narrowed to F32). */
  read(ref: BaseWeightRef): WeightBytes {
    checkRef(ref);
    return this.readRowsInto(ref, 0, ref.rows, new Uint8Array(ref.rows * ref.cols * gpuSize(ref)));
  }

  /**
   * Reads rows `[row0, row0 + rows)` of a weight into `into` (F64 narrowed to F32, so `into`
   * holds rows·cols elements of 2 or 4 bytes) and returns them with their dtype: for a caller
   * that reuses one buffer.
   */
  readRowsInto(ref: BaseWeightRef, row0: number, rows: number, into: Uint8Array): WeightBytes {
    checkRef(ref);
    if (
      !Number.isInteger(row0) || !Number.isInteger(rows) || row0 < 0 || rows < 0 ||
      row0 + rows > ref.rows || into.byteLength !== rows * ref.cols * gpuSize(ref)
    ) {
      throw new BackendError(`${weightName(ref)}: invalid row range ${row0}+${rows}`);
    }
    const size = dtypeSize(ref.dtype);
    const length = rows * ref.cols * size;
    const converted = ref.dtype === "F64" || size === 1;
    const target = converted ? new Uint8Array(length) : into;
    const file = this.#open(ref.path);
    file.seekSync(ref.offset + row0 * ref.cols * size, Deno.SeekMode.Start);
    const done = readSyncFully(file, target);
    if (done !== length) {
      throw new BackendError(
        `${weightName(ref)}: file is truncated (read ${done} of ${length} bytes)`,
      );
    }
    if (ref.dtype === "F64") {
      new Float32Array(into.buffer, into.byteOffset, rows * ref.cols).set(
        new Float64Array(target.buffer),
      );
    } else if (ref.dtype === "F8_E4M3" || ref.dtype === "F8_E5M2") {
      const table = halfBitsOf(ref.dtype);
      const halves = new Uint16Array(into.buffer, into.byteOffset, rows * ref.cols);
      for (let i = 0; i < length; i++) halves[i] = table[target[i]];
    }
    return { dtype: gpuDType(ref.dtype), bytes: into };
  }

  #open(path: string): Deno.FsFile {
    let file = this.#files.get(path);
    if (!file) {
      try {
        file = Deno.openSync(path, { read: true });
      } catch (e) {
        throw new BackendError(`${path}: cannot open (${e instanceof Error ? e.message : e})`, {
          cause: e,
        });
      }
      this.#files.set(path, file);
    }
    return file;
  }

  /** Closes every file. */
  close(): void {
    for (const f of this.#files.values()) f.close();
    this.#files.clear();
  }
}

/** Bytes per element as the GPU takes them (F64 narrowed to F32, 8-bit floats widened to F16). */
function gpuSize(ref: BaseWeightRef): number {
  return dtypeSize(gpuDType(ref.dtype));
}

/**
 * The element type a base weight of `dtype` has on the GPU.
 *
 * @example
 * ```ts
 * import { gpuDType } from "./weights.ts";
 * console.log(gpuDType("F64"), gpuDType("F8_E4M3"), gpuDType("BF16")); // F32 F16 BF16
 * ```
 */
export function gpuDType(dtype: BaseDType): WeightBytes["dtype"] {
  return dtype === "F64" ? "F32" : dtype === "F8_E4M3" || dtype === "F8_E5M2" ? "F16" : dtype;
}

const HALF_TABLES = new Map<Fp8DType, Uint16Array>();

/** The F16 bits of every byte of an 8-bit float dtype (exact: F16 has more range and precision). */
function halfBitsOf(dtype: Fp8DType): Uint16Array {
  let table = HALF_TABLES.get(dtype);
  if (!table) {
    const halves = Float16Array.from({ length: 256 }, (_, b) => fp8Value(b, dtype));
    table = new Uint16Array(halves.buffer);
    HALF_TABLES.set(dtype, table);
  }
  return table;
}

function checkRef(ref: BaseWeightRef): void {
  if (
    !Number.isSafeInteger(ref.offset) || ref.offset < 0 || !Number.isInteger(ref.rows) ||
    !Number.isInteger(ref.cols) || ref.rows < 0 || ref.cols < 0
  ) {
    throw new BackendError(`${weightName(ref)}: invalid offset or shape`);
  }
}
