/**
 * Score recipes: the small language of `-r/--score_recipes`, the output file
 * name a recipe gives, and the `resize_params` metadata it writes.
 *
 * ```
 * recipes := recipe (":" recipe)*      recipe := part ("," part)*
 * part    := key ["=" value]           value  := Python float() syntax
 * ```
 *
 * Keys: the score weights `spn_ckpt`, `spn_lora`, `fro_ckpt`, `fro_lora`,
 * `subspace`, `params` (a bare key means weight 1; weights are divided by
 * their signed sum), `thr` (log10 threshold), `size` (target MiB), `rescale`.
 * Messages and evaluation order are those of the original tool; on top of
 * them, values no run can use are rejected before any work: a weight that is
 * not finite, weights that overflow when normalised or normalise beyond
 * ±{@link MAX_ABS_WEIGHT}, `rescale` outside (0, {@link MAX_RESCALE}], `size`
 * outside [0, {@link MAX_SIZE_MIB}], `thr` NaN or beyond
 * ±{@link MAX_ABS_THRESHOLD} (±inf allowed); these limits also keep output
 * file names short. `size` together with `thr` warns that `size` wins.
 *
 * kohya's per-layer rules (see `kohya.ts`): `sv_ratio=R`, `sv_fro=F` or
 * `sv_cumulative=C` picks each layer's rank by itself (no score weights,
 * `thr` or `size`); `rank=N` alone is a fixed rank per layer, and with any
 * other selection a per-layer cap; `conv_rank=N` is the same for 4-D layers
 * (default: `rank`).
 *
 * @module
 */

import { RecipeError } from "../errors.ts";
import { closestName } from "../suggest.ts";
import { KOHYA_METHODS, type KohyaMethod, type KohyaRule } from "./kohya.ts";
import { fileNameNumber, parsePythonFloat, pyRepr } from "./pyfloat.ts";
import { type PyJson, pyJsonDumps } from "./pyformat.ts";

/**
 * Largest normalised score weight (in absolute value): beyond it, weights of
 * opposite signs nearly cancel in their sum, and the names they give grow
 * without bound.
 */
export const MAX_ABS_WEIGHT = 1e6;
/** Largest `size=` target in MiB (1 TiB). */
export const MAX_SIZE_MIB = 1 << 20;
/** Largest `rescale=` factor. */
export const MAX_RESCALE = 1e6;
/**
 * Largest finite `|thr|`: scores are log10 ratios of float64 values, so
 * beyond ±1000 a threshold keeps everything or nothing, as ±inf does.
 */
export const MAX_ABS_THRESHOLD = 1000;

/** Normalised score weights (they sum to 1), keyed by the recipe's names. */
export interface ScoreWeights {
  /** Reference: the largest singular value of the LoRA layer. */
  readonly spn_lora: number;
  /** Reference: the spectral norm of the base weight. */
  readonly spn_ckpt: number;
  /** Per-dimension reference |uᵢᵀ·W·vᵢ|. */
  readonly subspace: number;
  /** Reference: the Frobenius norm of the LoRA layer, ‖σ‖₂. */
  readonly fro_lora: number;
  /** Reference: the Frobenius norm of the base weight. */
  readonly fro_ckpt: number;
  /** Reference: the parameters per rank, out + in′. */
  readonly params: number;
}

/** The name of one score weight. */
export type ScoreKey = keyof ScoreWeights;

/** The score weights in the order of the original tool (and of `resize_params`). */
export const SCORE_KEYS: readonly ScoreKey[] = [
  "spn_lora",
  "spn_ckpt",
  "subspace",
  "fro_lora",
  "fro_ckpt",
  "params",
];

/**
 * A parsed recipe. Size mode when `sizeMiB` is set, threshold mode when
 * `threshold` is; with neither, kohya's per-layer rule decides (`kohya`, or
 * `rank` alone: a fixed rank).
 */
