/**
 * kohya's naming with SGM block names (`lora_unet_input_blocks_4_1_proj_in`,
 * `lora_te1_…`, `lora_te2_…`, SD1.5's `lora_te_…`, OneTrainer's
 * `lora_te2_text_projection`): the canonical naming itself. Any other layer
 * name with kohya's factor keys is taken as it is (the base checkpoint's key
 * map knows the older aliases, such as `down_4`).
 *
 * @module
 */

import { type Naming, suffixKeys } from "./naming.ts";

/** Factor key suffixes of kohya's format (shared by ComfyUI's). */
export const KOHYA_DOWN = ".lora_down.weight";
/** Up factor suffix of kohya's format. */
export const KOHYA_UP = ".lora_up.weight";
/** DoRA magnitude suffix of kohya's format. */
export const KOHYA_DORA = ".dora_scale";

/**
 * kohya, SGM block names.
 *
 * @example
 * ```ts
 * import { kohya } from "./kohya.ts";
 * const name = "lora_unet_input_blocks_4_1_proj_in";
 * if (kohya.toCanonical(name, "sdxl") !== name) throw new Error();
 * ```
 */
export const kohya: Naming = {
  id: "kohya",
  label: "kohya (SGM block names)",
  downSuffix: KOHYA_DOWN,
  storesAlpha: true,
  layerKeys: (layer) => suffixKeys(layer, KOHYA_DOWN, KOHYA_UP, [KOHYA_DORA]),
  toCanonical: (layer) => layer,
  fromCanonical: (canonical) => canonical,
};
