/**
 * The K* conformance cases (runs of kohya-ss/sd-scripts `networks/resize_lora.py`
 * at commit 48d368fa557731ad0488c07304dfeba8c07910eb on the micro LoRAs) and the
 * input σ of `inputs.json`, for the kohya tests.
 */
import { join } from "node:path";
import type { KohyaMethod, KohyaRule } from "../src/recipe/kohya.ts";

export const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;
const CASES = join(FIXTURES, "cases");

/** One layer of a K* output. */
export interface KLayer {
  rank: number;
  alpha: number;
  down: number[];
  up: number[];
  delta_fro: number;
}

/** One K* case. */
export interface KCase {
  id: string;
  argv: string[];
  input_lora: string;
  outputs: {
    file: string;
    bytes: number;
    header_bytes: number;
    dtypes: string[];
    extra_tensors: Record<string, [string, number[]]>;
    metadata: Record<string, string>;
    layers: Record<string, KLayer>;
  }[];
}

/** One input layer of `inputs.json`. */
export interface InputLayer {
  rank: number;
  alpha: number;
  out: number;
  in_flat: number;
  /** Every singular value of α/r·up·down. */
  sv: number[];
}

/** `inputs.json`: per input LoRA file, its layers. */
export const inputs: Record<string, { layers: Record<string, InputLayer> }> = JSON.parse(
  await Deno.readTextFile(join(CASES, "inputs.json")),
);

/** The six K* cases, by id. */
export const kCases: KCase[] = [];
for await (const e of Deno.readDir(CASES)) {
  if (/^K\d+_.*\.json$/.test(e.name)) {
    kCases.push(JSON.parse(await Deno.readTextFile(join(CASES, e.name))));
  }
}
kCases.sort((a, b) => a.id.localeCompare(b.id));

function option(argv: readonly string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i < 0 ? undefined : argv[i + 1];
}

/** A case's kohya options as a rule, with kohya's defaults (new_rank 4, conv = new_rank). */
export function caseRule(argv: readonly string[]): KohyaRule {
  const method = option(argv, "--dynamic_method") as KohyaMethod | undefined;
  const rank = Number(option(argv, "--new_rank") ?? 4);
  const convRank = Number(option(argv, "--new_conv_rank") ?? rank);
  return {
    ...(method ? { method, param: Number(option(argv, "--dynamic_param")) } : {}),
    rank,
    convRank,
  };
}

/** A case's options as a recipe, written independently of src/kohya_args.ts. */
export function caseRecipe(argv: readonly string[]): string {
  const method = option(argv, "--dynamic_method");
  const parts = [
    ...(method ? [`${method}=${option(argv, "--dynamic_param")}`] : []),
    `rank=${option(argv, "--new_rank") ?? 4}`,
  ];
  const conv = option(argv, "--new_conv_rank");
  if (conv) parts.push(`conv_rank=${conv}`);
  return parts.join(",");
}

/** A case's output dtype: `--save_precision`, float32 by default. */
export function caseDType(argv: readonly string[]): "F16" | "BF16" | "F32" {
  const p = option(argv, "--save_precision");
  return p === "fp16" ? "F16" : p === "bf16" ? "BF16" : "F32";
}
