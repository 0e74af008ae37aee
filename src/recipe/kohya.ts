/**
 * kohya sd-scripts' per-layer resize rules (`networks/resize_lora.py`), as
 * pure functions of a layer's singular values and shape.
 *
 * kohya forms each layer's ΔW′ = up·down (α/r not applied), takes its full
 * SVD — `n = min(out, in′)` singular values S, the ones beyond the stored
 * rank being zero up to rounding — and picks a rank per layer:
 *
 * - `sv_ratio p`: c = #{Sᵢ > S₀/p}; rank = clamp(c, 1, n−1) + 1.
 * - `sv_cumulative p`: the first i with ΣS[..i]/ΣS ≥ p; rank = clamp(i+1, 1, n−1) + 1.
 * - `sv_fro p`: the first i with ΣS²[..i]/ΣS² ≥ p²; rank = clamp(i+1, 1, n−1) + 1.
 * - no method: rank = the cap (a fixed rank).
 * - then: S₀ ≤ 1e-6 (a zero layer) → rank 1; otherwise at most the cap
 *   (`new_conv_rank` for every 4-D layer, 1×1 included; `new_rank` for the rest).
 *
 * So the dynamic methods keep one dimension more than their criterion asks
 * for, and never fewer than 2. The new alpha is `scale·rank` with
 * scale = α/r (1 when the layer has no alpha), computed in float32: the
 * ratio α/rank, and so the layer's strength per rank, is kept.
 *
 * Where kohya fails, these functions do not: a rank above n (a fixed rank
 * larger than the layer, or n = 1) crashes kohya's script on a reshape; here
 * the rank is capped at n. Why the rest follows kohya to the letter, and how
 * the output factors relate to kohya's, is in docs/design.md ("kohya's
 * resize rules").
 *
 * @module
 */

import { pyFormatFixed, pyRepr } from "./pyfloat.ts";
import type { Selection } from "./select.ts";

/** kohya's `--dynamic_method` choices. */
export type KohyaMethod = "sv_ratio" | "sv_fro" | "sv_cumulative";

/** kohya's dynamic methods, in the order of its `--help`. */
export const KOHYA_METHODS: readonly KohyaMethod[] = ["sv_ratio", "sv_fro", "sv_cumulative"];

/** kohya's threshold below which a layer's largest singular value means "all zero". */
export const KOHYA_MIN_SV = 1e-6;

/** A per-layer kohya rule: a dynamic method with a cap, or a fixed rank. */
export interface KohyaRule {
  /** The dynamic method; unset for a fixed rank. */
  readonly method?: KohyaMethod;
  /** The method's parameter (`--dynamic_param`); required with `method`. */
  readonly param?: number;
  /**
   * Rank of linear layers: the cap with a method, the fixed rank without one.
   * Unset with a method: no cap but the layer's own size.
   */
  readonly rank?: number;
  /** Rank (cap or fixed) of 4-D layers; default `rank`. */
  readonly convRank?: number;
}

/** The shape facts kohya's rule looks at. */
export interface KohyaLayerShape {
  /** Rows of ΔW. */
  readonly out: number;
  /** Columns of ΔW (in′ = in·kh·kw for a conv kernel). */
  readonly inFlat: number;
  /** The down weight is 4-D (a conv layer, 1×1 included). */
  readonly conv: boolean;
}

/** The singular values a rule reads, and the scale they carry. */
export interface KohyaSpectrum {
  /**
   * Singular values of ΔW = scale·up·down, descending. Those of a
   * low-rank layer may stop at its rank: the rest of kohya's n are zero.
   */
  readonly sigma: ArrayLike<number>;
  /**
   * α/r, the scale included in `sigma` (kohya decides on up·down without it:
   * it matters only for the zero-layer test, since every criterion is a ratio).
   */
  readonly scale: number;
}

/** The cap a rule puts on a layer (undefined: none besides the layer's size). */
export function kohyaCap(rule: KohyaRule, layer: KohyaLayerShape): number | undefined {
  return layer.conv ? rule.convRank ?? rule.rank : rule.rank;
}

/**
 * The first index i with `cum[i] ≥ target` (the length when there is none):
 * `torch.searchsorted`'s default (left) side.
 */
function searchLeft(cum: Float64Array, target: number): number {
  let lo = 0, hi = cum.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cum[mid] < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Cumulative sums of `f(σᵢ)` over the n values (zeros past `sigma`), divided by the total. */
function cumulativeShare(sigma: ArrayLike<number>, n: number, f: (s: number) => number) {
  const cum = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) cum[i] = total += i < sigma.length ? f(sigma[i]) : 0;
  for (let i = 0; i < n; i++) cum[i] /= total;
  return cum;
}

