/**
 * The output LoRA file of one (LoRA, recipe) pair: its tensors, metadata and
 * exact size (docs/design.md, "The output file" and "Tensors that are not resized are kept").
 *
 * The size of a candidate selection is computed from names, shapes and
 * metadata alone, so size-mode selection and `--dry_run` know the exact file
 * size without building any tensor.
 *
 * @module
 */

import {
  decodeFloats,
  type DType,
  dtypeSize,
  encodeFloats,
  isFloatDType,
} from "./safetensors/dtype.ts";
import { SSHS_PLACEHOLDERS } from "./safetensors/hashes.ts";
import type { TensorSource } from "./safetensors/writer.ts";
import { safetensorsFileSize } from "./safetensors/writer.ts";
import type { TensorSpec } from "./safetensors/header.ts";
import type { FloatData } from "./linalg/backend.ts";
import type { LoraLayer, RawTensor } from "./lora/lora_file.ts";
import type { OutputKeys } from "./namings/output_keys.ts";
import { pyRepr } from "./recipe/pyfloat.ts";
import { pyJsonDumps } from "./recipe/pyformat.ts";

/**
 * Output element types (`-t 16|32|bf16`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type OutputDType, plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const size = async (outputDtype: OutputDType) =>
 *   (await plan({ checkpoint: base, loras: [lora], outputDtype, device: "cpu", normsCache: false }))
 *     .outputs[0].bytes;
 * assert.ok(await size("F32") > await size("F16")); // 4 bytes per element instead of 2
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export type OutputDType = "F16" | "F32" | "BF16";

/** Bytes per element of an output dtype. */
export function outputElementSize(dtype: OutputDType): number {
  return dtype === "F32" ? 4 : 2;
}

/** A resized layer of the output: the input layer and how many dimensions it keeps. */
export interface OutputLayer {
  /** The input layer. */
  readonly layer: LoraLayer;
  /** Number of kept dimensions k′ (0 = omitted from the output). */
  readonly kept: number;
  /** The alpha to store, before rounding (default α·k′/r; kohya's rules compute theirs). */
  readonly alpha?: number;
  /** Its keys in the output naming (default: kohya's, from the canonical name). */
  readonly keys?: OutputLayerKeys;
}

/** A layer's keys in the output naming, and its DoRA magnitude's shape there. */
export interface OutputLayerKeys extends OutputKeys {
  /** The DoRA magnitude's shape, where the naming stores it otherwise than the input. */
  readonly doraShape?: readonly number[];
}

/** Rounds a number to an output dtype (as a cast to that dtype would). */
export function roundTo(value: number, dtype: OutputDType): number {
  return decodeFloats(encodeFloats([value], dtype), dtype, Float64Array)[0];
}

/** The stored alpha of an output layer: α·k′/r rounded to the output dtype. */
export function outputAlpha(layer: LoraLayer, kept: number, dtype: OutputDType): number {
  return roundTo(layer.factors.scale * kept, dtype);
}

/** The alpha an output layer stores, before rounding to the output dtype. */
function alphaOf(o: OutputLayer): number {
  return o.alpha ?? o.layer.factors.scale * o.kept;
}

/** kohya's keys of a layer: its canonical name with kohya's suffixes. */
function kohyaKeys(layer: LoraLayer): OutputLayerKeys {
  return {
    naming: "kohya",
    down: `${layer.name}.lora_down.weight`,
    up: `${layer.name}.lora_up.weight`,
    alpha: `${layer.name}.alpha`,
    ...(layer.doraScale ? { dora: layer.doraScale.name } : {}),
    foldScale: false,
  };
}

/** A layer's tensor specs: alpha (where its naming stores one), down, up, DoRA magnitude. */
interface LayerSpecs {
  readonly alpha?: TensorSpec;
  readonly down: TensorSpec;
  readonly up: TensorSpec;
  readonly dora?: TensorSpec;
}

