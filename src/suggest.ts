/**
 * "Did you mean …?" for mistyped names (options, recipe keys): the closest
 * known name by edit distance, when it is close enough to be a typo.
 *
 * @module
 */

/**
 * Edits (insertions, deletions, substitutions, swaps of two neighbours) that
 * turn `a` into `b` (optimal string alignment distance).
 *
 * @example
 * ```ts
 * import { editDistance } from "./suggest.ts";
 * if (editDistance("fro_ckp", "fro_ckpt") !== 1) throw new Error("one insertion");
 * if (editDistance("dyr_run", "dry_run") !== 1) throw new Error("one swap");
 * ```
 */
export function editDistance(a: string, b: string): number {
  // Three rows of the dynamic-programming table: the swap looks two rows back.
  let before = new Array<number>(b.length + 1).fill(0);
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, before[j - 2] + 1);
      }
      row.push(d);
    }
    before = previous;
    previous = row;
  }
  return previous[b.length];
}

/**
 * The known name closest to `word`, when within a typo's reach (at most one
 * edit per three characters, at least one); `undefined` otherwise. Ties go
 * to the earlier name.
 *
 * @example
 * ```ts
 * import { closestName } from "./suggest.ts";
 * if (closestName("fro_ckp", ["spn_ckpt", "fro_ckpt"]) !== "fro_ckpt") throw new Error();
 * if (closestName("frobnicate", ["dry_run", "report"]) !== undefined) throw new Error();
 * ```
 */
export function closestName(word: string, names: readonly string[]): string | undefined {
  const reach = Math.max(1, Math.floor(word.length / 3));
  let best: string | undefined;
  let bestDistance = reach + 1;
  for (const name of names) {
    const d = editDistance(word.toLowerCase(), name.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [name, d];
  }
  return best;
}
