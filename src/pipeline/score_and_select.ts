/**
 * Scoring and selection stage: per recipe, each dimension of each resized layer gets a score,
 * the recipe's threshold or size target picks the dimensions to keep, and the result is
 * summarised (exact output size, ranks, error) before anything is built.
 *
 * @module
 */

import { checkFiniteSubspaceScales } from "../finite_checks.ts";
import type { BaseNorms } from "../linalg/backend.ts";
import { kroneckerSubspaceScales } from "../linalg/kronecker_subspace.ts";
import { dirname, join } from "node:path";
import { outputFileSize, type OutputShape, type OutputShapeFn } from "../output.ts";
import { kohyaRuleOf, outputFileName, type Recipe, resizeParamsJson } from "../recipe/recipe.ts";
import { type KohyaSelection, selectKohya } from "../recipe/kohya.ts";
import { kohyaLayerOf, kohyaNetworkMetadata } from "../recipe/kohya_layers.ts";
import {
  formatLayerDebugLine,
  formatQuantilesLine,
  type RecipeNeeds,
  scoreLayer,
  scoreQuantiles,
  truncationError,
} from "../recipe/score.ts";
import type { LayerSummary, OutputSummary } from "../summary.ts";
import { layerOutputKeys } from "./output_naming.ts";
import { type PreparedLora, withZeroLayers } from "./prepare_lora.ts";
import { selectDimensions } from "./select_dimensions.ts";
import { exactLora } from "../lora/lycoris_layers.ts";
import { isKronecker, isTrimmed } from "./layer_maths.ts";
import type { Session } from "./session.ts";
import { tradeOffCurve } from "./trade_off_curve.ts";

/** A scored and selected recipe: everything about its output but the factor values. */
export interface RecipeSelection {
  /** The recipe. */
  readonly recipe: Recipe;
  /** What the output holds (its path, size, ranks, error, per-layer kept dimensions). */
  readonly summary: OutputSummary;
  /** The output file's layout. */
  readonly shape: OutputShape;
  /** The folder the output goes to. */
  readonly folder: string;
}

/** Scores and selects every recipe of the run for `lora`, in order. */
export async function selectRecipes(
  session: Session,
  lora: PreparedLora,
): Promise<RecipeSelection[]> {
  const selections: RecipeSelection[] = [];
  const { recipes, needs } = session.options;
  for (const [r, recipe] of recipes.entries()) {
    selections.push(await selectRecipe(session, lora, recipe, needs[r]));
  }
  return selections;
}

