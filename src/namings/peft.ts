/**
 * The namings of diffusers and PEFT checkpoints: module paths with dots
 * (diffusers block names for the UNet, Hugging Face CLIP names for the text
 * encoders) behind a prefix that says the model part (`unet.`,
 * `text_encoder.`, `text_encoder_2.`, PEFT's `base_model.model.`, or none),
 * with three spellings of the factors:
 *
 * - PEFT: `<module>.lora_A.weight` / `.lora_B.weight`, DoRA's
 *   `.lora_magnitude_vector`;
 * - diffusers: `<module>.lora.down.weight` / `.lora.up.weight`;
 * - diffusers' attention processors (UNet attention projections only):
 *   `<block>.processor.to_q_lora.down.weight`, `to_out_lora` for `to_out.0`.
 *
 * None of them stores alpha as a rule (PEFT keeps it in `adapter_config.json`).
 *
 * @module
 */

import { dotted } from "./dotted.ts";
import {
  canonicalName,
  canonicalOfDiffusersUnet,
  diffusersUnetOfCanonical,
  moduleOf,
  type Naming,
  suffixKeys,
} from "./naming.ts";
import type { Architecture } from "./unet_blocks.ts";

const PEFT_WRAPPER = "base_model.model.";
const PARTS = [["unet.", "unet"], ["text_encoder_2.", "te2"], ["text_encoder.", "te1"]] as const;
const WRITE_PREFIX = { unet: "unet.", te1: "text_encoder.", te2: "text_encoder_2." } as const;

/** The canonical name of a dotted module path with an optional part prefix. */
function canonicalOfModule(layer: string, arch: Architecture): string | undefined {
  let path = layer.startsWith(PEFT_WRAPPER) ? layer.slice(PEFT_WRAPPER.length) : layer;
  let part: "unet" | "te1" | "te2" | undefined;
  for (const [prefix, p] of PARTS) {
    if (path.startsWith(prefix)) {
      path = path.slice(prefix.length);
      part = p;
      break;
    }
  }
  const under = path.replaceAll(".", "_");
  if (path.startsWith("text_model.")) {
    return part === "unet" ? undefined : canonicalName({ part: part ?? "te1", path: under }, arch);
  }
  return part === undefined || part === "unet" ? canonicalOfDiffusersUnet(under, arch) : undefined;
}

function moduleOfCanonical(canonical: string, arch: Architecture): string | undefined {
  const ref = moduleOf(canonical);
  if (!ref) return undefined;
  if (ref.part !== "unet") return WRITE_PREFIX[ref.part] + dotted(ref.path);
  const path = diffusersUnetOfCanonical(canonical, arch);
  return path === undefined ? undefined : WRITE_PREFIX.unet + dotted(path);
}

/**
 * PEFT (`lora_A` / `lora_B`).
 *
 * @example
 * ```ts
 * import { peft } from "./peft.ts";
 * const c = peft.toCanonical("unet.down_blocks.1.attentions.0.proj_in", "sdxl");
 * if (c !== "lora_unet_input_blocks_4_1_proj_in") throw new Error(c);
 * ```
 */
export const peft: Naming = {
  id: "peft",
  label: "PEFT (lora_A / lora_B)",
  downSuffix: ".lora_A.weight",
  storesAlpha: false,
  layerKeys: (layer) =>
    suffixKeys(layer, ".lora_A.weight", ".lora_B.weight", [
      ".lora_magnitude_vector",
      ".lora_magnitude_vector.weight",
    ]),
  toCanonical: canonicalOfModule,
  fromCanonical: moduleOfCanonical,
};

/**
 * diffusers (`lora.down` / `lora.up`).
 *
 * @example
 * ```ts
 * import { diffusers } from "./peft.ts";
 * const c = diffusers.toCanonical("text_encoder_2.text_model.encoder.layers.0.mlp.fc1", "sdxl");
 * if (c !== "lora_te2_text_model_encoder_layers_0_mlp_fc1") throw new Error(c);
 * ```
 */
export const diffusers: Naming = {
  id: "diffusers",
  label: "diffusers (lora.down / lora.up)",
  downSuffix: ".lora.down.weight",
  storesAlpha: false,
  layerKeys: (layer) => suffixKeys(layer, ".lora.down.weight", ".lora.up.weight", []),
  toCanonical: canonicalOfModule,
  fromCanonical: moduleOfCanonical,
};

const PROCESSOR = /\.processor\.to_(q|k|v|out)$/;

/**
 * diffusers' attention processors (`processor.to_q_lora.down`).
 *
 * @example
 * ```ts
 * import { diffusersAttnProcs } from "./peft.ts";
 * const layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out";
 * const c = diffusersAttnProcs.toCanonical(layer, "sdxl");
 * if (c !== "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0") throw new Error(c);
 * ```
 */
export const diffusersAttnProcs: Naming = {
  id: "diffusers-attn-procs",
  label: "diffusers attention processors (processor.to_q_lora)",
  downSuffix: "_lora.down.weight",
  storesAlpha: false,
  layerKeys: (layer) => suffixKeys(layer, "_lora.down.weight", "_lora.up.weight", []),
  toCanonical(layer, arch) {
    const m = PROCESSOR.exec(layer);
    if (!m) return undefined;
    const module = layer.slice(0, m.index) + `.to_${m[1]}` + (m[1] === "out" ? ".0" : "");
    const unet = module.startsWith("unet.") ? module : "unet." + module;
    return canonicalOfModule(unet, arch);
  },
  fromCanonical(canonical, arch) {
    const module = moduleOfCanonical(canonical, arch);
    const m = module && /\.to_(q|k|v|out)(\.0)?$/.exec(module);
    if (!module?.startsWith("unet.") || !m || (m[1] === "out") !== (m[2] !== undefined)) {
      return undefined;
    }
    return `${module.slice(0, m.index)}.processor.to_${m[1]}`;
  },
};
