/**
 * Merging several LoRAs into one before resizing: what the original tool describes but crashes
 * on (docs/design.md, "Weighted merges").
 *
 * For a layer, let the contributing members be those that have it with a
 * non-zero weight wᵢ, and cᵢ = |wᵢ|·αᵢ/rᵢ their per-rank scales. The merged
 * layer has rank R = Σ rᵢ and scale c = Π cᵢ^(rᵢ/R) (the rank-weighted
 * geometric mean); member i's factors are multiplied by √(cᵢ/c), its up
 * factor also by sign(wᵢαᵢ), and the ups are concatenated along columns, the
 * downs along rows. Then
 *
 *     c · up · down = Σᵢ wᵢ·αᵢ/rᵢ · Bᵢ·Aᵢ
 *
 * — the weighted sum of the members' deltas, with a balanced split of the
 * scales between members so no factor is needlessly large or small.
 *
 * @module
 */

import { LoraError } from "../errors.ts";
import type { FloatData } from "../linalg/backend.ts";
import { decodeFloats, encodeFloats } from "../safetensors/dtype.ts";
import type { LoraLayer, LoraModel, RawTensor } from "./lora_file.ts";
import { mergedName } from "./merge_spec.ts";
import { summarizePassThrough } from "./pass_through.ts";

/** Element type of merged factors. */
export type MergePrecision = "F32" | "F64";

/** One loaded member and its weight. */
export interface MergeInput {
  /** The member LoRA. */
  readonly model: LoraModel;
  /** Its merge weight (negative: subtract; 0: leave out). */
  readonly weight: number;
}

/** Options of {@link mergeLoras}. */
export interface MergeOptions {
  /** The entry as typed (default: the members' paths joined with `,`). */
  readonly entry?: string;
  /** Element type of the merged factors (default `F64`, exact to ~1e-15). */
  readonly precision?: MergePrecision;
}

/**
 * Merges loaded LoRAs. Members must agree on each shared layer's shape; a
 * layer with `dora_scale`, and a LoHa or LoKr layer, cannot be merged. Layers
 * no member contributes to (all weights or alphas 0: a zero delta) are left
 * out. Pass-through tensors are the union of the members' (the first member's
 * on a name clash), copied unweighted.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSyntheticLora } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * import { readLoraFile } from "./lora_file.ts";
 * import { mergeLoras } from "./merge.ts";
 * await writeSyntheticLora(`${dir}/style.safetensors`, { scale: 1 / 64, rank: 4, seed: 1 });
 * await writeSyntheticLora(`${dir}/char.safetensors`, { scale: 1 / 64, rank: 2, seed: 2 });
 * const a = await readLoraFile(`${dir}/style.safetensors`);
 * const b = await readLoraFile(`${dir}/char.safetensors`);
 * const m = mergeLoras([{ model: a, weight: 0.6 }, { model: b, weight: -0.4 }]);
 * assert.equal(m.name, "style(0.60)+char(-0.40)");
 * assert.equal(m.layers[0].factors.rank, 4 + 2); // the ranks are concatenated
 * ```
 */
export function mergeLoras(members: readonly MergeInput[], options: MergeOptions = {}): LoraModel {
  if (members.length === 0) throw new LoraError("a merge needs at least one member");
  const entry = options.entry ?? members.map((m) => m.model.entry).join(",");
  const precision = options.precision ?? "F64";
  const byName = members.map((m) => new Map(m.model.layers.map((l) => [l.name, l])));
  const names = [...new Set(members.flatMap((m) => m.model.layers.map((l) => l.name)))].sort(
    compareText,
  );

  const layers: LoraLayer[] = [];
  for (const name of names) {
    const holders = members.flatMap((member, i) => {
      const layer = byName[i].get(name);
      return layer ? [{ member, layer }] : [];
    });
    checkMergeable(entry, name, holders);
    const merged = mergeLayer(name, holders, precision);
    if (merged) layers.push(merged);
  }

  const layerNames = new Set(layers.map((l) => l.name));
  const passThrough = new Map<string, RawTensor>();
  let clashes = 0;
  let unweighted = 0;
  for (const { model, weight } of members) {
    for (const t of model.passThrough) {
      const owner = owningLayer(t.name, layerNames);
      if (owner !== undefined) {
        throw new LoraError(
          `${entry}: tensor '${t.name}' of ${model.entry} belongs to layer '${owner}', which is merged as a LoRA layer, but is not part of one (cannot merge it)`,
          { file: model.entry, tensor: t.name, key: owner },
        );
      }
      if (passThrough.has(t.name)) {
        clashes++;
        continue;
      }
      passThrough.set(t.name, t);
      if (weight !== 1) unweighted++;
    }
  }
  const kept = [...passThrough.values()].sort((a, b) => compareText(a.name, b.name));
  const first = members[0].model;
  return {
    name: mergedName(members.map((m) => ({ path: m.model.entry, weight: m.weight }))),
    entry,
    paths: members.flatMap((m) => m.model.paths),
    folder: first.folder,
    metadata: first.metadata,
    layers,
    passThrough: kept,
    passThroughSummary: summarizePassThrough(kept, { clashes, unweighted }),
    namings: [...new Set(members.flatMap((m) => m.model.namings))],
    ...(first.architecture ? { architecture: first.architecture } : {}),
    warnings: members.flatMap((m) => m.model.warnings),
  };
}

