/**
 * `inspect`: what a LoRA holds, per layer and per block, before resizing it.
 *
 * Without a checkpoint only the LoRA is read and decomposed. With one, the
 * recipes are also planned ({@link plan}, nothing written): base norms,
 * per-dimension scores and kept ranks join the layer rows.
 *
 * The result is plain JSON data (`JSON.stringify` gives the `--json` output,
 * whose shape `tests/inspect.schema.json` documents): no NaN or ±∞ — a value
 * that is unknown or infinite is `null`.
 *
 * @module
 */

import type { LoraLayer, LoraModel } from "../lora/lora_file.ts";
import { exactLora, layerType } from "../lora/lycoris_layers.ts";
import { type LayerSummary, type OutputSummary, ZERO_LAYER_SIGMA } from "../summary.ts";
import { type BlockLabel, blockOf, groupByBlock } from "./blocks.ts";

/** A singular value counts towards the effective rank when above this fraction of σ₁. */
export const EFFECTIVE_RANK_FRACTION = 0.01;

/**
 * One planned recipe of an inspection (with a checkpoint).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect, type InspectRecipe } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const result = await inspect({ lora, checkpoint: base, device: "cpu", normsCache: false });
 * const recipe: InspectRecipe = result.recipes[0];
 * assert.equal(recipe.recipe, "fro_ckpt=1,thr=-3.5");
 * assert.equal(recipe.threshold, -3.5);
 * assert.ok(recipe.rankAfter < recipe.rankBefore);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface InspectRecipe {
  /** The recipe text. */
  readonly recipe: string;
  /** Output path the recipe would write. */
  readonly path: string;
  /** Exact output file size in bytes. */
  readonly bytes: number;
  /** Threshold used; null when infinite (everything or nothing kept). */
  readonly threshold: number | null;
  /** Usable rank before: Σ k over the resized layers (see {@link InspectLayer.usableRank}). */
  readonly rankBefore: number;
  /** Σ k′ over the resized layers. */
  readonly rankAfter: number;
  /** Relative Frobenius error of the resized LoRA (0 … 1). */
  readonly relativeError: number;
}

/**
 * What one recipe does to one layer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect, type InspectLayerRecipe } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const result = await inspect({ lora, checkpoint: base, device: "cpu", normsCache: false });
 * // CLIP-L's last layer is trained by nothing (all zeroes): no recipe resizes it.
 * const zero = result.layers.find((l) => l.name.includes("te1_text_model_encoder_layers_11"))!;
 * const untouched: InspectLayerRecipe = zero.recipes[0];
 * assert.deepEqual(untouched, { kept: null, scores: [] });
 * const resized: InspectLayerRecipe = result.layers[0].recipes[0];
 * assert.equal(resized.scores.length, result.layers[0].sigma.length);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface InspectLayerRecipe {
  /** Kept dimensions k′; null when the recipe does not resize the layer (unpaired or all-zero). */
  readonly kept: number | null;
  /** Score of each singular value (null where not a finite number); empty when not resized. */
  readonly scores: (number | null)[];
}

/**
 * One LoRA layer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect, type InspectLayer } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const result = await inspect({ lora, checkpoint: base, device: "cpu", normsCache: false });
 * const layer: InspectLayer = result.layers[0];
 * assert.equal(layer.parameters, layer.rank * (layer.out + layer.inShape.reduce((a, b) => a * b)));
 * assert.equal(layer.sigma1, layer.sigma[0]);
 * assert.ok(layer.effectiveRank <= layer.rank);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface InspectLayer {
  /** Layer name. */
  readonly name: string;
  /** Block label (`TE1`, `IN04`, `MID`, …). */
  readonly block: BlockLabel;
  /**
   * `conv` for a kernel (a LoCon's 4-D down weight; a LyCORIS layer's base weight, when
   * paired), else `linear`.
   */
  readonly kind: "linear" | "conv";
  /** What the file stores: a LoRA pair, or a LyCORIS LoHa or LoKr layer. */
  readonly type: "lora" | "loha" | "lokr";
  /** Rows of ΔW. */
  readonly out: number;
  /** The down weight's trailing dims: `[in]` or `[in, kh, kw]`. */
  readonly inShape: number[];
  /**
   * Rank as a LoRA: the stored rank r; for LoHa r1·r2, for LoKr the number of nonzero singular
   * values, rank(W1)·rank(W2) (the rank of the exact LoRA each converts to).
   */
  readonly rank: number;
  /**
   * Usable rank k: the number of singular values, min(r, out, in′), or 0 for an all-zero layer.
   * What a resize can keep, and what the dry run's and summaries' rank totals add up.
   */
  readonly usableRank: number;
  /** Stored alpha (rank when the file has none; for LyCORIS, that of the exact LoRA). */
  readonly alpha: number;
  /** LoRA parameters: r·(out + in′), r as in `rank`. */
  readonly parameters: number;
  /** Singular values of ΔW = α/r·up·down, descending (length min(r, out, in′)). */
  readonly sigma: number[];
  /** σ₁ (0 for an all-zero layer). */
  readonly sigma1: number;
  /** ‖ΔW‖_F. */
  readonly frobenius: number;
  /** Number of σᵢ above 1 % of σ₁. */
  readonly effectiveRank: number;
  /** ‖ΔW‖²_F over the sum for all layers (0 … 1). */
  readonly energyShare: number;
  /** The base weight it pairs with; null without a checkpoint or when no resize recipe touches it. */
  readonly base: string | null;
  /** ‖W_base‖_F when known. */
  readonly baseFrobenius: number | null;
  /** σ_max(W_base) when known (recipes with `spn_ckpt`). */
  readonly baseSpectral: number | null;
  /** Per planned recipe, in the order of {@link InspectResult.recipes}. */
  readonly recipes: InspectLayerRecipe[];
}