/**
 * The rank a dynamic method asks for, before the zero-layer test and the cap
 * (so at least 2, at most n, and 2 when n is 1: kohya's clamp).
 *
 * @param sigma descending singular values (any common scale); zeros past its end up to n
 * @param n kohya's number of singular values, min(out, in′)
 *
 * @example
 * ```ts
 * import { kohyaDynamicRank } from "./kohya.ts";
 * const s = [4, 2, 1, 0.5];
 * const ranks = [
 *   kohyaDynamicRank("sv_ratio", 3, s, 4),
 *   kohyaDynamicRank("sv_fro", 0.9, s, 4),
 *   kohyaDynamicRank("sv_cumulative", 0.9, s, 4),
 * ];
 * if (ranks.join() !== "3,3,4") throw new Error(`${ranks}`);
 * ```
 */
export function kohyaDynamicRank(
  method: KohyaMethod,
  param: number,
  sigma: ArrayLike<number>,
  n: number,
): number {
  let index: number;
  if (method === "sv_ratio") {
    const floor = sigma[0] / param;
    let count = 0;
    for (let i = 0; i < sigma.length; i++) if (sigma[i] > floor) count++;
    index = count;
  } else if (method === "sv_cumulative") {
    index = searchLeft(cumulativeShare(sigma, n, (s) => s), param) + 1;
  } else {
    index = searchLeft(cumulativeShare(sigma, n, (s) => s * s), param * param) + 1;
  }
  return Math.max(1, Math.min(index, n - 1)) + 1;
}

/**
 * The rank kohya gives a layer, capped at min(out, in′) where kohya itself
 * would crash.
 *
 * @example
 * ```ts
 * import { kohyaRank } from "./kohya.ts";
 * const layer = { out: 320, inFlat: 320, conv: false };
 * const spectrum = { sigma: [0.4, 0.2, 0.1, 0.05], scale: 0.5 };
 * // sv_fro 0.9: 2 dims reach 0.81 of the energy, kohya keeps one more.
 * if (kohyaRank(spectrum, layer, { method: "sv_fro", param: 0.9, rank: 16 }) !== 3) throw 0;
 * // A zero layer keeps rank 1; a fixed rank ignores the spectrum.
 * if (kohyaRank({ sigma: [], scale: 0.5 }, layer, { method: "sv_fro", param: 0.9 }) !== 1) throw 0;
 * if (kohyaRank(spectrum, layer, { rank: 8 }) !== 8) throw 0;
 * ```
 */
export function kohyaRank(
  spectrum: KohyaSpectrum,
  layer: KohyaLayerShape,
  rule: KohyaRule,
): number {
  const n = Math.min(layer.out, layer.inFlat);
  const { sigma, scale } = spectrum;
  const largest = sigma.length > 0 ? sigma[0] / Math.abs(scale) : 0;
  if (!(largest > KOHYA_MIN_SV)) return 1;
  const cap = kohyaCap(rule, layer);
  let rank: number;
  if (rule.method !== undefined) {
    if (rule.param === undefined) throw new TypeError("kohyaRank: a method needs its param");
    rank = kohyaDynamicRank(rule.method, rule.param, sigma, n);
  } else {
    if (cap === undefined) throw new TypeError("kohyaRank: a fixed rank needs rank");
    rank = cap;
  }
  return Math.min(rank, cap ?? Infinity, n);
}

/**
 * The alpha kohya stores for a layer resized to `rank`: `scale·rank` in
 * float32, with scale = f32(α)/r (float32 division), or 1 when the layer has
 * no alpha. The caller rounds it to the output dtype.
 *
 * @param alpha the stored alpha, undefined when the layer has none
 * @param storedRank the input rank r
 * @param rank the new rank
 *
 * @example
 * ```ts
 * import { kohyaAlpha } from "./kohya.ts";
 * if (kohyaAlpha(4, 8, 3) !== 1.5) throw 0; // α/r kept: 4/8 = 1.5/3
 * if (kohyaAlpha(undefined, 8, 3) !== 3) throw 0; // no alpha: scale 1
 * if (kohyaAlpha(1, 3, 2) !== Math.fround(Math.fround(1 / 3) * 2)) throw 0;
 * ```
 */
export function kohyaAlpha(alpha: number | undefined, storedRank: number, rank: number): number {
  if (alpha === undefined) return rank;
  return Math.fround(Math.fround(Math.fround(alpha) / storedRank) * rank);
}

/** What kohya's metadata update needs to know about a run. */
export interface KohyaMetadataInput {
  /** The rule the layers were resized with. */
  readonly rule: KohyaRule;
  /** The largest input rank of the resized layers (kohya's "max old rank"). */
  readonly maxOldRank: number | undefined;
  /** The alpha of the last layer kohya processed (its down key is the last in sorted order). */
  readonly lastAlpha: number | undefined;
  /** The input's `ss_training_comment`, if any. */
  readonly comment?: string;
}

