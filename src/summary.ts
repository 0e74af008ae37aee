/**
 * What a resize produces, as plain data: one {@link OutputSummary} per (LoRA, recipe) pair, with
 * a {@link LayerSummary} per resized layer and, on request, the size ↔ error curve of the
 * recipe's scoring. The pipeline (`src/pipeline/`) fills these in; the reports (`src/report/`)
 * and the command line read them, so neither depends on the other.
 *
 * @module
 */

import type { SizeCut } from "./recipe/select.ts";

/**
 * A layer whose largest singular value is below this (absolute) is all zeroes: the original
 * skips such layers with a warning, and so does this tool; `inspect` counts them.
 */
export const ZERO_LAYER_SIGMA = 1e-6;

/**
 * One achievable point of the size ↔ error trade-off of a recipe's scoring.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type CurvePoint, plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await plan({
 *   checkpoint: base,
 *   loras: [lora],
 *   curve: true,
 *   device: "cpu",
 *   normsCache: false,
 * });
 * const curve: readonly CurvePoint[] = outputs[0].curve!;
 * assert.deepEqual([curve[0].rank, curve[0].relativeError], [0, 1]); // nothing kept
 * assert.deepEqual([curve.at(-1)!.rank, curve.at(-1)!.relativeError], [outputs[0].rankBefore, 0]);
 * assert.ok(curve.every((p, i) => i === 0 || p.bytes >= curve[i - 1].bytes));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface CurvePoint {
  /** Number of kept dimensions (a prefix of the score ranking). */
  readonly rank: number;
  /** Score of the last kept dimension (+∞ for the empty selection). */
  readonly threshold: number;
  /** Exact output file size in bytes. */
  readonly bytes: number;
  /** Relative Frobenius error of the truncated LoRA (0 … 1). */
  readonly relativeError: number;
}

/**
 * What a recipe does to one resized layer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type LayerSummary, plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await plan({
 *   checkpoint: base,
 *   loras: [lora],
 *   device: "cpu",
 *   normsCache: false,
 * });
 * const layer: LayerSummary = outputs[0].layers[0];
 * assert.equal(layer.keep.length, layer.kept);
 * // The default recipe keeps the dimensions scoring at least −3.5.
 * assert.ok(layer.keep.every((i) => layer.scores[i] >= -3.5));
 * assert.ok(layer.baseFrobenius! > 0);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface LayerSummary {
  /** Layer name. */
  readonly name: string;
  /** The base weight (or q/k/v block) it modifies, as the original labels it (none without a base). */
  readonly base?: string;
  /** `linear`, or `conv` for a LoCon kernel (4-D down weight). */
  readonly kind: "linear" | "conv";
  /** Rows of ΔW. */
  readonly out: number;
  /** The down weight's trailing dims (`[in]` or `[in, kh, kw]`). */
  readonly inShape: readonly number[];
  /** Stored rank r (for a LoHa or LoKr layer, that of the exact LoRA it converts to). */
  readonly rank: number;
  /** Stored alpha (for a LoHa or LoKr layer, that of the exact LoRA: scale·rank). */
  readonly alpha: number;
  /** Frobenius norm of the base weight, when known. */
  readonly baseFrobenius?: number;
  /** Spectral norm of the base weight, when known. */
  readonly baseSpectral?: number;
  /** Number of singular values k. */
  readonly dims: number;
  /** Rank written k′: `keep.length`, plus zero directions where kohya's rule asks for more. */
  readonly kept: number;
  /** Indices (into `sigma`) of the kept dimensions, ascending. */
  readonly keep: readonly number[];
  /** Scaled singular values (α/r included, rescale not). */
  readonly sigma: Float64Array;
  /** Scores of the recipe. */
  readonly scores: Float64Array;
}

/**
 * What one (LoRA, recipe) pair produces (or would produce, in a dry run).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type OutputSummary, plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await plan({
 *   checkpoint: base,
 *   loras: [lora],
 *   device: "cpu",
 *   normsCache: false,
 * });
 * const output: OutputSummary = outputs[0];
 * assert.equal(output.rankAfter, output.layers.reduce((n, l) => n + l.kept, 0));
 * assert.ok(output.path.endsWith("_frockpt1_th-3.5.safetensors"));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface OutputSummary {
  /** The LoRA entry as given. */
  readonly lora: string;
  /** The recipe text. */
  readonly recipe: string;
  /** Output path. */
  readonly path: string;
  /** Exact file size in bytes. */
  readonly bytes: number;
  /** Whether the file was written (false in a dry run). */
  readonly written: boolean;
  /** The threshold used (user's, or computed in size mode); NaN for kohya's per-layer rules. */
  readonly threshold: number;
  /** Total rank of the resized layers before (Σ k over non-zero layers). */
  readonly rankBefore: number;
  /** Total rank after (Σ k′). */
  readonly rankAfter: number;
  /** ‖ΔW_out − rescale·ΔW_in‖_F / ‖rescale·ΔW_in‖_F over all resized layers. */
  readonly relativeError: number;
  /**
   * Per resized layer (non-zero paired layers, name order; kohya's rules add the all-zero ones
   * after them).
   */
  readonly layers: readonly LayerSummary[];
  /** The size-mode cut, when the target cut the ranking. */
  readonly cut?: SizeCut;
  /** Size ↔ error curve (when `curve` was asked for), from the empty to the full selection. */
  readonly curve?: readonly CurvePoint[];
}

/**
 * The result of `resize()` and `plan()`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plan, type ResizeResult } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const result: ResizeResult = await plan({
 *   checkpoint: base,
 *   loras: [lora, lora],
 *   recipes: "fro_ckpt=1,thr=-3.5:params=1,thr=-2",
 *   device: "cpu",
 *   normsCache: false,
 * });
 * // One output per (LoRA, recipe), LoRA by LoRA.
 * assert.deepEqual(result.outputs.map((o) => o.recipe), [
 *   "fro_ckpt=1,thr=-3.5",
 *   "params=1,thr=-2",
 *   "fro_ckpt=1,thr=-3.5",
 *   "params=1,thr=-2",
 * ]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface ResizeResult {
  /** One summary per (LoRA, recipe), in order. */
  readonly outputs: OutputSummary[];
}