function layerSpecs(o: OutputLayer, dtype: OutputDType): LayerSpecs {
  const { layer, kept } = o;
  const keys = o.keys ?? kohyaKeys(layer);
  const up = [layer.factors.out, kept, ...layer.inShape.slice(1).map(() => 1)];
  const dora = layer.doraScale;
  return {
    ...(keys.alpha === undefined ? {} : { alpha: { name: keys.alpha, dtype, shape: [] } }),
    down: { name: keys.down, dtype, shape: [kept, ...layer.inShape] },
    up: { name: keys.up, dtype, shape: up },
    ...(dora
      ? {
        dora: {
          name: keys.dora ?? dora.name,
          dtype: castDType(dora.dtype, dtype),
          shape: keys.doraShape ?? dora.shape,
        },
      }
      : {}),
  };
}

/** The specs of a layer in file order. */
function orderedSpecs({ alpha, down, up, dora }: LayerSpecs): TensorSpec[] {
  return [alpha, down, up, dora].filter((t) => t !== undefined);
}

/** Float tensors are cast to the output dtype; others are copied unchanged. */
function castDType(dtype: DType, to: OutputDType): DType {
  return isFloatDType(dtype) ? to : dtype;
}

/** A tensor carried from the input, cast to the output dtype (bytes kept when equal). */
export function castTensor(t: RawTensor, to: OutputDType): TensorSource {
  const dtype = castDType(t.dtype, to);
  if (dtype === t.dtype || !isFloatDType(t.dtype)) {
    return { name: t.name, dtype, shape: t.shape, data: t.bytes };
  }
  return {
    name: t.name,
    dtype,
    shape: t.shape,
    data: () => encodeFloats(decodeFloats(t.bytes, t.dtype as "F16", Float32Array), to),
  };
}

/**
 * `ss_network_dim` / `ss_network_alpha` as kohya's resize writes them: the
 * common rank and alpha when every written layer has the same, else `Dynamic`.
 */
export function networkDimAlpha(
  layers: readonly OutputLayer[],
  dtype: OutputDType,
): { ss_network_dim: string; ss_network_alpha: string } {
  const written = layers.filter((o) => o.kept > 0);
  const ranks = new Set(written.map((o) => o.kept));
  const alphas = new Set(written.map((o) => roundTo(alphaOf(o), dtype)));
  if (ranks.size !== 1 || alphas.size !== 1) {
    return { ss_network_dim: "Dynamic", ss_network_alpha: "Dynamic" };
  }
  return { ss_network_dim: String([...ranks][0]), ss_network_alpha: pyRepr([...alphas][0]) };
}

/** Everything that determines an output file except the factor values. */
export interface OutputShape {
  /** Resized layers (in name order) with their kept counts. */
  readonly layers: readonly OutputLayer[];
  /** Tensors copied from the input (unmapped layers, other adapters, …). */
  readonly passThrough: readonly RawTensor[];
  /** Output element type. */
  readonly dtype: OutputDType;
  /** The input metadata. */
  readonly inputMetadata: Readonly<Record<string, string>>;
  /** The `resize_params` text. */
  readonly resizeParams: string;
  /** `ss_network_dim` / `ss_network_alpha` / … to write instead of {@link networkDimAlpha}'s. */
  readonly networkMetadata?: Readonly<Record<string, string>>;
}

/**
 * The layout of an output that keeps `kept[i]` dimensions of layer i, with the threshold
 * `threshold` written into its metadata: how selection prices candidate outputs.
 */
export type OutputShapeFn = (kept: ArrayLike<number>, threshold: number) => OutputShape;

/** The metadata key diffusers saves a LoRA's `LoraConfig` under. */
const DIFFUSERS_ADAPTER_METADATA = "lora_adapter_metadata";

