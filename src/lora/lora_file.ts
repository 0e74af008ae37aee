/**
 * Reading LoRA files: layer discovery, exact factors, and the pass-through set
 * (docs/design.md, "Tensors that are not resized are kept").
 *
 * A layer is a down/up factor pair in any naming `src/namings/` reads (kohya's
 * `<name>.lora_down.weight` / `<name>.lora_up.weight`, PEFT's `lora_A` /
 * `lora_B`, …), with an optional alpha (missing → alpha = rank; PEFT: from
 * `adapter_config.json` beside the file) and DoRA magnitude. Each layer is read
 * in its own naming and known by its canonical name (kohya, SGM block names).
 * A LyCORIS LoHa or LoKr layer (kohya-style names) is read as an exact LoRA
 * (`./lycoris_layers.ts`). Every other tensor — IA3, full diffs, Tucker LoCon,
 * LoHa and LoKr layers (with `lora_mid`, `hada_t1`/`hada_t2` or `lokr_t2`),
 * lone halves of a pair, anything else — is kept byte for byte as
 * pass-through. Factors stay raw little-endian bytes; the compute backend
 * decodes them.
 *
 * @module
 */

import { parse as parsePath } from "node:path";
import {
  type ArchitectureEvidence,
  findLayers,
  loraArchitecture,
  type NamedLayer,
  type NamingId,
} from "../namings/mod.ts";
import { peftAlphas, type PeftConfig, readPeftConfig } from "../namings/peft_config.ts";
import { LoraError } from "../errors.ts";
import { type FloatData, type LowRankFactors, StoredFloatData } from "../linalg/backend.ts";
import { decodeFloats, type DType, dtypeSize, isFloatDType } from "../safetensors/dtype.ts";
import { numel } from "../safetensors/header.ts";
import { type FileRange, StoredBytes } from "../safetensors/file_range.ts";
import { SafetensorsFile } from "../safetensors/reader.ts";
import { mergeLoras, type MergePrecision } from "./merge.ts";
import { loraEntryMembers } from "./merge_spec.ts";
import { summarizePassThrough } from "./pass_through.ts";
import type { LycorisLayer } from "./lycoris.ts";
import {
  clashError,
  findLycorisLayers,
  lycorisFactorNames,
  lycorisLoraLayers,
} from "./lycoris_layers.ts";

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
  /**
   * Canonical layer name (kohya, SGM block names), e.g.
   * `lora_unet_input_blocks_4_1_proj_in`: what pairing, merging and reports use.
   */
  readonly name: string;
  /** The layer name as its file spells it (equal to `name` in kohya's naming). */
  readonly key: string;
  /** The naming the file spells the layer in. */
  readonly naming: NamingId;
  /** The LoHa or LoKr layer it was read from (absent for a LoRA pair). */
  readonly lycoris?: LycorisLayer;
  /** Up/down bytes and dtypes, out, rank, inFlat, scale = alpha/rank. */
  readonly factors: LowRankFactors;
  /**
   * Stored alpha (rank when the file has none); for a LyCORIS layer, the alpha of its exact
   * LoRA form (alpha / rank = its scale).
   */
  readonly alpha: number;
  /**
   * The down weight's dims after the first: `[in]` or `[in, kh, kw]` (a LyCORIS layer's flat
   * `[in·kh·kw]` until pairing gives it the base weight's).
   */
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
  /** The namings its layers are written in, each once, in layer order. */
  readonly namings: readonly NamingId[];
  /** The architecture its tensors show it was made for, when they show one. */
  readonly architecture?: ArchitectureEvidence;
  /** Things the caller should tell the user (e.g. a PEFT file read without its alphas). */
  readonly warnings: readonly string[];
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
  const architecture = loraArchitecture(file.tensors);
  const found = findLayers(
    new Set(file.tensors.map((t) => t.name)),
    architecture?.architecture ?? "sdxl",
  );
  checkDistinct(path, found);
  const lycoris = await findLycorisLayers(file);
  if (found.length === 0 && lycoris.length === 0) {
    // Fail before reading any data: this may be a multi-GB checkpoint given as a LoRA.
    const { byKind } = summarizePassThrough(file.tensors);
    const kinds = Object.entries(byKind).map(([kind, n]) => ` ${kind}: ${n},`).join("");
    throw new LoraError(
      `${path}: no LoRA, LoHa or LoKr layer ('<name>.lora_down.weight' with '<name>.lora_up.weight', another naming's pair, '<name>.hada_w1_a', '<name>.lokr_w1', …) among its ${file.tensors.length} tensors;${kinds} is it a LoRA file?`,
      { file: path },
    );
  }
  // A layer's factors stay in the file: the compute backend reads each where it is used (a CPU
  // worker straight into its kernel memory). Every other tensor — alphas, DoRA scales,
  // pass-through — is small and read now, into one buffer.
  const factorNames = new Set([
    ...found.flatMap((l) => [l.keys.down, l.keys.up]),
    ...lycorisFactorNames(lycoris),
  ]);
  const raw = await readRawTensors(file, factorNames);
  const alphas = new Map<string, number>();
  for (const layer of found) {
    const alpha = raw.get(layer.keys.alpha);
    if (alpha) alphas.set(layer.key, await scalarValue(file, alpha));
  }
  const { name, dir } = parsePath(path);
  const folder = dir === "" ? "." : dir;
  const warnings: string[] = [];
  // resize-lora writes PEFT layers with their scale in the factors: an adapter_config.json beside
  // such a file is its input's and would scale it twice (docs/design.md, "Output namings").
  const scaled = Object.hasOwn(file.metadata, "resize_params");
  if (!scaled) await peftDefaults(path, folder, found, raw, alphas, warnings);

  const claimed = new Set<string>();
  const layers = found.map((named) => buildLayer(path, named, raw, alphas.get(named.key)));
  const canonical = new Set(layers.map((l) => l.name));
  const lycorisLayers = lycorisLoraLayers(lycoris, raw, architecture?.architecture ?? "sdxl");
  for (const l of lycorisLayers) {
    if (canonical.has(l.name)) throw clashError(path, l.key);
    canonical.add(l.name);
  }
  if (lycorisLayers.length > 0) {
    layers.push(...lycorisLayers);
    layers.sort(byName);
  }
  for (const layer of layers) for (const t of layer.tensors) claimed.add(t.name);
  const passThrough = [...raw.values()].filter((t) => !claimed.has(t.name)).sort(byName);
  return {
    name,
    entry: path,
    paths: [path],
    folder,
    metadata: file.metadata,
    layers,
    passThrough,
    passThroughSummary: summarizePassThrough(passThrough),
    namings: [...new Set(layers.map((l) => l.naming))],
    ...(architecture ? { architecture } : {}),
    warnings,
  };
}

