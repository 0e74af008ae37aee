/**
 * The layout and encoding of a safetensors header as the `safetensors` Python package writes it
 * (tensors sorted by dtype, then name; compact JSON padded to 8 bytes), so that outputs are
 * byte-identical to the original tool's.
 *
 * @module
 */

import { SafetensorsError } from "../errors.ts";
import { type DType, dtypeRank, dtypeSize } from "./dtype.ts";
import { numel, type TensorInfo } from "./header.ts";

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
 * import { layoutTensors } from "./layout.ts";
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
 * import { encodeHeader, layoutTensors } from "./layout.ts";
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
 * import { encodeHeader, encodedHeaderLength, layoutTensors } from "./layout.ts";
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