export interface Recipe {
  /** The recipe text as given (used in messages, progress labels and `resize_params`). */
  readonly text: string;
  /** Score weights divided by their signed sum. */
  readonly weights: ScoreWeights;
  /** Target size in MiB (size mode). */
  readonly sizeMiB?: number;
  /** Fixed log10 threshold (threshold mode); unset when `sizeMiB` is set, since size wins. */
  readonly threshold?: number;
  /** Factor applied to the LoRA's singular values (default 1). */
  readonly rescale: number;
  /** Warnings to log once (e.g. `size` and `thr` both given). */
  readonly warnings: readonly string[];
  /** kohya's dynamic method and its parameter (`sv_fro=0.9`). */
  readonly kohya?: { readonly method: KohyaMethod; readonly param: number };
  /** `rank=N`: the fixed rank per layer when nothing else selects, else a per-layer cap. */
  readonly rank?: number;
  /** `conv_rank=N`: the same for 4-D (conv) layers; default `rank`. */
  readonly convRank?: number;
}

/**
 * The kohya rule a recipe resizes by, when it selects layer by layer (a
 * kohya method, or a fixed `rank`); undefined for score recipes.
 *
 * @example
 * ```ts
 * import { kohyaRuleOf, parseRecipe } from "./recipe.ts";
 * const rule = kohyaRuleOf(parseRecipe("sv_fro=0.9,rank=16"));
 * if (rule?.method !== "sv_fro" || rule.param !== 0.9 || rule.rank !== 16) throw 0;
 * if (kohyaRuleOf(parseRecipe("spn_lora,thr=-1,rank=8")) !== undefined) throw 0;
 * ```
 */
export function kohyaRuleOf(recipe: Recipe): KohyaRule | undefined {
  if (recipe.threshold !== undefined || recipe.sizeMiB !== undefined) return undefined;
  return {
    ...(recipe.kohya ? { method: recipe.kohya.method, param: recipe.kohya.param } : {}),
    ...rankCaps(recipe),
  };
}

/** The recipe's `rank` / `conv_rank` (as a cap for score recipes). */
export function rankCaps(recipe: Recipe): { rank?: number; convRank?: number } {
  return {
    ...(recipe.rank !== undefined ? { rank: recipe.rank } : {}),
    ...(recipe.convRank !== undefined ? { convRank: recipe.convRank } : {}),
  };
}

/** The keys that take a value and are not score weights. */
const SETTING_KEYS = [
  "size",
  "thr",
  "rescale",
  "sv_ratio",
  "sv_fro",
  "sv_cumulative",
  "rank",
  "conv_rank",
] as const;
type SettingKey = (typeof SETTING_KEYS)[number];

/**
 * Checks kohya's keys; returns their recipe fields, and the whole recipe when they select by
 * themselves (a kohya method, or `rank` with no other selection).
 *
 * @param other the first score weight, `thr` or `size` the recipe gives, if any
 */
function kohyaPart(
  text: string,
  settings: Partial<Record<SettingKey, Setting>>,
  other: string | undefined,
): { fields: Partial<Recipe>; recipe?: Recipe } {
  const methods = Object.keys(settings).filter((k): k is KohyaMethod =>
    (KOHYA_METHODS as readonly string[]).includes(k)
  );
  if (methods.length > 1) {
    throw new RecipeError(
      `Recipe ${text} gives two kohya methods, ${methods[0]} and ${methods[1]}`,
      {
        key: methods[1],
      },
    );
  }
  const method = methods.length ? { ...settings[methods[0]]!, key: methods[0] } : undefined;
  const { rescale } = settings;
  const ranks = { rank: settings.rank, conv_rank: settings.conv_rank };
  if (method) {
    const { key, value } = method;
    const ok = key === "sv_ratio" ? Number.isFinite(value) && value > 0 : value > 0 && value <= 1;
    if (!ok) {
      const must = key === "sv_ratio" ? "finite and > 0" : "> 0 and <= 1";
      throw new RecipeError(
        `Invalid ${key}=${method.text} in recipe ${text}: ${key} must be ${must}`,
        { key },
      );
    }
    if (other) {
      throw new RecipeError(
        `Recipe ${text} combines ${key} with ${other}: ${key} picks each layer's rank by itself`,
        { key },
      );
    }
  }
  for (const [key, setting] of Object.entries(ranks)) {
    if (setting && !(Number.isInteger(setting.value) && setting.value >= 1)) {
      throw new RecipeError(
        `Invalid ${key}=${setting.text} in recipe ${text}: ${key} must be a whole number >= 1`,
        { key },
      );
    }
  }
  const fields = {
    ...(method ? { kohya: { method: method.key, param: method.value } } : {}),
    ...(ranks.rank ? { rank: ranks.rank.value } : {}),
    ...(ranks.conv_rank ? { convRank: ranks.conv_rank.value } : {}),
  };
  if (!method && !(ranks.rank && !other)) {
    if (ranks.conv_rank && !other) {
      throw new RecipeError(
        `Recipe ${text} gives conv_rank alone: add rank=N, a kohya method (sv_ratio, sv_fro, sv_cumulative), thr or size`,
        { key: "conv_rank" },
      );
    }
    return { fields };
  }
  checkSettings(text, { rescale });
  const weights = Object.fromEntries(SCORE_KEYS.map((key) => [key, 0])) as unknown as ScoreWeights;
  return {
    fields,
    recipe: { text, weights, rescale: rescale?.value ?? 1, warnings: [], ...fields },
  };
}