/** The base norms a recipe needs (fetched now) and its score of every dimension of every layer. */
async function scoreRecipe(
  session: Session,
  lora: PreparedLora,
  recipe: Recipe,
  needs: RecipeNeeds,
): Promise<{ norms: BaseNorms[]; scores: Float64Array[] }> {
  const norms: BaseNorms[] = needs.frobenius || needs.spectral
    ? await session.norms.fetch(lora.layers, needs)
    : lora.layers.map(() => ({}));
  const subspace = needs.subspace ? await subspaceScales(session, lora) : undefined;
  const scores = lora.layers.map((p, i) => {
    session.options.onProgress(`Scoring ${recipe.text}`, i + 1, lora.layers.length);
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
  return { norms, scores };
}

/** Scores and selects one recipe (base norms fetched as it needs them); nothing is written. */
async function selectRecipe(
  session: Session,
  prepared: PreparedLora,
  recipe: Recipe,
  needs: RecipeNeeds,
): Promise<RecipeSelection> {
  const { options } = session;
  const rule = kohyaRuleOf(recipe);
  // kohya's rules keep all-zero layers, at rank 1.
  const lora = rule ? withZeroLayers(prepared) : prepared;
  const { norms, scores } = await scoreRecipe(session, lora, recipe, needs);

  let kohya: KohyaSelection | undefined;
  const keys = layerOutputKeys(lora.model, lora.layers.map((p) => p.layer), options.naming);
  const shapeFor: OutputShapeFn = (kept, threshold) => ({
    layers: lora.layers.map((p, i) => ({
      layer: p.layer,
      kept: kept[i],
      alpha: kohya?.alphas[i],
      keys: keys[i],
    })),
    passThrough: lora.passThrough,
    dtype: options.outputDtype,
    inputMetadata: lora.model.metadata,
    resizeParams: resizeParamsJson(recipe, threshold),
    networkMetadata: kohya && kohyaNetworkMetadata(
      rule!,
      lora.model.layers,
      lora.layers.map((p, i) => ({ layer: p.layer, alpha: kohya!.alphas[i] })),
      lora.model.metadata,
    ),
  });
  const selection = rule
    ? kohya = selectKohya(
      lora.layers.map((p, i) => kohyaLayerOf(p.layer, lora.decompositions[i].sigma)),
      rule,
    )
    : selectDimensions(session, lora, recipe, scores, shapeFor);
  const { threshold } = selection;
  const kept = kohya?.ranks ?? selection.keep.map((k) => k.length);
  const shape = shapeFor(kept, threshold);
  const folder = options.outputPath !== undefined
    ? dirname(options.outputPath)
    : options.outputFolder ?? lora.model.folder;
  const layers = layerSummaries(session, lora, recipe, {
    scores,
    keep: selection.keep,
    kept,
    norms,
  });
  options.log("INFO", formatQuantilesLine(scoreQuantiles(scores)));

  const summary: OutputSummary = {
    lora: lora.model.entry,
    recipe: recipe.text,
    path: options.outputPath ?? join(folder, outputFileName(lora.model.name, recipe, threshold)),
    bytes: outputFileSize(shape),
    written: false,
    threshold,
    rankBefore: layers.reduce((n, l) => n + l.dims, 0),
    rankAfter: layers.reduce((n, l) => n + l.kept, 0),
    relativeError: relativeError(lora, recipe, selection.keep),
    layers,
    cut: "cut" in selection ? selection.cut : undefined,
    curve: options.curve
      ? tradeOffCurve(
        lora,
        recipe,
        scores,
        shapeFor,
        (d, t) => options.onProgress(`Trade-off ${recipe.text}`, d, t),
      )
      : undefined,
  };
  await warnIfLargerThanLycoris(session, lora, summary);
  return { recipe, summary, shape, folder };
}

/**
 * A LoHa or LoKr layer's exact LoRA has rank r1·r2 or rank(W1)·rank(W2) (a full LoKr's is as large
 * as ΔW), so a threshold can keep far more than the file held: say so when the output would be
 * larger than its input.
 */
async function warnIfLargerThanLycoris(
  session: Session,
  lora: PreparedLora,
  summary: OutputSummary,
): Promise<void> {
  if (!lora.layers.some((p) => p.layer.lycoris)) return;
  let input = 0;
  for (const path of lora.model.paths) input += (await Deno.stat(path)).size;
  if (summary.bytes <= input) return;
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
  session.options.log(
    "WARNING",
    `${summary.path} would be ${
      mib(summary.bytes)
    } MiB, larger than its LoHa/LoKr input ${lora.model.entry} (${
      mib(input)
    } MiB): recipe ${summary.recipe} keeps more dimensions than the file stores parameters; a size= target bounds the output`,
  );
}

/** The per-layer summaries of a selection, and the DEBUG line of each layer. */
function layerSummaries(
  session: Session,
  lora: PreparedLora,
  recipe: Recipe,
  { scores, keep, kept, norms }: {
    scores: readonly Float64Array[];
    keep: readonly (readonly number[])[];
    /** The rank written per layer (kohya's rules can ask for more than `keep`). */
    kept: readonly number[];
    norms: readonly BaseNorms[];
  },
): LayerSummary[] {
  const { log, debug } = session.options;
  return lora.layers.map((p, i) => {
    const sigma = lora.decompositions[i].sigma;
    if (debug) {
      const e = truncationError(sigma, keep[i], {
        rescale: recipe.rescale,
        froCkpt: norms[i].frobenius ?? NaN,
      });
      log(
        "DEBUG",
        formatLayerDebugLine(p.layer.name, { ...e, dims: sigma.length, kept: keep[i].length }),
      );
    }
    const known = p.base && session.norms.get(p.base);
    return {
      name: p.layer.name,
      base: p.base?.label,
      kind: p.layer.inShape.length > 1 ? "conv" as const : "linear" as const,
      out: p.layer.factors.out,
      inShape: p.layer.inShape,
      ...exactLora(p.layer, sigma),
      baseFrobenius: known?.frobenius,
      baseSpectral: known?.spectral,
      dims: sigma.length,
      kept: kept[i],
      keep: keep[i],
      sigma,
      scores: scores[i],
    };
  });
}

/** ‖ΔW_out − rescale·ΔW_in‖_F / ‖rescale·ΔW_in‖_F over all resized layers. */
function relativeError(
  lora: PreparedLora,
  recipe: Recipe,
  keep: readonly (readonly number[])[],
): number {
  let dropped2 = 0;
  let total2 = 0;
  lora.decompositions.forEach(({ sigma }, i) => {
    const kept = new Set(keep[i]);
    sigma.forEach((s, j) => {
      const v = s * recipe.rescale;
      total2 += v * v;
      if (!kept.has(j)) dropped2 += v * v;
    });
  });
  return total2 > 0 ? Math.sqrt(dropped2 / total2) : 0;
}

/**
 * |uᵢᵀ·W·vᵢ| of every dimension of every resized layer, computed once per LoRA: by the backend,
 * LoKr layers from their factors' singular vectors (`src/linalg/kronecker_subspace.ts`).
 */
async function subspaceScales(session: Session, lora: PreparedLora): Promise<Float64Array[]> {
  if (lora.subspace) return lora.subspace;
  const weights = lora.layers.map((p) => session.checkpoint.weightRef(p.base!));
  const plain = lora.layers.flatMap((p, i) => {
    const decomposition = lora.decompositions[i];
    if (isTrimmed(decomposition)) {
      // Runs that score by subspace hold every transform (see the decomposition stage).
      throw new RangeError(`subspace scales of '${p.layer.name}' need all its transforms`);
    }
    return isKronecker(decomposition)
      ? []
      : [{ weight: weights[i], factors: p.layer.factors, decomposition }];
  });
  const kronecker = lora.layers.flatMap((p, i) => {
    const decomposition = lora.decompositions[i];
    const lokr = p.layer.lycoris?.kind === "lokr" ? p.layer.lycoris : undefined;
    return lokr && isKronecker(decomposition)
      ? [{ weight: weights[i], layer: lokr.kronecker, decomposition }]
      : [];
  });
  const scales = [
    ...await session.backend.subspaceScales(plain, {
      onProgress: (d, t) => session.options.onProgress("Subspace", d, t),
    }),
    ...await kroneckerSubspaceScales(session.backend, kronecker),
  ];
  let nextPlain = 0, nextKronecker = plain.length;
  lora.subspace = lora.decompositions.map((d) =>
    scales[isKronecker(d) ? nextKronecker++ : nextPlain++]
  );
  checkFiniteSubspaceScales(
    session.checkpoint.path,
    lora.layers.map((p) => p.base!.key),
    lora.subspace,
  );
  return lora.subspace;
}
