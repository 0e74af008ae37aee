/**
 * Which dimensions of each layer a recipe keeps.
 *
 * - Threshold mode: keep dimension i iff scoreᵢ ≥ t (inclusive, float64).
 * - Size mode ranks every dimension of every layer by score, descending, ties
 *   in layer order (a stable sort; layers come in processing order), then:
 *   - `file` accounting (the default; docs/design.md, "Size targets bound the whole file"):
 *     keep the longest prefix of the ranking whose whole output file fits in S MiB;
 *   - `original` accounting (the original tool's): keep the shortest prefix whose
 *     up/down weight bytes reach S MiB, plus every dimension tied with its
 *     last score.
 *
 * Dimensions whose score is NaN are never kept and cost nothing (no
 * threshold admits them): a per-layer rank cap (`capScores` in `kohya.ts`) works so.
 *
 * kohya's rules (`selectKohya` in `kohya.ts`) pick each layer's rank by itself.
 *
 * @module
 */

import { rankDimensions, type Ranking } from "./ranking.ts";
import { pyPercentFormat } from "./pyformat.ts";

const MIB = 1 << 20;

/** The dimensions a recipe keeps. */
export interface Selection {
  /** Per layer, the indices of the kept dimensions, ascending. */
  readonly keep: number[][];
  /**
   * The threshold used: the user's in threshold mode; in size mode the score
   * of the last kept dimension of the ranking, −∞ when everything is kept and
   * +∞ when nothing is.
   */
  readonly threshold: number;
}

/**
 * Keeps, in every layer, the dimensions whose score is ≥ `threshold`.
 *
 * @example
 * ```ts
 * import { selectByThreshold } from "./select.ts";
 * import assert from "node:assert/strict";
 * const { keep } = selectByThreshold([new Float64Array([-1, -2, -3])], -2);
 * assert.deepEqual(keep, [[0, 1]]);
 * ```
 */
export function selectByThreshold(scores: readonly Float64Array[], threshold: number): Selection {
  const keep = scores.map((layer) => {
    const kept: number[] = [];
    for (let i = 0; i < layer.length; i++) if (layer[i] >= threshold) kept.push(i);
    return kept;
  });
  return { keep, threshold };
}

/** The kept dimensions per layer for the first `count` entries of a ranking. */
function keepPrefix(ranking: Ranking, layerSizes: readonly number[], count: number): number[][] {
  const masks = layerSizes.map((k) => new Uint8Array(k));
  for (let r = 0; r < count; r++) masks[ranking.layer[r]][ranking.dim[r]] = 1;
  return masks.map((mask) => {
    const kept: number[] = [];
    for (let i = 0; i < mask.length; i++) if (mask[i]) kept.push(i);
    return kept;
  });
}

/**
 * How size mode counts bytes: the whole output file, or the original's weights-only sum.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plan, type SizeAccounting } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const bytes = async (sizeAccounting: SizeAccounting) =>
 *   (await plan({
 *     checkpoint: base,
 *     loras: [lora],
 *     recipes: "fro_ckpt=1,size=0.05",
 *     sizeAccounting,
 *     device: "cpu",
 *     normsCache: false,
 *   })).outputs[0].bytes;
 * assert.ok(await bytes("file") <= 0.05 * 2 ** 20); // the whole file fits
 * assert.ok(await bytes("original") > 0.05 * 2 ** 20); // only the weights were counted
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export type SizeAccounting = "file" | "original";

/**
 * Where a size target cut the ranking: the values of the `Total rank` log line.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs: [output] } = await plan({
 *   checkpoint: base,
 *   loras: [lora],
 *   recipes: "fro_ckpt=1,size=0.05",
 *   device: "cpu",
 *   normsCache: false,
 * });
 * const cut = output.cut!;
 * assert.equal(cut.totalRank, output.rankAfter);
 * assert.ok(cut.realBytes <= 0.05 * 2 ** 20 && cut.nextBytes > 0.05 * 2 ** 20);
 * assert.equal(cut.realBytes, output.bytes);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface SizeCut {
  /** The accounting that produced it. */
  readonly accounting: SizeAccounting;
  /** Length of the kept ranking prefix. */
  readonly totalRank: number;
  /** Score of the last kept dimension (the threshold used). */
  readonly threshold: number;
  /** The target S, in MiB. */
  readonly targetMiB: number;
  /** Bytes of the selection (weights only for `original`, the whole file for `file`). */
  readonly realBytes: number;
  /** Bytes with one more dimension of the ranking (= `realBytes` when none is left). */
  readonly nextBytes: number;
}

