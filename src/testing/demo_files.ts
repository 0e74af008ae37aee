/**
 * The small base and LoRA of `deno task demo`.
 *
 * @module
 */

import { join } from "node:path";
import { writeSyntheticBase } from "./synthetic_base.ts";
import { writeSyntheticLora } from "./synthetic_lora.ts";

// ------------------------------------------------------------------ demo

/** Options of {@link writeDemoFiles}. */
export interface DemoOptions {
  /** Width scale of the base (default 1/16: about 27 MB). */
  readonly scale?: number;
  /** LoRA rank (default 16; alpha is half of it). */
  readonly rank?: number;
  /** Seed of both files (default 0). */
  readonly seed?: number;
}

/** Paths of the files {@link writeDemoFiles} wrote. */
export interface DemoFiles {
  /** The synthetic base checkpoint. */
  readonly base: string;
  /** The synthetic LoRA (the default layer set). */
  readonly lora: string;
}

/**
 * Writes a small synthetic base and a LoRA for it into a folder (created if
 * missing) in a few seconds, for `deno task demo`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * assert.deepEqual([base, lora], [`${dir}/demo_sdxl_base.safetensors`, `${dir}/demo_lora_r4.safetensors`]);
 * ```
 */
export async function writeDemoFiles(dir: string, options: DemoOptions = {}): Promise<DemoFiles> {
  const scale = options.scale ?? 1 / 16;
  const rank = options.rank ?? 16;
  const seed = options.seed ?? 0;
  await Deno.mkdir(dir, { recursive: true });
  const base = join(dir, "demo_sdxl_base.safetensors");
  const lora = join(dir, `demo_lora_r${rank}.safetensors`);
  await writeSyntheticBase(base, { scale, seed });
  await writeSyntheticLora(lora, { scale, rank, seed: seed + 1 });
  return { base, lora };
}
