/**
 * What a naming is: how one LoRA file format spells a layer's name and its
 * factor keys, as a pair of pure functions to and from the canonical layer
 * name, the kohya name with SGM block names that the base checkpoints are
 * indexed by (`lora_unet_input_blocks_4_1_proj_in`,
 * `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`; `lora_te_…` for
 * SD1.5's one text encoder).
 *
 * @module
 */

import { type Architecture, diffusersFromSgm, sgmFromDiffusers } from "./unet_blocks.ts";

/** The namings resize-lora reads. */
export type NamingId =
  | "kohya"
  | "kohya-diffusers"
  | "simpletuner"
  | "peft"
  | "diffusers"
  | "diffusers-attn-procs"
  | "comfyui";

/** The tensor keys of one layer in a naming. */
export interface LayerKeys {
  /** The down (A) factor. */
  readonly down: string;
  /** The up (B) factor. */
  readonly up: string;
  /** The alpha scalar. */
  readonly alpha: string;
  /** DoRA magnitude vector spellings, the one written first. */
  readonly dora: readonly string[];
}

/** A LoRA file naming: canonical name ↔ layer name, and the layer's keys. */
export interface Naming {
  /** Identifier (`--naming`, reports). */
  readonly id: NamingId;
  /** What the naming is, for people. */
  readonly label: string;
  /** Suffix of a down factor's key after the layer name. */
  readonly downSuffix: string;
  /**
   * Whether files in this naming store alpha; where not (PEFT, diffusers), a writer folds the
   * scale alpha/rank into the factors.
   */
  readonly storesAlpha: boolean;
  /** The layer's tensor keys. */
  layerKeys(layer: string): LayerKeys;
  /** The canonical name of a layer named `layer` in this naming, or `undefined` when not one. */
  toCanonical(layer: string, arch: Architecture): string | undefined;
  /** The layer name of a canonical one in this naming, or `undefined` when it has none. */
  fromCanonical(canonical: string, arch: Architecture): string | undefined;
}

/** Which model part a canonical name belongs to, and the module path (underscored) in it. */
export interface ModuleRef {
  /** UNet, or text encoder 1 (CLIP-L) or 2 (OpenCLIP-G, SDXL only). */
  readonly part: "unet" | "te1" | "te2";
  /** UNet: the SGM path; text encoders: the Hugging Face CLIP path (`text_model_encoder_…`). */
  readonly path: string;
}

const UNET = "lora_unet_";

/**
 * The canonical name of a module.
 *
 * @example
 * ```ts
 * import { canonicalName } from "./naming.ts";
 * const te = canonicalName({ part: "te1", path: "text_model_encoder_layers_0_mlp_fc1" }, "sd15");
 * if (te !== "lora_te_text_model_encoder_layers_0_mlp_fc1") throw new Error(te);
 * ```
 */
export function canonicalName(ref: ModuleRef, arch: Architecture): string | undefined {
  if (ref.part === "unet") return UNET + ref.path;
  if (arch === "sd15") return ref.part === "te1" ? "lora_te_" + ref.path : undefined;
  return `lora_${ref.part}_${ref.path}`;
}

/**
 * The module a canonical name names (`lora_te1_` and `lora_te_` both mean CLIP-L).
 *
 * @example
 * ```ts
 * import { moduleOf } from "./naming.ts";
 * const ref = moduleOf("lora_te2_text_model_encoder_layers_3_mlp_fc2");
 * if (ref?.part !== "te2") throw new Error();
 * ```
 */
export function moduleOf(canonical: string): ModuleRef | undefined {
  for (const [prefix, part] of PREFIXES) {
    if (canonical.startsWith(prefix)) return { part, path: canonical.slice(prefix.length) };
  }
  return undefined;
}

const PREFIXES: readonly (readonly [string, ModuleRef["part"]])[] = [
  [UNET, "unet"],
  ["lora_te1_", "te1"],
  ["lora_te2_", "te2"],
  ["lora_te_", "te1"],
];

/**
 * The canonical name of a UNet module given by its diffusers path (underscored).
 *
 * @example
 * ```ts
 * import { canonicalOfDiffusersUnet } from "./naming.ts";
 * const c = canonicalOfDiffusersUnet("mid_block_attentions_0_proj_out", "sdxl");
 * if (c !== "lora_unet_middle_block_1_proj_out") throw new Error(c);
 * ```
 */
export function canonicalOfDiffusersUnet(path: string, arch: Architecture): string | undefined {
  const sgm = sgmFromDiffusers(path, arch);
  return sgm === undefined ? undefined : UNET + sgm;
}

/**
 * The diffusers path (underscored) of a canonical UNet name, or `undefined`.
 *
 * @example
 * ```ts
 * import { diffusersUnetOfCanonical } from "./naming.ts";
 * const d = diffusersUnetOfCanonical("lora_unet_input_blocks_3_0_op", "sdxl");
 * if (d !== "down_blocks_0_downsamplers_0_conv") throw new Error(d);
 * ```
 */
export function diffusersUnetOfCanonical(
  canonical: string,
  arch: Architecture,
): string | undefined {
  if (!canonical.startsWith(UNET)) return undefined;
  return diffusersFromSgm(canonical.slice(UNET.length), arch);
}

/**
 * The keys of a layer whose factors are `<layer><down>` / `<layer><up>`.
 *
 * @example
 * ```ts
 * import { suffixKeys } from "./naming.ts";
 * const k = suffixKeys("x", ".lora_down.weight", ".lora_up.weight", [".dora_scale"]);
 * if (k.up !== "x.lora_up.weight" || k.alpha !== "x.alpha") throw new Error();
 * ```
 */
export function suffixKeys(
  layer: string,
  down: string,
  up: string,
  dora: readonly string[],
): LayerKeys {
  return {
    down: layer + down,
    up: layer + up,
    alpha: layer + ".alpha",
    dora: dora.map((d) => layer + d),
  };
}
