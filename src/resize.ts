/**
 * The resize pipeline, readable in one sitting:
 *
 * ```
 * resize(options)
 *   for each LoRA:   load → pair with the checkpoint → decompose (once)
 *     for each recipe: base norms (cached) → score → select → build → write
 * ```
 *
 * `plan()` is the same flow without writing (dry runs, reports).
 *
 * @module
 */

import { dirname, join, resolve } from "node:path";
import { OutputError, RecipeError } from "./errors.ts";
import type { Backend, BaseNorms, Decomposition, RebuildRequest } from "./linalg/backend.ts";
import { dtypeSize } from "./safetensors/dtype.ts";
import { loadHashing } from "./safetensors/hashes.ts";
import { type DeviceChoice, selectBackend } from "./linalg/select_backend.ts";
import { type LogFn, type LogLevel, silent } from "./log.ts";
import { loadLora, type LoraLayer, type LoraModel, type RawTensor } from "./lora/lora_file.ts";
import { parseMergeSpec } from "./lora/merge_spec.ts";
import {
  type PairedLayer,
  type Pairing,
  pairLayers,
  unmatchedBaseMessage,
} from "./lora/pairing.ts";
import { NormsCache, normsKey } from "./norms_cache.ts";
import {
  buildOutput,
  type OutputDType,
  outputElementSize,
  type OutputFactors,
  outputFileSize,
  type OutputShape,
} from "./output.ts";
import { outputFileName, parseRecipes, type Recipe, resizeParamsJson } from "./recipe/recipe.ts";
import {
  formatLayerDebugLine,
  formatQuantilesLine,
  recipeNeeds,
  scoreLayer,
  scoreQuantiles,
  truncationError,
} from "./recipe/score.ts";
import {
  formatTotalRankLine,
  rankDimensions,
  selectBySizeFile,
  selectBySizeOriginal,
  selectByThreshold,
  type Selection,
  type SizeAccounting,
  type SizeCut,
} from "./recipe/select.ts";
import { BaseCheckpoint, type BaseEntry } from "./sdxl/checkpoint.ts";
import { writeSafetensors } from "./safetensors/writer.ts";

/** The original tool's default recipe. */
export const DEFAULT_RECIPES = "fro_ckpt=1,thr=-3.5";

/** Base weights per norms batch (bytes at 2 per element) when a cache is written. */
const NORMS_BATCH_BYTES = 1 << 30;
/** … and at most this many weights. */
const NORMS_BATCH_ITEMS = 128;

/** A singular value below this (absolute) makes a layer an all-zero layer (§3.6). */
const ZERO_LAYER_SIGMA = 1e-6;

/**
 * Progress of a long step: a label (`Norms`, `SVD`, `Scoring <recipe>`, `Rebuild`), items done,
 * total.
 */
export type ProgressFn = (label: string, done: number, total: number) => void;

/** Options of {@link resize} and {@link plan}. */
export interface ResizeOptions {
  /** Base checkpoint (single-file SGM SDXL safetensors). */
  readonly checkpoint: string;
  /** LoRA entries: paths, or merge specs `"a.safetensors:0.7,b.safetensors:0.3"`. */
  readonly loras: readonly string[];
  /** Recipes separated by `:` (default {@link DEFAULT_RECIPES}). */
  readonly recipes?: string;
  /** Output folder (default: each LoRA's folder); created when missing. */
  readonly outputFolder?: string;
  /** Output element type (default `F16`). */
  readonly outputDtype?: OutputDType;
  /**
   * `auto` (default), `cpu` or `gpu`; ignored when `backend` is given. `auto` and `gpu` ask for a
   * WebGPU adapter: do that on a process's main thread only (see the README's Library section:
   * elsewhere the process can crash at exit where wgpu opens its GL backend).
   */
  readonly device?: DeviceChoice;
  /** A backend to use (the caller keeps ownership). */
  readonly backend?: Backend;
  /** Norms cache location (folder or `.json` file), or `false` to disable it. */
  readonly normsCache?: string | false;
  /** Size-mode accounting (default `file`, decision D6). */
  readonly sizeAccounting?: SizeAccounting;
  /** Drop tensors that are not part of a resized layer instead of copying them (D5). */
  readonly dropUnmapped?: boolean;
  /** Log receiver (default: silent). */
  readonly log?: LogFn;
  /** Lowest level the caller shows; `DEBUG` enables the per-layer report (needs Frobenius norms). */
  readonly logLevel?: LogLevel;
  /** Progress receiver. */
  readonly onProgress?: ProgressFn;
  /** Also compute each output's size ↔ error curve (for reports). */
  readonly curve?: boolean;
  /** Fetch every layer's base Frobenius norm even when no recipe needs it (for reports). */
  readonly layerNorms?: boolean;
}

