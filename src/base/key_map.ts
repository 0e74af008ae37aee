/**
 * SDXL and SD1.5 single-file checkpoint keys → the LoRA layer names that
 * modify them (the names kohya's training scripts give them), from a key and its shape alone.
 *
 * Three families of names exist for one base weight: the standard kohya name
 * (`lora_unet_…`, `lora_te1_…`, `lora_te2_…`), a lossy short alias that some
 * trainers write (`down_4`, `mid_1_in`, `up_0_skip`, `text_model_encoder_3_mlp`),
 * and, for the UNet, the bare LDM path with underscores. CLIP-G's fused
 * `attn.in_proj_weight` is split into q, k and v row blocks, each with its own
 * name. Unlike the original tool, the blocks are numbered in PyTorch's row
 * order q = 0, k = 1, v = 2 (docs/design.md, "Text encoder 2's fused attention is q, k, v").
 *
 * @module
 */

/** Key prefix of the UNet in an SGM/LDM single-file checkpoint. */
const UNET_PREFIX = "model.diffusion_model.";
/** Key prefix of CLIP-L (text encoder 1) encoder layers. */
const TE1_PREFIX = "conditioner.embedders.0.transformer.text_model.encoder.layers.";
/** Key prefix of OpenCLIP-G (text encoder 2) residual blocks. */
const TE2_PREFIX = "conditioner.embedders.1.model.transformer.resblocks.";
/** Key prefix of SD1.5's CLIP-L encoder layers. */
const SD15_TE_PREFIX = "cond_stage_model.transformer.text_model.encoder.layers.";
/** Key prefix of the VAE, which is never mapped. */
const VAE_PREFIX = "first_stage_model.";

/** Which family a LoRA layer name belongs to. */
export type NameKind = "standard" | "short" | "direct" | "chunk";

/** The LoRA layer names of one base weight. */
export interface BaseKeyNames {
  /** Standard kohya name (absent for split keys and keys without one). */
  readonly standard?: string;
  /** Short alias (`down_N[_in|_out|_emb]`, `mid_N…`, `up_N[…|_skip]`, `text_model_encoder_N[_x]`). */
  readonly short?: string;
  /**
   * UNet: the key without `model.diffusion_model.` and `.weight`, dots → underscores; SD1.5's
   * text encoder: the `lora_te1_…` name some trainers write for its one encoder.
   */
  readonly direct?: string;
  /**
   * A split key (CLIP-G `attn.in_proj_weight`): one name per row block, in
   * block order q, k, v; block `i` is rows `[i·n/3, (i+1)·n/3)`.
   */
  readonly chunks?: readonly string[];
  /**
   * Every name in the order the original registers them: the chunk names for a
   * split key, otherwise standard, short, direct (absent and repeated ones left out).
   */
  readonly all: readonly string[];
}

const LORA_TE1_PREFIX = "lora_te1_text_model_encoder_layers_";
const LORA_TE2_PREFIX = "lora_te2_text_model_encoder_layers_";
/** Row-block order of a fused attention projection (PyTorch stores q, k, v). */
const QKV = ["q", "k", "v"] as const;

/**
 * The LoRA layer names that modify a base weight, or `undefined` when the key
 * takes no part in mapping (VAE keys, keys not ending in `weight`, weights with
 * fewer than 2 dims, keys of no known family).
 *
 * @example
 * ```ts
 * import { loraNamesForBaseKey } from "./key_map.ts";
 * import assert from "node:assert/strict";
 * const n = loraNamesForBaseKey("model.diffusion_model.input_blocks.4.1.proj_in.weight", [640, 640]);
 * assert.deepEqual(n?.all, ["lora_unet_input_blocks_4_1_proj_in", "down_4", "input_blocks_4_1_proj_in"]);
 * const qkv = loraNamesForBaseKey(
 *   "conditioner.embedders.1.model.transformer.resblocks.5.attn.in_proj_weight",
 *   [3840, 1280],
 * );
 * assert.deepEqual(qkv?.chunks?.[0], "lora_te2_text_model_encoder_layers_5_self_attn_q_proj");
 * ```
 */
