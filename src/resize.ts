/**
 * `resize()` and `plan()`: the pipeline, one stage per module of `src/pipeline/`.
 *
 * ```
 * resolve options (once)
 * for each LoRA:
 *   load → decompose (in the background) → pair with the base → base norms   prepare_lora.ts
 *   for each recipe: score → select                                          score_and_select.ts
 *   build and write the outputs (resize only)                                write_outputs.ts
 * ```
 *
 * @module
 */

import { type PreparedLora, prepareLora } from "./pipeline/prepare_lora.ts";
import { type ResizeOptions, resolveOptions } from "./pipeline/options.ts";
import { type RecipeSelection, selectRecipes } from "./pipeline/score_and_select.ts";
import { Session } from "./pipeline/session.ts";
import { writeOutputs } from "./pipeline/write_outputs.ts";
import type { OutputSummary, ResizeResult } from "./summary.ts";

export { DEFAULT_RECIPES, type ProgressFn, type ResizeOptions } from "./pipeline/options.ts";
export type { CurvePoint, LayerSummary, OutputSummary, ResizeResult } from "./summary.ts";

/**
 * Resizes every LoRA with every recipe and writes one file per pair.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resize } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await resize({
 *   checkpoint: base,
 *   loras: [lora],
 *   recipes: "fro_ckpt=1,thr=-3.5:spn_lora=1,size=0.05",
 *   outputFolder: `${dir}/out`,
 *   device: "cpu",
 *   normsCache: false,
 * });
 * for (const o of outputs) {
 *   assert.ok(o.written && o.rankAfter < o.rankBefore);
 *   assert.equal((await Deno.stat(o.path)).size, o.bytes);
 * }
 * assert.ok(outputs[1].bytes <= 0.05 * 2 ** 20);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function resize(options: ResizeOptions): Promise<ResizeResult> {
  await using session = await openSession(options, { writes: true });
  const outputs: OutputSummary[] = [];
  for (const entry of session.options.loras) {
    const lora = await prepareLora(session, entry);
    const selections = await selectRecipes(session, lora);
    outputs.push(...await writeOutputs(session, lora, selections));
  }
  return { outputs };
}

/**
 * Runs the pipeline up to the write: exact output sizes, ranks and errors of every (LoRA,
 * recipe) pair, nothing written. Base norms already in the norms cache are not read again.
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
 *   device: "cpu",
 *   normsCache: false,
 * });
 * assert.ok(!output.written);
 * await assert.rejects(Deno.stat(output.path), Deno.errors.NotFound);
 * assert.ok(output.relativeError > 0 && output.relativeError < 1);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function plan(options: ResizeOptions): Promise<ResizeResult> {
  await using session = await openSession(options, { writes: false });
  const outputs: OutputSummary[] = [];
  for (const entry of session.options.loras) {
    const { selections } = await planLora(session, entry);
    outputs.push(...selections.map((s) => s.summary));
  }
  return { outputs };
}

/** One LoRA prepared and its recipes selected: what `plan()` and `inspect()` share. */
export interface PlannedLora {
  /** The LoRA, decomposed and paired. */
  readonly lora: PreparedLora;
  /** One per recipe, in order. */
  readonly selections: readonly RecipeSelection[];
}

/** Prepares one LoRA entry and selects every recipe for it. */
export async function planLora(session: Session, entry: string): Promise<PlannedLora> {
  const lora = await prepareLora(session, entry);
  return { lora, selections: await selectRecipes(session, lora) };
}

/** Resolves the options, warns about recipes, and opens the run's resources. */
export function openSession(
  options: ResizeOptions,
  { writes }: { writes: boolean },
): Promise<Session> {
  const resolved = resolveOptions(options);
  for (const r of resolved.recipes) for (const w of r.warnings) resolved.log("WARNING", w);
  return Session.open(resolved, { writes });
}
