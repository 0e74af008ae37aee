/**
 * Every dimension of every layer ranked by score, best first: what size targets and trade-off
 * curves walk. Ties keep layer order, then dimension order, so a ranking does not depend on the
 * sort's algorithm.
 *
 * @module
 */

import { isDescending, mergeDescendingRuns } from "../descending_runs.ts";

/** Every dimension of every layer, best first. Parallel arrays of length n. */
export interface Ranking {
  /** Layer index of each ranked dimension. */
  readonly layer: Uint32Array;
  /** Dimension index (into the layer's σ) of each ranked dimension. */
  readonly dim: Uint32Array;
  /** Score of each ranked dimension, non-increasing. */
  readonly score: Float64Array;
}

/**
 * Ranks all dimensions by score, descending; equal scores keep layer order,
 * then dimension order. NaN scores are left out.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rankDimensions } from "./ranking.ts";
 * const r = rankDimensions([new Float64Array([-0.7, -1.3]), new Float64Array([-0.8])]);
 * assert.deepEqual(Array.from(r.layer), [0, 1, 0]);
 * assert.deepEqual(Array.from(r.dim), [0, 0, 1]);
 * ```
 */
export function rankDimensions(scores: readonly Float64Array[]): Ranking {
  // Scores monotone in σ (most keys) descend layer by layer: merged, not sorted.
  if (scores.every(isDescending)) {
    const { run, index, value } = mergeDescendingRuns(scores);
    return { layer: run, dim: index, score: value };
  }
  return sortAll(scores);
}

/** The ranking by one comparison sort of every dimension (any scores). */
function sortAll(scores: readonly Float64Array[]): Ranking {
  let n = 0;
  for (const layer of scores) for (const s of layer) if (!Number.isNaN(s)) n++;
  const ranking = {
    layer: new Uint32Array(n),
    dim: new Uint32Array(n),
    score: new Float64Array(n),
  };
  const layerOf = new Uint32Array(n);
  const dimOf = new Uint32Array(n);
  const flat = new Float64Array(n);
  let at = 0;
  scores.forEach((layer, l) => {
    for (let i = 0; i < layer.length; i++) {
      if (Number.isNaN(layer[i])) continue;
      layerOf[at] = l;
      dimOf[at] = i;
      flat[at++] = layer[i];
    }
  });
  // Positions in `flat` follow layer then dimension order, so breaking ties by
  // position makes the sort stable whatever the engine's algorithm.
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => (flat[a] < flat[b] ? 1 : flat[a] > flat[b] ? -1 : a - b));
  for (let r = 0; r < n; r++) {
    const p = order[r];
    ranking.layer[r] = layerOf[p];
    ranking.dim[r] = dimOf[p];
    ranking.score[r] = flat[p];
  }
  return ranking;
}