/** One achievable point of the size ↔ error trade-off of a recipe's scoring. */
export interface CurvePoint {
  /** Number of kept dimensions (a prefix of the score ranking). */
  readonly rank: number;
  /** Score of the last kept dimension (+∞ for the empty selection). */
  readonly threshold: number;
  /** Exact output file size in bytes. */
  readonly bytes: number;
  /** Relative Frobenius error of the truncated LoRA (0 … 1). */
  readonly relativeError: number;
}

/** One layer of an output plan. */
export interface LayerPlan {
  /** Layer name. */
  readonly name: string;
  /** The base weight (or q/k/v block) it modifies, as the original labels it. */
  readonly base: string;
  /** `linear`, or `conv` for a LoCon kernel (4-D down weight). */
  readonly kind: "linear" | "conv";
  /** Rows of ΔW. */
  readonly out: number;
  /** The down weight's trailing dims (`[in]` or `[in, kh, kw]`). */
  readonly inShape: readonly number[];
  /** Stored rank r. */
  readonly rank: number;
  /** Stored alpha. */
  readonly alpha: number;
  /** Frobenius norm of the base weight, when known. */
  readonly baseFrobenius?: number;
  /** Spectral norm of the base weight, when known. */
  readonly baseSpectral?: number;
  /** Number of singular values k. */
  readonly dims: number;
  /** Kept dimensions k′. */
  readonly kept: number;
  /** Indices (into `sigma`) of the kept dimensions, ascending. */
  readonly keep: readonly number[];
  /** Scaled singular values (α/r included, rescale not). */
  readonly sigma: Float64Array;
  /** Scores of the recipe. */
  readonly scores: Float64Array;
}

/** What one (LoRA, recipe) pair produces (or would produce, in a dry run). */
export interface OutputSummary {
  /** The LoRA entry as given. */
  readonly lora: string;
  /** The recipe text. */
  readonly recipe: string;
  /** Output path. */
  readonly path: string;
  /** Exact file size in bytes. */
  readonly bytes: number;
  /** Whether the file was written (false in a dry run). */
  readonly written: boolean;
  /** The threshold used (user's, or computed in size mode). */
  readonly threshold: number;
  /** Total rank of the resized layers before (Σ k over non-zero layers). */
  readonly rankBefore: number;
  /** Total rank after (Σ k′). */
  readonly rankAfter: number;
  /** ‖ΔW_out − rescale·ΔW_in‖_F / ‖rescale·ΔW_in‖_F over all resized layers. */
  readonly relativeError: number;
  /** Per-layer plan (non-zero paired layers, name order). */
  readonly layers: readonly LayerPlan[];
  /** The size-mode cut, when the target cut the ranking. */
  readonly cut?: SizeCut;
  /** Size ↔ error curve (when `curve` was asked for), from the empty to the full selection. */
  readonly curve?: readonly CurvePoint[];
}

/** The result of {@link resize}. */
export interface ResizeResult {
  /** One summary per (LoRA, recipe), in order. */
  readonly outputs: OutputSummary[];
}

/** A LoRA after pairing and decomposition, shared by all recipes. */
interface PreparedLora {
  readonly model: LoraModel;
  /** Paired non-zero layers, name order. */
  readonly layers: readonly PairedLayer[];
  readonly decompositions: readonly Decomposition[];
  readonly passThrough: readonly RawTensor[];
  subspace?: Float64Array[];
}

