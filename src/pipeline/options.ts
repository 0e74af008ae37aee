/**
 * The options of `resize()` and `plan()`, and their defaults, resolved once
 * ({@link resolveOptions}) so that no stage spells a default out again.
 *
 * @module
 */

import { OutputError, RecipeError, UsageError } from "../errors.ts";
import type { Backend } from "../linalg/backend.ts";
import type { DeviceChoice } from "../linalg/select_backend.ts";
import { type LogFn, type LogLevel, silent } from "../log.ts";
import { OUTPUT_NAMINGS, type OutputNaming } from "../namings/output_keys.ts";
import type { OutputDType } from "../output.ts";
import { parseRecipes, type Recipe } from "../recipe/recipe.ts";
import { type RecipeNeeds, recipeNeeds, WEIGHT_EPSILON } from "../recipe/score.ts";
import type { SizeAccounting } from "../recipe/select.ts";

/**
 * The original tool's default recipe: score each dimension against the base weight's Frobenius
 * norm and keep those with log10 score ≥ −3.5.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { DEFAULT_RECIPES } from "@x/resize-lora";
 * import { outputFileName, parseRecipe } from "@x/resize-lora/recipe";
 * const recipe = parseRecipe(DEFAULT_RECIPES);
 * assert.equal(outputFileName("my_lora", recipe, -3.5), "my_lora_frockpt1_th-3.5.safetensors");
 * ```
 */
export const DEFAULT_RECIPES = "fro_ckpt=1,thr=-3.5";

/** The output element type when none is asked for (the original's). */
export const DEFAULT_OUTPUT_DTYPE: OutputDType = "F16";

/**
 * Progress of a long step: a label (`Norms`, `SVD`, `Subspace`, `Scoring <recipe>`,
 * `Trade-off <recipe>` with `curve`, `Rebuild`), items done, total.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plan, type ProgressFn } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const last = new Map<string, [number, number]>();
 * const onProgress: ProgressFn = (label, done, total) => last.set(label, [done, total]);
 * await plan({ checkpoint: base, loras: [lora], onProgress, device: "cpu", normsCache: false });
 * const [done, total] = last.get("SVD")!;
 * assert.ok(total > 0 && done === total);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export type ProgressFn = (label: string, done: number, total: number) => void;

/**
 * Options of `resize()` and `plan()`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resize, type ResizeOptions } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const options: ResizeOptions = {
 *   checkpoint: base,
 *   loras: [lora],
 *   recipes: "fro_ckpt=1,thr=-3.5:spn_lora=1,thr=-1",
 *   outputFolder: `${dir}/out`,
 *   outputDtype: "BF16",
 *   device: "cpu",
 *   normsCache: false,
 * };
 * const { outputs } = await resize(options);
 * assert.equal(outputs.length, 2); // one file per recipe
 * assert.ok(outputs.every((o) => o.path.startsWith(`${dir}/out/`)));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface ResizeOptions {
  /**
   * Base checkpoint (an SDXL or SD1.5 single file, or a diffusers folder). Needed only by
   * recipes that score against the base (`fro_ckpt`, `spn_ckpt`, `subspace`); without it every
   * layer the LoRA holds is resized, paired by name alone (docs/design.md, "Resizing without a
   * base").
   */
  readonly checkpoint?: string;
  /** LoRA entries: paths, or merge specs `"a.safetensors:0.7,b.safetensors:0.3"`. */
  readonly loras: readonly string[];
  /** Recipes separated by `:` (default {@link DEFAULT_RECIPES}). */
  readonly recipes?: string;
  /** Output folder (default: each LoRA's folder); created when missing. */
  readonly outputFolder?: string;
  /** The output file, for a run with one LoRA and one recipe (kohya's `--save_to`). */
  readonly outputPath?: string;
  /** Output element type (default `F16`). */
  readonly outputDtype?: OutputDType;
  /**
   * The naming outputs are written in (default: each layer's own; a merge of files in different
   * namings: kohya). Namings without alpha get the scale folded into the factors
   * (docs/design.md, "Output namings").
   */
  readonly naming?: OutputNaming;
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
  /**
   * What `size=` bounds: the whole output `file` (default), or the up/down weights alone as the
   * `original` tool counted them (docs/design.md, "Size targets bound the whole file").
   */
  readonly sizeAccounting?: SizeAccounting;
  /**
   * Drop tensors that are not part of a resized layer instead of copying them
   * (docs/design.md, "Tensors that are not resized are kept").
   */
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
  /**
   * Files the caller writes after the run (a report), each with what writes it for messages
   * (`the report`): checked before any work with the outputs, never over an input or another
   * output.
   */
  readonly alsoWrites?: readonly { readonly path: string; readonly source: string }[];
}

