/**
 * Atomic, streaming safetensors writer with the byte layout of the `safetensors` Python package
 * (docs/design.md, "The output file"): tensors are written to a temporary file in the
 * target folder, which is renamed over the target only when complete.
 *
 * @module
 */

import { dirname } from "node:path";
import { OutputError, SafetensorsError } from "../errors.ts";
import { dtypeSize } from "./dtype.ts";
import {
  encodedHeaderLength,
  encodeHeader,
  layoutTensors,
  numel,
  type TensorInfo,
  type TensorSpec,
} from "./header.ts";
import { SSHS_PLACEHOLDERS, SshsHasher } from "./hashes.ts";
import { describeOsError } from "./reader.ts";
import { releaseTemp, removeOrphanTempFiles, tempPathFor } from "../temp_files.ts";

/** Bytes of a tensor, given directly or produced on demand (for streaming). */
export type TensorBytes =
  | Uint8Array
  | (() => Uint8Array | Promise<Uint8Array>);

/** A tensor to write: its spec and its little-endian bytes. */
export interface TensorSource extends TensorSpec {
  /** The bytes (`numel × dtype size` of them), or a function producing them. */
  readonly data: TensorBytes;
}

/** Options of {@link writeSafetensors} and {@link serializeSafetensors}. */
export interface WriteOptions {
  /** `__metadata__` to write; omitted from the header when undefined. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Called after each tensor with bytes written so far and the total. */
  readonly onProgress?: (written: number, total: number) => void;
  /**
   * Compute `sshs_model_hash` and `sshs_legacy_hash` of the tensors while
   * writing them and store them in the metadata (only with
   * {@link writeSafetensors}). The data goes first, hashed as it is written,
   * and the header last: hashes have fixed lengths, so its size is known.
   */
  readonly sshsHashes?: boolean;
}

/** What a write produced. */
export interface WriteResult {
  /** Final path. */
  readonly path: string;
  /** File size in bytes. */
  readonly bytes: number;
  /** Layout of the tensors in the file. */
  readonly layout: readonly TensorInfo[];
  /** The metadata written (with the sshs hashes when asked). */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** What a tensor's data function threw: passed on unchanged, not reported as a write error. */
class ProducerFailure {
  constructor(readonly error: unknown) {}
}

async function bytesOf(t: TensorSource): Promise<Uint8Array> {
  let data: Uint8Array;
  try {
    data = typeof t.data === "function" ? await t.data() : t.data;
  } catch (e) {
    throw new ProducerFailure(e);
  }
  const expected = numel(t.shape) * dtypeSize(t.dtype);
  if (data.byteLength !== expected) {
    throw new SafetensorsError(
      `tensor '${t.name}': ${data.byteLength} bytes given, shape ${
        JSON.stringify(t.shape)
      } of ${t.dtype} needs ${expected}`,
      { tensor: t.name },
    );
  }
  return data;
}

/** Largest single write (bounded so that one call never blocks the event loop for long). */
const WRITE_CHUNK = 8 << 20;

/**
 * Writes all of `bytes`. Synchronous writes of bounded chunks: into the page
 * cache they cost a fraction of async writes (which go through a thread pool
 * and an extra copy), as for reads.
 */
function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) {
    done += file.writeSync(bytes.subarray(done, done + WRITE_CHUNK));
  }
}

/**
 * Writes a safetensors file atomically (temporary file + rename). The
 * temporary file is registered while it exists (`liveTempFiles` in
 * `temp_files.ts`), for a signal handler to remove; orphans of killed runs in
 * the target folder are removed first.
 * Tensor data functions are called one at a time in layout order, so a
 * multi-GB file can be produced with memory for one tensor, and a function
 * that awaits its tensor's computation lets the file be written while later
 * tensors are still being computed. An error thrown by a data function
 * removes the temporary file and is rethrown as it is.
 *
 * @example
 * ```ts ignore
 * import { writeSafetensors } from "./writer.ts";
 * import { encodeFloats } from "./dtype.ts";
 * await writeSafetensors("out.safetensors", [
 *   { name: "x", dtype: "F16", shape: [2], data: encodeFloats([1, 2], "F16") },
 * ], { metadata: { note: "hello" } });
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorSource[],
  options: WriteOptions = {},
): Promise<WriteResult> {
  const layout = layoutTensors(tensors);
  // With sshsHashes, a header of the same length (placeholder hashes) measures the file.
  const header = encodeHeader(
    layout,
    options.sshsHashes ? { ...options.metadata, ...SSHS_PLACEHOLDERS } : options.metadata,
  );
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const total = header.byteLength +
    (layout.length ? layout[layout.length - 1].dataOffsets[1] : 0);
  // What a killed run left here goes first (see temp_files.ts for how it is recognised).
  await removeOrphanTempFiles(dirname(path));
  const tmp = tempPathFor(path);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
  } catch (e) {
    releaseTemp(tmp);
    throw new OutputError(`${path}: cannot write (${describeOsError(e)})`, {
      file: path,
      cause: e,
    });
  }
  try {
    let metadata = options.metadata;
    if (options.sshsHashes) {
      metadata = await writeHashed(file, { layout, byName, header, total }, options);
    } else {
      writeAll(file, header);
      let written = header.byteLength;
      for (const t of layout) {
        const bytes = await bytesOf(byName.get(t.name)!);
        writeAll(file, bytes);
        written += bytes.byteLength;
        options.onProgress?.(written, total);
      }
    }
    file.close();
    await Deno.rename(tmp, path);
    releaseTemp(tmp);
    return { path, bytes: total, layout, metadata };
  } catch (e) {
    try {
      file.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    releaseTemp(tmp);
    if (e instanceof ProducerFailure) throw e.error;
    if (e instanceof SafetensorsError || e instanceof OutputError) throw e;
    throw new OutputError(`${path}: cannot write (${describeOsError(e)})`, {
      file: path,
      cause: e,
    });
  }
}

/** Bytes of data gathered per write while hashing (two such buffers alternate). */
const HASHED_CHUNK = 4 << 20;

