/**
 * kohya's per-layer rank rule, written out again from kohya-ss/sd-scripts
 * `networks/resize_lora.py` at commit 48d368fa557731ad0488c07304dfeba8c07910eb
 * (`rank_resize` and its callers): the tests' independent reference for the
 * ranks resize-lora's kohya keys keep.
 *
 * @module
 */
import type { KohyaRule } from "../src/recipe/kohya.ts";

/** kohya's rank_resize on all n singular values S of ΔW (scale included). */
export function kohyaReference(
  S: readonly number[],
  scale: number,
  conv: boolean,
  rule: KohyaRule,
): number {
  const n = S.length;
  const cap = (conv ? rule.convRank ?? rule.rank : rule.rank) ?? Infinity;
  const search = (values: number[], target: number) => {
    const total = values.reduce((a, b) => a + b, 0);
    let sum = 0;
    return values.findIndex((v) => (sum += v) / total >= target);
  };
  let rank: number;
  if (rule.method === "sv_ratio") {
    rank = Math.max(1, Math.min(S.filter((s) => s > S[0] / rule.param!).length, n - 1)) + 1;
  } else if (rule.method === "sv_cumulative") {
    rank = Math.max(1, Math.min(search([...S], rule.param!) + 1, n - 1)) + 1;
  } else if (rule.method === "sv_fro") {
    rank = Math.max(1, Math.min(search(S.map((s) => s * s), rule.param! ** 2) + 1, n - 1)) + 1;
  } else rank = cap;
  if (S[0] / scale <= 1e-6) return 1;
  return Math.min(rank, cap, n); // n: where kohya's reshape fails, resize-lora stops at the layer's size
}
