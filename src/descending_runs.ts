/**
 * Runs of numbers that each descend, merged into one descending order through a heap: ties go to
 * the lower run and each run keeps its own order, so the result is that of a stable sort of the
 * runs laid end to end, in O(n·log runs) instead of a comparison sort's O(n·log n) calls to a
 * comparator. NaNs are left out. Size targets rank every dimension of a LoRA this way, and a LoKr
 * layer's σ1ᵢ·σ2ⱼ are k1 such runs.
 *
 * @module
 */

/** The merged values and where each came from: parallel arrays, in merged order. */
export interface MergedRuns {
  /** The run of each value. */
  readonly run: Uint32Array;
  /** Its index in that run. */
  readonly index: Uint32Array;
  /** The value, non-increasing. */
  readonly value: Float64Array;
}

/**
 * Whether `values` never increase (NaN aside).
 *
 * @example
 * ```ts
 * import { isDescending } from "./descending_runs.ts";
 * if (!isDescending([3, NaN, 3, 1]) || isDescending([1, 2])) throw new Error();
 * ```
 */
export function isDescending(values: ArrayLike<number>): boolean {
  let last = Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (Number.isNaN(v)) continue;
    if (v > last) return false;
    last = v;
  }
  return true;
}

/**
 * Merges runs that each descend (see the module doc; {@link isDescending} says whether they do).
 *
 * @example
 * ```ts
 * import { mergeDescendingRuns } from "./descending_runs.ts";
 * const m = mergeDescendingRuns([[3, 1], [3, 2, NaN]]);
 * if (m.value.join() !== "3,3,2,1" || m.run.join() !== "0,1,1,0" || m.index.join() !== "0,0,1,1") {
 *   throw new Error();
 * }
 * ```
 */
export function mergeDescendingRuns(runs: readonly ArrayLike<number>[]): MergedRuns {
  let n = 0;
  for (const r of runs) for (let i = 0; i < r.length; i++) if (!Number.isNaN(r[i])) n++;
  const merged = { run: new Uint32Array(n), index: new Uint32Array(n), value: new Float64Array(n) };
  // heap[h] = a run; next[r] = its next index (past NaNs).
  const next = new Uint32Array(runs.length);
  const advance = (r: number) => {
    while (next[r] < runs[r].length && Number.isNaN(runs[r][next[r]])) next[r]++;
    return next[r] < runs[r].length;
  };
  const heap = Uint32Array.from(runs.keys()).filter(advance);
  const before = (a: number, b: number) => {
    const va = runs[a][next[a]], vb = runs[b][next[b]];
    return va > vb || (va === vb && a < b);
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
  for (let t = 0; size > 0; t++) {
    const r = heap[0];
    merged.run[t] = r;
    merged.index[t] = next[r];
    merged.value[t] = runs[r][next[r]];
    next[r]++;
    if (!advance(r)) heap[0] = heap[--size];
    siftDown(0);
  }
  return merged;
}
