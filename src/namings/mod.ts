/**
 * LoRA file namings: how each format spells layer names and factor keys,
 * each a pair of pure functions to and from the canonical layer name (kohya,
 * SGM block names) that base checkpoints are indexed by (docs/design.md, Namings).
 *
 * @module
 */

export { comfyui } from "./comfyui.ts";
export {
  type ArchitectureEvidence,
  findLayers,
  loraArchitecture,
  type NamedLayer,
  namingById,
  NAMINGS,
  resolveKohyaStyle,
} from "./detect.ts";
export { kohya } from "./kohya.ts";
export { kohyaDiffusers, simpleTuner } from "./kohya_diffusers.ts";
export {
  canonicalName,
  type LayerKeys,
  moduleOf,
  type ModuleRef,
  type Naming,
  type NamingId,
} from "./naming.ts";
export {
  type NamedLayerRef,
  OUTPUT_NAMINGS,
  type OutputKeys,
  outputKeys,
  type OutputKeysOptions,
  type OutputNaming,
} from "./output_keys.ts";
export { diffusers, diffusersAttnProcs, peft } from "./peft.ts";
export { peftAlphas, type PeftConfig, readPeftConfig } from "./peft_config.ts";
export {
  type Architecture,
  ARCHITECTURE_LABELS,
  ARCHITECTURES,
  diffusersFromSgm,
  sgmFromDiffusers,
} from "./unet_blocks.ts";
