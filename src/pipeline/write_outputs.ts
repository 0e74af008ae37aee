/**
 * Build-and-write stage: the selected outputs of one LoRA are rebuilt and written. Recipes with
 * the same `rescale` share one rebuild of the union of their kept dimensions (each takes its own
 * columns and rows of it), and a file is written while the rebuild goes on: the writer takes each
 * layer's factors as soon as the backend has them, in file order.
 *
 * @module
 */

import { OutputError } from "../errors.ts";
import {
  buildOutput,
  extractKeptFactors,
  type OutputDType,
  type OutputFactors,
  type OutputFactorsSource,
  sortedUnion,
  withZeroDimensions,
} from "../output.ts";
import { outputSource } from "../output_paths.ts";
import { writeSafetensors } from "../safetensors/writer.ts";
import type { OutputSummary } from "../summary.ts";
import { type PreparedLora, withZeroLayers } from "./prepare_lora.ts";
import type { RecipeSelection } from "./score_and_select.ts";
import { type LayerRebuildRequest, rebuildLayers } from "./layer_maths.ts";
import type { Session } from "./session.ts";

/** Builds and writes the selected outputs of one LoRA; returns their summaries, in order. */
export async function writeOutputs(
  session: Session,
  lora: PreparedLora,
  selections: readonly RecipeSelection[],
): Promise<OutputSummary[]> {
  // size= names are known now: every output of this LoRA is claimed before the first is written.
  for (const { summary, recipe } of selections) {
    await session.paths.claim({ path: summary.path, source: outputSource(summary.lora, recipe) });
  }
  // Selections by kohya's rules also cover the all-zero layers, after the others.
  lora = withZeroLayers(lora);
  const written = new Map<RecipeSelection, OutputSummary>();
  for (const rescale of new Set(selections.map((s) => s.recipe.rescale))) {
    const group = selections.filter((s) => s.recipe.rescale === rescale);
    const union = lora.layers.map((_, i) =>
      sortedUnion(group.map((s) => s.summary.layers[i]?.keep ?? []))
    );
    const fold = foldings(lora, group);
    const rebuild = startRebuild(session, lora, union, {
      rescale,
      dtype: session.options.outputDtype,
      fold,
    });
    try {
      for (const selection of group) {
        await writeOutput(
          session,
          selection,
          fold.map((f) => f === "rebuild"),
          (i, keep) => async () =>
            extractKeptFactors(await rebuild.layer(i), {
              built: union[i],
              keep,
              out: lora.layers[i].layer.factors.out,
            }),
        );
        written.set(selection, { ...selection.summary, written: true });
      }
      await rebuild.finished;
    } catch (e) {
      await rebuild.stop(e);
      throw e;
    }
  }
  return selections.map((s) => written.get(s)!);
}

/**
 * How each layer's scale gets into its factors, for a naming without alpha: by the rebuild
 * (scaling its singular values, no extra rounding) when every output of the group stores the
 * default alpha α·k′/r, else when written (kohya's rules set their own alphas), from factors the
 * rebuild gives in F32 so that the output dtype rounds them once.
 */
type Folding = "none" | "rebuild" | "write";

function foldings(lora: PreparedLora, group: readonly RecipeSelection[]): Folding[] {
  return lora.layers.map((_, i) => {
    const outputs = group.map((s) => s.shape.layers[i]).filter((o) => o !== undefined);
    if (!outputs.some((o) => o.keys?.foldScale)) return "none";
    return outputs.every((o) => o.alpha === undefined) ? "rebuild" : "write";
  });
}

/** Writes one output, asking `factorsOf` for each layer's factors as the writer reaches it. */
async function writeOutput(
  session: Session,
  { summary, shape, folder }: RecipeSelection,
  folded: readonly boolean[],
  factorsOf: (layer: number, keep: readonly number[]) => () => Promise<OutputFactors>,
): Promise<void> {
  const { path, bytes } = summary;
  const dtype = session.options.outputDtype;
  // kohya's rules may write more dimensions than a layer has: zero directions after its own.
  const factors = summary.layers.flatMap((
    { keep, kept, out, inShape },
    i,
  ): OutputFactorsSource[] => {
    if (kept === 0) return [];
    const zeros = { out, inFlat: inShape.reduce((a, b) => a * b, 1), dtype };
    if (keep.length === 0) return [withZeroDimensions(undefined, kept, zeros)];
    const own = factorsOf(i, keep);
    return [async () => withZeroDimensions(await own(), kept - keep.length, zeros)];
  });
  const { tensors, metadata } = buildOutput(shape, factors, { folded });
  session.options.log("INFO", `Saving ${path}`);
  await Deno.mkdir(folder, { recursive: true }).catch((e) => {
    throw new OutputError(`${folder}: cannot create the output folder (${e.message})`, {
      file: folder,
    });
  });
  const result = await writeSafetensors(path, tensors, { metadata, sshsHashes: true });
  if (result.bytes !== bytes) {
    throw new OutputError(`${path}: wrote ${result.bytes} bytes, planned ${bytes}`, { file: path });
  }
}

/** A rebuild under way, whose layers can be awaited one by one as the backend finishes them. */
interface RebuildStream {
  /** The rebuilt factors of layer `i` (one with dimensions to keep). */
  layer(i: number): Promise<OutputFactors>;
  /** Resolves when the whole rebuild has finished; rejects as it does. */
  readonly finished: Promise<void>;
  /** Drops the work not started yet and resolves once the rest has settled. */
  stop(reason: unknown): Promise<void>;
}

/** Starts rebuilding every layer of `lora` that keeps dimensions (`keeps[i]`, ascending). */
function startRebuild(
  session: Session,
  lora: PreparedLora,
  keeps: readonly (readonly number[])[],
  how: { readonly rescale: number; readonly dtype: OutputDType; readonly fold: readonly Folding[] },
): RebuildStream {
  const pending = new Map<number, PromiseWithResolvers<OutputFactors>>();
  const requests: LayerRebuildRequest[] = [];
  keeps.forEach((keep, i) => {
    if (keep.length === 0) return;
    const result = Promise.withResolvers<OutputFactors>();
    result.promise.catch(() => {}); // a write that stops early leaves the rest unasked
    pending.set(i, result);
    const { layer } = lora.layers[i];
    // up·down·scale = rescale·ΔW: a rescale times `scale` leaves up·down = ΔW itself.
    const fold = how.fold[i];
    requests.push({
      layer,
      decomposition: lora.decompositions[i],
      keep,
      rescale: fold === "rebuild" ? how.rescale * layer.factors.scale : how.rescale,
      dtype: fold === "write" ? "F32" : how.dtype,
    });
  });
  const layerOf = [...pending.keys()];
  const abort = new AbortController();
  const finished = rebuildLayers(session.backend, requests, {
    onProgress: (d, t) => session.options.onProgress("Rebuild", d, t),
    onResult: (j, factors) => pending.get(layerOf[j])!.resolve(factors),
    signal: abort.signal,
  }).then(() => {}, (e) => {
    for (const f of pending.values()) f.reject(e);
    throw e;
  });
  finished.catch(() => {}); // its owner awaits it after the writes
  return {
    layer: (i) => pending.get(i)!.promise,
    finished,
    stop: (reason) => {
      abort.abort(reason);
      return finished.catch(() => {});
    },
  };
}
