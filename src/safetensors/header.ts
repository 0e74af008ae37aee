/**
 * The safetensors header: parsing with full validation (the writer's layout is in
 * `layout.ts`, re-exported here).
 *
 * Nothing in a header is trusted before it is checked: every field's type,
 * every offset against the data section, and every key for duplicates.
 *
 * @module
 */

import { SafetensorsError } from "../errors.ts";
import { type DType, dtypeSize, isDType } from "./dtype.ts";

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
 * The tensor names a header declares, from a light parse: nesting depth bounded, no field
 * checked, so that telling what a file holds costs a fraction of opening it (which validates
 * everything). `undefined` when the header is not a JSON object.
 *
 * @example
 * ```ts
 * import { headerNames } from "./header.ts";
 * import assert from "node:assert/strict";
 * const json = new TextEncoder().encode('{"__metadata__":{},"a.lora_up.weight":{}}');
 * assert.deepEqual(headerNames(json), ["a.lora_up.weight"]);
 * assert.equal(headerNames(new TextEncoder().encode("[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]")), undefined);
 * ```
 */
export function headerNames(json: Uint8Array): string[] | undefined {
  if (nestingDepthAbove(json, MAX_HEADER_DEPTH) !== undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(utf8.decode(json));
  } catch {
    return undefined;
  }
  if (typeName(parsed) !== "object") return undefined;
  return Object.keys(parsed as object).filter((k) => k !== "__metadata__");
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

export { encodedHeaderLength, encodeHeader, layoutTensors, type TensorSpec } from "./layout.ts";