/** Resources of one run. */
class Run implements AsyncDisposable {
  readonly norms = new Map<string, BaseNorms>();
  /** Every input file of the run: no output may replace one. */
  readonly inputs: readonly string[];
  #base?: { readonly checkpoint: BaseCheckpoint; readonly cache: NormsCache | undefined };
  constructor(
    readonly options: ResizeOptions,
    readonly log: LogFn,
    readonly backend: Backend,
    readonly ownsBackend: boolean,
    /** Whether outputs are written (not a plan). */
    readonly writes: boolean,
  ) {
    this.inputs = [
      options.checkpoint,
      ...options.loras.flatMap((e) => parseMergeSpec(e)?.map((m) => m.path) ?? [e]),
    ];
  }

  /**
   * Opens the norms cache and the base checkpoint, once. Not at the start of
   * the run: the first LoRA's decomposition is under way by then.
   */
  async openBase(): Promise<void> {
    if (this.#base) return;
    const { options, log } = this;
    let cache: NormsCache | undefined;
    if (options.normsCache !== false) {
      cache = await NormsCache.open(options.checkpoint, { location: options.normsCache });
      if (cache.loaded) log("INFO", `Loading ${cache.file}`);
    }
    this.#base = { checkpoint: await BaseCheckpoint.open(options.checkpoint), cache };
  }

  /** The base checkpoint ({@link openBase} first). */
  get checkpoint(): BaseCheckpoint {
    if (!this.#base) throw new Error("the base checkpoint is not open yet"); // cannot happen
    return this.#base.checkpoint;
  }

  /** The norms cache, unless disabled ({@link openBase} first). */
  get cache(): NormsCache | undefined {
    return this.#base?.cache;
  }

  async [Symbol.asyncDispose]() {
    this.#base?.checkpoint.close();
    if (this.ownsBackend) await this.backend.close();
  }
}

/**
 * Resizes every LoRA with every recipe and writes one file per pair.
 *
 * @example
 * ```ts ignore
 * import { resize } from "./resize.ts";
 * const { outputs } = await resize({
 *   checkpoint: "sd_xl_base_1.0.safetensors",
 *   loras: ["my_lora.safetensors"],
 *   recipes: "fro_ckpt=1,thr=-3.5:spn_lora=1,size=32",
 *   outputFolder: "out",
 * });
 * for (const o of outputs) console.log(o.path, o.bytes, o.rankBefore, "→", o.rankAfter);
 * ```
 */
export function resize(options: ResizeOptions): Promise<ResizeResult> {
  return runPipeline(options, true);
}

/**
 * Runs the pipeline up to the write: exact output sizes, ranks and errors of
 * every (LoRA, recipe) pair, nothing written. Base norms already in the norms
 * cache are not read again.
 *
 * @example
 * ```ts ignore
 * import { plan } from "./resize.ts";
 * const { outputs } = await plan({ checkpoint: "base.safetensors", loras: ["a.safetensors"] });
 * console.log(outputs[0].bytes, outputs[0].relativeError);
 * ```
 */
export function plan(options: ResizeOptions): Promise<ResizeResult> {
  return runPipeline(options, false);
}

async function runPipeline(options: ResizeOptions, write: boolean): Promise<ResizeResult> {
  const log = options.log ?? silent;
  const recipes = parseRecipes(options.recipes ?? DEFAULT_RECIPES);
  for (const r of recipes) for (const w of r.warnings) log("WARNING", w);
  await using run = await openRun(options, { log, write });
  // The base norms any recipe needs are computed alongside the decomposition.
  const needs = recipes.map((r) => needsOf(r, options));
  const norms = {
    frobenius: needs.some((n) => n.frobenius),
    spectral: needs.some((n) => n.spectral),
  };
  const outputs: OutputSummary[] = [];
  for (const entry of options.loras) {
    const lora = await prepareLora(run, entry, norms);
    const plans: RecipePlan[] = [];
    for (const recipe of recipes) plans.push(await planRecipe(run, lora, recipe));
    outputs.push(...(write ? await writeOutputs(run, lora, plans) : plans.map((p) => p.summary)));
  }
  return { outputs };
}

/** What a recipe needs from the base; the DEBUG layer report and reports add Frobenius norms. */
function needsOf(recipe: Recipe, options: ResizeOptions) {
  return recipeNeeds(recipe, {
    layerReport: options.logLevel === "DEBUG" || options.layerNorms === true,
  });
}

async function openRun(
  options: ResizeOptions,
  { log, write }: { log: LogFn; write: boolean },
): Promise<Run> {
  // The backend first: its workers start up while this thread reads the inputs.
  const backend = options.backend ?? await selectBackend(options.device ?? "auto", { log });
  return new Run(options, log, backend, !options.backend, write);
}

/** Load, pair, decompose, drop all-zero layers. */
async function prepareLora(
  run: Run,
  entry: string,
  norms: { frobenius: boolean; spectral: boolean },
): Promise<PreparedLora> {
  const { log, options } = run;
  const model = await loadLora(entry);
  // Every layer's decomposition starts now, while this thread opens the base and pairs: SDXL
  // LoRAs pair every layer, and the SVD of one that does not pair is dropped. The progress bar
  // waits for the pairing's log lines.
  let progress: [number, number] | undefined, shown = false;
  const svdProgress = (d: number, t: number) => {
    progress = [d, t];
    if (shown) options.onProgress?.("SVD", d, t);
  };
  const early = new AbortController();
  const decomposing = Promise.try(() =>
    run.backend.decompose(model.layers.map((l) => l.factors), {
      onProgress: svdProgress,
      signal: early.signal,
    })
  );
  decomposing.catch(() => {}); // awaited below; not unhandled if pairing fails first
  let pairing: Pairing;
  try {
    await run.openBase();
    log("INFO", `Processing LoRA model: ${entry}`);
    pairing = pairLayers(model, run.checkpoint);
  } catch (e) {
    early.abort(e);
    throw e;
  }
  // --drop_unmapped keeps nothing but resized layers, as the original did.
  const passThrough = options.dropUnmapped ? [] : [...model.passThrough];
  if (options.dropUnmapped) {
    for (const layer of pairing.unmapped) {
      log(
        "WARNING",
        `LoRA key '${layer.name}' found in file but is not mapped to any base layer by the checkpoint's key_mapper.`,
      );
    }
  } else {
    for (const layer of pairing.unmapped) {
      log("DEBUG", `LoRA layer '${layer.name}' maps to no base weight: copied unchanged`);
      passThrough.push(...layer.tensors);
    }
  }
  for (const base of pairing.unmatchedBase) log("INFO", unmatchedBaseMessage(base));
  log(
    "INFO",
    `Mapped ${pairing.paired.length} LoRA layers from file to base layers (out of ${model.layers.length} LoRA alpha keys in file).`,
  );
  reportPassThrough(run, model, pairing.unmapped, passThrough);
  const short = pairing.paired.filter((p) => p.matchedBy === "short");
  if (short.length > 0) {
    log(
      "WARNING",
      `${short.length} layers of ${entry} matched only through lossy short aliases (e.g. '${
        short[0].layer.name
      }' → '${short[0].base.label}'); check the pairing with -v`,
    );
  }

  // The base norms queue behind the decomposition on the backend's workers (neither waits for
  // the other's stragglers).
  const prefetch = norms.frobenius || norms.spectral
    ? baseNorms(run, pairing.paired, norms)
    : undefined;
  prefetch?.catch(() => {}); // awaited below; not unhandled if decompose fails first
  shown = true;
  if (progress) options.onProgress?.("SVD", ...progress);
  // This thread waits for the workers now: the time to load what writing needs.
  if (run.writes) loadHashing().catch(() => {});
  const index = new Map(model.layers.map((l, i) => [l, i]));
  const decompositions = await decomposing.then(
    (all) => pairing.paired.map((p) => all[index.get(p.layer)!]),
    // A layer that does not pair may be one the backend refuses (it is copied unchanged): the
    // paired layers alone then decide whether the run fails.
    () =>
      run.backend.decompose(pairing.paired.map((p) => p.layer.factors), {
        onProgress: svdProgress,
      }),
  );
  await prefetch;
  const layers: PairedLayer[] = [];
  const kept: Decomposition[] = [];
  pairing.paired.forEach((p, i) => {
    const d = decompositions[i];
    if (!(d.sigma.length > 0 && d.sigma[0] >= ZERO_LAYER_SIGMA)) {
      // kohya trains no TE1 layer 11 (SDXL uses the penultimate CLIP-L layer).
      if (!p.layer.name.includes("text_model_encoder_layers_11")) {
        log("WARNING", `LoRA layer ${p.layer.name} is all zeroes! dim=${d.sigma.length}`);
      }
      return;
    }
    layers.push(p);
    kept.push(d);
  });
  return { model, layers, decompositions: kept, passThrough };
}

function reportPassThrough(
  run: Run,
  model: LoraModel,
  unmapped: readonly LoraLayer[],
  passThrough: readonly RawTensor[],
): void {
  const parts: string[] = [];
  if (unmapped.length > 0) {
    parts.push(`${unmapped.length} LoRA layers with no base weight`);
  }
  for (const [kind, n] of Object.entries(model.passThroughSummary.byKind)) {
    if (n > 0) parts.push(`${n} ${kind} tensors`);
  }
  if (parts.length === 0) return;
  const count = run.options.dropUnmapped
    ? model.passThrough.length + unmapped.reduce((n, l) => n + l.tensors.length, 0)
    : passThrough.length;
  run.log(
    "WARNING",
    run.options.dropUnmapped
      ? `Dropping ${count} tensors of ${model.entry} that are not part of a resized layer: ${
        parts.join(", ")
      }`
      : `Copying ${count} tensors of ${model.entry} that are not part of a resized layer unchanged: ${
        parts.join(", ")
      } (--drop_unmapped drops them)`,
  );
}

/** Base norms for the layers' entries: from memory, the cache, or the backend. */
async function baseNorms(
  run: Run,
  layers: readonly PairedLayer[],
  which: { frobenius: boolean; spectral: boolean },
): Promise<BaseNorms[]> {
  const missing = new Map<string, { entry: BaseEntry; layer: string }>();
  const lookup = (key: string) => run.norms.get(key) ?? run.cache?.get(key);
  for (const p of layers) {
    const key = normsKey(p.base);
    const known = lookup(key);
    const lacks = (which.frobenius && known?.frobenius === undefined) ||
      (which.spectral && known?.spectral === undefined);
    if (lacks && !missing.has(key)) missing.set(key, { entry: p.base, layer: p.layer.name });
  }
  const todo = [...missing];
  // With a cache, batches of about a GB of weights, written as they complete,
  // so that an interrupted run keeps what it computed (D7); without, one batch
  // keeps the workers busiest.
  const batches: (typeof todo)[] = [];
  let bytes = 0;
  for (const item of todo) {
    const last = batches.at(-1);
    const full = run.cache !== undefined &&
      (bytes >= NORMS_BATCH_BYTES || (last?.length ?? 0) >= NORMS_BATCH_ITEMS);
    if (!last || full) {
      batches.push([item]);
      bytes = 0;
    } else last.push(item);
    bytes += item[1].entry.rows * item[1].entry.cols * 2;
  }
  let start = 0;
  for (const batch of batches) {
    for (const [, { entry, layer }] of batch) {
      run.log("DEBUG", `Loading base weight ${entry.label} for ${layer}`);
    }
    const norms = await run.backend.baseNorms(
      batch.map(([, { entry }]) => run.checkpoint.weightRef(entry)),
      which,
      {
        onProgress: (d, _t) => run.options.onProgress?.("Norms", start + d, todo.length),
      },
    );
    const update: Record<string, BaseNorms> = {};
    batch.forEach(([key], i) => {
      const merged = { ...lookup(key), ...norms[i] };
      run.norms.set(key, merged);
      update[key] = norms[i];
    });
    await run.cache?.update(update);
    start += batch.length;
  }
  return layers.map((p) => lookup(normsKey(p.base)) ?? {});
}

async function subspaceScales(run: Run, lora: PreparedLora): Promise<Float64Array[]> {
  lora.subspace ??= await run.backend.subspaceScales(
    lora.layers.map((p, i) => ({
      weight: run.checkpoint.weightRef(p.base),
      factors: p.layer.factors,
      decomposition: lora.decompositions[i],
    })),
  );
  return lora.subspace;
}

/** Score, select, build and (unless planning) write one output. */
/** A scored and selected recipe: everything but the factor values of its output. */
interface RecipePlan {
  readonly recipe: Recipe;
  readonly summary: OutputSummary;
  readonly shape: OutputShape;
  readonly folder: string;
}

/** Score and select one recipe (norms fetched as needed); nothing is written. */
async function planRecipe(run: Run, lora: PreparedLora, recipe: Recipe): Promise<RecipePlan> {
  const { log, options } = run;
  const dtype = options.outputDtype ?? "F16";
  const debug = options.logLevel === "DEBUG";
  const needs = needsOf(recipe, options);
  const norms: BaseNorms[] = needs.frobenius || needs.spectral
    ? await baseNorms(run, lora.layers, needs)
    : lora.layers.map(() => ({}));
  const subspace = needs.subspace ? await subspaceScales(run, lora) : undefined;

  const scores = lora.layers.map((p, i) => {
    options.onProgress?.(`Scoring ${recipe.text}`, i + 1, lora.layers.length);
    return scoreLayer(recipe, {
      sigma: lora.decompositions[i].sigma,
      out: p.layer.factors.out,
      inFlat: p.layer.factors.inFlat,
      froCkpt: norms[i].frobenius,
      spnCkpt: norms[i].spectral,
      subspace: subspace?.[i],
      name: p.layer.name,
    });
  });

  const shapeFor = (kept: ArrayLike<number>, threshold: number): OutputShape => ({
    layers: lora.layers.map((p, i) => ({ layer: p.layer, kept: kept[i] })),
    passThrough: lora.passThrough,
    dtype,
    inputMetadata: lora.model.metadata,
    resizeParams: resizeParamsJson(recipe, threshold),
  });
  const selection = select(run, lora, recipe, scores, shapeFor);
  const threshold = selection.threshold;
  const keptCounts = selection.keep.map((k) => k.length);
  const shape = shapeFor(keptCounts, threshold);
  const folder = options.outputFolder ?? lora.model.folder;
  const path = join(folder, outputFileName(lora.model.name, recipe, threshold));

  let dropped2 = 0;
  let total2 = 0;
  const layers: LayerPlan[] = lora.layers.map((p, i) => {
    const sigma = lora.decompositions[i].sigma;
    const keep = selection.keep[i];
    const keptSet = new Set(keep);
    sigma.forEach((s, j) => {
      const v = s * recipe.rescale;
      total2 += v * v;
      if (!keptSet.has(j)) dropped2 += v * v;
    });
    if (debug) {
      const e = truncationError(sigma, keep, {
        rescale: recipe.rescale,
        froCkpt: norms[i].frobenius ?? NaN,
      });
      log(
        "DEBUG",
        formatLayerDebugLine(p.layer.name, { ...e, dims: sigma.length, kept: keep.length }),
      );
    }
    return {
      name: p.layer.name,
      base: p.base.label,
      kind: p.layer.inShape.length > 1 ? "conv" as const : "linear" as const,
      out: p.layer.factors.out,
      inShape: p.layer.inShape,
      rank: p.layer.factors.rank,
      alpha: p.layer.alpha,
      baseFrobenius: norms[i].frobenius ?? run.norms.get(normsKey(p.base))?.frobenius ??
        run.cache?.get(normsKey(p.base))?.frobenius,
      baseSpectral: norms[i].spectral ?? run.norms.get(normsKey(p.base))?.spectral ??
        run.cache?.get(normsKey(p.base))?.spectral,
      dims: sigma.length,
      kept: keep.length,
      keep,
      sigma,
      scores: scores[i],
    };
  });
  log("INFO", formatQuantilesLine(scoreQuantiles(scores)));

  const summary = {
    lora: lora.model.entry,
    recipe: recipe.text,
    path,
    bytes: outputFileSize(shape),
    written: false,
    threshold,
    rankBefore: layers.reduce((n, l) => n + l.dims, 0),
    rankAfter: layers.reduce((n, l) => n + l.kept, 0),
    relativeError: total2 > 0 ? Math.sqrt(dropped2 / total2) : 0,
    layers,
    cut: selection.cut,
    curve: options.curve ? tradeOffCurve(lora, recipe, scores, shapeFor) : undefined,
  };
  return { recipe, summary, shape, folder };
}

/**
 * Builds and writes the planned outputs of one LoRA. Recipes with the same
 * `rescale` share one rebuild of the union of their kept dimensions: each
 * dimension's output factors (√σ·u, √σ·v) do not depend on which others are
 * kept, so every recipe takes its own columns and rows of that one result.
 * The first output is written while the rebuild goes on: the writer takes
 * each layer's factors as soon as the backend has them, in file order.
 */
async function writeOutputs(
  run: Run,
  lora: PreparedLora,
  plans: readonly RecipePlan[],
): Promise<OutputSummary[]> {
  const dtype = run.options.outputDtype ?? "F16";
  for (const plan of plans) await checkOutputPath(run, lora, plan.summary.path);
  const written = new Map<RecipePlan, OutputSummary>();
  for (const rescale of new Set(plans.map((p) => p.recipe.rescale))) {
    const group = plans.filter((p) => p.recipe.rescale === rescale);
    const union = lora.layers.map((_, i) =>
      sortedUnion(group.map((p) => p.summary.layers[i].keep))
    );
    const rebuild = startRebuild(run, lora, union, { rescale, dtype });
    try {
      for (const plan of group) {
        const { path, bytes } = plan.summary;
        const factors = lora.layers.flatMap((p, i) => {
          const keep = plan.summary.layers[i].keep;
          if (keep.length === 0) return [];
          return [async () => keptOf(await rebuild.layer(i), union[i], keep, p.layer.factors.out)];
        });
        const { tensors, metadata } = buildOutput(plan.shape, factors);
        run.log("INFO", `Saving ${path}`);
        await Deno.mkdir(plan.folder, { recursive: true }).catch((e) => {
          throw new OutputError(`${plan.folder}: cannot create the output folder (${e.message})`);
        });
        const result = await writeSafetensors(path, tensors, { metadata, sshsHashes: true });
        if (result.bytes !== bytes) {
          throw new OutputError(`${path}: wrote ${result.bytes} bytes, planned ${bytes}`);
        }
        written.set(plan, { ...plan.summary, written: true });
      }
      await rebuild.finished;
    } catch (e) {
      await rebuild.stop(e);
      throw e;
    }
  }
  return plans.map((p) => written.get(p)!);
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
  run: Run,
  lora: PreparedLora,
  keeps: readonly (readonly number[])[],
  how: { readonly rescale: number; readonly dtype: OutputDType },
): RebuildStream {
  const pending = new Map<number, PromiseWithResolvers<OutputFactors>>();
  const requests: RebuildRequest[] = [];
  keeps.forEach((keep, i) => {
    if (keep.length === 0) return;
    const result = Promise.withResolvers<OutputFactors>();
    result.promise.catch(() => {}); // a write that stops early leaves the rest unasked
    pending.set(i, result);
    const { factors } = lora.layers[i].layer;
    requests.push({ factors, decomposition: lora.decompositions[i], keep, ...how });
  });
  const layerOf = [...pending.keys()];
  const abort = new AbortController();
  const finished = run.backend.rebuild(requests, {
    onProgress: (d, t) => run.options.onProgress?.("Rebuild", d, t),
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

/** The ascending union of ascending index lists. */
function sortedUnion(lists: readonly (readonly number[])[]): number[] {
  return lists.length === 1 ? [...lists[0]] : [...new Set(lists.flat())].sort((a, b) => a - b);
}

/**
 * The factors of the `keep` dimensions out of factors built for `union` (a
 * superset): columns of up (out × |union|), rows of down (|union| × in′).
 */
function keptOf(
  factors: OutputFactors,
  union: readonly number[],
  keep: readonly number[],
  out: number,
): OutputFactors {
  if (keep.length === union.length) return factors;
  const at = new Map(union.map((u, j) => [u, j]));
  const positions = keep.map((k) => at.get(k)!);
  const n = union.length, k = keep.length;
  const { up, down } = factors;
  // Whole elements at a time (every output dtype is 2 or 4 bytes wide).
  const elements = (b: Uint8Array) => {
    const size = dtypeSize(up.dtype), aligned = b.byteOffset % size === 0 ? b : b.slice();
    return size === 2
      ? new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2)
      : new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
  };
  const from = elements(up.bytes);
  const upBytes = new Uint8Array(out * k * dtypeSize(up.dtype));
  const to = elements(upBytes);
  for (let r = 0; r < out; r++) {
    for (let c = 0; c < k; c++) to[r * k + c] = from[r * n + positions[c]];
  }
  const row = down.bytes.byteLength / n;
  const downBytes = new Uint8Array(k * row);
  positions.forEach((j, c) => downBytes.set(down.bytes.subarray(j * row, (j + 1) * row), c * row));
  return { up: { dtype: up.dtype, bytes: upBytes }, down: { dtype: down.dtype, bytes: downBytes } };
}

function select(
  run: Run,
  lora: PreparedLora,
  recipe: Recipe,
  scores: Float64Array[],
  shapeFor: (kept: ArrayLike<number>, threshold: number) => OutputShape,
): Selection & { cut?: SizeCut } {
  const { options, log } = run;
  if (recipe.sizeMiB === undefined) return selectByThreshold(scores, recipe.threshold!);
  const dtype = options.outputDtype ?? "F16";
  let selection: Selection & { cut?: SizeCut };
  if (options.sizeAccounting === "original") {
    selection = selectBySizeOriginal(
      lora.layers.map((p, i) => ({
        scores: scores[i],
        out: p.layer.factors.out,
        inFlat: p.layer.factors.inFlat,
      })),
      { targetMiB: recipe.sizeMiB, elementSize: outputElementSize(dtype) },
    );
  } else {
    // The threshold is not known until the cut is: measure with the longest
    // text a threshold can take, so the real file is never larger.
    const widest = -1.2345678901234567e-308;
    const elementSize = outputElementSize(dtype);
    const s = selectBySizeFile(scores, {
      targetMiB: recipe.sizeMiB,
      fileSize: (kept) => outputFileSize(shapeFor(kept, widest)),
      dimensionBytes: lora.layers.map((p) =>
        (p.layer.factors.out + p.layer.factors.inFlat) * elementSize
      ),
    });
    if (!s.fits) {
      throw new RecipeError(
        `${lora.model.entry}: recipe ${recipe.text}: even an output without any resized layer (${s.fileBytes} bytes) is larger than size=${recipe.sizeMiB} MiB`,
      );
    }
    // Report the real size, measured with the real threshold text.
    const real = () => outputFileSize(shapeFor(s.keep.map((k) => k.length), s.threshold));
    selection = s.cut ? { ...s, cut: { ...s.cut, realBytes: real() } } : s;
  }
  if (selection.cut) log("INFO", formatTotalRankLine(selection.cut));
  return selection;
}

/** Points of the size ↔ error curve along the score ranking (about 200, ends included). */
function tradeOffCurve(
  lora: PreparedLora,
  recipe: Recipe,
  scores: Float64Array[],
  shapeFor: (kept: ArrayLike<number>, threshold: number) => OutputShape,
): CurvePoint[] {
  const ranking = rankDimensions(scores);
  const n = ranking.score.length;
  let total = 0;
  for (const d of lora.decompositions) for (const s of d.sigma) total += (s * recipe.rescale) ** 2;
  const steps = Math.min(n, 200);
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
  }
  return points;
}

async function realPathOrResolve(path: string): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch {
    try {
      return join(await Deno.realPath(dirname(path)), path.split(/[\\/]/).pop()!);
    } catch {
      return resolve(path);
    }
  }
}

async function checkOutputPath(run: Run, lora: PreparedLora, path: string): Promise<void> {
  const out = await realPathOrResolve(path);
  for (const input of new Set([...run.inputs, ...lora.model.paths])) {
    if (out === await realPathOrResolve(input)) {
      throw new OutputError(`${path}: the output would overwrite the input ${input}`);
    }
  }
}
