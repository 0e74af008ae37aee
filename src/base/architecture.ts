/**
 * Which model a base checkpoint is, from its keys alone.
 *
 * @module
 */

import type { Architecture } from "../namings/unet_blocks.ts";

/** Key prefixes that only one architecture's single-file checkpoints have. */
const SIGNS: readonly (readonly [string, Architecture])[] = [
  ["conditioner.embedders.1.", "sdxl"],
  ["model.diffusion_model.label_emb.", "sdxl"],
  ["cond_stage_model.transformer.text_model.", "sd15"],
  ["model.diffusion_model.input_blocks.11.", "sd15"],
];

/**
 * The architecture of a single-file (SGM/LDM) checkpoint: SD1.5 when its
 * keys show CLIP-L as `cond_stage_model` or a fourth UNet level, SDXL
 * otherwise (OpenCLIP-G, the pooled-text embedding, or nothing to tell).
 *
 * @example
 * ```ts
 * import { checkpointArchitecture } from "./architecture.ts";
 * const keys = ["cond_stage_model.transformer.text_model.final_layer_norm.weight"];
 * if (checkpointArchitecture(keys) !== "sd15") throw new Error();
 * ```
 */
export function checkpointArchitecture(keys: Iterable<string>): Architecture {
  for (const key of keys) {
    for (const [prefix, arch] of SIGNS) if (key.startsWith(prefix)) return arch;
  }
  return "sdxl";
}

/**
 * The architecture of a diffusers folder: SDXL with a second text encoder or
 * the pooled-text embedding, SD1.5 with a fourth UNet level, else SDXL.
 *
 * @example
 * ```ts
 * import { diffusersArchitecture } from "./architecture.ts";
 * if (diffusersArchitecture(["text_encoder", "unet"], ["down_blocks.3.resnets.0.conv1.weight"]) !== "sd15") {
 *   throw new Error();
 * }
 * ```
 */
export function diffusersArchitecture(
  components: readonly string[],
  unetKeys: Iterable<string>,
): Architecture {
  if (components.includes("text_encoder_2")) return "sdxl";
  for (const key of unetKeys) {
    if (key.startsWith("add_embedding.")) return "sdxl";
    if (key.startsWith("down_blocks.3.")) return "sd15";
  }
  return "sdxl";
}
