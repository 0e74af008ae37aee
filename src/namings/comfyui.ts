/**
 * ComfyUI's native naming, the "generic" keys its LoRA loader maps without
 * conversion: `diffusion_model.<SGM path>` for the UNet and
 * `text_encoders.clip_l.transformer.text_model.…` /
 * `text_encoders.clip_g.transformer.…` for the text encoders, with kohya's
 * factor keys.
 *
 * @module
 */

import { dotted } from "./dotted.ts";
import { KOHYA_DORA, KOHYA_DOWN, KOHYA_UP } from "./kohya.ts";
import { canonicalName, moduleOf, type Naming, suffixKeys } from "./naming.ts";

const UNET = "diffusion_model.";
const CLIP = { te1: "text_encoders.clip_l.transformer.", te2: "text_encoders.clip_g.transformer." };

/**
 * ComfyUI native.
 *
 * @example
 * ```ts
 * import { comfyui } from "./comfyui.ts";
 * const layer = "text_encoders.clip_g.transformer.text_model.encoder.layers.3.mlp.fc1";
 * if (comfyui.toCanonical(layer, "sdxl") !== "lora_te2_text_model_encoder_layers_3_mlp_fc1") {
 *   throw new Error();
 * }
 * ```
 */
export const comfyui: Naming = {
  id: "comfyui",
  label: "ComfyUI (diffusion_model. / text_encoders.)",
  downSuffix: KOHYA_DOWN,
  storesAlpha: true,
  layerKeys: (layer) => suffixKeys(layer, KOHYA_DOWN, KOHYA_UP, [KOHYA_DORA]),
  toCanonical(layer, arch) {
    if (layer.startsWith(UNET)) {
      return canonicalName({ part: "unet", path: under(layer, UNET) }, arch);
    }
    for (const part of ["te1", "te2"] as const) {
      if (!layer.startsWith(CLIP[part])) continue;
      const path = under(layer, CLIP[part]);
      if (!path.startsWith("text_model_") && path !== "text_projection") return undefined;
      return canonicalName({ part, path }, arch);
    }
    return undefined;
  },
  fromCanonical(canonical) {
    const ref = moduleOf(canonical);
    if (!ref) return undefined;
    return (ref.part === "unet" ? UNET : CLIP[ref.part]) + dotted(ref.path);
  },
};

function under(layer: string, prefix: string): string {
  return layer.slice(prefix.length).replaceAll(".", "_");
}