/** Every tensor of `file`: the factors left in the file, the rest read now, into one buffer. */
async function readRawTensors(
  file: SafetensorsFile,
  factorNames: ReadonlySet<string>,
): Promise<Map<string, RawTensor>> {
  const raw = new Map<string, RawTensor>();
  const eager = file.tensors.filter((t) => !factorNames.has(t.name));
  const bytes = await file.readTensors(eager.map((t) => t.name));
  for (const { name, dtype, shape } of eager) {
    raw.set(name, { name, dtype, shape, bytes: bytes.get(name)! });
  }
  for (const { name, dtype, shape, dataOffsets: [begin, end] } of file.tensors) {
    if (!factorNames.has(name)) continue;
    const stored = new StoredBytes({
      path: file.path,
      offset: file.dataStart + begin,
      byteLength: end - begin,
      tensor: name,
    });
    raw.set(name, new StoredTensor(name, dtype, shape, stored));
  }
  return raw;
}

/** Two layers that name the same module: the file is ambiguous. */
function checkDistinct(path: string, found: readonly NamedLayer[]): void {
  for (let i = 1; i < found.length; i++) {
    const [a, b] = [found[i - 1], found[i]];
    if (a.canonical !== b.canonical) continue;
    throw new LoraError(
      `${path}: layers '${a.key}' (${a.naming.id}) and '${b.key}' (${b.naming.id}) both modify '${a.canonical}'`,
      { file: path, key: b.key },
    );
  }
}

