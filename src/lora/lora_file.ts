/**
 * Reading LoRA files: layer discovery, exact factors, and the pass-through set
 * (docs/design.md, "Tensors that are not resized are kept").
 *
 * A layer is a `<name>.lora_down.weight` / `<name>.lora_up.weight` pair, with
 * an optional `<name>.alpha` (missing → alpha = rank) and `<name>.dora_scale`.
 * Every other tensor — LoHa, LoKr, IA3, full diffs, Tucker LoCon layers (with
 * `lora_mid`, which resizing the pair alone would get wrong), lone halves of a
 * pair, anything else — is kept byte for byte as pass-through. Factors stay
 * raw little-endian bytes; the compute backend decodes them.
 *
 * @module
 */

import { parse as parsePath } from "node:path";
import { LoraError } from "../errors.ts";
import { type FloatData, type LowRankFactors, StoredFloatData } from "../linalg/backend.ts";
import { decodeFloats, type DType, dtypeSize, isFloatDType } from "../safetensors/dtype.ts";
import { numel } from "../safetensors/header.ts";
import { type FileRange, StoredBytes } from "../safetensors/file_range.ts";
import { SafetensorsFile } from "../safetensors/reader.ts";
import { mergeLoras, type MergePrecision } from "./merge.ts";
import { loraEntryMembers } from "./merge_spec.ts";
import { summarizePassThrough } from "./pass_through.ts";

/** A tensor as stored: name, dtype, shape and little-endian bytes. */
export interface RawTensor {
  /** Tensor name. */
  readonly name: string;
  /** Element type. */
  readonly dtype: DType;
  /** Dimensions (`[]` for a scalar). */
  readonly shape: readonly number[];
  /** The stored bytes (read from `source` on first use where given). */
  readonly bytes: Uint8Array;
  /** Where the bytes lie in their file, for tensors not read up front (a layer's factors). */
  readonly source?: FileRange;
}

/** One LoRA layer: ΔW = alpha/rank · up · down. */
export interface LoraLayer {
  /** Layer name, e.g. `lora_unet_input_blocks_4_1_proj_in`. */
  readonly name: string;
  /** Up/down bytes and dtypes, out, rank, inFlat, scale = alpha/rank. */
  readonly factors: LowRankFactors;
  /** Stored alpha (rank when the file has none). */
  readonly alpha: number;
  /** The down weight's dims after the first: `[in]` or `[in, kh, kw]`. */
  readonly inShape: readonly number[];
  /** The up weight's full shape: `[out, r]` or `[out, r, 1, 1]`. */
  readonly upShape: readonly number[];
  /** DoRA magnitude vector, carried through unchanged. */
  readonly doraScale?: RawTensor;
  /** The layer's own tensors (alpha, dora_scale, down, up), by name, for pass-through if unmapped. */
  readonly tensors: readonly RawTensor[];
}

/** Counts of pass-through tensors. */
export interface PassThroughSummary {
  /** Number of pass-through tensors. */
  readonly total: number;
  /**
   * Tensors per kind (`LoHa`, `LoKr`, `IA3`, `full diff`, `lora_mid (Tucker LoCon)`,
   * `incomplete LoRA layer`, `other`); the counts add up to `total`.
   */
  readonly byKind: Readonly<Record<string, number>>;
  /** Merge only: tensors of later members dropped because an earlier member has the same name. */
  readonly clashes: number;
  /** Merge only: pass-through tensors of members whose merge weight is not 1, copied unweighted. */
  readonly unweighted: number;
}

/** A loaded LoRA (one file, or the merge of several). */
export interface LoraModel {
  /** File stem, or the merged name (see `mergedName`). */
  readonly name: string;
  /** The entry as typed (a path or a merge spec). */
  readonly entry: string;
  /** The file(s) read. */
  readonly paths: readonly string[];
  /** Default output folder: the (first) file's folder. */
  readonly folder: string;
  /** The (first) file's `__metadata__`; `{}` when absent. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The layers, sorted by name. */
  readonly layers: readonly LoraLayer[];
  /** Every tensor not part of a layer, sorted by name. */
  readonly passThrough: readonly RawTensor[];
  /** What `passThrough` holds. */
  readonly passThroughSummary: PassThroughSummary;
}

/** Options of {@link loadLora}. */
export interface LoadLoraOptions {
  /** Element type of merged factors (default `F64`: the merge identity holds to ~1e-15). */
  readonly mergePrecision?: MergePrecision;
}

/**
 * A rank above both of a layer's dimensions adds nothing (ΔW has rank at most
 * min(out, in′)) yet costs rank² memory and time in the decomposition; above
 * this floor, such a rank is refused before anything is allocated (a small
 * file could otherwise declare a rank-16000 layer and take gigabytes).
 */