export function loraNamesForBaseKey(
  key: string,
  shape: readonly number[],
): BaseKeyNames | undefined {
  // `weight`, not `.weight`: CLIP-G's `attn.in_proj_weight` must qualify.
  if (key.startsWith(VAE_PREFIX) || !key.endsWith("weight") || shape.length < 2) return undefined;
  const stem = key.endsWith(".weight") ? key.slice(0, -".weight".length) : key;

  const standard = standardName(stem);
  if (Array.isArray(standard)) return { chunks: standard, all: standard };

  const short = shortAlias(stem);
  const direct = stem.startsWith(UNET_PREFIX)
    ? underscored(stem.slice(UNET_PREFIX.length))
    : stem.startsWith(SD15_TE_PREFIX)
    ? LORA_TE1_PREFIX + underscored(stem.slice(SD15_TE_PREFIX.length))
    : undefined;
  const all: string[] = [];
  for (const name of [standard, short, direct]) {
    if (name !== undefined && !all.includes(name)) all.push(name);
  }
  if (all.length === 0) return undefined;
  return { standard, short, direct, all };
}

function underscored(path: string): string {
  return path.replaceAll(".", "_");
}

/** The kohya name; an array of q, k, v part names for a fused CLIP-G projection. */
function standardName(stem: string): string | string[] | undefined {
  if (stem.startsWith(UNET_PREFIX)) {
    return "lora_unet_" + underscored(stem.slice(UNET_PREFIX.length));
  }
  if (stem.startsWith(TE1_PREFIX)) {
    return LORA_TE1_PREFIX + underscored(stem.slice(TE1_PREFIX.length));
  }
  if (stem.startsWith(SD15_TE_PREFIX)) {
    return "lora_te_text_model_encoder_layers_" + underscored(stem.slice(SD15_TE_PREFIX.length));
  }
  if (!stem.startsWith(TE2_PREFIX)) return undefined;
  // CLIP-G: OpenCLIP module names → the Hugging Face CLIP names kohya writes.
  const name = LORA_TE2_PREFIX + underscored(stem.slice(TE2_PREFIX.length));
  if (name.includes("attn_in_proj_weight")) {
    const attn = name.replaceAll("_attn_in_proj_weight", "_self_attn");
    return QKV.map((part) => `${attn}_${part}_proj`);
  }
  if (name.endsWith("_attn_out_proj")) {
    return name.replaceAll("_attn_out_proj", "_self_attn_out_proj");
  }
  // Unreachable for real checkpoints (layer-norm weights are 1-D), kept for fidelity.
  if (name.includes("_ln_")) return name.replaceAll("_ln_", "_layer_norm");
  if (name.includes("_mlp_")) return name.replaceAll("_c_fc", "_fc1").replaceAll("_c_proj", "_fc2");
  return undefined;
}

const UNET_BLOCKS = [
  { word: "input_blocks", tag: "down", skip: false },
  { word: "middle_block", tag: "mid", skip: false },
  { word: "output_blocks", tag: "up", skip: true },
] as const;

/** The original's "alternative" alias: lossy, many base keys share one. */
function shortAlias(stem: string): string | undefined {
  if (stem.startsWith(UNET_PREFIX)) {
    const path = stem.slice(UNET_PREFIX.length);
    const parts = path.split(".");
    for (const { word, tag, skip } of UNET_BLOCKS) {
      if (!path.includes(word)) continue;
      const block = pythonInt(parts[1]);
      if (block === undefined) continue;
      let alias = `${tag}_${block}`;
      if (parts.length > 3) {
        const detail = `${parts[2]}_${parts[3]}`;
        if (detail.includes("in_layers")) alias += "_in";
        else if (detail.includes("out_layers")) alias += "_out";
        else if (detail.includes("emb_layers")) alias += "_emb";
        else if (skip && detail.includes("skip_connection")) alias += "_skip";
      }
      return alias;
    }
    // The original's fallback for a non-numeric block index (never met in SDXL).
    const word = UNET_BLOCKS.find((b) => path.includes(b.word))?.word;
    if (word !== undefined && parts.length > 1) {
      return `${word}_${parts[1]}` + (parts.length > 3 ? `_${parts[2]}_${parts[3]}` : "");
    }
    return undefined;
  }
  for (const prefix of [TE1_PREFIX, TE2_PREFIX]) {
    if (!stem.startsWith(prefix)) continue;
    const parts = stem.slice(prefix.length).split(".");
    const layer = pythonInt(parts[0]);
    if (layer === undefined) continue;
    return `text_model_encoder_${layer}` + (parts.length > 1 ? `_${parts[1]}` : "");
  }
  return undefined;
}

/** Python `int(text)` for decimal text, printed back as Python would; `undefined` when it raises. */
function pythonInt(text: string | undefined): string | undefined {
  if (text === undefined || !/^\s*[+-]?\d+(?:_\d+)*\s*$/.test(text)) return undefined;
  return BigInt(text.trim().replaceAll("_", "")).toString();
}
