/**
 * kohya's prefixes with diffusers block names, underscored:
 * `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`
 * (OneTrainer, conversion scripts, and every kohya SD1.5 LoRA), and
 * SimpleTuner's `lycoris_down_blocks_…` for plain LoRA layers. Text encoder
 * layers of these files are kohya's own names (the kohya naming reads them).
 *
 * @module
 */

import { KOHYA_DORA, KOHYA_DOWN, KOHYA_UP } from "./kohya.ts";
import {
  canonicalOfDiffusersUnet,
  diffusersUnetOfCanonical,
  type Naming,
  type NamingId,
  suffixKeys,
} from "./naming.ts";

function unetPrefixed(id: NamingId, label: string, prefix: string): Naming {
  return {
    id,
    label,
    downSuffix: KOHYA_DOWN,
    storesAlpha: true,
    layerKeys: (layer) => suffixKeys(layer, KOHYA_DOWN, KOHYA_UP, [KOHYA_DORA]),
    toCanonical: (layer, arch) =>
      layer.startsWith(prefix)
        ? canonicalOfDiffusersUnet(layer.slice(prefix.length), arch)
        : undefined,
    fromCanonical: (canonical, arch) => {
      const path = diffusersUnetOfCanonical(canonical, arch);
      return path === undefined ? undefined : prefix + path;
    },
  };
}

/**
 * kohya, diffusers block names (UNet layers).
 *
 * @example
 * ```ts
 * import { kohyaDiffusers } from "./kohya_diffusers.ts";
 * const c = kohyaDiffusers.toCanonical("lora_unet_up_blocks_1_resnets_2_conv1", "sdxl");
 * if (c !== "lora_unet_output_blocks_5_0_in_layers_2") throw new Error(c);
 * ```
 */
export const kohyaDiffusers: Naming = unetPrefixed(
  "kohya-diffusers",
  "kohya (diffusers block names)",
  "lora_unet_",
);

/**
 * SimpleTuner's `lycoris_` prefix on plain LoRA layers (UNet layers).
 *
 * @example
 * ```ts
 * import { simpleTuner } from "./kohya_diffusers.ts";
 * const c = simpleTuner.toCanonical("lycoris_mid_block_attentions_0_proj_in", "sdxl");
 * if (c !== "lora_unet_middle_block_1_proj_in") throw new Error(c);
 * ```
 */
export const simpleTuner: Naming = unetPrefixed(
  "simpletuner",
  "SimpleTuner (lycoris_ prefix, diffusers block names)",
  "lycoris_",
);