/**
 * The `ss_training_comment`, `ss_network_dim` and `ss_network_alpha` kohya
 * writes: `Dynamic` for a dynamic method, the requested rank and the last
 * layer's alpha for a fixed one. Python's `str()` of the numbers
 * (`0.9`, `8.0`, `None`), the old comment after `; ` (even when empty).
 *
 * @example
 * ```ts
 * import { kohyaMetadata } from "./kohya.ts";
 * const fixed = kohyaMetadata({ rule: { rank: 4, convRank: 2 }, maxOldRank: 8, lastAlpha: 1 });
 * if (fixed.ss_training_comment !== "dimension is resized from 8 to 4 (conv: 2); ") throw 0;
 * if (fixed.ss_network_dim !== "4" || fixed.ss_network_alpha !== "1.0") throw 0;
 * const dynamic = kohyaMetadata({
 *   rule: { method: "sv_ratio", param: 8, rank: 8 }, maxOldRank: 8, lastAlpha: 2, comment: "hi",
 * });
 * if (dynamic.ss_training_comment !== "Dynamic resize with sv_ratio: 8.0 from 8; hi") throw 0;
 * ```
 */
export function kohyaMetadata(input: KohyaMetadataInput): {
  ss_training_comment: string;
  ss_network_dim: string;
  ss_network_alpha: string;
} {
  const { rule, maxOldRank, lastAlpha } = input;
  const comment = input.comment ?? "";
  const old = maxOldRank === undefined ? "None" : String(maxOldRank);
  if (rule.method !== undefined) {
    return {
      ss_training_comment: `Dynamic resize with ${rule.method}: ${
        pyRepr(rule.param ?? NaN)
      } from ${old}; ${comment}`,
      ss_network_dim: "Dynamic",
      ss_network_alpha: "Dynamic",
    };
  }
  const rank = rule.rank ?? NaN;
  const conv = rule.convRank ?? rank;
  const convDesc = conv === rank ? "" : ` (conv: ${conv})`;
  return {
    ss_training_comment: `dimension is resized from ${old} to ${rank}${convDesc}; ${comment}`,
    ss_network_dim: String(rank),
    ss_network_alpha: lastAlpha === undefined ? "None" : pyRepr(lastAlpha),
  };
}

/** One layer as kohya's rule sees it. */
export interface KohyaLayer extends KohyaLayerShape, KohyaSpectrum {
  /** Stored alpha (the stored rank when the file has none: kohya's scale 1 then). */
  readonly alpha: number;
  /** Stored rank r. */
  readonly storedRank: number;
}

/** A selection by kohya's rule. */
export interface KohyaSelection extends Selection {
  /**
   * Per layer, the rank written. It exceeds `keep.length` where kohya keeps
   * more dimensions than the layer has (a fixed rank above its rank, the +1
   * of the dynamic methods, a zero layer's rank 1): those are written as
   * zero directions, which add nothing to ΔW.
   */
  readonly ranks: readonly number[];
  /** Per layer, kohya's alpha (float32, not yet rounded to the output dtype). */
  readonly alphas: readonly number[];
}

/**
 * Selects by kohya's per-layer rule: the first `rank` dimensions of each
 * layer (σ descending), with kohya's alpha. No threshold: NaN.
 *
 * @example
 * ```ts
 * import { selectKohya } from "./kohya.ts";
 * const layer = { out: 4, inFlat: 4, conv: false, scale: 0.5, alpha: 4, storedRank: 8 };
 * const s = selectKohya([{ ...layer, sigma: new Float64Array([4, 2, 1, 0.5]) }], { method: "sv_ratio", param: 3 });
 * if (JSON.stringify([s.keep, s.ranks, s.alphas]) !== "[[[0,1,2]],[3],[1.5]]") throw new Error("kept");
 * ```
 */
export function selectKohya(layers: readonly KohyaLayer[], rule: KohyaRule): KohyaSelection {
  const ranks = layers.map((layer) => kohyaRank(layer, layer, rule));
  return {
    keep: layers.map((layer, l) =>
      Array.from({ length: Math.min(ranks[l], layer.sigma.length) }, (_, i) => i)
    ),
    ranks,
    alphas: layers.map((layer, l) => kohyaAlpha(layer.alpha, layer.storedRank, ranks[l])),
    threshold: NaN,
  };
}

/**
 * Scores with a per-layer rank cap (`rank=N` / `conv_rank=N` with a score
 * selection): in each layer, every dimension after the `cap` best-scoring
 * ones (ties: the lower index first) gets a NaN score, so no threshold keeps
 * it and size mode does not count it.
 *
 * @example
 * ```ts
 * import { capScores } from "./kohya.ts";
 * const layer = { out: 8, inFlat: 8, conv: false };
 * const [capped] = capScores([new Float64Array([-1, -3, -2])], [layer], { rank: 2 });
 * if (Array.from(capped).join() !== "-1,NaN,-2") throw new Error("capped");
 * ```
 */