/** The output metadata, with hashes still to be filled in. */
function metadataOf(shape: OutputShape): Record<string, string> {
  const input = { ...shape.inputMetadata };
  // diffusers scales by this LoraConfig's lora_alpha / r: with the scale folded in, it would
  // scale twice (docs/design.md, "Output namings").
  if (shape.layers.some((o) => o.keys?.foldScale)) delete input[DIFFUSERS_ADAPTER_METADATA];
  return {
    ...input,
    ...(shape.networkMetadata ?? networkDimAlpha(shape.layers, shape.dtype)),
    ...lycorisConversion(shape),
    ...SSHS_PLACEHOLDERS,
  };
}

/** Tensor names that only LyCORIS's loader reads (LoHa and LoKr factors, Tucker ones included). */
const LYCORIS_TENSOR = /\.(hada_|lokr_)/;

/**
 * `resize_params`, and what converting LyCORIS layers changes (docs/design.md, "LyCORIS
 * layers"): the LoHa and LoKr layers resized are written as LoRA layers, which `resize_params`
 * records; `ss_network_module` becomes `networks.lora` unless LyCORIS tensors are still copied
 * (Tucker or unpaired layers), which still need LyCORIS's module. Other metadata is kept.
 */
function lycorisConversion(shape: OutputShape): Record<string, string> {
  const counts = { loha: 0, lokr: 0 };
  for (const o of shape.layers) if (o.layer.lycoris) counts[o.layer.lycoris.kind]++;
  if (counts.loha + counts.lokr === 0) return { resize_params: shape.resizeParams };
  const before = shape.inputMetadata.ss_network_module;
  const note = pyJsonDumps({
    loha_layers: BigInt(counts.loha), // bigint: a Python int, as counts are
    lokr_layers: BigInt(counts.lokr),
    network_module: before ?? null,
  });
  // resize_params is a JSON object: the note is one more key of it.
  const resizeParams = `${shape.resizeParams.slice(0, -1)}, "converted_to_lora": ${note}}`;
  const lycorisLeft = shape.passThrough.some((t) => LYCORIS_TENSOR.test(t.name));
  return {
    ...(lycorisLeft ? {} : { ss_network_module: "networks.lora" }),
    resize_params: resizeParams,
  };
}

function specsOf(shape: OutputShape): TensorSpec[] {
  const specs = shape.layers.filter((o) => o.kept > 0).flatMap((o) =>
    orderedSpecs(layerSpecs(o, shape.dtype))
  );
  for (const t of shape.passThrough) {
    specs.push({ name: t.name, dtype: castDType(t.dtype, shape.dtype), shape: t.shape });
  }
  return specs;
}

/**
 * Exact size in bytes of the output file (hashes have fixed lengths, so
 * placeholders measure the same).
 *
 * @example
 * ```ts ignore
 * const bytes = outputFileSize({ layers, passThrough: [], dtype: "F16", inputMetadata: {}, resizeParams });
 * ```
 */
export function outputFileSize(shape: OutputShape): number {
  return safetensorsFileSize(specsOf(shape), metadataOf(shape));
}

/** Output tensors and metadata, ready for `writeSafetensors`. */
export interface OutputContents {
  /** Tensors (bytes given, or produced when the writer reaches them). */
  readonly tensors: TensorSource[];
  /** Metadata, the sshs hashes as placeholders (see {@link buildOutput}). */
  readonly metadata: Record<string, string>;
}

/** One layer's output factors: `up` (out × k′) and `down` (k′ × …), in any float dtype. */
export interface OutputFactors {
  /** The up factor's elements, row-major. */
  readonly up: FloatData;
  /** The down factor's elements, row-major. */
  readonly down: FloatData;
}

/**
 * One layer's output factors for {@link buildOutput}: given, or produced on
 * demand (when the writer reaches the layer's tensors), possibly later.
 */
export type OutputFactorsSource =
  | OutputFactors
  | (() => OutputFactors | Promise<OutputFactors>);