/** {@link ResizeOptions} with every default filled in and the recipes parsed. */
export interface ResolvedOptions {
  /** Base checkpoint, when the run has one. */
  readonly checkpoint: string | undefined;
  /** LoRA entries, as given. */
  readonly loras: readonly string[];
  /** The parsed recipes, in order. */
  readonly recipes: readonly Recipe[];
  /** What each recipe needs from the base (same order as `recipes`). */
  readonly needs: readonly RecipeNeeds[];
  /** What any recipe needs: the base norms fetched for each LoRA before scoring. */
  readonly anyNeeds: RecipeNeeds;
  /** Output folder, or undefined for each LoRA's own folder. */
  readonly outputFolder: string | undefined;
  /** The one output file, when given. */
  readonly outputPath: string | undefined;
  /** Output element type. */
  readonly outputDtype: OutputDType;
  /** The output naming asked for, if any. */
  readonly naming: OutputNaming | undefined;
  /** Device to ask for when no backend is given. */
  readonly device: DeviceChoice;
  /** The caller's backend, if any. */
  readonly backend: Backend | undefined;
  /** Norms cache location (undefined: the default one), or `false`. */
  readonly normsCache: string | false | undefined;
  /** Size-mode accounting. */
  readonly sizeAccounting: SizeAccounting;
  /** Drop what is not resized. */
  readonly dropUnmapped: boolean;
  /** Log receiver. */
  readonly log: LogFn;
  /** Whether the per-layer DEBUG report is shown. */
  readonly debug: boolean;
  /** Progress receiver (a no-op when none was given). */
  readonly onProgress: ProgressFn;
  /** Whether outputs carry their size ↔ error curve. */
  readonly curve: boolean;
  /** Files the caller writes after the run. */
  readonly alsoWrites: readonly { readonly path: string; readonly source: string }[];
}

/** The score keys that weigh a dimension against the base model's weights. */
const BASE_AWARE_KEYS = ["fro_ckpt", "spn_ckpt", "subspace"] as const;

/** A recipe that needs the base, in a run without one: a {@link RecipeError} naming the key. */
function checkBaseFree(recipe: Recipe, isDefault: boolean): void {
  const key = BASE_AWARE_KEYS.find((k) => Math.abs(recipe.weights[k]) > WEIGHT_EPSILON);
  if (key === undefined) return;
  throw new RecipeError(
    `recipe ${recipe.text}${
      isDefault ? " (the default)" : ""
    }: ${key} scores against the base model, and no base checkpoint is given`,
    { key },
  );
}

/**
 * Fills in the defaults of `options` and parses its recipes (a `RecipeError` names the recipe
 * that does not parse).
 *
 * @example
 * ```ts
 * import { resolveOptions } from "./options.ts";
 * const resolved = resolveOptions({ checkpoint: "base.safetensors", loras: ["a.safetensors"] });
 * if (resolved.outputDtype !== "F16" || resolved.recipes[0].text !== "fro_ckpt=1,thr=-3.5") {
 *   throw new Error("unexpected defaults");
 * }
 * if (!resolved.anyNeeds.frobenius || resolved.anyNeeds.spectral) throw new Error("needs");
 * ```
 */
export function resolveOptions(options: ResizeOptions): ResolvedOptions {
  const recipes = parseRecipes(options.recipes ?? DEFAULT_RECIPES);
  const count = options.loras.length * recipes.length;
  if (options.outputPath !== undefined && count !== 1) {
    throw new OutputError(
      `${options.outputPath}: one output file is given, but the run makes ${count} (${options.loras.length} LoRAs × ${recipes.length} recipes)`,
      { file: options.outputPath },
    );
  }
  const debug = options.logLevel === "DEBUG";
  // The DEBUG layer report and reports add every layer's Frobenius norm, where there is a base.
  const hasBase = options.checkpoint !== undefined;
  const layerReport = hasBase && (debug || options.layerNorms === true);
  const needs = recipes.map((r) => recipeNeeds(r, { layerReport }));
  if (!hasBase) { for (const r of recipes) checkBaseFree(r, options.recipes === undefined); }
  return {
    checkpoint: options.checkpoint,
    loras: options.loras,
    recipes,
    needs,
    anyNeeds: {
      frobenius: needs.some((n) => n.frobenius),
      spectral: needs.some((n) => n.spectral),
      subspace: needs.some((n) => n.subspace),
    },
    outputFolder: options.outputFolder,
    outputPath: options.outputPath,
    outputDtype: options.outputDtype ?? DEFAULT_OUTPUT_DTYPE,
    naming: checkedNaming(options.naming),
    device: options.device ?? "auto",
    backend: options.backend,
    normsCache: options.normsCache,
    sizeAccounting: options.sizeAccounting ?? "file",
    dropUnmapped: options.dropUnmapped ?? false,
    log: options.log ?? silent,
    debug,
    onProgress: options.onProgress ?? (() => {}),
    curve: options.curve ?? false,
    alsoWrites: options.alsoWrites ?? [],
  };
}

/** `naming` when it is one of {@link OUTPUT_NAMINGS}; a one-line usage error otherwise. */
function checkedNaming(naming: string | undefined): OutputNaming | undefined {
  if (naming === undefined || (OUTPUT_NAMINGS as readonly string[]).includes(naming)) {
    return naming as OutputNaming | undefined;
  }
  throw new UsageError(
    `argument --naming: invalid choice: '${naming}' (choose from ${
      OUTPUT_NAMINGS.map((n) => `'${n}'`).join(", ")
    })`,
    { key: "--naming" },
  );
}