/**
 * Parses one recipe.
 *
 * @throws {RecipeError} with the original tool's messages (`Unknown key foo in
 * recipe foo=1`, …) or, for values the original accepted but could not use,
 * `Invalid rescale=0 in recipe …: rescale must be finite and > 0` and the like.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseRecipe } from "./recipe.ts";
 * const recipe = parseRecipe("fro_ckpt=3,spn_lora,thr=-1");
 * assert.deepEqual([recipe.weights.fro_ckpt, recipe.weights.spn_lora, recipe.threshold], [
 *   0.75,
 *   0.25,
 *   -1,
 * ]);
 * ```
 */
export function parseRecipe(text: string): Recipe {
  const raw: Record<ScoreKey, number> = {
    spn_lora: 0,
    spn_ckpt: 0,
    subspace: 0,
    fro_lora: 0,
    fro_ckpt: 0,
    params: 0,
  };
  // Selection settings keep their value text too, for the messages below.
  const settings: Partial<Record<SettingKey, Setting>> = {};
  let weightKey: string | undefined;

  for (const part of text.split(",")) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    const valueText = eq < 0 ? "" : part.slice(eq + 1);
    let value = NaN;
    if (valueText !== "") {
      const parsed = parsePythonFloat(valueText);
      if (parsed === undefined) {
        throw new RecipeError(`Could not parse ${key}=${valueText} in recipe ${text}`, { key });
      }
      value = parsed;
    }
    if (Object.hasOwn(raw, key)) {
      raw[key as ScoreKey] = valueText === "" ? 1 : value;
      weightKey ??= key;
      continue;
    }
    if (valueText === "") {
      throw new RecipeError(
        `Empty value not accepted for key ${key} in recipe ${text}${didYouMean(key)}`,
        { key },
      );
    }
    if (!(SETTING_KEYS as readonly string[]).includes(key)) {
      throw new RecipeError(`Unknown key ${key} in recipe ${text}${didYouMean(key)}`, { key });
    }
    settings[key as SettingKey] = { value, text: valueText };
  }
  const { size, thr, rescale } = settings;

  const other = weightKey ?? (thr ? "thr" : size ? "size" : undefined);
  const kohya = kohyaPart(text, settings, other);
  if (kohya.recipe) return kohya.recipe;

  let sum = 0; // Python's sum(): left to right, in SCORE_KEYS order
  for (const key of SCORE_KEYS) sum += raw[key];
  if (sum === 0) throw new RecipeError("At least one score type must be specified");
  const weights = Object.fromEntries(
    SCORE_KEYS.map((key) => [key, raw[key] / sum]),
  ) as unknown as ScoreWeights;

  if (size === undefined && thr === undefined) {
    throw new RecipeError("Either 'size' or 'thr' must be specified in the recipe");
  }
  // After the original's own checks, so that a recipe it rejected still gets its message.
  checkWeights(text, raw, sum);
  checkSettings(text, { size, thr, rescale });

  const warnings: string[] = [];
  if (size !== undefined && thr !== undefined) {
    warnings.push(
      `Recipe ${text} gives both size and thr: size=${size.text} wins, thr=${thr.text} is ignored`,
    );
  }
  return {
    text,
    weights,
    ...(size !== undefined ? { sizeMiB: size.value } : { threshold: thr!.value }),
    rescale: rescale?.value ?? 1,
    warnings,
    ...kohya.fields,
  };
}

/** A selection setting's value and the text it was parsed from (for messages). */
interface Setting {
  readonly value: number;
  readonly text: string;
}

