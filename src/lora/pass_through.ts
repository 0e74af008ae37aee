/**
 * Classifying the tensors a LoRA file holds besides its resizable layers
 * (docs/design.md, "Tensors that are not resized are kept"), for the one warning that reports
 * them.
 *
 * @module
 */

import type { PassThroughSummary, RawTensor } from "./lora_file.ts";

/** Merge-only counts that {@link summarizePassThrough} passes through. */
export interface PassThroughExtras {
  /** Tensors of later members dropped because an earlier member has the same name. */
  readonly clashes?: number;
  /** Pass-through tensors of members whose merge weight is not 1, copied unweighted. */
  readonly unweighted?: number;
}

/** Kind of a module (`<module>.<suffix>` names) from the suffixes it has in the pass-through set. */
function moduleKind(suffixes: readonly string[]): string {
  const has = (test: (s: string) => boolean) => suffixes.some(test);
  if (has((s) => s.startsWith("lora_mid"))) return "lora_mid (Tucker LoCon)";
  // Other LoHa and LoKr layers are resized; these are what is left of them.
  if (has((s) => s.startsWith("hada_t"))) return "Tucker LoHa";
  if (has((s) => s.startsWith("lokr_t"))) return "Tucker LoKr";
  if (has((s) => s.startsWith("hada_"))) return "LoHa";
  if (has((s) => s.startsWith("lokr_"))) return "LoKr";
  if (has((s) => s === "on_input")) return "IA3";
  if (has((s) => s === "diff" || s === "diff_b")) return "full diff";
  if (has((s) => s === "lora_down.weight" || s === "lora_up.weight")) {
    return "incomplete LoRA layer";
  }
  return "other";
}

/**
 * Counts pass-through tensors by kind. Tensors are grouped by module (the
 * name up to its first `.`) and a module's kind follows from its suffixes,
 * so a LoHa layer's `alpha` counts as LoHa.
 *
 * @example
 * ```ts
 * import { summarizePassThrough } from "./pass_through.ts";
 * import assert from "node:assert/strict";
 * const t = (name: string) => ({ name, dtype: "F16" as const, shape: [1], bytes: new Uint8Array(2) });
 * const s = summarizePassThrough([t("x.hada_w1_a"), t("x.alpha"), t("emb")]);
 * assert.deepEqual(s.byKind, { LoHa: 2, other: 1 });
 * ```
 */
export function summarizePassThrough(
  tensors: readonly Pick<RawTensor, "name">[],
  extra: PassThroughExtras = {},
): PassThroughSummary {
  const modules = new Map<string, string[]>();
  for (const t of tensors) {
    const dot = t.name.indexOf(".");
    const module = dot < 0 ? t.name : t.name.slice(0, dot);
    const suffix = dot < 0 ? "" : t.name.slice(dot + 1);
    const list = modules.get(module);
    if (list) list.push(suffix);
    else modules.set(module, [suffix]);
  }
  const byKind: Record<string, number> = {};
  for (const suffixes of modules.values()) {
    const kind = moduleKind(suffixes);
    byKind[kind] = (byKind[kind] ?? 0) + suffixes.length;
  }
  return {
    total: tensors.length,
    byKind,
    clashes: extra.clashes ?? 0,
    unweighted: extra.unweighted ?? 0,
  };
}
