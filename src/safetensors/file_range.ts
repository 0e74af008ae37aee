/**
 * Tensor bytes left in their file until they are needed. A LoRA's factors
 * (hundreds of MB at SDXL size) are read by the thread that uses them — a CPU
 * worker reads them straight into its kernel memory — instead of all at once
 * into one buffer on the main thread.
 *
 * @module
 */

import { SafetensorsError } from "../errors.ts";
import { readSyncFully, truncated } from "./read_sync.ts";
import { describeOsError } from "./reader.ts";

/** Where a tensor's bytes lie in a file. */
export interface FileRange {
  /** File path. */
  readonly path: string;
  /** Absolute byte offset of the first byte. */
  readonly offset: number;
  /** Length in bytes. */
  readonly byteLength: number;
  /** Tensor name, for messages. */
  readonly tensor?: string;
}

/**
 * Reads a range from an open file into `into` (its length is the count read),
 * synchronously: from the page cache sync reads cost a fraction of async
 * ones. A short read is a one-line {@link SafetensorsError} naming the file
 * and tensor.
 *
 * @example
 * ```ts ignore
 * using file = Deno.openSync("lora.safetensors");
 * readRangeInto(file, { path: "lora.safetensors", offset: 8, byteLength: 4 }, new Uint8Array(4));
 * ```
 */
export function readRangeInto(file: Deno.FsFile, range: FileRange, into: Uint8Array): void {
  file.seekSync(range.offset, Deno.SeekMode.Start);
  const got = readSyncFully(file, into);
  if (got !== into.byteLength) {
    const what = range.tensor === undefined
      ? `data at byte ${range.offset}`
      : `tensor '${range.tensor}'`;
    throw truncated(range.path, what, { got, wanted: into.byteLength });
  }
}

/**
 * Reads a whole range from its file (opened and closed here).
 *
 * @example
 * ```ts
 * import { readFileRange } from "./file_range.ts";
 * import assert from "node:assert/strict";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array([1, 2, 3, 4]));
 * assert.deepEqual(readFileRange({ path, offset: 1, byteLength: 2 }), new Uint8Array([2, 3]));
 * await Deno.remove(path);
 * ```
 */
export function readFileRange(range: FileRange): Uint8Array {
  const into = new Uint8Array(range.byteLength);
  if (range.byteLength === 0) return into;
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(range.path, { read: true });
  } catch (e) {
    throw new SafetensorsError(`${range.path}: cannot open (${describeOsError(e)})`, {
      file: range.path,
      cause: e,
    });
  }
  try {
    readRangeInto(file, range, into);
  } finally {
    file.close();
  }
  return into;
}

/**
 * Bytes that stay in their file until first asked for, then are read once and
 * kept.
 *
 * @example
 * ```ts
 * import { StoredBytes } from "./file_range.ts";
 * import assert from "node:assert/strict";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array([5, 6, 7]));
 * const stored = new StoredBytes({ path, offset: 2, byteLength: 1 });
 * assert.deepEqual(stored.bytes, new Uint8Array([7]));
 * await Deno.remove(path);
 * ```
 */
export class StoredBytes {
  /** Where the bytes lie. */
  readonly source: FileRange;
  #bytes?: Uint8Array;

  /** Bytes at `source` (nothing is read yet). */
  constructor(source: FileRange) {
    this.source = source;
  }

  /** The bytes (read from the file on first use). */
  get bytes(): Uint8Array {
    return this.#bytes ??= readFileRange(this.source);
  }
}