export function capScores(
  scores: readonly Float64Array[],
  layers: readonly KohyaLayerShape[],
  caps: Pick<KohyaRule, "rank" | "convRank">,
): Float64Array[] {
  return scores.map((layer, l) => {
    const cap = kohyaCap(caps, layers[l]);
    if (cap === undefined || layer.length <= cap) return layer;
    const order = Array.from(layer.keys()).filter((i) => !Number.isNaN(layer[i]));
    order.sort((a, b) => (layer[a] < layer[b] ? 1 : layer[a] > layer[b] ? -1 : a - b));
    const capped = new Float64Array(layer.length).fill(NaN);
    for (const i of order.slice(0, cap)) capped[i] = layer[i];
    return capped;
  });
}

/** What kohya's `--verbose` line says about one resized layer. */
export interface KohyaLayerStats {
  /** Σ|S| of the kept dimensions over Σ|S|. */
  readonly sumRetained: number;
  /** ‖S kept‖ / ‖S‖ (NaN for a zero layer). */
  readonly froRetained: number;
  /** S₀ / S[rank − 1] (∞ where that dimension is a zero direction). */
  readonly maxRatio: number;
}

/**
 * kohya's `--verbose` statistics of a layer resized to `rank` (the zeros past
 * `sigma`, up to the rank, count as zero singular values).
 *
 * @example
 * ```ts
 * import { kohyaLayerStats } from "./kohya.ts";
 * const s = kohyaLayerStats([4, 2, 1, 0.5], 2);
 * if (s.sumRetained !== 6 / 7.5 || s.maxRatio !== 2) throw 0;
 * ```
 */
export function kohyaLayerStats(sigma: ArrayLike<number>, rank: number): KohyaLayerStats {
  let sum = 0, kept = 0, sq = 0, keptSq = 0;
  for (let i = 0; i < sigma.length; i++) {
    const s = Math.abs(sigma[i]);
    sum += s;
    sq += s * s;
    if (i < rank) {
      kept += s;
      keptSq += s * s;
    }
  }
  const last = rank - 1 < sigma.length ? sigma[rank - 1] : 0;
  return {
    sumRetained: kept / sum,
    froRetained: Math.sqrt(keptSq) / Math.sqrt(sq),
    maxRatio: sigma.length > 0 ? sigma[0] / last : NaN,
  };
}

/**
 * One `--verbose` line of kohya's script: the layer name padded to 75
 * characters, the retained shares with one decimal, the ratio σ₀/σ_last, and
 * for a dynamic method the new rank and alpha (Python float repr).
 *
 * @example
 * ```ts
 * import { kohyaVerboseLine } from "./kohya.ts";
 * const stats = { sumRetained: 0.8, froRetained: 0.9428, maxRatio: 2 };
 * const line = kohyaVerboseLine("lora_unet_x", stats, { rank: 2, alpha: 1, dynamic: true });
 * if (!line.endsWith("| sum(S) retained: 80.0%, fro retained: 94.3%, max(S) ratio: 2.0, dynamic | dim: 2, alpha: 1.0")) {
 *   throw new Error(line);
 * }
 * ```
 */
export function kohyaVerboseLine(
  name: string,
  stats: KohyaLayerStats,
  resized: { readonly rank: number; readonly alpha: number; readonly dynamic: boolean },
): string {
  let line =
    `${name.padEnd(75)} | sum(S) retained: ${pyFormatFixed(100 * stats.sumRetained, 1)}%, ` +
    `fro retained: ${pyFormatFixed(100 * stats.froRetained, 1)}%, max(S) ratio: ${
      pyFormatFixed(stats.maxRatio, 1)
    }`;
  if (resized.dynamic) line += `, dynamic | dim: ${resized.rank}, alpha: ${pyRepr(resized.alpha)}`;
  return line;
}

/**
 * kohya's closing `--verbose` line: the mean Frobenius retention (two
 * decimals, as a percentage) and its population standard deviation, NaN
 * values (zero layers) left out.
 *
 * @example
 * ```ts
 * import { kohyaVerboseSummary } from "./kohya.ts";
 * const line = kohyaVerboseSummary([0.9, 1, NaN]);
 * if (line !== "Average Frobenius norm retention: 95.00% | std: 0.050") throw new Error(line);
 * ```
 */
export function kohyaVerboseSummary(froRetained: readonly number[]): string {
  const values = froRetained.filter((x) => !Number.isNaN(x));
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
  return `Average Frobenius norm retention: ${pyFormatFixed(100 * mean, 2)}% | std: ${
    pyFormatFixed(Math.sqrt(variance), 3)
  }`;
}