interface Holder {
  readonly member: MergeInput;
  readonly layer: LoraLayer;
}

function checkMergeable(entry: string, name: string, holders: readonly Holder[]): void {
  const [first] = holders;
  for (const { member, layer } of holders) {
    if (layer.lycoris) {
      // docs/design.md, "LyCORIS layers": a merge is resized from its concatenated factors,
      // which a LyCORIS layer has only in converted form.
      throw new LoraError(
        `${entry}: layer '${name}' of ${member.model.entry} is a ${
          layer.lycoris.kind === "loha" ? "LoHa" : "LoKr"
        } layer; LyCORIS layers cannot be merged (resize the file on its own)`,
        { file: member.model.entry, key: name },
      );
    }
    if (layer.doraScale) {
      throw new LoraError(
        `${entry}: layer '${name}' of ${member.model.entry} has a dora_scale; DoRA layers cannot be merged`,
        { file: member.model.entry, key: name },
      );
    }
    const same = layer.factors.out === first.layer.factors.out &&
      shapeText(layer.inShape) === shapeText(first.layer.inShape);
    if (!same) {
      throw new LoraError(
        `${entry}: layer '${name}' is ${describe(first.layer)} in ${first.member.model.entry} but ${
          describe(layer)
        } in ${member.model.entry}`,
        { file: member.model.entry, key: name },
      );
    }
  }
}

function describe(layer: LoraLayer): string {
  return `out ${layer.factors.out} × in ${shapeText(layer.inShape)}`;
}

function mergeLayer(
  name: string,
  holders: readonly Holder[],
  precision: MergePrecision,
): LoraLayer | undefined {
  const parts = holders.flatMap(({ member, layer }) => {
    const signed = member.weight * layer.alpha;
    const c = Math.abs(signed) / layer.factors.rank;
    if (!Number.isFinite(c)) {
      throw new LoraError(
        `${member.model.entry}: layer '${name}': alpha ${layer.alpha} with weight ${member.weight} is not a finite scale`,
        { file: member.model.entry, key: name },
      );
    }
    return c > 0 ? [{ layer, c, sign: Math.sign(signed) }] : [];
  });
  if (parts.length === 0) return undefined;

  const { out, inFlat } = parts[0].layer.factors;
  const rank = parts.reduce((sum, p) => sum + p.layer.factors.rank, 0);
  // exp of the rank-weighted mean log (no overflow from a product of powers);
  // equal scales, e.g. a single member, are kept exact.
  const scale = parts.every((p) => p.c === parts[0].c) ? parts[0].c : Math.exp(
    parts.reduce((sum, p) => sum + p.layer.factors.rank * Math.log(p.c), 0) / rank,
  );
  const up = new Float64Array(out * rank);
  const down = new Float64Array(rank * inFlat);
  let offset = 0;
  for (const { layer, c, sign } of parts) {
    const r = layer.factors.rank;
    const f = Math.sqrt(c / scale);
    const fUp = sign * f;
    const b = decode(layer.factors.up);
    for (let row = 0; row < out; row++) {
      for (let j = 0; j < r; j++) up[row * rank + offset + j] = fUp * b[row * r + j];
    }
    const a = decode(layer.factors.down);
    for (let k = 0; k < a.length; k++) down[offset * inFlat + k] = f * a[k];
    offset += r;
  }

  const first = parts[0].layer;
  const inShape = first.inShape;
  const upShape = [out, rank, ...first.upShape.slice(2)];
  const alpha = scale * rank;
  const upData = encode(up, precision);
  const downData = encode(down, precision);
  // A merged layer is new: it is spelled in the canonical (kohya) naming whatever its members'.
  return {
    name,
    key: name,
    naming: "kohya",
    factors: { up: upData, down: downData, out, rank, inFlat, scale },
    alpha,
    inShape,
    upShape,
    tensors: [
      { name: `${name}.alpha`, shape: [], ...encode(new Float64Array([alpha]), precision) },
      { name: `${name}.lora_down.weight`, shape: [rank, ...inShape], ...downData },
      { name: `${name}.lora_up.weight`, shape: upShape, ...upData },
    ],
  };
}

function decode(data: FloatData): Float64Array {
  return decodeFloats(data.bytes, data.dtype, Float64Array);
}

function encode(values: Float64Array, precision: MergePrecision): FloatData {
  const bytes = precision === "F64"
    ? new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
    : encodeFloats(values, precision);
  return { dtype: precision, bytes };
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** The merged layer a tensor name belongs to (`<layer>.<anything>`), if any. */
function owningLayer(tensor: string, layers: ReadonlySet<string>): string | undefined {
  for (let dot = tensor.indexOf("."); dot >= 0; dot = tensor.indexOf(".", dot + 1)) {
    const prefix = tensor.slice(0, dot);
    if (layers.has(prefix)) return prefix;
  }
  return undefined;
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