/**
 * Totals of one block.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect, type InspectBlock } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const result = await inspect({ lora, checkpoint: base, device: "cpu", normsCache: false });
 * const blocks: InspectBlock[] = result.blocks;
 * assert.equal(blocks.reduce((n, b) => n + b.layers, 0), result.layerCount);
 * assert.equal(blocks.reduce((n, b) => n + b.kept[0], 0), result.recipes[0].rankAfter);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface InspectBlock {
  /** Block label. */
  readonly block: BlockLabel;
  /** Number of layers. */
  readonly layers: number;
  /** Σ stored rank. */
  readonly rank: number;
  /** Σ usable rank. */
  readonly usableRank: number;
  /** Σ effective rank. */
  readonly effectiveRank: number;
  /** Share of the LoRA's total ‖ΔW‖²_F (0 … 1). */
  readonly energyShare: number;
  /** Σ LoRA parameters. */
  readonly parameters: number;
  /** Per planned recipe: Σ kept dimensions over the block's resized layers. */
  readonly kept: number[];
}

/**
 * The result of `inspect()`: JSON-ready, no NaN or ±∞.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect, type InspectResult } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const result: InspectResult = await inspect({ lora, device: "cpu" });
 * assert.equal(result.checkpoint, null);
 * assert.equal(result.layerCount, 986);
 * assert.deepEqual(JSON.parse(JSON.stringify(result)), result); // plain JSON data
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface InspectResult {
  /** The LoRA entry as given. */
  readonly lora: string;
  /** The LoRA's name (file stem, or the merged name). */
  readonly name: string;
  /**
   * The namings its layers are written in, each once: `kohya`, `kohya-diffusers`,
   * `simpletuner`, `peft`, `diffusers`, `diffusers-attn-procs`, `comfyui`.
   */
  readonly namings: string[];
  /** The architecture its tensors show it was made for (`sdxl`, `sd15`), or null. */
  readonly architecture: "sdxl" | "sd15" | null;
  /** The checkpoint, or null. */
  readonly checkpoint: string | null;
  /** Number of layers. */
  readonly layerCount: number;
  /** Layers whose ΔW is zero (σ₁ below 1e-6). */
  readonly zeroLayers: number;
  /** Σ stored rank. */
  readonly totalRank: number;
  /** Σ usable rank (equals a planned recipe's `rankBefore` when every layer pairs). */
  readonly usableRank: number;
  /** Σ effective rank. */
  readonly effectiveRank: number;
  /** Σ LoRA parameters of the layers. */
  readonly parameters: number;
  /** Tensors not part of any layer (copied unchanged by a resize unless dropped). */
  readonly passThroughTensors: number;
  /** Planned recipes (empty without a checkpoint). */
  readonly recipes: InspectRecipe[];
  /** Block totals, in model order. */
  readonly blocks: InspectBlock[];
  /** Layers, by name. */
  readonly layers: InspectLayer[];
}

const finite = (x: number | undefined): number | null =>
  x !== undefined && Number.isFinite(x) ? x : null;

/**
 * Counts the singular values above `fraction`·σ₁ (σ descending).
 *
 * @example
 * ```ts
 * import { effectiveRank } from "./inspect.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(effectiveRank(new Float64Array([2, 0.5, 0.03, 0.01])), 3);
 * ```
 */
export function effectiveRank(
  sigma: ArrayLike<number>,
  fraction: number = EFFECTIVE_RANK_FRACTION,
): number {
  if (sigma.length === 0 || !(sigma[0] > 0)) return 0;
  const floor = fraction * sigma[0];
  let n = 0;
  for (let i = 0; i < sigma.length; i++) if (sigma[i] > floor) n++;
  return n;
}

