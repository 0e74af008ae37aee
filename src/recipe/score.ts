/**
 * Per-dimension scores of a recipe, and the numbers the original tool logs
 * about them.
 *
 * The score of dimension i of a layer is
 *
 * ```
 * scoreᵢ = log10(σᵢ·rescale) − Σₘ wₘ·log10(Refₘ)
 * ```
 *
 * the log10 of σᵢ·rescale over the weighted geometric mean of the references
 * (the weights sum to 1). Terms are applied in the original's order and only
 * for weights with |w| > 1e-6. The original scores in float32; this port
 * scores in float64, so only dimensions within ~1e-6 of a threshold can land
 * on the other side.
 *
 * @module
 */

import type { Recipe } from "./recipe.ts";
import { pyPercentFormat } from "./pyformat.ts";

/** Weights whose magnitude is at most this are ignored (as in the original). */
export const WEIGHT_EPSILON = 1e-6;

/** The parts of a recipe scoring uses. */
export type ScoreRecipe = Pick<Recipe, "weights" | "rescale">;

/** What scoring one layer needs besides the recipe. */
export interface LayerScoreInput {
  /** Scaled singular values σ (α/r included, rescale not), descending. */
  readonly sigma: Float64Array;
  /** Rows of ΔW. */
  readonly out: number;
  /** Columns of ΔW (in′). */
  readonly inFlat: number;
  /** Spectral norm of the base weight (needed when `spn_ckpt` is weighted). */
  readonly spnCkpt?: number;
  /** Frobenius norm of the base weight (needed when `fro_ckpt` is weighted). */
  readonly froCkpt?: number;
  /** uᵢᵀ·W·vᵢ per dimension (sign ignored; needed when `subspace` is weighted). */
  readonly subspace?: Float64Array;
  /** The layer's name, for error messages. */
  readonly name?: string;
}

/** Which base-model quantities a recipe needs. */
export interface RecipeNeeds {
  /** Frobenius norms of the base weights. */
  readonly frobenius: boolean;
  /** Spectral norms of the base weights. */
  readonly spectral: boolean;
  /** Per-dimension subspace scales |uᵢᵀ·W·vᵢ|. */
  readonly subspace: boolean;
}

/** Options of {@link recipeNeeds}. */
export interface RecipeNeedsOptions {
  /** The per-layer DEBUG report will be printed (it needs every Frobenius norm). */
  readonly layerReport?: boolean;
}

const weighted = (w: number): boolean => Math.abs(w) > WEIGHT_EPSILON;

/**
 * The base-model quantities a recipe's scores need.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseRecipe } from "./recipe.ts";
 * import { recipeNeeds } from "./score.ts";
 * assert.deepEqual(recipeNeeds(parseRecipe("fro_ckpt=1,thr=-3.5")), {
 *   frobenius: true,
 *   spectral: false,
 *   subspace: false,
 * });
 * ```
 */
export function recipeNeeds(recipe: ScoreRecipe, options: RecipeNeedsOptions = {}): RecipeNeeds {
  const w = recipe.weights;
  return {
    frobenius: weighted(w.fro_ckpt) || options.layerReport === true,
    spectral: weighted(w.spn_ckpt),
    subspace: weighted(w.subspace),
  };
}

/** ‖x‖₂, scaled so that tiny or huge values neither underflow nor overflow. */
function norm2(x: Float64Array, skip?: Uint8Array): number {
  let max = 0;
  for (let i = 0; i < x.length; i++) {
    if (skip?.[i]) continue;
    const a = Math.abs(x[i]);
    if (a > max || Number.isNaN(a)) max = a;
  }
  if (max === 0 || !Number.isFinite(max)) return max;
  let sum = 0;
  for (let i = 0; i < x.length; i++) {
    if (skip?.[i]) continue;
    const r = x[i] / max;
    sum += r * r;
  }
  return max * Math.sqrt(sum);
}

function required<T>(value: T | undefined, what: string, layer: LayerScoreInput): T {
  if (value === undefined) {
    throw new TypeError(
      `scoreLayer: ${what} is required by the recipe (layer ${layer.name ?? "?"})`,
    );
  }
  return value;
}