/**
 * Checks the original did not make (docs/design.md, "Recipes are checked before they run"):
 * rescale finite and > 0, size finite and ≥ 0, thr a number.
 */
function checkSettings(
  text: string,
  { size, thr, rescale }: { size?: Setting; thr?: Setting; rescale?: Setting },
): void {
  if (rescale !== undefined && !(Number.isFinite(rescale.value) && rescale.value > 0)) {
    throw new RecipeError(
      `Invalid rescale=${rescale.text} in recipe ${text}: rescale must be finite and > 0`,
      { key: "rescale" },
    );
  }
  if (size !== undefined && !(Number.isFinite(size.value) && size.value >= 0)) {
    throw new RecipeError(
      `Invalid size=${size.text} in recipe ${text}: size must be finite and >= 0`,
      { key: "size" },
    );
  }
  if (thr !== undefined && Number.isNaN(thr.value)) {
    throw new RecipeError(`Invalid thr=${thr.text} in recipe ${text}: thr must be a number`, {
      key: "thr",
    });
  }
  checkRanges(text, { size, thr, rescale });
}

/** The upper limits of `rescale`, `size` and a finite `thr` (see the module doc). */
function checkRanges(
  text: string,
  { size, thr, rescale }: { size?: Setting; thr?: Setting; rescale?: Setting },
): void {
  if (rescale !== undefined && rescale.value > MAX_RESCALE) {
    throw new RecipeError(
      `Invalid rescale=${rescale.text} in recipe ${text}: rescale must be at most ${MAX_RESCALE}`,
      { key: "rescale" },
    );
  }
  if (size !== undefined && size.value > MAX_SIZE_MIB) {
    throw new RecipeError(
      `Invalid size=${size.text} in recipe ${text}: size must be at most ${MAX_SIZE_MIB} (MiB)`,
      { key: "size" },
    );
  }
  if (thr !== undefined && Number.isFinite(thr.value) && Math.abs(thr.value) > MAX_ABS_THRESHOLD) {
    throw new RecipeError(
      `Invalid thr=${thr.text} in recipe ${text}: a finite thr must lie within ±${MAX_ABS_THRESHOLD} (or give ±inf)`,
      { key: "thr" },
    );
  }
}

/** Every score weight is a finite number, and so is each once divided by their sum, within bounds. */
function checkWeights(text: string, raw: Readonly<Record<ScoreKey, number>>, sum: number): void {
  for (const key of SCORE_KEYS) {
    if (!Number.isFinite(raw[key])) {
      throw new RecipeError(
        `Invalid ${key}=${raw[key]} in recipe ${text}: score weights must be finite numbers`,
        { key },
      );
    }
  }
  if (!Number.isFinite(sum) || SCORE_KEYS.some((key) => !Number.isFinite(raw[key] / sum))) {
    throw new RecipeError(
      `Invalid weights in recipe ${text}: their sum ${sum} overflows when the weights are normalised`,
    );
  }
  if (SCORE_KEYS.some((key) => Math.abs(raw[key] / sum) > MAX_ABS_WEIGHT)) {
    throw new RecipeError(
      `Invalid weights in recipe ${text}: their sum ${sum} nearly cancels, normalised weights exceed ±${MAX_ABS_WEIGHT}`,
    );
  }
}

/** Every recipe key, for suggestions. */
const RECIPE_KEYS: readonly string[] = [...SCORE_KEYS, ...SETTING_KEYS];

/** ` (did you mean fro_ckpt?)` for a mistyped key; empty for a known key or no close one. */
function didYouMean(key: string): string {
  if (RECIPE_KEYS.includes(key)) return "";
  const near = closestName(key, RECIPE_KEYS);
  return near === undefined ? "" : ` (did you mean ${near}?)`;
}

/**
 * Parses a `:`-separated list of recipes (the `-r` option).
 *
 * @throws {RecipeError} on the first invalid recipe.
 *
 * @example
 * ```ts
 * import { parseRecipes } from "./recipe.ts";
 * import assert from "node:assert/strict";
 * const recipes = parseRecipes("fro_ckpt=1,thr=-3.5:spn_lora=1,size=32");
 * assert.deepEqual(recipes.map((r) => r.sizeMiB ?? r.threshold), [-3.5, 32]);
 * ```
 */
