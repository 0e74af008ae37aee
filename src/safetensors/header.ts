/**
 * The safetensors header: parsing with full validation, and the layout and encoding of the
 * `safetensors` Python package's writer (so outputs are byte-identical to the original's).
 *
 * Nothing in a header is trusted before it is checked: every field's type,
 * every offset against the data section, and every key for duplicates.
 *
 * @module
 */

import { SafetensorsError } from "../errors.ts";
import { type DType, dtypeRank, dtypeSize, isDType } from "./dtype.ts";

/** Largest header this reader accepts, in bytes (the safetensors limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Deepest nesting of objects and arrays a header may have. A valid header
 * nests three deep (tensor entry → shape); the parse is refused beyond this,
 * before `JSON.parse` spends gigabytes on a deeply nested 100 MB header.
 */
export const MAX_HEADER_DEPTH = 16;

/** One tensor entry of a header, with offsets relative to the data section. */
export interface TensorInfo {
  /** Tensor name (the header key). */
  readonly name: string;
  /** Element type. */
  readonly dtype: DType;
  /** Dimensions; `[]` for a scalar. */
  readonly shape: readonly number[];
  /** `[begin, end)` byte offsets relative to the start of the data section. */
  readonly dataOffsets: readonly [number, number];
}

/** A parsed and validated header. */
export interface SafetensorsHeader {
  /** `__metadata__` (empty when the file has none). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Whether the file had a `__metadata__` entry. */
  readonly hasMetadata: boolean;
  /** Tensors in data order (by begin offset). */
  readonly tensors: readonly TensorInfo[];
  /** Length of the JSON header in bytes (without the 8-byte prefix). */
  readonly headerLength: number;
  /** Absolute offset of the data section (`8 + headerLength`). */
  readonly dataStart: number;
}

/** Where a header came from, for error messages and bounds checks. */
export interface HeaderSource {
  /** File path (or any label) named in errors. */
  readonly file: string;
  /** Total file size in bytes. */
  readonly fileSize: number;
}

/**
 * Number of elements of a shape (1 for a scalar).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { numel } from "./header.ts";
 * assert.equal(numel([3, 4, 1, 1]), 12);
 * assert.equal(numel([]), 1);
 * ```
 */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Reads the header length from the 8-byte little-endian prefix and checks it
 * against the file size and {@link MAX_HEADER_BYTES}.
 *
 * @example
 * ```ts
 * import { readHeaderLength } from "./header.ts";
 * import assert from "node:assert/strict";
 * const prefix = new Uint8Array(8);
 * new DataView(prefix.buffer).setBigUint64(0, 16n, true);
 * assert.deepEqual(readHeaderLength(prefix, { file: "a.safetensors", fileSize: 24 }), 16);
 * ```
 */