/**
 * Scores every dimension of one layer, in float64.
 *
 * @throws {TypeError} if the recipe weights a reference that `layer` lacks
 * (ask {@link recipeNeeds} first).
 *
 * @example
 * ```ts
 * import { parseRecipe } from "./recipe.ts";
 * import assert from "node:assert/strict";
 * import { scoreLayer } from "./score.ts";
 * const recipe = parseRecipe("fro_ckpt=1,thr=-3.5");
 * const scores = scoreLayer(recipe, { sigma: new Float64Array([1, 0.01]), out: 4, inFlat: 4, froCkpt: 10 });
 * assert.deepEqual(Array.from(scores), [-1, -3]);
 * ```
 */
export function scoreLayer(recipe: ScoreRecipe, layer: LayerScoreInput): Float64Array {
  const { sigma } = layer;
  const w = recipe.weights;
  const k = sigma.length;
  const scores = new Float64Array(k);
  const logRescale = Math.log10(recipe.rescale);
  for (let i = 0; i < k; i++) scores[i] = Math.log10(sigma[i]) + logRescale;
  if (weighted(w.subspace)) {
    const scales = required(layer.subspace, "the subspace scales", layer);
    if (scales.length < k) {
      const where = `layer ${layer.name ?? "?"}`;
      throw new TypeError(`scoreLayer: ${scales.length} subspace scales for ${k} dims (${where})`);
    }
    for (let i = 0; i < k; i++) scores[i] -= w.subspace * Math.log10(Math.abs(scales[i]));
  }
  // The other references are one number per layer, subtracted one step each
  // in the original's order (the order fixes the last bits).
  const terms: number[] = [];
  if (weighted(w.spn_ckpt)) {
    terms.push(w.spn_ckpt * Math.log10(required(layer.spnCkpt, "the spectral norm", layer)));
  }
  if (weighted(w.spn_lora)) terms.push(w.spn_lora * Math.log10(sigma[0]));
  if (weighted(w.fro_ckpt)) {
    terms.push(w.fro_ckpt * Math.log10(required(layer.froCkpt, "the Frobenius norm", layer)));
  }
  if (weighted(w.fro_lora)) terms.push(w.fro_lora * Math.log10(norm2(sigma)));
  if (weighted(w.params)) terms.push(w.params * Math.log10(layer.out + layer.inFlat));
  for (const term of terms) {
    for (let i = 0; i < k; i++) scores[i] -= term;
  }
  return scores;
}

/** The relative truncation errors of one layer, in percent (the DEBUG report). */
export interface TruncationError {
  /** 100·‖σ of dropped dims‖₂ / ‖σ‖₂. */
  readonly rleLora: number;
  /** 100·rescale·‖σ of dropped dims‖₂ / ‖W_base‖_F. */
  readonly rleCkpt: number;
}

/** Options of {@link truncationError}. */
export interface TruncationErrorOptions {
  /** The recipe's rescale factor. */
  readonly rescale: number;
  /** Frobenius norm of the base weight. */
  readonly froCkpt: number;
}

/**
 * How much of the layer a selection drops, relative to the layer itself and
 * to the base weight (the `rle_lora` / `rle_ckpt` numbers of the DEBUG log).
 *
 * @param sigma the layer's scaled singular values
 * @param keep indices of the kept dimensions
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { truncationError } from "./score.ts";
 * const e = truncationError(new Float64Array([4, 3]), [0], { rescale: 1, froCkpt: 30 });
 * assert.deepEqual([e.rleLora, e.rleCkpt], [60, 10]);
 * ```
 */
export function truncationError(
  sigma: Float64Array,
  keep: readonly number[],
  options: TruncationErrorOptions,
): TruncationError {
  const kept = new Uint8Array(sigma.length);
  for (const i of keep) kept[i] = 1;
  const scaled = sigma.map((s) => s * options.rescale);
  const err = keep.length === sigma.length ? 0 : norm2(scaled, kept);
  return { rleLora: (100 * err) / norm2(scaled), rleCkpt: (100 * err) / options.froCkpt };
}