/** A size-mode selection. */
export interface SizeSelection extends Selection {
  /** Set when the target cut the ranking (the original then logs `Total rank: …`). */
  readonly cut?: SizeCut;
}

/** One layer's scores and the shape that prices its dimensions. */
export interface ScoredLayer {
  /** Scores of the layer's dimensions. */
  readonly scores: Float64Array;
  /** Rows of ΔW. */
  readonly out: number;
  /** Columns of ΔW (in′). */
  readonly inFlat: number;
}

/** Options of {@link selectBySizeOriginal}. */
export interface OriginalSizeOptions {
  /** The target S, in MiB. */
  readonly targetMiB: number;
  /** Bytes per output element (2 for F16/BF16, 4 for F32). */
  readonly elementSize: number;
}

/**
 * The original's size mode: a dimension costs
 * `elementSize·(out + in′)` bytes; with the ranking's running cost `cum`,
 * if the target S·2^20 is below the total, t = the score at the first index
 * where `cum ≥ target` and every dimension with score ≥ t is kept (so the
 * target is usually exceeded by up to one dimension, plus ties); otherwise
 * everything is kept with t = −∞.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { selectBySizeOriginal } from "./select.ts";
 * const layers = [
 *   { scores: new Float64Array([-0.699, -1.301]), out: 4, inFlat: 6 }, // 20 bytes per dim
 *   { scores: new Float64Array([-0.778]), out: 3, inFlat: 3 }, // 12 bytes
 * ];
 * const s = selectBySizeOriginal(layers, { targetMiB: 32 / 2 ** 20, elementSize: 2 });
 * assert.deepEqual(s.keep, [[0], [0]]);
 * assert.equal(s.threshold, -0.778);
 * ```
 */
export function selectBySizeOriginal(
  layers: readonly ScoredLayer[],
  options: OriginalSizeOptions,
): SizeSelection {
  const scores = layers.map((layer) => layer.scores);
  const ranking = rankDimensions(scores);
  const n = ranking.score.length;
  const cum = new Float64Array(n); // integers, exact below 2^53
  let total = 0;
  for (let r = 0; r < n; r++) {
    const layer = layers[ranking.layer[r]];
    total += options.elementSize * (layer.out + layer.inFlat);
    cum[r] = total;
  }
  const target = options.targetMiB * MIB;
  if (n === 0 || !(target < total)) return selectByThreshold(scores, -Infinity);
  let idx = 0; // first index with cum[idx] ≥ target (cum is increasing)
  let hi = n - 1;
  while (idx < hi) {
    const mid = (idx + hi) >>> 1;
    if (cum[mid] >= target) hi = mid;
    else idx = mid + 1;
  }
  const threshold = ranking.score[idx];
  return {
    ...selectByThreshold(scores, threshold),
    cut: {
      accounting: "original",
      totalRank: idx + 1,
      threshold,
      targetMiB: options.targetMiB,
      realBytes: cum[idx],
      nextBytes: cum[Math.min(idx + 1, n - 1)],
    },
  };
}

/**
 * Size in bytes of the output file that keeps `keptPerLayer[l]` dimensions of
 * layer l (0 = the layer is omitted). Which dimensions does not matter.
 */
export type FileSizeFn = (keptPerLayer: Uint32Array) => number;