export const RANK_LIMIT_FLOOR = 1024;

const DOWN = ".lora_down.weight";
const UP = ".lora_up.weight";
const MID = ".lora_mid.weight";

/**
 * Loads a LoRA entry: a plain `.safetensors` path, or a merge spec
 * `"a.safetensors:0.7,b.safetensors:-0.3"` (docs/design.md, "Weighted merges"; a single weighted
 * member `a.safetensors:0.5` is a one-member merge).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSyntheticLora } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * import { loadLora } from "./lora_file.ts";
 * await writeSyntheticLora(`${dir}/style.safetensors`, { scale: 1 / 64, rank: 4 });
 * await writeSyntheticLora(`${dir}/char.safetensors`, { scale: 1 / 64, rank: 4 });
 * const lora = await loadLora(`${dir}/style.safetensors`);
 * assert.deepEqual([lora.name, lora.layers.length], ["style", 986]);
 * const merged = await loadLora(`${dir}/style.safetensors:0.6,${dir}/char.safetensors:0.4`);
 * assert.equal(merged.name, "style(0.60)+char(0.40)");
 * ```
 */
export async function loadLora(entry: string, options: LoadLoraOptions = {}): Promise<LoraModel> {
  const members = loraEntryMembers(entry);
  if (!members) return await readLoraFile(entry);
  const inputs = [];
  for (const member of members) {
    inputs.push({ model: await readLoraFile(member.path), weight: member.weight });
  }
  return mergeLoras(inputs, { entry, precision: options.mergePrecision });
}

/**
 * Reads one LoRA file: its layers (validated; factors as raw bytes left in
 * the file, read where they are used) and its pass-through tensors (read now,
 * in file order).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSyntheticLora } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * import { LOCON_GROUPS } from "@x/resize-lora/testing";
 * import { readLoraFile } from "./lora_file.ts";
 * const path = `${dir}/locon.safetensors`;
 * await writeSyntheticLora(path, { scale: 1 / 64, rank: 8, convRank: 4, include: LOCON_GROUPS });
 * const lora = await readLoraFile(path);
 * const conv = lora.layers.find((l) => l.inShape.length === 3)!;
 * const [inChannels, kh, kw] = conv.inShape;
 * assert.equal(conv.factors.inFlat, inChannels * kh * kw);
 * assert.deepEqual(conv.upShape, [conv.factors.out, 4, 1, 1]);
 * ```
 */
export async function readLoraFile(path: string): Promise<LoraModel> {
  await using file = await SafetensorsFile.open(path);
  const layerNames = findLayers(file);
  if (layerNames.length === 0) {
    // Fail before reading any data: this may be a multi-GB checkpoint given as a LoRA.
    const { byKind } = summarizePassThrough(file.tensors);
    const kinds = Object.entries(byKind).map(([kind, n]) => ` ${kind}: ${n},`).join("");
    throw new LoraError(
      `${path}: no LoRA layer ('<name>.lora_down.weight' with '<name>.lora_up.weight') among its ${file.tensors.length} tensors;${kinds} is it a LoRA file?`,
      { file: path },
    );
  }
  // A layer's factors stay in the file: the compute backend reads each where it is used (a CPU
  // worker straight into its kernel memory). Every other tensor — alphas, DoRA scales,
  // pass-through — is small and read now, into one buffer.
  const factorNames = new Set(layerNames.flatMap((name) => [name + DOWN, name + UP]));
  const raw = new Map<string, RawTensor>();
  const eager = file.tensors.filter((t) => !factorNames.has(t.name));
  const bytes = await file.readTensors(eager.map((t) => t.name));
  for (const { name, dtype, shape } of eager) {
    raw.set(name, { name, dtype, shape, bytes: bytes.get(name)! });
  }
  for (const { name, dtype, shape, dataOffsets: [begin, end] } of file.tensors) {
    if (!factorNames.has(name)) continue;
    const stored = new StoredBytes({
      path,
      offset: file.dataStart + begin,
      byteLength: end - begin,
      tensor: name,
    });
    raw.set(name, new StoredTensor(name, dtype, shape, stored));
  }
  const alphas = new Map<string, number>();
  for (const name of layerNames) {
    const alpha = raw.get(`${name}.alpha`);
    if (alpha) alphas.set(name, await scalarValue(file, alpha));
  }

  const claimed = new Set<string>();
  const layers = layerNames.map((name) => {
    const layer = buildLayer(path, name, raw, alphas.get(name));
    for (const t of layer.tensors) claimed.add(t.name);
    return layer;
  });
  const passThrough = [...raw.values()].filter((t) => !claimed.has(t.name)).sort(byName);
  const { name, dir } = parsePath(path);
  return {
    name,
    entry: path,
    paths: [path],
    folder: dir === "" ? "." : dir,
    metadata: file.metadata,
    layers,
    passThrough,
    passThroughSummary: summarizePassThrough(passThrough),
  };
}

