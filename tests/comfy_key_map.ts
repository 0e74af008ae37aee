/**
 * ComfyUI's LoRA key map for an SDXL model, as the tests' own transcription of its loader: which
 * LoRA layer names ComfyUI patches, and the model weight each patches.
 */

import { dotted } from "../src/namings/dotted.ts";
import { diffusersUnetPath } from "./naming_converter.ts";

const UNET = "model.diffusion_model.";
const under = (s: string) => s.replaceAll(".", "_");

// ComfyUI's key map, transcribed from comfy/lora.py (model_lora_keys_unet, model_lora_keys_clip)
// in comfyanonymous/ComfyUI@41444b5236c613ee5ff7d09aa620f94b702f30eb, for an SDXL model: the
// LoRA key it loads → the model key it patches. ComfyUI's SDXL state dict keys are
// `diffusion_model.<SGM path>.weight`, and `clip_l.transformer.text_model.…` /
// `clip_g.transformer.text_model.…` (Hugging Face CLIP names for both encoders).
export function comfyKeyMap(
  sdxlTensors: Readonly<Record<string, { readonly shape: readonly number[] }>>,
): Map<string, string> {
  const map = new Map<string, string>();
  for (const [key, { shape }] of Object.entries(sdxlTensors)) {
    if (!key.startsWith(UNET) || !key.endsWith(".weight") || shape.length < 2) continue;
    const path = key.slice(UNET.length, -".weight".length);
    const model = `diffusion_model.${path}.weight`;
    map.set(`lora_unet_${under(path)}`, model);
    map.set(`diffusion_model.${path}`, model); // "generic lora format"
    const diffusers = diffusersUnetPath(path); // utils.unet_to_diffusers
    map.set(`lora_unet_${under(diffusers)}`, model);
    map.set(`lycoris_${under(diffusers)}`, model); // SimpleTuner
    let processor = diffusers.replace(".to_", ".processor.to_");
    if (processor.endsWith(".to_out.0")) processor = processor.slice(0, -2);
    for (const p of ["", "unet."]) map.set(p + processor, model);
  }
  const LORA_CLIP = [
    "mlp.fc1",
    "mlp.fc2",
    "self_attn.k_proj",
    "self_attn.q_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
  ];
  for (
    const [enc, layers, kohya, dotted] of [["clip_l", 12, "lora_te1_", "text_encoder."], [
      "clip_g",
      32,
      "lora_te2_",
      "text_encoder_2.",
    ]] as const
  ) {
    for (let b = 0; b < layers; b++) {
      for (const c of LORA_CLIP) {
        const model = `${enc}.transformer.text_model.encoder.layers.${b}.${c}.weight`;
        map.set(`text_encoders.${model.slice(0, -".weight".length)}`, model);
        map.set(`${kohya}text_model_encoder_layers_${b}_${under(c)}`, model);
        map.set(`${dotted}text_model.encoder.layers.${b}.${c}`, model);
      }
    }
  }
  return map;
}

/** The ComfyUI model key of a canonical SDXL name (its module, whichever way spelled). */
export function comfyModelKey(canonical: string): string {
  if (canonical.startsWith("lora_unet_")) {
    return `diffusion_model.${dotted(canonical.slice("lora_unet_".length))}.weight`;
  }
  const [, te, path] = /^lora_te([12])_(.*)$/.exec(canonical)!;
  return `clip_${te === "1" ? "l" : "g"}.transformer.${dotted(path)}.weight`;
}