/** The bytes of factor data times `factor` in `dtype` (as is when already so). */
function encodedAs(data: FloatData, dtype: OutputDType, factor = 1): Uint8Array {
  if (data.dtype === dtype && factor === 1) return data.bytes;
  const values = decodeFloats(data.bytes, data.dtype, Float32Array);
  if (factor !== 1) { for (let i = 0; i < values.length; i++) values[i] *= factor; }
  return encodeFloats(values, dtype);
}

/** Options of {@link buildOutput}. */
export interface BuildOutputOptions {
  /**
   * Per layer of `shape.layers`: its factors already carry alpha/k′ (a naming without alpha,
   * folded by the rebuild), so they are written as given.
   */
  readonly folded?: readonly boolean[];
}

/**
 * Builds the output tensors from the output factors (one per layer with
 * k′ > 0, in `shape.layers` order) and the metadata, whose sd-webui hashes
 * are placeholders of their final length: {@link writeSafetensors} with
 * `sshsHashes: true` computes them from exactly these bytes while writing.
 * Factors given as functions are asked for (once per layer) only when the
 * writer reaches that layer, so a file can be written while later layers are
 * still being rebuilt.
 *
 * @example
 * ```ts ignore
 * const { tensors, metadata } = buildOutput(shape, factors);
 * await writeSafetensors(path, tensors, { metadata, sshsHashes: true });
 * ```
 */
export function buildOutput(
  shape: OutputShape,
  factors: readonly OutputFactorsSource[],
  options: BuildOutputOptions = {},
): OutputContents {
  const { dtype } = shape;
  const tensors: TensorSource[] = [];
  let next = 0;
  shape.layers.forEach((o, i) => {
    if (o.kept === 0) return;
    const source = factors[next++];
    let asked: Promise<OutputFactors> | undefined;
    const f = () => asked ??= Promise.resolve(typeof source === "function" ? source() : source);
    // A naming without alpha carries alpha/k′ in the factors, √ on each side.
    const fold = o.keys?.foldScale && !options.folded?.[i] ? Math.sqrt(alphaOf(o) / o.kept) : 1;
    const { alpha, down, up, dora } = layerSpecs(o, dtype);
    if (alpha) tensors.push({ ...alpha, data: encodeFloats([alphaOf(o)], dtype) });
    tensors.push(
      { ...down, data: async () => encodedAs((await f()).down, dtype, fold) },
      { ...up, data: async () => encodedAs((await f()).up, dtype, fold) },
    );
    // A reshaped DoRA magnitude keeps its values in order: only its name and shape change.
    if (dora) {
      tensors.push({
        ...castTensor(o.layer.doraScale!, dtype),
        name: dora.name,
        shape: dora.shape,
      });
    }
  });
  for (const t of shape.passThrough) tensors.push(castTensor(t, dtype));
  return { tensors, metadata: metadataOf(shape) };
}

/**
 * The ascending union of ascending index lists: the dimensions one rebuild builds for several
 * recipes.
 *
 * @example
 * ```ts
 * import { sortedUnion } from "./output.ts";
 * const union = sortedUnion([[0, 2], [1, 2], [5]]);
 * if (union.join() !== "0,1,2,5") throw new Error(`got ${union}`);
 * ```
 */
export function sortedUnion(lists: readonly (readonly number[])[]): number[] {
  return lists.length === 1 ? [...lists[0]] : [...new Set(lists.flat())].sort((a, b) => a - b);
}

/**
 * The output factors of the `keep` dimensions out of factors built for `built` (a superset,
 * ascending): columns of up (out × |built|), rows of down (|built| × in′). Each dimension's
 * factors (√σ·u, √σ·v) do not depend on which others are kept, so recipes that share a rescale
 * share one rebuild and take their own columns and rows of it.
 *
 * @example
 * ```ts
 * import { extractKeptFactors } from "./output.ts";
 * // out = 2, in′ = 1, built for dimensions 0, 1, 2; keep 0 and 2. F32 elements 1…6 (up), 7…9.
 * const f32 = (...v: number[]) => ({ dtype: "F32" as const, bytes: new Uint8Array(new Float32Array(v).buffer) });
 * const kept = extractKeptFactors(
 *   { up: f32(1, 2, 3, 4, 5, 6), down: f32(7, 8, 9) },
 *   { built: [0, 1, 2], keep: [0, 2], out: 2 },
 * );
 * const values = (d: { bytes: Uint8Array }) => [...new Float32Array(d.bytes.slice().buffer)].join();
 * if (values(kept.up) !== "1,3,4,6" || values(kept.down) !== "7,9") throw new Error("wrong columns");
 * ```
 */
