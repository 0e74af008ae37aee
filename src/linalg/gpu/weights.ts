/**
 * Reads base weights (or row blocks of them) straight from checkpoint files
 * by absolute offset, one open handle per file, without loading the file.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import { dtypeSize } from "../../safetensors/dtype.ts";
import { readSyncFully } from "../../safetensors/read_sync.ts";
import type { BaseWeightRef } from "../backend.ts";

/** A weight's bytes as the GPU takes them: F16/BF16/F32 (F64 is narrowed to F32). */
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
 * console.log(weightName({ path: "b.safetensors", dtype: "F16", offset: 80, rows: 2, cols: 3 }));
 * // "b.safetensors: base weight at byte 80 (2×3 F16)"
 * ```
 */
export function weightName(ref: BaseWeightRef): string {
  return `${ref.path}: base weight at byte ${ref.offset} (${ref.rows}×${ref.cols} ${ref.dtype})`;
}

/**
 * Reads weights of several checkpoints; call {@link WeightReader.close} when done.
 *
 * @example
 * ```ts ignore
 * import { WeightReader } from "./weights.ts";
 * const reader = new WeightReader();
 * const w = await reader.read({ path: "base.safetensors", dtype: "F16", offset: 1024, rows: 4, cols: 8 });
 * reader.close();
 * ```
 */
export class WeightReader {
  #files = new Map<string, Promise<Deno.FsFile>>();
  #sync = new Map<string, Deno.FsFile>();
  #queue: Promise<unknown> = Promise.resolve();

  /** Reads one weight (reads are serialised: one cursor per file). */
  read(ref: BaseWeightRef): Promise<WeightBytes> {
    const run = () => this.#read(ref);
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
  }

  async #read(ref: BaseWeightRef): Promise<WeightBytes> {
    const size = dtypeSize(ref.dtype);
    const length = ref.rows * ref.cols * size;
    if (
      !Number.isSafeInteger(ref.offset) || ref.offset < 0 || !Number.isInteger(ref.rows) ||
      !Number.isInteger(ref.cols) || ref.rows < 0 || ref.cols < 0
    ) {
      throw new BackendError(`${weightName(ref)}: invalid offset or shape`);
    }
    let file = this.#files.get(ref.path);
    if (!file) {
      file = Deno.open(ref.path, { read: true });
      this.#files.set(ref.path, file);
      file.catch(() => this.#files.delete(ref.path));
    }
    let handle: Deno.FsFile;
    try {
      handle = await file;
    } catch (e) {
      throw new BackendError(`${ref.path}: cannot open (${e instanceof Error ? e.message : e})`, {
        cause: e,
      });
    }
    const bytes = new Uint8Array(length);
    await handle.seek(ref.offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < length) {
      const n = await handle.read(bytes.subarray(done));
      if (n === null) {
        throw new BackendError(
          `${weightName(ref)}: file is truncated (read ${done} of ${length} bytes)`,
        );
      }
      done += n;
    }
    if (ref.dtype === "F64") {
      const f = new Float32Array(new Float64Array(bytes.buffer));
      return { dtype: "F32", bytes: new Uint8Array(f.buffer) };
    }
    return { dtype: ref.dtype, bytes };
  }

  /**
   * Reads rows `[row0, row0 + rows)` of a weight synchronously into `into` (F64 narrowed to F32,
   * so `into` holds rows·cols elements of 2 or 4 bytes) and returns their dtype. Synchronous
   * reads of bounded chunks into a buffer the caller reuses: from the page cache they run at
   * memory speed, where an async read of a whole weight into fresh memory runs at a fraction.
   */
  readRowsInto(ref: BaseWeightRef, row0: number, rows: number, into: Uint8Array): WeightBytes {
    const size = dtypeSize(ref.dtype);
    const dtype = ref.dtype === "F64" ? "F32" : ref.dtype;
    const length = rows * ref.cols * size;
    if (
      !Number.isSafeInteger(ref.offset) || ref.offset < 0 || !Number.isInteger(ref.rows) ||
      !Number.isInteger(ref.cols) || ref.rows < 0 || ref.cols < 0 || row0 < 0 ||
      row0 + rows > ref.rows || into.byteLength !== rows * ref.cols * dtypeSize(dtype)
    ) {
      throw new BackendError(`${weightName(ref)}: invalid offset or shape`);
    }
    let file = this.#sync.get(ref.path);
    if (!file) {
      try {
        file = Deno.openSync(ref.path, { read: true });
      } catch (e) {
        throw new BackendError(
          `${ref.path}: cannot open (${e instanceof Error ? e.message : e})`,
          { cause: e },
        );
      }
      this.#sync.set(ref.path, file);
    }
    const target = ref.dtype === "F64" ? new Uint8Array(length) : into;
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
    }
    return { dtype, bytes: into };
  }

  /** Closes every file. */
  async close(): Promise<void> {
    const files = [...this.#files.values()];
    this.#files.clear();
    for (const f of this.#sync.values()) f.close();
    this.#sync.clear();
    await this.#queue;
    for (const f of files) {
      try {
        (await f).close();
      } catch { /* never opened */ }
    }
  }
}