/** A tensor whose bytes stay in the file until first used (a layer's factors). */
class StoredTensor implements RawTensor {
  constructor(
    readonly name: string,
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly stored: StoredBytes,
  ) {}

  get source(): FileRange {
    return this.stored.source;
  }

  get bytes(): Uint8Array {
    return this.stored.bytes;
  }
}

/** A one-element tensor's value: float bytes already read are decoded here, the rest by the reader. */
function scalarValue(file: SafetensorsFile, t: RawTensor): number | Promise<number> {
  if (isFloatDType(t.dtype) && t.bytes.byteLength === dtypeSize(t.dtype)) {
    return decodeFloats(t.bytes, t.dtype, Float64Array)[0];
  }
  return file.readScalar(t.name); // integer dtypes; a wrong element count fails there, named
}

/** Names having both halves of a pair and no `lora_mid`, sorted. */
function findLayers(file: SafetensorsFile): string[] {
  const names: string[] = [];
  for (const t of file.tensors) {
    if (!t.name.endsWith(DOWN)) continue;
    const name = t.name.slice(0, -DOWN.length);
    if (file.has(name + UP) && !file.has(name + MID)) names.push(name);
  }
  return names.sort(compareText);
}

function buildLayer(
  path: string,
  name: string,
  raw: ReadonlyMap<string, RawTensor>,
  storedAlpha: number | undefined,
): LoraLayer {
  const down = raw.get(name + DOWN)!;
  const up = raw.get(name + UP)!;
  const fail = (why: string): never => {
    throw new LoraError(`${path}: layer '${name}': ${why}`, { file: path, key: name });
  };
  const upData = floatData(up, fail);
  const downData = floatData(down, fail);
  const rank = down.shape[0];
  const chains = down.shape.length >= 2 && up.shape.length >= 2 && up.shape[1] === rank &&
    up.shape.slice(2).every((d) => d === 1);
  if (!chains) {
    fail(
      `lora_up.weight ${shapeText(up.shape)} does not chain with lora_down.weight ${
        shapeText(down.shape)
      } (expected up [out, r] or [out, r, 1, 1] and down [r, in, …])`,
    );
  }
  if (rank === 0) fail(`rank 0 (lora_down.weight ${shapeText(down.shape)})`);
  const inShape = down.shape.slice(1);
  const out = up.shape[0], inFlat = numel(inShape);
  if (out === 0 || inFlat === 0) {
    fail(
      `empty layer: lora_up.weight ${shapeText(up.shape)}, lora_down.weight ${
        shapeText(down.shape)
      }`,
    );
  }
  if (rank > Math.max(out, inFlat, RANK_LIMIT_FLOOR)) {
    fail(
      `rank ${rank} is above both dimensions of the ${out}×${inFlat} layer and above ${RANK_LIMIT_FLOOR} (lora_down.weight ${
        shapeText(down.shape)
      }); refused before allocating`,
    );
  }
  const alpha = storedAlpha ?? rank;
  const doraScale = raw.get(`${name}.dora_scale`);
  const alphaTensor = raw.get(`${name}.alpha`);
  const tensors = [alphaTensor, doraScale, down, up].filter((t) => t !== undefined);
  return {
    name,
    factors: {
      up: upData,
      down: downData,
      out,
      rank,
      inFlat,
      scale: alpha / rank,
    },
    alpha,
    inShape,
    upShape: up.shape,
    ...(doraScale ? { doraScale } : {}),
    tensors,
  };
}

function floatData(t: RawTensor, fail: (why: string) => never): FloatData {
  if (!isFloatDType(t.dtype)) {
    fail(`tensor '${t.name}' has dtype ${t.dtype}, expected F16, BF16, F32 or F64`);
  }
  const dtype = t.dtype as FloatData["dtype"];
  return t instanceof StoredTensor
    ? new StoredFloatData(dtype, t.stored)
    : { dtype, bytes: t.bytes };
}

/**
 * A shape as messages print it: `[a, b, c]`.
 *
 * @example
 * ```ts
 * import { shapeText } from "./lora_file.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(shapeText([640, 8, 1, 1]), "[640, 8, 1, 1]");
 * ```
 */
export function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function byName(a: { name: string }, b: { name: string }): number {
  return compareText(a.name, b.name);
}