export function parseRecipes(text: string): Recipe[] {
  return text.split(":").map(parseRecipe);
}

/** File-name tokens of the weights, in alphabetical key order. */
const NAME_ORDER: readonly ScoreKey[] = [...SCORE_KEYS].sort();

/**
 * The output file name the original tool gives a (LoRA, recipe) pair:
 * `<lora>_<weights>[_scale<r>][_size<S>]_th<t>.safetensors`, with each
 * non-zero weight as its key without underscores followed by its value,
 * in alphabetical key order, and numbers written by {@link fileNameNumber}.
 *
 * kohya's keys follow the same scheme, after the weights:
 * `[_<method><param>][_rank<N>][_convrank<N>]`, the method's parameter in
 * full (`svfro0.999`: two decimals would merge very different recipes).
 * A recipe without a threshold (a kohya method or a fixed rank) has no
 * `_th` part: `my_lora_svfro0.9_rank16.safetensors`.
 *
 * @param loraName the LoRA file name without its extension (or a merge's name)
 * @param recipe the recipe
 * @param thresholdUsed the user's `thr`, or the threshold computed in size mode
 *
 * @example
 * ```ts
 * import { outputFileName, parseRecipe } from "./recipe.ts";
 * import assert from "node:assert/strict";
 * const recipe = parseRecipe("spn_ckpt=1,size=32");
 * assert.deepEqual(outputFileName("my_lora", recipe, -2.871), "my_lora_spnckpt1_size32_th-2.87.safetensors");
 * ```
 */
export function outputFileName(loraName: string, recipe: Recipe, thresholdUsed: number): string {
  const tokens = NAME_ORDER
    .filter((key) => recipe.weights[key] !== 0)
    .map((key) => `${key.replaceAll("_", "")}${fileNameNumber(recipe.weights[key])}`);
  if (recipe.kohya) {
    const param = pyRepr(recipe.kohya.param).replace(/\.0$/, "");
    tokens.push(`${recipe.kohya.method.replaceAll("_", "")}${param}`);
  }
  if (recipe.rank !== undefined) tokens.push(`rank${recipe.rank}`);
  if (recipe.convRank !== undefined) tokens.push(`convrank${recipe.convRank}`);
  if (recipe.rescale !== 1) tokens.push(`scale${fileNameNumber(recipe.rescale)}`);
  if (recipe.sizeMiB !== undefined) tokens.push(`size${fileNameNumber(recipe.sizeMiB)}`);
  const th = kohyaRuleOf(recipe) ? "" : `_th${fileNameNumber(thresholdUsed)}`;
  return `${loraName}_${tokens.join("_")}${th}.safetensors`;
}

/**
 * The `resize_params` metadata value, byte for byte as the original writes it
 * (Python `json.dumps` of the recipe with the threshold used). Recipes with
 * kohya's keys add them under kohya's option names (`dynamic_method`,
 * `dynamic_param`, `new_rank`, `new_conv_rank`); without a threshold (a
 * kohya method or a fixed rank), `threshold` is null.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseRecipe, resizeParamsJson } from "./recipe.ts";
 * const text = resizeParamsJson(parseRecipe("fro_ckpt=1,thr=-3.5"), -3.5);
 * assert.ok(text.startsWith('{"recipe_str": "fro_ckpt=1,thr=-3.5", "weights": {"spn_lora": 0.0, '));
 * assert.ok(text.endsWith('"target_size": null, "threshold": -3.5, "rescale": 1.0}'));
 * ```
 */
export function resizeParamsJson(recipe: Recipe, thresholdUsed: number): string {
  const kohya: Record<string, PyJson> = {};
  if (recipe.kohya) {
    kohya.dynamic_method = recipe.kohya.method;
    kohya.dynamic_param = recipe.kohya.param;
  }
  if (recipe.rank !== undefined) kohya.new_rank = BigInt(recipe.rank);
  if (recipe.convRank !== undefined) kohya.new_conv_rank = BigInt(recipe.convRank);
  return pyJsonDumps({
    recipe_str: recipe.text,
    weights: Object.fromEntries(SCORE_KEYS.map((key) => [key, recipe.weights[key]])),
    target_size: recipe.sizeMiB ?? null,
    threshold: kohyaRuleOf(recipe) ? null : thresholdUsed,
    rescale: recipe.rescale,
    ...kohya,
  });
}
