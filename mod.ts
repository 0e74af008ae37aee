/**
 * resize-lora: compress SDXL LoRA / LoCon adapters by pruning the dimensions of their SVD,
 * scoring each dimension against the base model it was trained on — a Deno re-creation of
 * `elias-gaeros/resize_lora`.
 *
 * Run it (the module starts the CLI when it is the main module):
 *
 * ```sh
 * deno run -A jsr:@x/resize-lora sd_xl_base_1.0.safetensors my_lora.safetensors -o out -v
 * ```
 *
 * Or call the pipeline: {@link resize} writes one file per (LoRA, recipe) pair, {@link plan}
 * says what each would be without writing, {@link inspect} shows what a LoRA holds, and
 * {@link renderReport} draws a plan's trade-offs on one HTML page.
 *
 * @example
 * ```ts
 * import { plan, resize } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 *
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const options = { checkpoint: base, loras: [lora], device: "cpu", normsCache: false } as const;
 * const planned = await plan(options);
 * const { outputs } = await resize(options);
 * if (outputs[0].bytes !== planned.outputs[0].bytes) throw new Error("plan and resize differ");
 * if ((await Deno.stat(outputs[0].path)).size !== outputs[0].bytes) throw new Error("size");
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * Lower layers have their own entry points: `@x/resize-lora/safetensors` (a validating reader and
 * an atomic writer), `@x/resize-lora/backend` (the compute backend interface),
 * `@x/resize-lora/recipe` (the recipe language and output names), `@x/resize-lora/report` (text
 * tables and block summaries) and `@x/resize-lora/testing` (synthetic SDXL files).
 *
 * @module
 */

export {
  DEFAULT_RECIPES,
  plan,
  type ProgressFn,
  resize,
  type ResizeOptions,
} from "./src/resize.ts";
export type { CurvePoint, LayerSummary, OutputSummary, ResizeResult } from "./src/summary.ts";
export { inspect, type InspectOptions } from "./src/inspect.ts";
export type {
  InspectBlock,
  InspectLayer,
  InspectLayerRecipe,
  InspectRecipe,
  InspectResult,
} from "./src/report/inspect.ts";
export { renderReport, type ReportData } from "./src/report/html.ts";
export type { OutputDType } from "./src/output.ts";
export type { OutputNaming } from "./src/namings/output_keys.ts";
export type { SizeAccounting, SizeCut } from "./src/recipe/select.ts";
export {
  type DeviceChoice,
  selectBackend,
  type SelectBackendOptions,
} from "./src/linalg/select_backend.ts";
export { type CpuBackendOptions, createCpuBackend } from "./src/linalg/cpu/backend.ts";
export { createGpuBackend, type GpuBackendOptions } from "./src/linalg/gpu/backend.ts";
export type { LogFn, LogLevel } from "./src/log.ts";
export {
  BackendError,
  type ErrorDetails,
  LoraError,
  MappingError,
  OutputError,
  RecipeError,
  ResizeLoraError,
  SafetensorsError,
  UsageError,
} from "./src/errors.ts";

if (import.meta.main) {
  const { exitCleanlyOnSignals, main } = await import("./cli.ts");
  exitCleanlyOnSignals();
  Deno.exit(await main(Deno.args));
}
