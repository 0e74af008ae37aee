/**
 * kohya's `--verbose` report for an output resized by kohya's rules: one
 * line per layer, in the order kohya processes them (`lora_down` keys
 * sorted), then the mean Frobenius retention.
 *
 * @module
 */

import type { OutputSummary } from "../resize.ts";
import {
  kohyaAlpha,
  kohyaLayerStats,
  kohyaVerboseLine,
  kohyaVerboseSummary,
} from "../recipe/kohya.ts";
import { kohyaRuleOf, parseRecipe } from "../recipe/recipe.ts";

/**
 * The report's lines (empty for an output of a score recipe). The σ past a
 * layer's own dimensions are zeros, so where kohya's rank exceeds them the
 * ratio is `inf` (kohya divides by a float32 noise value there).
 *
 * @example
 * ```ts ignore
 * for (const line of kohyaVerboseReport(outputs[0])) console.log(line);
 * ```
 */
export function kohyaVerboseReport(output: OutputSummary): string[] {
  const rule = kohyaRuleOf(parseRecipe(output.recipe));
  if (!rule) return [];
  const key = (name: string) => `${name}.lora_down.weight`;
  const layers = [...output.layers].sort((a, b) => (key(a.name) < key(b.name) ? -1 : 1));
  const fro: number[] = [];
  const lines = layers.map((l) => {
    const stats = kohyaLayerStats(l.sigma, l.kept);
    fro.push(stats.froRetained);
    return kohyaVerboseLine(l.name, stats, {
      rank: l.kept,
      alpha: kohyaAlpha(l.alpha, l.rank, l.kept),
      dynamic: rule.method !== undefined,
    });
  });
  return ["", ...lines, kohyaVerboseSummary(fro)];
}
