/**
 * The size ↔ error trade-off of a recipe's scoring, for reports: what each prefix of the score
 * ranking would cost in bytes and in error.
 *
 * @module
 */

import { outputFileSize, type OutputShapeFn } from "../output.ts";
import type { Recipe } from "../recipe/recipe.ts";
import { rankDimensions } from "../recipe/ranking.ts";
import type { CurvePoint } from "../summary.ts";
import type { PreparedLora } from "./prepare_lora.ts";

/** Points of the curve along the score ranking (at most 200 steps, both ends included). */
const CURVE_STEPS = 200;

/** Points of the size ↔ error curve of `scores`, from the empty to the full selection. */
export function tradeOffCurve(
  lora: PreparedLora,
  recipe: Recipe,
  scores: Float64Array[],
  shapeFor: OutputShapeFn,
  onProgress?: (done: number, total: number) => void,
): CurvePoint[] {
  const ranking = rankDimensions(scores);
  const n = ranking.score.length;
  let total = 0;
  for (const d of lora.decompositions) for (const s of d.sigma) total += (s * recipe.rescale) ** 2;
  const steps = Math.min(n, CURVE_STEPS);
  const points: CurvePoint[] = [];
  const kept = new Uint32Array(scores.length);
  let keptEnergy = 0;
  let at = 0;
  for (let step = 0; step <= steps; step++) {
    const count = Math.round((n * step) / steps);
    for (; at < count; at++) {
      const l = ranking.layer[at];
      kept[l]++;
      keptEnergy += (lora.decompositions[l].sigma[ranking.dim[at]] * recipe.rescale) ** 2;
    }
    const threshold = count > 0 ? ranking.score[count - 1] : Infinity;
    points.push({
      rank: count,
      threshold,
      bytes: outputFileSize(shapeFor(kept, threshold)),
      relativeError: count === n || total === 0
        ? 0
        : Math.sqrt(Math.max(0, total - keptEnergy) / total),
    });
    // Each point sizes a whole output header: seconds in all for a full-size LoRA.
    onProgress?.(step + 1, steps + 1);
  }
  return points;
}