export function readHeaderLength(
  prefix: Uint8Array,
  source: HeaderSource,
): number {
  const { file, fileSize } = source;
  const notSafetensors = (why: string) =>
    new SafetensorsError(`${file}: not a safetensors file (${why})`, { file });
  if (fileSize < 8 || prefix.byteLength < 8) {
    throw notSafetensors(`only ${fileSize} bytes, shorter than the 8-byte header length`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw notSafetensors(`header length ${n} is above the ${MAX_HEADER_BYTES}-byte limit`);
  }
  if (n > BigInt(fileSize - 8)) {
    throw notSafetensors(`header length ${n} runs past the end of the ${fileSize}-byte file`);
  }
  return Number(n);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses and validates the JSON header bytes (without the 8-byte prefix).
 *
 * @example
 * ```ts
 * import { parseHeader } from "./header.ts";
 * import assert from "node:assert/strict";
 * const json = new TextEncoder().encode(
 *   '{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
 * );
 * const h = parseHeader(json, { file: "a.safetensors", fileSize: 8 + json.length + 8 });
 * assert.deepEqual(h.tensors[0].name, "x");
 * ```
 */
export function parseHeader(
  json: Uint8Array,
  source: HeaderSource,
): SafetensorsHeader {
  const { file } = source;
  const fail = (msg: string): never => {
    throw new SafetensorsError(`${file}: ${msg}`, { file });
  };
  const depth = nestingDepthAbove(json, MAX_HEADER_DEPTH);
  if (depth !== undefined) {
    fail(
      `header nests deeper than ${MAX_HEADER_DEPTH} levels (at byte ${depth}); not a safetensors header`,
    );
  }
  let text: string;
  try {
    text = utf8.decode(json);
  } catch {
    return fail("header is not valid UTF-8");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    return fail("header is not a JSON object");
  }
  const dup = findDuplicateKey(text);
  if (dup !== undefined) fail(`header has duplicate key '${dup}'`);

  const headerLength = json.byteLength;
  const dataStart = 8 + headerLength;
  const dataSize = source.fileSize - dataStart;
  let metadata: Record<string, string> = {};
  let hasMetadata = false;
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(parsed)) {
    if (name === "__metadata__") {
      hasMetadata = true;
      metadata = checkMetadata(entry, fail);
      continue;
    }
    tensors.push(checkEntry(name, entry, fail));
  }
  tensors.sort((a, b) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  let cursor = 0;
  let previous: TensorInfo | undefined;
  for (const t of tensors) {
    const [begin, end] = t.dataOffsets;
    if (begin < cursor) {
      fail(`tensor '${t.name}' overlaps tensor '${previous!.name}'`);
    }
    if (begin > cursor) {
      fail(
        `tensor '${t.name}' leaves a gap of ${begin - cursor} bytes before it in the data section`,
      );
    }
    if (end > dataSize) {
      fail(
        `tensor '${t.name}' ends at byte ${end}, past the ${dataSize}-byte data section (file truncated?)`,
      );
    }
    cursor = end;
    previous = t;
  }
  if (cursor !== dataSize) {
    fail(
      `data section has ${dataSize - cursor} bytes after the last tensor that no tensor covers`,
    );
  }
  return { metadata, hasMetadata, tensors, headerLength, dataStart };
}

function checkMetadata(
  entry: unknown,
  fail: (msg: string) => never,
): Record<string, string> {
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    fail("'__metadata__' is not an object of strings");
  }
  const entries = Object.entries(entry as Record<string, unknown>);
  for (const [k, v] of entries) {
    if (typeof v !== "string") {
      fail(`'__metadata__' key '${k}' is not a string (got ${typeName(v)})`);
    }
  }
  // fromEntries defines own properties, so a "__proto__" key is kept as data.
  return Object.fromEntries(entries) as Record<string, string>;
}

function checkEntry(
  name: string,
  entry: unknown,
  fail: (msg: string) => never,
): TensorInfo {
  const where = `tensor '${name}'`;
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    fail(`${where}: entry is not an object`);
  }
  const e = entry as Record<string, unknown>;
  for (const field of ["dtype", "shape", "data_offsets"]) {
    if (!Object.hasOwn(e, field)) fail(`${where}: missing '${field}'`);
  }
  const { dtype, shape, data_offsets: offsets } = e;
  if (typeof dtype !== "string") {
    fail(`${where}: 'dtype' is not a string (got ${typeName(dtype)})`);
  }
  if (!isDType(dtype)) fail(`${where}: unknown dtype '${dtype}'`);
  if (!Array.isArray(shape)) {
    fail(`${where}: 'shape' is not an array (got ${typeName(shape)})`);
  }
  for (const d of shape as unknown[]) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      fail(
        `${where}: shape ${JSON.stringify(shape)} has an invalid dimension ${JSON.stringify(d)}`,
      );
    }
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o) => typeof o === "number" && Number.isSafeInteger(o) && o >= 0)
  ) {
    fail(
      `${where}: 'data_offsets' is not a pair of non-negative integers (got ${
        JSON.stringify(offsets)
      })`,
    );
  }
  const [begin, end] = offsets as number[];
  if (begin > end) {
    fail(`${where}: data_offsets begin ${begin} is after end ${end}`);
  }
  const dims = shape as number[];
  const expected = numel(dims) * dtypeSize(dtype as DType);
  if (!Number.isSafeInteger(expected) || expected !== end - begin) {
    fail(
      `${where}: ${end - begin} bytes of data, but shape ${
        JSON.stringify(dims)
      } of ${dtype} needs ${expected}`,
    );
  }
  return {
    name,
    dtype: dtype as DType,
    shape: dims,
    dataOffsets: [begin, end],
  };
}

/**
 * The byte offset where JSON text first nests deeper than `limit` objects and
 * arrays, or `undefined`; brackets inside strings do not count. A byte scan:
 * it allocates nothing, whatever the size.
 */
function nestingDepthAbove(json: Uint8Array, limit: number): number | undefined {
  let depth = 0;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === 0x22 /* " */) {
      for (i++; i < json.length && json[i] !== 0x22; i++) if (json[i] === 0x5c /* \ */) i++;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > limit) return i;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
  }
  return undefined;
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

/**
 * Finds a key that occurs twice in the top-level object or in one of its
 * child objects (`JSON.parse` silently keeps the last one).
 */
function findDuplicateKey(text: string): string | undefined {
  const stack: (Set<string> | null)[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      let escaped = false;
      i++;
      while (i < n) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) {
          escaped = true;
          i += 2;
        } else if (d === 0x22) break;
        else i++;
      }
      i++;
      const top = stack[stack.length - 1];
      if (top) {
        let j = i;
        while (j < n && isJsonSpace(text.charCodeAt(j))) j++;
        if (text.charCodeAt(j) === 0x3a /* : */) {
          const key = escaped
            ? JSON.parse(text.slice(start, i)) as string
            : text.slice(start + 1, i - 1);
          if (top.has(key)) return key;
          top.add(key);
        }
      }
      continue;
    }
    if (c === 0x7b /* { */) stack.push(stack.length < 2 ? new Set() : null);
    else if (c === 0x5b /* [ */) stack.push(null);
    else if (c === 0x7d || c === 0x5d) stack.pop();
    i++;
  }
  return undefined;
}

function isJsonSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/** What the writer needs to know about a tensor to lay it out. */
export interface TensorSpec {
  /** Tensor name. */
  readonly name: string;
  /** Element type. */
  readonly dtype: DType;
  /** Dimensions; `[]` for a scalar. */
  readonly shape: readonly number[];
}

const encoder = new TextEncoder();

/**
 * Orders strings by their UTF-8 bytes (= code point order). UTF-16 code units
 * already sort so below the surrogates; a surrogate (part of a code point
 * ≥ U+10000, or a lone one, which encodes as U+FFFD) takes the exact path.
 */
function compareUtf8(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i), y = b.charCodeAt(i);
    if (x === y) continue;
    if (x < 0xd800 && y < 0xd800) return x - y;
    return compareBytes(encoder.encode(a.slice(i)), encoder.encode(b.slice(i)));
  }
  return a.length - b.length;
}

function compareBytes(x: Uint8Array, y: Uint8Array): number {
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/**
 * Lays tensors out as the reference safetensors writer does: by dtype
 * descending in enum order, then by name (bytewise), contiguous.
 *
 * @example
 * ```ts
 * import { layoutTensors } from "./header.ts";
 * import assert from "node:assert/strict";
 * const layout = layoutTensors([
 *   { name: "b", dtype: "F16", shape: [2] },
 *   { name: "a", dtype: "F32", shape: [] },
 * ]);
 * assert.deepEqual(layout.map((t) => [t.name, t.dataOffsets]), [["a",[0,4]],["b",[4,8]]]);
 * ```
 */
export function layoutTensors(specs: readonly TensorSpec[]): TensorInfo[] {
  const names = new Set<string>();
  for (const s of specs) {
    if (names.has(s.name)) {
      throw new SafetensorsError(`duplicate tensor name '${s.name}'`, { tensor: s.name });
    }
    if (s.name === "__metadata__") {
      throw new SafetensorsError(`'__metadata__' is not a valid tensor name`);
    }
    names.add(s.name);
  }
  const sorted = [...specs].sort((a, b) =>
    dtypeRank(b.dtype) - dtypeRank(a.dtype) || compareUtf8(a.name, b.name)
  );
  let offset = 0;
  return sorted.map((s) => {
    const begin = offset;
    offset += numel(s.shape) * dtypeSize(s.dtype);
    return {
      name: s.name,
      dtype: s.dtype,
      shape: [...s.shape],
      dataOffsets: [begin, offset] as const,
    };
  });
}

/**
 * Encodes the 8-byte length prefix and the compact JSON header, padded with
 * spaces to a multiple of 8 bytes, `__metadata__` first when given.
 *
 * @example
 * ```ts
 * import { encodeHeader, layoutTensors } from "./header.ts";
 * import assert from "node:assert/strict";
 * const bytes = encodeHeader(layoutTensors([{ name: "x", dtype: "F16", shape: [1] }]), {});
 * assert.deepEqual(bytes.length % 8, 0);
 * ```
 */
export function encodeHeader(
  layout: readonly TensorInfo[],
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const parts: string[] = [];
  if (metadata !== undefined) {
    parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  for (const t of layout) {
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":${
        JSON.stringify(t.shape)
      },"data_offsets":[${t.dataOffsets[0]},${t.dataOffsets[1]}]}`,
    );
  }
  const json = encoder.encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/**
 * The byte length of {@link encodeHeader}'s output, counted without building
 * it (sizing many candidate files — a `size=` recipe's search — stays cheap).
 *
 * @example
 * ```ts
 * import { encodeHeader, encodedHeaderLength, layoutTensors } from "./header.ts";
 * import assert from "node:assert/strict";
 * const layout = layoutTensors([{ name: "x", dtype: "F16", shape: [1, 2] }]);
 * assert.deepEqual(encodedHeaderLength(layout, { a: "é" }) === encodeHeader(layout, { a: "é" }).length, true);
 * ```
 */
export function encodedHeaderLength(
  layout: readonly TensorInfo[],
  metadata?: Readonly<Record<string, string>>,
): number {
  let parts = 0, length = 0;
  if (metadata !== undefined) {
    parts++;
    length += METADATA_KEY.length + utf8Length(JSON.stringify(metadata));
  }
  for (const t of layout) {
    parts++;
    length += utf8Length(JSON.stringify(t.name)) + ENTRY_FIXED + t.dtype.length +
      JSON.stringify(t.shape).length + String(t.dataOffsets[0]).length +
      String(t.dataOffsets[1]).length;
  }
  const json = 2 + length + Math.max(0, parts - 1); // braces and commas
  return 8 + Math.ceil(json / 8) * 8;
}

const METADATA_KEY = `"__metadata__":`;
/** The characters of a tensor entry besides its name, dtype, shape and offsets. */
const ENTRY_FIXED = `:{"dtype":"","shape":,"data_offsets":[,]}`.length;

/** Bytes of a string in UTF-8 (a lone surrogate counts as U+FFFD, as TextEncoder writes it). */
function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}
