/**
 * resize-lora: compress SDXL LoRA / LoCon adapters by pruning the dimensions
 * of their SVD, scoring each dimension against the base model it was trained
 * on — a Deno re-creation of `elias-gaeros/resize_lora`.
 *
 * Run it (the module starts the CLI when it is the main module):
 *
 * ```sh
 * deno run -A jsr:@x/resize-lora sd_xl_base_1.0.safetensors my_lora.safetensors -o out -v
 * ```
 *
 * Or call the pipeline:
 *
 * ```ts ignore
 * import { resize } from "jsr:@x/resize-lora";
 * const { outputs } = await resize({
 *   checkpoint: "sd_xl_base_1.0.safetensors",
 *   loras: ["my_lora.safetensors"],
 *   recipes: "fro_ckpt=1,thr=-3.5:spn_lora=1,size=32",
 *   outputFolder: "out",
 * });
 * for (const o of outputs) console.log(o.path, o.bytes, `${o.rankBefore} → ${o.rankAfter}`);
 * ```
 *
 * @module
 */

export {
  type CurvePoint,
  DEFAULT_RECIPES,
  type LayerSummary,
  type OutputSummary,
  plan,
  type ProgressFn,
  resize,
  type ResizeOptions,
  type ResizeResult,
} from "./src/resize.ts";
export { inspect, type InspectOptions } from "./src/inspect.ts";
export { type OutputDType } from "./src/output.ts";
export {
  outputFileName,
  parseRecipe,
  parseRecipes,
  type Recipe,
  resizeParamsJson,
  type ScoreKey,
  type ScoreWeights,
} from "./src/recipe/recipe.ts";
export { type SizeAccounting, type SizeCut } from "./src/recipe/select.ts";
export { fmt, parsePythonFloat, pyRepr } from "./src/recipe/pyfloat.ts";
export { type BaseKeyNames, loraNamesForBaseKey, type NameKind } from "./src/sdxl/key_map.ts";
export { BaseCheckpoint, type BaseEntry, type BaseMatch } from "./src/sdxl/checkpoint.ts";
export {
  loadLora,
  type LoadLoraOptions,
  type LoraLayer,
  type LoraModel,
  type PassThroughSummary,
  type RawTensor,
} from "./src/lora/lora_file.ts";
export { type MergePrecision } from "./src/lora/merge.ts";
export { type PairedLayer, type Pairing, pairLayers } from "./src/lora/pairing.ts";
export type {
  Backend,
  BackendCallOptions,
  BaseNorms,
  BaseWeightRef,
  Decomposition,
  FloatData,
  LowRankFactors,
  NormRequest,
  Progress,
  RebuildDType,
  RebuildRequest,
  RebuiltFactors,
  SubspaceRequest,
} from "./src/linalg/backend.ts";
export {
  type DeviceChoice,
  selectBackend,
  type SelectBackendOptions,
} from "./src/linalg/select_backend.ts";
export { type CpuBackendOptions, createCpuBackend } from "./src/linalg/cpu/backend.ts";
export { createGpuBackend, type GpuBackendOptions } from "./src/linalg/gpu/backend.ts";
export { fingerprintFile, NormsCache, type NormsCacheOptions } from "./src/norms_cache.ts";
export * from "./src/safetensors/mod.ts";
export {
  type BaseSpecOptions,
  type DemoFiles,
  type DemoOptions,
  type LoraLayerOptions,
  type LoraLayerSpec,
  type LoraModuleGroup,
  sdxlBaseSpecs,
  sdxlLoraLayers,
  type SyntheticBaseOptions,
  type SyntheticDType,
  type SyntheticLoraOptions,
  writeDemoFiles,
  writeSyntheticBase,
  writeSyntheticLora,
} from "./src/synthetic.ts";
export {
  effectiveRank,
  formatInspectTable,
  type InspectBlock,
  type InspectLayer,
  type InspectLayerRecipe,
  type InspectRecipe,
  type InspectResult,
} from "./src/report/inspect.ts";
export { type BlockPlan, formatPlan, type PlanSummary, summarizePlan } from "./src/report/plan.ts";
export { renderReport, type ReportData } from "./src/report/html.ts";
export { type BlockLabel, blockOf } from "./src/report/blocks.ts";
export { type LogFn, type LogLevel } from "./src/log.ts";
export {
  BackendError,
  LoraError,
  MappingError,
  OutputError,
  RecipeError,
  ResizeLoraError,
  SafetensorsError,
  UsageError,
} from "./src/errors.ts";
export { VERSION } from "./src/version.ts";
export { main } from "./cli.ts";

if (import.meta.main) {
  const { main } = await import("./cli.ts");
  Deno.exit(await main(Deno.args));
}