/**
 * The data section, then the header with the sshs hashes of that data (the
 * placeholder header written up front has the same length). Each chunk of
 * data is hashed while the previous one is being written: writes go through
 * the thread pool, so the copy into the page cache and the hashing overlap.
 * Returns the metadata written.
 */
async function writeHashed(
  file: Deno.FsFile,
  contents: {
    readonly layout: readonly TensorInfo[];
    readonly byName: ReadonlyMap<string, TensorSource>;
    readonly header: Uint8Array;
    readonly total: number;
  },
  options: WriteOptions,
): Promise<Record<string, string>> {
  const { layout, byName, header, total } = contents;
  const hasher = await SshsHasher.create(layout, options.metadata ?? {});
  await file.seek(header.byteLength, Deno.SeekMode.Start);
  const chunks = [new Uint8Array(HASHED_CHUNK), new Uint8Array(HASHED_CHUNK)];
  let current = 0, filled = 0, written = header.byteLength;
  let writing: Promise<void> = Promise.resolve();
  // Hash `bytes`, wait for the write before, start writing `bytes`.
  const pass = async (bytes: Uint8Array) => {
    hasher.update(bytes);
    await writing;
    writing = writeAllAsync(file, bytes);
  };
  const flush = async () => {
    if (filled === 0) return;
    await pass(chunks[current].subarray(0, filled));
    current ^= 1; // the other buffer's write was awaited by pass
    filled = 0;
  };
  for (const t of layout) {
    const bytes = await bytesOf(byName.get(t.name)!);
    if (bytes.byteLength >= HASHED_CHUNK / 4) {
      await flush();
      await pass(bytes);
    } else {
      if (bytes.byteLength > HASHED_CHUNK - filled) await flush();
      chunks[current].set(bytes, filled);
      filled += bytes.byteLength;
    }
    written += bytes.byteLength;
    options.onProgress?.(written, total);
  }
  await flush();
  await writing;
  const metadata = { ...options.metadata, ...hasher.digest() };
  const final = encodeHeader(layout, metadata);
  if (final.byteLength !== header.byteLength) {
    throw new SafetensorsError("sshs hashes changed the header's length"); // cannot happen
  }
  await file.seek(0, Deno.SeekMode.Start);
  writeAll(file, final);
  return metadata;
}

async function writeAllAsync(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    done += await file.write(bytes.subarray(done, done + WRITE_CHUNK));
  }
}

/**
 * Serialises tensors to one in-memory buffer with the same layout as
 * {@link writeSafetensors} (used for the sd-webui hashes).
 *
 * @example
 * ```ts
 * import { serializeSafetensors } from "./writer.ts";
 * import assert from "node:assert/strict";
 * const buf = await serializeSafetensors([
 *   { name: "x", dtype: "U8", shape: [3], data: new Uint8Array([1, 2, 3]) },
 * ]);
 * assert.deepEqual(buf.length % 8, 3); // 8-byte prefix + padded header + 3 data bytes
 * ```
 */
export async function serializeSafetensors(
  tensors: readonly TensorSource[],
  options: WriteOptions = {},
): Promise<Uint8Array> {
  const layout = layoutTensors(tensors);
  // With sshsHashes, a header of the same length (placeholder hashes) measures the file.
  const header = encodeHeader(
    layout,
    options.sshsHashes ? { ...options.metadata, ...SSHS_PLACEHOLDERS } : options.metadata,
  );
  const dataBytes = layout.length ? layout[layout.length - 1].dataOffsets[1] : 0;
  const out = new Uint8Array(header.byteLength + dataBytes);
  out.set(header);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  try {
    for (const t of layout) {
      out.set(await bytesOf(byName.get(t.name)!), header.byteLength + t.dataOffsets[0]);
    }
  } catch (e) {
    throw e instanceof ProducerFailure ? e.error : e;
  }
  return out;
}

/**
 * Size in bytes of the file {@link writeSafetensors} would write, without
 * touching any data.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { safetensorsFileSize } from "./writer.ts";
 * // The 8-byte length, the header JSON padded to a multiple of 8 bytes (80), 16 data bytes.
 * assert.equal(safetensorsFileSize([{ name: "x", dtype: "F32", shape: [4] }], {}), 8 + 80 + 16);
 * ```
 */
export function safetensorsFileSize(
  specs: readonly TensorSpec[],
  metadata?: Readonly<Record<string, string>>,
): number {
  const layout = layoutTensors(specs);
  const data = layout.length ? layout[layout.length - 1].dataOffsets[1] : 0;
  return encodedHeaderLength(layout, metadata) + data;
}
