/**
 * Every dimension of every layer ranked by score, best first: what size targets and trade-off
 * curves walk. Ties keep layer order, then dimension order, so a ranking does not depend on the
 * sort's algorithm.
 *
 * @module
 */

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
  let n = 0;
  for (const layer of scores) for (const s of layer) if (!Number.isNaN(s)) n++;
  const ranking = {
    layer: new Uint32Array(n),
    dim: new Uint32Array(n),
    score: new Float64Array(n),
  };
  if (scores.every(descending)) mergeRuns(scores, ranking);
  else sortAll(scores, ranking);
  return ranking;
}

/** Whether a layer's scores (NaN aside) never increase with the dimension index. */
function descending(layer: Float64Array): boolean {
  let last = Infinity;
  for (const s of layer) {
    if (Number.isNaN(s)) continue;
    if (s > last) return false;
    last = s;
  }
  return true;
}

/**
 * The ranking of layers whose scores each descend (scores monotone in σ, as most keys give):
 * a heap merge of the layers' runs, O(n·log layers), where ties go to the lower layer and a run
 * keeps its own order, which is the order of {@link sortAll}.
 */
function mergeRuns(scores: readonly Float64Array[], ranking: Ranking): void {
  const next = new Uint32Array(scores.length);
  const skipNaN = (l: number) => {
    while (next[l] < scores[l].length && Number.isNaN(scores[l][next[l]])) next[l]++;
    return next[l] < scores[l].length;
  };
  const heap = Uint32Array.from(scores.keys()).filter(skipNaN);
  const before = (a: number, b: number) => {
    const sa = scores[a][next[a]], sb = scores[b][next[b]];
    return sa > sb || (sa === sb && a < b);
  };
  let size = heap.length;
  const siftDown = (h: number) => {
    for (;;) {
      const left = 2 * h + 1, right = left + 1;
      let top = h;
      if (left < size && before(heap[left], heap[top])) top = left;
      if (right < size && before(heap[right], heap[top])) top = right;
      if (top === h) return;
      [heap[h], heap[top]] = [heap[top], heap[h]];
      h = top;
    }
  };
  for (let h = (size >> 1) - 1; h >= 0; h--) siftDown(h);
  for (let r = 0; size > 0; r++) {
    const l = heap[0];
    ranking.layer[r] = l;
    ranking.dim[r] = next[l];
    ranking.score[r] = scores[l][next[l]];
    next[l]++;
    if (!skipNaN(l)) heap[0] = heap[--size];
    siftDown(0);
  }
}

/** The ranking by one comparison sort of every dimension (any scores). */
function sortAll(scores: readonly Float64Array[], ranking: Ranking): void {
  const n = ranking.score.length;
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
}
