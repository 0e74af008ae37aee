/**
 * Lazy safetensors reader: `open()` reads only the header; tensors (or row
 * ranges of them) are read on demand by offset, so a 7 GB checkpoint opens in
 * milliseconds and reading one tensor costs that tensor's bytes only.
 *
 * @module
 */

import { SafetensorsError } from "../errors.ts";
import { decodeFloats, type DType, dtypeSize, type FloatArray, isBaseDType } from "./dtype.ts";
import { numel, parseHeader, readHeaderLength, type TensorInfo } from "./header.ts";
import { checkInputFile, describeOsError } from "../input_files.ts";
import { READ_CHUNK, readSyncFully, truncated } from "./read_sync.ts";

/** Options for reading part of a tensor. */
export interface ReadOptions {
  /** Row range `[start, end)` along the first dimension (default: all rows). */
  readonly rows?: readonly [number, number];
}

/** An absolute byte range of a file. */
export interface ByteRange {
  /** Absolute offset in the file. */
  readonly offset: number;
  /** Number of bytes. */
  readonly length: number;
}

/** Options of {@link SafetensorsFile.readBytes}. */
export interface ReadBytesOptions extends ReadOptions {
  /**
   * A buffer to read into (at least as long as the range); the result is a
   * view of its start. Reusing one buffer across tensors saves allocating, and
   * page-faulting in, fresh memory for every tensor.
   */
  readonly into?: Uint8Array;
}

/** Ranges up to this size are served from a read-ahead window. */
const SMALL_READ = 64 << 10;
/** Size of the read-ahead window: one read serves a run of small tensors. */
const WINDOW = 1 << 20;
/** readFloat32/64 keep a raw-bytes buffer up to this size for reuse. */
const SCRATCH_MAX = 64 << 20;

async function readFully(
  file: Deno.FsFile,
  offset: number,
  into: Uint8Array,
): Promise<number> {
  await file.seek(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < into.byteLength) {
    const n = await file.read(into.subarray(done, Math.min(into.byteLength, done + READ_CHUNK)));
    if (n === null) break;
    done += n;
  }
  return done;
}

/**
 * An open safetensors file.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { SafetensorsFile, writeSafetensors } from "@x/resize-lora/safetensors";
 * const path = `${await Deno.makeTempDir()}/model.safetensors`;
 * const values = new Float32Array(32 * 4).map((_, i) => i);
 * await writeSafetensors(path, [
 *   { name: "x.weight", dtype: "F32", shape: [32, 4], data: new Uint8Array(values.buffer) },
 * ]);
 * await using f = await SafetensorsFile.open(path);
 * assert.deepEqual(f.tensors.map((t) => [t.name, t.dtype, t.shape]), [["x.weight", "F32", [32, 4]]]);
 * const w = await f.readFloat32("x.weight", { rows: [0, 16] }); // only those rows are read
 * assert.deepEqual(w, values.subarray(0, 16 * 4));
 * ```
 */
export class SafetensorsFile implements AsyncDisposable {
  /** Path the file was opened from. */
  readonly path: string;
  /** File size in bytes. */
  readonly size: number;
  /** `__metadata__` (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Whether the file had a `__metadata__` entry. */
  readonly hasMetadata: boolean;
  /** Tensors in data order. */
  readonly tensors: readonly TensorInfo[];
  /** Absolute offset of the data section. */
  readonly dataStart: number;
  /** Length of the JSON header (without the 8-byte prefix). */
  readonly headerLength: number;
  #file: Deno.FsFile | undefined;
  #byName: Map<string, TensorInfo>;
  /** Where the OS file cursor is, or -1 when unknown (skips redundant seeks). */
  #position = -1;
  #window: Uint8Array | undefined;
  #windowOffset = 0;
  #windowLength = 0;
  #scratch: Uint8Array | undefined;

  private constructor(
    path: string,
    size: number,
    file: Deno.FsFile,
    header: ReturnType<typeof parseHeader>,
  ) {
    this.path = path;
    this.size = size;
    this.#file = file;
    this.metadata = header.metadata;
    this.hasMetadata = header.hasMetadata;
    this.tensors = header.tensors;
    this.dataStart = header.dataStart;
    this.headerLength = header.headerLength;
    this.#byName = new Map(header.tensors.map((t) => [t.name, t]));
  }