export function extractKeptFactors(
  factors: OutputFactors,
  { built, keep, out }: {
    readonly built: readonly number[];
    readonly keep: readonly number[];
    readonly out: number;
  },
): OutputFactors {
  if (keep.length === built.length) return factors;
  const at = new Map(built.map((u, j) => [u, j]));
  const positions = keep.map((k) => at.get(k)!);
  const n = built.length, k = keep.length;
  const { up, down } = factors;
  // Whole elements at a time (every output dtype is 2 or 4 bytes wide).
  const elements = (b: Uint8Array) => {
    const size = dtypeSize(up.dtype), aligned = b.byteOffset % size === 0 ? b : b.slice();
    return size === 2
      ? new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2)
      : new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
  };
  const from = elements(up.bytes);
  const upBytes = new Uint8Array(out * k * dtypeSize(up.dtype));
  const to = elements(upBytes);
  for (let r = 0; r < out; r++) {
    for (let c = 0; c < k; c++) to[r * k + c] = from[r * n + positions[c]];
  }
  const row = down.bytes.byteLength / n;
  const downBytes = new Uint8Array(k * row);
  positions.forEach((j, c) => downBytes.set(down.bytes.subarray(j * row, (j + 1) * row), c * row));
  return { up: { dtype: up.dtype, bytes: upBytes }, down: { dtype: down.dtype, bytes: downBytes } };
}

/**
 * Factors with `extra` zero dimensions appended (zero columns of up, zero
 * rows of down): a rank kohya writes beyond the dimensions a layer has.
 * Zero is all-zero bytes in every float dtype.
 *
 * @param factors the factors (`out × k` and `k × inFlat`, `k` ≥ 0)
 * @param shape the layer's rows and columns, and the element type of empty factors
 *
 * @example
 * ```ts
 * import { withZeroDimensions } from "./output.ts";
 * const f32 = (...v: number[]) => ({ dtype: "F32" as const, bytes: new Uint8Array(new Float32Array(v).buffer) });
 * const padded = withZeroDimensions({ up: f32(1, 2), down: f32(3, 4) }, 1, { out: 2, inFlat: 2, dtype: "F32" });
 * const values = (d: { bytes: Uint8Array }) => [...new Float32Array(d.bytes.slice().buffer)].join();
 * if (values(padded.up) !== "1,0,2,0" || values(padded.down) !== "3,4,0,0") throw new Error("padding");
 * ```
 */
export function withZeroDimensions(
  factors: OutputFactors | undefined,
  extra: number,
  shape: { readonly out: number; readonly inFlat: number; readonly dtype: OutputDType },
): OutputFactors {
  const dtype = factors?.up.dtype ?? shape.dtype;
  if (factors && extra === 0) return factors;
  const size = dtypeSize(dtype);
  const upRow = factors ? factors.up.bytes.byteLength / shape.out : 0;
  const up = new Uint8Array(shape.out * (upRow + extra * size));
  for (let r = 0; factors && r < shape.out; r++) {
    up.set(factors.up.bytes.subarray(r * upRow, (r + 1) * upRow), r * (upRow + extra * size));
  }
  const downBytes = factors?.down.bytes ?? new Uint8Array(0);
  const down = new Uint8Array(downBytes.byteLength + extra * shape.inFlat * size);
  down.set(downBytes);
  return { up: { dtype, bytes: up }, down: { dtype: factors?.down.dtype ?? dtype, bytes: down } };
}
