/**
 * `inspect()`: what a LoRA holds, per layer and per block, before resizing it.
 *
 * Without a checkpoint or recipes only the LoRA is read and decomposed. With either, the recipes
 * are also selected as `plan()` selects them (nothing written), from the same loaded and
 * decomposed LoRA: per-dimension scores and kept ranks join the layer rows, and base norms with a
 * checkpoint. Without one, only recipes that need no base can be planned. The result and its table
 * are in `src/report/inspect.ts`.
 *
 * @module
 */

import type { Backend } from "./linalg/backend.ts";
import { type DeviceChoice, selectBackend } from "./linalg/select_backend.ts";
import { type LogFn, type LogLevel, silent } from "./log.ts";
import { loadLora, type LoraModel } from "./lora/lora_file.ts";
import type { OutputDType } from "./output.ts";
import type { ProgressFn } from "./pipeline/options.ts";
import { decomposeLayers, type LayerDecomposition } from "./pipeline/layer_maths.ts";
import type { SizeAccounting } from "./recipe/select.ts";
import { inspectionOf, type InspectResult } from "./report/inspect.ts";
import { openSession, planLora } from "./resize.ts";

/**
 * Options of {@link inspect}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect, type InspectOptions } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const options: InspectOptions = {
 *   lora,
 *   checkpoint: base,
 *   recipes: "fro_ckpt=1,thr=-3.5:spn_lora=1,thr=-1",
 *   device: "cpu",
 *   normsCache: false,
 * };
 * const result = await inspect(options);
 * assert.deepEqual(result.recipes.map((r) => r.recipe), ["fro_ckpt=1,thr=-3.5", "spn_lora=1,thr=-1"]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface InspectOptions {
  /** The LoRA: a path, or a merge spec `"a.safetensors:0.7,b.safetensors:0.3"`. */
  readonly lora: string;
  /** Base checkpoint: adds base norms, and the scores and kept ranks of `recipes`. */
  readonly checkpoint?: string;
  /**
   * Recipes to plan (default with a checkpoint: the original's default recipe; without one, none
   * unless given, and then only recipes that need no base).
   */
  readonly recipes?: string;
  /** `auto` (default), `cpu` or `gpu`; ignored when `backend` is given. */
  readonly device?: DeviceChoice;
  /** A backend to use (the caller keeps ownership). */
  readonly backend?: Backend;
  /** Norms cache location, or `false` to disable it (as in `plan`). */
  readonly normsCache?: string | false;
  /** Output element type the planned sizes assume (default `F16`). */
  readonly outputDtype?: OutputDType;
  /** Size-mode accounting of the planned recipes (default `file`). */
  readonly sizeAccounting?: SizeAccounting;
  /** Plan sizes as if `--drop_unmapped` were given. */
  readonly dropUnmapped?: boolean;
  /** Log receiver (default: silent). DEBUG records are passed on only with `logLevel: "DEBUG"`. */
  readonly log?: LogFn;
  /** Lowest level the caller shows. */
  readonly logLevel?: LogLevel;
  /** Progress receiver. */
  readonly onProgress?: ProgressFn;
}

/**
 * Inspects a LoRA: per layer its kind, shape, stored rank and alpha, singular values, effective
 * rank and share of the total energy; per block the totals; with a checkpoint, base norms and
 * what each recipe keeps.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect, plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const result = await inspect({ lora, checkpoint: base, device: "cpu", normsCache: false });
 * const { outputs } = await plan({ checkpoint: base, loras: [lora], device: "cpu", normsCache: false });
 * assert.equal(result.recipes[0].bytes, outputs[0].bytes); // what plan() says
 * assert.equal(result.layers.length, 986); // and every layer, resized or not
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function inspect(options: InspectOptions): Promise<InspectResult> {
  if (options.checkpoint === undefined && options.recipes === undefined) {
    const log = options.log ?? silent;
    const model = await loadLora(options.lora);
    const backend = options.backend ?? await selectBackend(options.device ?? "auto", { log });
    try {
      const sigmas = await sigmasOf(model, [], backend, options);
      return inspectionOf({ model, sigmas, outputs: [] });
    } finally {
      if (!options.backend) await backend.close();
    }
  }
  await using session = await openSession({
    ...options,
    loras: [options.lora],
    layerNorms: true,
  }, { writes: false });
  const { lora, selections } = await planLora(session, options.lora);
  const sigmas = await sigmasOf(lora.model, lora.allDecompositions, session.backend, options);
  return inspectionOf({
    model: lora.model,
    sigmas,
    checkpoint: options.checkpoint,
    outputs: selections.map((s) => s.summary),
  });
}

/**
 * The singular values of every layer of `model`: those already decomposed (`known[i]`), and the
 * others decomposed now.
 */
async function sigmasOf(
  model: LoraModel,
  known: readonly (LayerDecomposition | undefined)[],
  backend: Backend,
  options: InspectOptions,
): Promise<Float64Array[]> {
  const missing = model.layers.flatMap((l, i) => known[i] ? [] : [l]);
  const decompositions = await decomposeLayers(backend, missing, {
    onProgress: (d, t) => options.onProgress?.("SVD", d, t),
  });
  let next = 0;
  return model.layers.map((_, i) => (known[i] ?? decompositions[next++]).sigma);
}