  /**
   * Opens a file and reads and validates its header.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { SafetensorsFile, writeSafetensors } from "@x/resize-lora/safetensors";
   * const path = `${await Deno.makeTempDir()}/lora.safetensors`;
   * await writeSafetensors(path, [], { metadata: { ss_network_dim: "32" } });
   * const f = await SafetensorsFile.open(path);
   * assert.equal(f.metadata["ss_network_dim"], "32");
   * f.close();
   * ```
   */
  static async open(path: string): Promise<SafetensorsFile> {
    // Checked before opening: opening a FIFO would block until a writer comes.
    await checkInputFile(path);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new SafetensorsError(`${path}: cannot open (${describeOsError(e)})`, {
        file: path,
        cause: e,
      });
    }
    try {
      const stat = await file.stat();
      if (!stat.isFile) {
        throw new SafetensorsError(`${path}: not a regular file`, { file: path });
      }
      const size = stat.size;
      const prefix = new Uint8Array(8);
      const got = await readFully(file, 0, prefix);
      const source = { file: path, fileSize: size };
      const n = readHeaderLength(prefix.subarray(0, got), source);
      const json = new Uint8Array(n);
      if (await readFully(file, 8, json) !== n) {
        throw new SafetensorsError(`${path}: header is truncated`, { file: path });
      }
      return new SafetensorsFile(path, size, file, parseHeader(json, source));
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Names of all tensors, in data order. */
  get names(): string[] {
    return this.tensors.map((t) => t.name);
  }

  /** Whether the file has a tensor of this name. */
  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** The entry of a tensor, or `undefined`. */
  get(name: string): TensorInfo | undefined {
    return this.#byName.get(name);
  }

  /** The entry of a tensor; throws a {@link SafetensorsError} naming file and tensor. */
  info(name: string): TensorInfo {
    const t = this.#byName.get(name);
    if (!t) {
      throw new SafetensorsError(`${this.path}: no tensor '${name}'`, {
        file: this.path,
        tensor: name,
      });
    }
    return t;
  }

  /**
   * The absolute byte range of a tensor, or of a row range of it.
   *
   * @example
   * ```ts ignore
   * const { offset, length } = f.byteRange("w", { rows: [10, 20] });
   * ```
   */
  byteRange(name: string, options: ReadOptions = {}): ByteRange {
    const t = this.info(name);
    const [begin, end] = t.dataOffsets;
    if (!options.rows) return { offset: this.dataStart + begin, length: end - begin };
    const [r0, r1] = options.rows;
    const rows = t.shape[0];
    if (
      t.shape.length === 0 || !Number.isInteger(r0) || !Number.isInteger(r1) ||
      r0 < 0 || r1 < r0 || r1 > rows
    ) {
      throw new SafetensorsError(
        `${this.path}: tensor '${name}' of shape ${
          JSON.stringify(t.shape)
        } has no rows [${r0}, ${r1})`,
        { file: this.path, tensor: name },
      );
    }
    const rowBytes = numel(t.shape.slice(1)) * dtypeSize(t.dtype);
    return {
      offset: this.dataStart + begin + r0 * rowBytes,
      length: (r1 - r0) * rowBytes,
    };
  }

  /**
   * Reads a tensor's raw little-endian bytes (or a row range of them), into a
   * new buffer or into `options.into`.
   *
   * @example
   * ```ts ignore
   * const buf = new Uint8Array(1 << 26);
   * for (const t of f.tensors) consume(await f.readBytes(t.name, { into: buf }));
   * ```
   */
  readBytes(name: string, options: ReadBytesOptions = {}): Promise<Uint8Array> {
    const { offset, length } = this.byteRange(name, options);
    const { into } = options;
    if (into && into.byteLength < length) {
      throw new RangeError(
        `${this.path}: tensor '${name}' needs ${length} bytes, the buffer has ${into.byteLength}`,
      );
    }
    return this.#exclusive((file) => {
      const out = into ? into.subarray(0, length) : new Uint8Array(length);
      this.#read(file, offset, out, name);
      return out;
    });
  }

  /**
   * Reads several tensors into one new buffer, one exact read per run of
   * tensors adjacent in the file and no read-ahead: for small tensors that lie
   * between big ones the caller skips (a LoRA's alphas between its factors),
   * which a read-ahead window would pull in too.
   *
   * @example
   * ```ts ignore
   * const bytes = await f.readTensors(["a.alpha", "b.alpha"]);
   * const alpha = bytes.get("a.alpha"); // the raw bytes of the tensor
   * ```
   */
  readTensors(names: readonly string[]): Promise<Map<string, Uint8Array>> {
    const tensors = names.map((name) => this.info(name))
      .sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0]);
    const total = tensors.reduce((n, t) => n + t.dataOffsets[1] - t.dataOffsets[0], 0);
    return this.#exclusive((file) => {
      const data = new Uint8Array(total), out = new Map<string, Uint8Array>();
      let at = 0;
      for (let i = 0; i < tensors.length;) {
        let j = i + 1;
        while (j < tensors.length && tensors[j].dataOffsets[0] === tensors[j - 1].dataOffsets[1]) {
          j++;
        }
        const begin = tensors[i].dataOffsets[0], length = tensors[j - 1].dataOffsets[1] - begin;
        const got = this.#readDirect(file, this.dataStart + begin, data.subarray(at, at + length));
        if (got !== length) {
          throw truncated(this.path, `tensor '${tensors[i].name}'`, { got, wanted: length });
        }
        for (const { name, dataOffsets: [b, e] } of tensors.slice(i, j)) {
          out.set(name, data.subarray(at + b - begin, at + e - begin));
        }
        at += length;
        i = j;
      }
      return out;
    });
  }

  /** Reads an absolute byte range; `what` names the tensor in errors. */
  readRange(offset: number, length: number, what = "data"): Promise<Uint8Array> {
    return this.#exclusive((file) => {
      const out = new Uint8Array(length);
      this.#read(file, offset, out, what);
      return out;
    });
  }

  /** Reads a float tensor (F16/BF16/F32/F64) as a Float32Array. */
  readFloat32(name: string, options: ReadOptions = {}): Promise<Float32Array> {
    return this.#readFloats(name, options, Float32Array);
  }

  /** Reads a float tensor (F16/BF16/F32/F64) as a Float64Array. */
  readFloat64(name: string, options: ReadOptions = {}): Promise<Float64Array> {
    return this.#readFloats(name, options, Float64Array);
  }

  #readFloats<T extends FloatArray>(
    name: string,
    options: ReadOptions,
    kind: { new (length: number): T },
  ): Promise<T> {
    const dtype = this.#floatDType(name);
    const { offset, length } = this.byteRange(name, options);
    return this.#exclusive((file) => {
      // The raw bytes only live until decoded: reuse one buffer for them.
      let raw: Uint8Array;
      if (length > SCRATCH_MAX) raw = new Uint8Array(length);
      else {
        if (!this.#scratch || this.#scratch.byteLength < length) {
          this.#scratch = new Uint8Array(length);
        }
        raw = this.#scratch.subarray(0, length);
      }
      this.#read(file, offset, raw, name);
      return decodeFloats(raw, dtype, kind);
    });
  }

  /**
   * Runs a read with the file handle. Reads are synchronous underneath (see
   * `#readDirect`), so jobs never interleave on the handle's one cursor.
   */
  #exclusive<T>(job: (file: Deno.FsFile) => T): Promise<T> {
    return new Promise((resolve) => {
      const file = this.#file;
      if (!file) {
        throw new SafetensorsError(`${this.path}: file is closed`, { file: this.path });
      }
      resolve(job(file));
    });
  }

  #read(file: Deno.FsFile, offset: number, into: Uint8Array, what: string): void {
    let got: number;
    if (into.byteLength <= SMALL_READ) got = this.#readSmall(file, offset, into);
    else {
      // Take what the window already holds, then read on from where the cursor is.
      const held = this.#windowOffset + this.#windowLength - offset;
      got = offset >= this.#windowOffset && held > 0 ? Math.min(held, into.byteLength) : 0;
      if (got) {
        into.set(
          this.#window!.subarray(offset - this.#windowOffset, offset - this.#windowOffset + got),
        );
      }
      if (got < into.byteLength) {
        got += this.#readDirect(file, offset + got, into.subarray(got));
      }
    }
    if (got !== into.byteLength) {
      throw truncated(this.path, `tensor '${what}'`, { got, wanted: into.byteLength });
    }
  }

  /** Reads at `offset` into `into`, in chunks, seeking only when the cursor is elsewhere. */
  #readDirect(file: Deno.FsFile, offset: number, into: Uint8Array): number {
    const at = this.#position;
    this.#position = -1; // unknown until the reads below succeed
    if (at !== offset) file.seekSync(offset, Deno.SeekMode.Start);
    // Synchronous reads: from the page cache they cost about a third of what
    // async reads do (which go through a thread pool and an extra copy).
    const done = readSyncFully(file, into);
    this.#position = offset + done;
    return done;
  }

  /** Serves a small range from the read-ahead window, refilling it at `offset` on a miss. */
  #readSmall(file: Deno.FsFile, offset: number, into: Uint8Array): number {
    const end = offset + into.byteLength;
    if (offset < this.#windowOffset || end > this.#windowOffset + this.#windowLength) {
      this.#window ??= new Uint8Array(WINDOW);
      this.#windowLength = 0;
      const want = Math.max(into.byteLength, Math.min(WINDOW, this.size - offset));
      this.#windowLength = this.#readDirect(file, offset, this.#window.subarray(0, want));
      this.#windowOffset = offset;
    }
    const from = offset - this.#windowOffset;
    const got = Math.max(0, Math.min(into.byteLength, this.#windowLength - from));
    into.set(this.#window!.subarray(from, from + got));
    return got;
  }

  /**
   * Reads a scalar-like tensor (any float or integer dtype, one element) as a number.
   *
   * @example
   * ```ts ignore
   * const alpha = await f.readScalar("lora_unet_x.alpha");
   * ```
   */
  async readScalar(name: string): Promise<number> {
    const t = this.info(name);
    if (numel(t.shape) !== 1) {
      throw new SafetensorsError(
        `${this.path}: tensor '${name}' has shape ${JSON.stringify(t.shape)}, expected one element`,
        { file: this.path, tensor: name },
      );
    }
    const b = await this.readBytes(name);
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    return scalarFrom(v, t.dtype, `${this.path}: tensor '${name}'`);
  }

  #floatDType(name: string) {
    const t = this.info(name);
    if (!isBaseDType(t.dtype)) {
      throw new SafetensorsError(
        `${this.path}: tensor '${name}' has dtype ${t.dtype}, expected a float type`,
        { file: this.path, tensor: name },
      );
    }
    return t.dtype;
  }

  /** Closes the file handle (idempotent). */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
    this.#window = this.#scratch = undefined;
  }

  /** Closes the file when used with `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}

function scalarFrom(v: DataView, dtype: DType, where: string): number {
  switch (dtype) {
    case "F16":
      return v.getFloat16(0, true);
    case "BF16":
      return new Float32Array(new Uint32Array([v.getUint16(0, true) << 16]).buffer)[0];
    case "F32":
      return v.getFloat32(0, true);
    case "F64":
      return v.getFloat64(0, true);
    case "BOOL":
    case "U8":
      return v.getUint8(0);
    case "I8":
      return v.getInt8(0);
    case "I16":
      return v.getInt16(0, true);
    case "U16":
      return v.getUint16(0, true);
    case "I32":
      return v.getInt32(0, true);
    case "U32":
      return v.getUint32(0, true);
    case "I64":
      return Number(v.getBigInt64(0, true));
    case "U64":
      return Number(v.getBigUint64(0, true));
    default:
      throw new SafetensorsError(`${where}: cannot read a ${dtype} value as a number`);
  }
}

export { describeOsError } from "../input_files.ts";
export type { FloatArray };