/** What an inspection is made of. */
export interface InspectionInput {
  /** The LoRA as loaded. */
  readonly model: LoraModel;
  /** Singular values of each of its layers, in the model's order. */
  readonly sigmas: readonly Float64Array[];
  /** The checkpoint, when recipes were selected against one. */
  readonly checkpoint?: string;
  /** What each recipe would write (empty without a checkpoint). */
  readonly outputs: readonly OutputSummary[];
}

/**
 * The inspection of a LoRA: per layer its kind, shape, stored rank and alpha, singular values,
 * effective rank and share of the total energy; per block the totals; with recipes, base norms
 * and what each recipe keeps.
 */
export function inspectionOf(
  { model, sigmas, checkpoint, outputs }: InspectionInput,
): InspectResult {
  const energies = sigmas.map((s) => s.reduce((a, x) => a + x * x, 0));
  const totalEnergy = energies.reduce((a, b) => a + b, 0);
  const byName = outputs.map((o) => new Map(o.layers.map((l) => [l.name, l])));
  const layers = model.layers.map((layer, i) =>
    layerRow(layer, sigmas[i], energies[i], totalEnergy, byName.map((p) => p.get(layer.name)))
  );
  return {
    lora: model.entry,
    name: model.name,
    namings: [...model.namings],
    architecture: model.architecture?.architecture ?? null,
    checkpoint: checkpoint ?? null,
    layerCount: layers.length,
    zeroLayers: layers.filter((l) => !(l.sigma1 >= ZERO_LAYER_SIGMA)).length,
    totalRank: sum(layers, (l) => l.rank),
    usableRank: sum(layers, (l) => l.usableRank),
    effectiveRank: sum(layers, (l) => l.effectiveRank),
    parameters: sum(layers, (l) => l.parameters),
    passThroughTensors: model.passThrough.length,
    recipes: outputs.map((o) => ({
      recipe: o.recipe,
      path: o.path,
      bytes: o.bytes,
      threshold: finite(o.threshold),
      rankBefore: o.rankBefore,
      rankAfter: o.rankAfter,
      relativeError: o.relativeError,
    })),
    blocks: groupByBlock(layers).map(({ block, items }) => ({
      block,
      layers: items.length,
      rank: sum(items, (l) => l.rank),
      usableRank: sum(items, (l) => l.usableRank),
      effectiveRank: sum(items, (l) => l.effectiveRank),
      // From the energies, so that one block holding everything is exactly 1.
      energyShare: totalEnergy > 0
        ? Math.min(1, sum(items, (l) => l.frobenius ** 2) / totalEnergy)
        : 0,
      parameters: sum(items, (l) => l.parameters),
      kept: outputs.map((_, r) => sum(items, (l) => l.recipes[r].kept ?? 0)),
    })),
    layers,
  };
}

function layerRow(
  layer: LoraLayer,
  sigma: Float64Array,
  energy: number,
  totalEnergy: number,
  summaries: readonly (LayerSummary | undefined)[],
): InspectLayer {
  const { out, inFlat } = layer.factors;
  const { rank, alpha } = exactLora(layer, sigma);
  const known = summaries.find((p) => p !== undefined);
  // A LyCORIS conv layer learns its kernel from the base weight it pairs with.
  const inShape = known?.inShape ?? layer.inShape;
  const norm = (normOf: (s: LayerSummary) => number | undefined) =>
    finite(summaries.map((s) => s && normOf(s)).find((x) => x !== undefined));
  return {
    name: layer.name,
    block: blockOf(layer.name),
    kind: inShape.length > 1 ? "conv" : "linear",
    type: layerType(layer),
    out,
    inShape: [...inShape],
    rank,
    usableRank: (sigma[0] ?? 0) >= ZERO_LAYER_SIGMA ? sigma.length : 0,
    alpha,
    parameters: rank * (out + inFlat),
    sigma: [...sigma],
    sigma1: sigma[0] ?? 0,
    frobenius: Math.sqrt(energy),
    effectiveRank: effectiveRank(sigma),
    energyShare: totalEnergy > 0 ? energy / totalEnergy : 0,
    base: known?.base ?? null,
    baseFrobenius: norm((p) => p.baseFrobenius),
    baseSpectral: norm((p) => p.baseSpectral),
    recipes: summaries.map((s) =>
      s ? { kept: s.kept, scores: [...s.scores].map((x) => finite(x)) } : { kept: null, scores: [] }
    ),
  };
}

function sum<T>(items: readonly T[], value: (item: T) => number): number {
  let total = 0;
  for (const item of items) total += value(item);
  return total;
}

export { formatInspectTable, RANK_NOTE } from "./inspect_table.ts";