/** Options of {@link selectBySizeFile}. */
export interface FileSizeOptions {
  /** The target S, in MiB. */
  readonly targetMiB: number;
  /** Computes the output file size of a selection (header, metadata and data). */
  readonly fileSize: FileSizeFn;
  /**
   * Bytes one kept dimension of each layer adds to the data, when known (the
   * factors' row and column). The search then measures a few prefixes near
   * where that arithmetic puts the cut instead of bisecting the whole range.
   */
  readonly dimensionBytes?: readonly number[];
}

/** A `file`-accounting size selection. */
export interface FileSizeSelection extends SizeSelection {
  /**
   * False when even the file without any layer is larger than the target: the
   * caller reports the error (it knows the file name); `keep` is then empty.
   */
  readonly fits: boolean;
  /** Size in bytes of the file for this selection. */
  readonly fileBytes: number;
}

/**
 * Size mode with `file` accounting (docs/design.md, "Size targets bound the whole file"): keeps
 * the longest prefix of the ranking whose output file is at most S·2^20 bytes.
 *
 * `fileSize` is called O(log n) times (a binary search over the prefix length), or a handful of
 * times when `dimensionBytes` guides the search. The file size grows with the prefix but not
 * strictly monotonically (header text such as `ss_network_dim` can shrink by a few bytes), so the
 * search only ever accepts a prefix it has measured to fit: the result always fits, and the
 * prefix one longer does not.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { selectBySizeFile } from "./select.ts";
 * const scores = [new Float64Array([-0.7, -1.3]), new Float64Array([-0.8])];
 * // A fake file: 100 bytes of header, 20 bytes per dimension.
 * const fileSize = (kept: Uint32Array) => 100 + 20 * kept.reduce((a, b) => a + b, 0);
 * const s = selectBySizeFile(scores, { targetMiB: 145 / 2 ** 20, fileSize });
 * assert.deepEqual([s.keep, s.threshold, s.fileBytes], [[[0], [0]], -0.8, 140]);
 * ```
 */
export function selectBySizeFile(
  scores: readonly Float64Array[],
  options: FileSizeOptions,
): FileSizeSelection {
  const ranking = rankDimensions(scores);
  const n = ranking.score.length;
  const layerSizes = scores.map((layer) => layer.length);
  const sizeOf = (count: number): number => {
    const kept = new Uint32Array(scores.length);
    for (let r = 0; r < count; r++) kept[ranking.layer[r]]++;
    return options.fileSize(kept);
  };
  const target = options.targetMiB * MIB;

  const fullBytes = sizeOf(n);
  if (fullBytes <= target) {
    return {
      keep: keepPrefix(ranking, layerSizes, n),
      threshold: -Infinity,
      fits: true,
      fileBytes: fullBytes,
    };
  }
  const emptyBytes = sizeOf(0);
  if (emptyBytes > target) {
    return {
      keep: layerSizes.map(() => []),
      threshold: Infinity,
      fits: false,
      fileBytes: emptyBytes,
    };
  }
  // Invariant: prefix `lo` fits (measured), prefix `hi` does not.
  let lo = 0;
  let loBytes = emptyBytes;
  let hi = n;
  let hiBytes = fullBytes;
  // With dimensionBytes: data(p), the data of prefix p, is a running sum, and the rest of the
  // file grows mostly with the layers present (their tensor entries), a few bytes otherwise
  // (digits). Between lo and hi the size is then estimated as data(p) plus the rest
  // interpolated by the layers present: the last prefix estimated to fit and the one after it
  // are measured in turn, and the cut is usually found after a few. Guesses are measured like
  // any other prefix, so the invariant holds whatever the sizes do; bisection takes over if
  // they keep missing.
  const guide = options.dimensionBytes && prefixGuide(ranking, options.dimensionBytes);
  for (let step = 0; hi - lo > 1; step++) {
    let p = lo + ((hi - lo) >>> 1);
    if (guide && step < GUIDED_STEPS) {
      const guess = guessPrefix(guide, { lo, loBytes, hi, hiBytes }, target) + (step % 2);
      if (guess > lo && guess < hi) p = guess;
    }
    const bytes = sizeOf(p);
    if (bytes <= target) {
      lo = p;
      loBytes = bytes;
    } else {
      hi = p;
      hiBytes = bytes;
    }
  }
  const threshold = lo > 0 ? ranking.score[lo - 1] : Infinity;
  return {
    keep: keepPrefix(ranking, layerSizes, lo),
    threshold,
    fits: true,
    fileBytes: loBytes,
    cut: {
      accounting: "file",
      totalRank: lo,
      threshold,
      targetMiB: options.targetMiB,
      realBytes: loBytes,
      nextBytes: hiBytes,
    },
  };
}

