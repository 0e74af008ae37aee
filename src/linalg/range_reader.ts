/**
 * Reads byte ranges of files (checkpoints, LoRAs) straight into caller
 * memory, keeping one handle per path open: what a CPU worker uses to read
 * factors and base weights into its kernels' memory, and the GPU backend to
 * read factors it packs.
 *
 * @module
 */

import { SafetensorsError } from "../errors.ts";
import { type FileRange, readRangeInto } from "../safetensors/file_range.ts";
import { describeOsError } from "../safetensors/reader.ts";

/**
 * Opens files (checkpoints, LoRAs) on demand and keeps them open, one handle
 * per path, reading byte ranges straight into kernel memory.
 *
 * @example
 * ```ts ignore
 * const reader = new RangeReader();
 * try {
 *   reader.read({ path, offset, byteLength: into.byteLength }, into);
 * } finally {
 *   reader.close();
 * }
 * ```
 */
export class RangeReader {
  #files = new Map<string, Deno.FsFile>();

  /** Fills `into` with the bytes at `range.offset` of its file (`into.byteLength` of them). */
  read(range: FileRange, into: Uint8Array): void {
    let file = this.#files.get(range.path);
    if (!file) {
      try {
        file = Deno.openSync(range.path, { read: true });
      } catch (e) {
        throw new SafetensorsError(`${range.path}: cannot open (${describeOsError(e)})`, {
          cause: e,
        });
      }
      this.#files.set(range.path, file);
    }
    // Synchronous: this thread has nothing else to do meanwhile, and from the
    // page cache sync reads cost a fraction of async ones.
    readRangeInto(file, range, into);
  }

  /** Closes every handle. */
  close(): void {
    for (const file of this.#files.values()) file.close();
    this.#files.clear();
  }
}