/** The numbers of one per-layer DEBUG line. */
export interface LayerDebugValues extends TruncationError {
  /** Number of singular values of the layer. */
  readonly dims: number;
  /** Number of kept dimensions. */
  readonly kept: number;
}

/**
 * The per-layer DEBUG line of the original:
 * `dim:%3d->%-3d rle_lora:%6.2f%% rle_ckpt:%6.2f%% <layer>`.
 *
 * @example
 * ```ts
 * import { formatLayerDebugLine } from "./score.ts";
 * import assert from "node:assert/strict";
 * const line = formatLayerDebugLine("lora_te1_x", { dims: 32, kept: 5, rleLora: 3.19, rleCkpt: 0.03 });
 * assert.deepEqual(line, "dim: 32->5   rle_lora:  3.19% rle_ckpt:  0.03% lora_te1_x");
 * ```
 */
export function formatLayerDebugLine(name: string, values: LayerDebugValues): string {
  return pyPercentFormat("dim:%3d->%-3d rle_lora:%6.2f%% rle_ckpt:%6.2f%% %s", [
    values.dims,
    values.kept,
    values.rleLora,
    values.rleCkpt,
    name,
  ]);
}

/** The fractions of the `Score quantiles` log line. */
export const SCORE_QUANTILE_FRACTIONS: readonly number[] = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99];

/**
 * Quantiles of all scores of a recipe (all layers), at `fractions`
 * (default {@link SCORE_QUANTILE_FRACTIONS}), by linear interpolation between
 * order statistics at position q·(n−1), as PyTorch's `quantile` does. Any NaN
 * score makes every quantile NaN (as in PyTorch); no score at all gives NaN.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { scoreQuantiles } from "./score.ts";
 * const q = scoreQuantiles([new Float64Array([0, 1]), new Float64Array([3, 2])], [0.5, 0.9]);
 * assert.equal(q[0], 1.5);
 * assert.ok(Math.abs(q[1] - 2.7) < 1e-12);
 * ```
 */
export function scoreQuantiles(
  scores: readonly Float64Array[],
  fractions: readonly number[] = SCORE_QUANTILE_FRACTIONS,
): number[] {
  let n = 0;
  for (const layer of scores) n += layer.length;
  const sorted = new Float64Array(n);
  let at = 0;
  for (const layer of scores) {
    sorted.set(layer, at);
    at += layer.length;
  }
  if (n === 0 || sorted.some(Number.isNaN)) return fractions.map(() => NaN);
  sorted.sort();
  return fractions.map((q) => {
    const position = q * (n - 1);
    const below = sorted[Math.floor(position)];
    const above = sorted[Math.ceil(position)];
    const weight = position - Math.floor(position);
    // PyTorch's lerp, written so that equal ends (even infinite ones) give that end.
    if (below === above) return below;
    return weight < 0.5 ? below + weight * (above - below) : above - (above - below) * (1 - weight);
  });
}

/**
 * The original's INFO line `Score quantiles: 0.01:<q> 0.10:<q> …` (3 decimals).
 *
 * @param quantiles values at {@link SCORE_QUANTILE_FRACTIONS} (from {@link scoreQuantiles})
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatQuantilesLine } from "./score.ts";
 * const line = formatQuantilesLine([-4.1264, -3.3361, -2.8259, -2.3081, -1.8622, -1.4891, -0.9921]);
 * assert.equal(
 *   line,
 *   "Score quantiles: 0.01:-4.126 0.10:-3.336 0.25:-2.826 0.50:-2.308 0.75:-1.862 0.90:-1.489 0.99:-0.992",
 * );
 * ```
 */
export function formatQuantilesLine(quantiles: readonly number[]): string {
  if (quantiles.length !== SCORE_QUANTILE_FRACTIONS.length) {
    throw new RangeError(
      `formatQuantilesLine: expected ${SCORE_QUANTILE_FRACTIONS.length} quantiles, got ${quantiles.length}`,
    );
  }
  const parts = SCORE_QUANTILE_FRACTIONS.map((q, i) =>
    pyPercentFormat("%.2f:%.3f", [q, quantiles[i]])
  );
  return `Score quantiles: ${parts.join(" ")}`;
}