/** Guided measurements before a size search falls back to bisection. */
const GUIDED_STEPS = 8;

/**
 * The last prefix between `lo` and `hi` estimated to fit in `target` bytes: its data bytes plus
 * the rest of the file interpolated between the two measured ends by the layers present (by the
 * prefix length when no layer is added).
 */
function guessPrefix(
  { data, layers }: { data: Float64Array; layers: Uint32Array },
  { lo, loBytes, hi, hiBytes }: { lo: number; loBytes: number; hi: number; hiBytes: number },
  target: number,
): number {
  const restLo = loBytes - data[lo], restHi = hiBytes - data[hi];
  const added = layers[hi] - layers[lo];
  const estimate = (q: number) =>
    data[q] + restLo +
    (added > 0
      ? (restHi - restLo) * (layers[q] - layers[lo]) / added
      : (restHi - restLo) * (q - lo) / (hi - lo));
  return lastAtMost(estimate, target, lo, hi);
}

/**
 * For each prefix length p of the ranking: data[p], the bytes its dimensions
 * add, and layers[p], the layers it keeps at least one dimension of.
 */
function prefixGuide(
  ranking: Ranking,
  dimensionBytes: readonly number[],
): { data: Float64Array; layers: Uint32Array } {
  const n = ranking.layer.length;
  const data = new Float64Array(n + 1), layers = new Uint32Array(n + 1);
  const seen = new Set<number>();
  ranking.layer.forEach((l, r) => {
    data[r + 1] = data[r] + dimensionBytes[l];
    layers[r + 1] = layers[r] + (seen.has(l) ? 0 : 1);
    seen.add(l);
  });
  return { data, layers };
}

/** The largest p in [lo, hi] with size(p) ≤ limit (lo when there is none; size ascends). */
function lastAtMost(size: (p: number) => number, limit: number, lo: number, hi: number): number {
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (size(mid) <= limit) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * The INFO line of a size cut. `original`: the original's text,
 * `Total rank: %d. threshold %.2f: target:%.3fM <= real:%.3fM < next:%.3fM`;
 * `file`: the same numbers ordered as they relate, `real <= target < next`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatTotalRankLine } from "./select.ts";
 * const cut = { accounting: "original", totalRank: 2, threshold: -0.778, targetMiB: 0.4,
 *   realBytes: 419440, nextBytes: 419460 } as const;
 * assert.equal(
 *   formatTotalRankLine(cut),
 *   "Total rank: 2. threshold -0.78: target:0.400M <= real:0.400M < next:0.400M",
 * );
 * ```
 */
export function formatTotalRankLine(cut: SizeCut): string {
  const rank = BigInt(cut.totalRank);
  const [real, next] = [cut.realBytes / MIB, cut.nextBytes / MIB];
  return cut.accounting === "original"
    ? pyPercentFormat(
      "Total rank: %d. threshold %.2f: target:%.3fM <= real:%.3fM < next:%.3fM",
      [rank, cut.threshold, cut.targetMiB, real, next],
    )
    : pyPercentFormat(
      "Total rank: %d. threshold %.2f: real:%.3fM <= target:%.3fM < next:%.3fM",
      [rank, cut.threshold, real, cut.targetMiB, next],
    );
}
