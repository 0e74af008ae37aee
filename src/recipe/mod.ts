/**
 * `@x/resize-lora/recipe`: the recipe language (`fro_ckpt=1,thr=-3.5`, …), the output names and
 * `resize_params` metadata it implies, the per-dimension scores and selections, and kohya's
 * per-layer rules (`sv_fro=0.9,rank=16`).
 *
 * @example
 * ```ts
 * import { outputFileName, parseRecipe } from "@x/resize-lora/recipe";
 * const recipe = parseRecipe("fro_ckpt=1,thr=-3.5");
 * const name = outputFileName("my_lora", recipe, recipe.threshold!);
 * if (name !== "my_lora_frockpt1_th-3.5.safetensors") throw new Error(name);
 * ```
 *
 * @module
 */

export {
  kohyaRuleOf,
  outputFileName,
  parseRecipe,
  parseRecipes,
  type Recipe,
  resizeParamsJson,
  SCORE_KEYS,
  type ScoreKey,
  type ScoreWeights,
} from "./recipe.ts";
export {
  type LayerScoreInput,
  type RecipeNeeds,
  recipeNeeds,
  type RecipeNeedsOptions,
  scoreLayer,
  type ScoreRecipe,
} from "./score.ts";
export { rankDimensions, type Ranking } from "./ranking.ts";
export { selectByThreshold, type Selection, type SizeAccounting, type SizeCut } from "./select.ts";
export { fileNameNumber, parsePythonFloat, pyRepr } from "./pyfloat.ts";
export {
  KOHYA_METHODS,
  kohyaAlpha,
  type KohyaLayerShape,
  type KohyaMethod,
  kohyaRank,
  type KohyaRule,
  type KohyaSpectrum,
} from "./kohya.ts";
