/**
 * Where a layer goes when written: its keys in the output naming. By default
 * a layer keeps its own naming and its own spelling (the key it was read
 * under), so an output loads wherever its input did; another naming spells
 * it from the canonical name.
 *
 * @module
 */

import { namingById } from "./detect.ts";
import { kohyaDiffusers } from "./kohya_diffusers.ts";
import type { NamingId } from "./naming.ts";
import type { Architecture } from "./unet_blocks.ts";

/**
 * The namings outputs can be written in (`--naming`, `ResizeOptions.naming`); PEFT and diffusers
 * store no alpha, so their outputs carry the scale in the factors.
 *
 * @example
 * ```ts
 * import { type OutputNaming, plan } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const bytes = async (naming: OutputNaming) =>
 *   (await plan({ checkpoint: base, loras: [lora], naming, device: "cpu", normsCache: false }))
 *     .outputs[0].bytes;
 * // PEFT has no alpha tensors, and its keys are spelled differently.
 * if (await bytes("peft") === await bytes("kohya")) throw new Error("same size");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export type OutputNaming = "kohya" | "comfyui" | "peft" | "diffusers";

/** The namings `--naming` offers. */
export const OUTPUT_NAMINGS: readonly OutputNaming[] = ["kohya", "comfyui", "peft", "diffusers"];

/** A layer as the writer knows it. */
export interface NamedLayerRef {
  /** Canonical name. */
  readonly name: string;
  /** The layer name in its file. */
  readonly key: string;
  /** The naming it was read in. */
  readonly naming: NamingId;
}

/** Options of {@link outputKeys}. */
export interface OutputKeysOptions {
  /** Output naming (default: the layer's own). */
  readonly naming?: NamingId;
  /** The architecture of the LoRA (default SDXL). */
  readonly architecture?: Architecture;
}

/** A layer's keys in the output, and whether its scale goes into the factors. */
export interface OutputKeys {
  /** The naming written. */
  readonly naming: NamingId;
  /** Down factor key. */
  readonly down: string;
  /** Up factor key. */
  readonly up: string;
  /** Alpha key, where the naming stores alpha. */
  readonly alpha?: string;
  /** DoRA magnitude key. */
  readonly dora?: string;
  /** The naming has no alpha: write α/r · up · down with alpha/rank folded into the factors. */
  readonly foldScale: boolean;
}

/**
 * A layer's output keys, or `undefined` when the naming cannot spell it (a
 * diffusers attention-processor file's non-attention layers fall back to
 * plain diffusers names). kohya names for SD1.5 are kohya's own: diffusers
 * block names for the UNet.
 *
 * @example
 * ```ts
 * import { outputKeys } from "./output_keys.ts";
 * const layer = {
 *   name: "lora_unet_input_blocks_4_1_proj_in",
 *   key: "unet.down_blocks.1.attentions.0.proj_in",
 *   naming: "peft" as const,
 * };
 * const own = outputKeys(layer);
 * if (own?.down !== "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight" || !own.foldScale) {
 *   throw new Error();
 * }
 * const kohya = outputKeys(layer, { naming: "kohya" });
 * if (kohya?.alpha !== "lora_unet_input_blocks_4_1_proj_in.alpha") throw new Error();
 * ```
 */
export function outputKeys(
  layer: NamedLayerRef,
  options: OutputKeysOptions = {},
): OutputKeys | undefined {
  const arch = options.architecture ?? "sdxl";
  let id = options.naming ?? layer.naming;
  let stem: string | undefined;
  if (id === layer.naming) stem = layer.key;
  else if (id === "kohya" && arch === "sd15" && layer.name.startsWith("lora_unet_")) {
    stem = kohyaDiffusers.fromCanonical(layer.name, arch);
  } else stem = namingById(id).fromCanonical(layer.name, arch);
  if (stem === undefined && id === "diffusers-attn-procs") {
    id = "diffusers";
    stem = namingById(id).fromCanonical(layer.name, arch);
  }
  if (stem === undefined) return undefined;
  const naming = namingById(id);
  const keys = naming.layerKeys(stem);
  return {
    naming: id,
    down: keys.down,
    up: keys.up,
    ...(naming.storesAlpha ? { alpha: keys.alpha } : {}),
    ...(keys.dora.length > 0 ? { dora: keys.dora[0] } : {}),
    foldScale: !naming.storesAlpha,
  };
}
