/**
 * PEFT's `adapter_config.json`: where a PEFT LoRA keeps its alphas.
 *
 * A layer's scale is `lora_alpha / r`, with both overridable per module by
 * `alpha_pattern` and `rank_pattern` (a pattern is a regular expression
 * that matches the whole module path, or its end after a dot), and `lora_alpha / √r` with
 * `use_rslora`.
 *
 * @module
 */

import { join } from "node:path";
import { LoraError } from "../errors.ts";

/** The fields of `adapter_config.json` that decide scales. */
export interface PeftConfig {
  /** Where it was read from. */
  readonly path: string;
  /** Default rank. */
  readonly r?: number;
  /** Default alpha. */
  readonly loraAlpha?: number;
  /** Per-module rank overrides. */
  readonly rankPattern: Readonly<Record<string, number>>;
  /** Per-module alpha overrides. */
  readonly alphaPattern: Readonly<Record<string, number>>;
  /** Scale alpha/√r instead of alpha/r. */
  readonly useRsLora: boolean;
}

/**
 * Reads the `adapter_config.json` in `folder`; `undefined` when there is none.
 * A file that is not a JSON object is a {@link LoraError} naming it.
 *
 * @example
 * ```ts ignore
 * import { readPeftConfig } from "./peft_config.ts";
 * const config = await readPeftConfig("my_peft_lora/");
 * console.log(config?.loraAlpha);
 * ```
 */
export async function readPeftConfig(folder: string): Promise<PeftConfig | undefined> {
  const path = join(folder, "adapter_config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new LoraError(`${path}: cannot read it (${(e as Error).message})`, {
      file: path,
      cause: e,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new LoraError(`${path}: not valid JSON (${(e as Error).message.split("\n")[0]})`, {
      file: path,
    });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new LoraError(`${path}: expected a JSON object`, { file: path });
  }
  const o = json as Record<string, unknown>;
  const num = (k: string) => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new LoraError(`${path}: '${k}' is not a number`, { file: path, key: k });
    }
    return v;
  };
  const patterns = (k: string) => {
    const v = o[k] ?? {};
    const ok = typeof v === "object" && v !== null && !Array.isArray(v) &&
      Object.values(v).every((x) => typeof x === "number" && Number.isFinite(x));
    if (!ok) {
      throw new LoraError(`${path}: '${k}' is not an object of numbers`, { file: path, key: k });
    }
    return v as Record<string, number>;
  };
  return {
    path,
    r: num("r"),
    loraAlpha: num("lora_alpha"),
    rankPattern: patterns("rank_pattern"),
    alphaPattern: patterns("alpha_pattern"),
    useRsLora: o.use_rslora === true,
  };
}

/**
 * The alpha to store for a layer (scale · rank, so that alpha/rank is the
 * scale PEFT applies), or `undefined` when the config gives no alpha.
 * `module` is the layer's module path (without `base_model.model.` or a
 * part prefix); `rank` the rank of its factors.
 *
 * @example
 * ```ts
 * import { peftAlphas } from "./peft_config.ts";
 * const config = {
 *   path: "adapter_config.json", r: 8, loraAlpha: 4, useRsLora: false,
 *   rankPattern: {}, alphaPattern: { "attn1.to_q": 16 },
 * };
 * if (peftAlphas(config, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 8) !== 16) {
 *   throw new Error();
 * }
 * if (peftAlphas(config, "mid_block.attentions.0.proj_in", 8) !== 4) throw new Error();
 * ```
 */
export function peftAlphas(config: PeftConfig, module: string, rank: number): number | undefined {
  const alpha = config.alphaPattern[patternOf(config.alphaPattern, module)] ?? config.loraAlpha;
  if (alpha === undefined) return undefined;
  const r = config.rankPattern[patternOf(config.rankPattern, module)] ?? config.r ?? rank;
  const scale = alpha / (config.useRsLora ? Math.sqrt(r) : r);
  return scale * rank;
}

/** The first pattern matching the module (PEFT's rule: a regex that ends the path after a dot). */
function patternOf(patterns: Readonly<Record<string, number>>, module: string): string {
  return Object.keys(patterns).find((p) => matches(p, module)) ?? module;
}

function matches(pattern: string, module: string): boolean {
  try {
    return new RegExp(`^(?:.*\\.)?(?:${pattern})$`).test(module);
  } catch {
    return module === pattern || module.endsWith("." + pattern); // not a regex: literally
  }
}