/**
 * PEFT layers store no alpha as a rule: it is in `adapter_config.json` beside
 * the file; without one the scale is 1 (alpha = rank), said once.
 */
async function peftDefaults(
  path: string,
  folder: string,
  found: readonly NamedLayer[],
  raw: ReadonlyMap<string, RawTensor>,
  alphas: Map<string, number>,
  warnings: string[],
): Promise<void> {
  const lacking = found.filter((l) => l.naming.id === "peft" && !alphas.has(l.key));
  if (lacking.length === 0) return;
  const config: PeftConfig | undefined = await readPeftConfig(folder);
  let defaulted = 0;
  for (const layer of lacking) {
    const rank = raw.get(layer.keys.down)!.shape[0];
    const alpha = config ? peftAlphas(config, peftModule(layer.key), rank) : undefined;
    if (alpha === undefined) defaulted++;
    else alphas.set(layer.key, alpha);
  }
  if (defaulted > 0) {
    warnings.push(
      `${path}: ${defaulted} PEFT layers have no alpha and ${
        config ? `${config.path} gives none` : "no adapter_config.json is beside the file"
      }: their scale is taken as 1 (alpha = rank)`,
    );
  }
}

/** A PEFT layer's module path as `adapter_config.json` patterns see it. */
function peftModule(key: string): string {
  return key.replace(/^base_model\.model\./, "").replace(/^(unet|text_encoder(_2)?)\./, "");
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

function buildLayer(
  path: string,
  named: NamedLayer,
  raw: ReadonlyMap<string, RawTensor>,
  storedAlpha: number | undefined,
): LoraLayer {
  const { key, keys } = named;
  const down = raw.get(keys.down)!;
  const up = raw.get(keys.up)!;
  const fail = (why: string): never => {
    throw new LoraError(`${path}: layer '${key}': ${why}`, { file: path, key });
  };
  const upData = floatData(up, fail);
  const downData = floatData(down, fail);
  const rank = down.shape[0];
  const chains = down.shape.length >= 2 && up.shape.length >= 2 && up.shape[1] === rank &&
    up.shape.slice(2).every((d) => d === 1);
  if (!chains) {
    fail(
      `${suffix(up, key)} ${shapeText(up.shape)} does not chain with ${suffix(down, key)} ${
        shapeText(down.shape)
      } (expected up [out, r] or [out, r, 1, 1] and down [r, in, …])`,
    );
  }
  if (rank === 0) fail(`rank 0 (${suffix(down, key)} ${shapeText(down.shape)})`);
  const inShape = down.shape.slice(1);
  const out = up.shape[0], inFlat = numel(inShape);
  if (out === 0 || inFlat === 0) {
    fail(
      `empty layer: ${suffix(up, key)} ${shapeText(up.shape)}, ${suffix(down, key)} ${
        shapeText(down.shape)
      }`,
    );
  }
  if (rank > Math.max(out, inFlat, RANK_LIMIT_FLOOR)) {
    fail(
      `rank ${rank} is above both dimensions of the ${out}×${inFlat} layer and above ${RANK_LIMIT_FLOOR} (${
        suffix(down, key)
      } ${shapeText(down.shape)}); refused before allocating`,
    );
  }
  const alpha = storedAlpha ?? rank;
  const doraScale = keys.dora.map((k) => raw.get(k)).find((t) => t !== undefined);
  const alphaTensor = raw.get(keys.alpha);
  const tensors = [alphaTensor, doraScale, down, up].filter((t) => t !== undefined);
  return {
    name: named.canonical,
    key,
    naming: named.naming.id,
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

/** A factor's key after its layer name (`lora_up.weight`, `lora_B.weight`, …), as messages name it. */
function suffix(t: RawTensor, key: string): string {
  return t.name.slice(key.length).replace(/^[._]/, "");
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
