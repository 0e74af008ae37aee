/**
 * Finding a LoRA file's layers in every naming, layer by layer, and the
 * architecture the file was made for.
 *
 * @module
 */

import { comfyui } from "./comfyui.ts";
import { kohya, KOHYA_DOWN } from "./kohya.ts";
import { kohyaDiffusers, simpleTuner } from "./kohya_diffusers.ts";
import type { LayerKeys, Naming, NamingId } from "./naming.ts";
import { diffusers, diffusersAttnProcs, peft } from "./peft.ts";
import type { Architecture } from "./unet_blocks.ts";

/**
 * Every naming, in the order a layer name is tried: the ones recognised by a
 * prefix first, kohya (which takes any name) last among those sharing its keys.
 */
export const NAMINGS: readonly Naming[] = [
  comfyui,
  simpleTuner,
  kohyaDiffusers,
  kohya,
  peft,
  diffusers,
  diffusersAttnProcs,
];

/**
 * The naming with an identifier.
 *
 * @example
 * ```ts
 * import { namingById } from "./detect.ts";
 * if (namingById("peft").layerKeys("m").down !== "m.lora_A.weight") throw new Error();
 * ```
 */
export function namingById(id: NamingId): Naming {
  return NAMINGS.find((n) => n.id === id)!;
}

/** A layer found in a file: its name there, its naming, its canonical name and keys. */
export interface NamedLayer {
  /** The layer name as the file spells it (its keys without the factor suffixes). */
  readonly key: string;
  /** The naming the layer is written in. */
  readonly naming: Naming;
  /** The canonical (kohya, SGM block names) name. */
  readonly canonical: string;
  /** The layer's tensor keys in its naming. */
  readonly keys: LayerKeys;
}

/**
 * Every layer of a file: a down factor whose up factor is present, in the
 * first naming that reads its name, sorted by canonical name. A kohya-keyed
 * layer with a `lora_mid` (Tucker LoCon) is not a layer.
 *
 * @example
 * ```ts
 * import { findLayers } from "./detect.ts";
 * const names = new Set([
 *   "unet.mid_block.attentions.0.proj_in.lora_A.weight",
 *   "unet.mid_block.attentions.0.proj_in.lora_B.weight",
 * ]);
 * const [layer] = findLayers(names, "sdxl");
 * if (layer.canonical !== "lora_unet_middle_block_1_proj_in") throw new Error(layer.canonical);
 * ```
 */
export function findLayers(names: ReadonlySet<string>, arch: Architecture): NamedLayer[] {
  const layers: NamedLayer[] = [];
  for (const name of names) {
    for (const [suffix, namings] of BY_SUFFIX) {
      if (!name.endsWith(suffix)) continue;
      // Namings that share a down suffix spell all their keys alike: one look-up of the up key.
      const key = name.slice(0, -suffix.length);
      const keys = namings[0].layerKeys(key);
      if (!names.has(keys.up)) break;
      if (suffix === KOHYA_DOWN && names.has(key + ".lora_mid.weight")) break;
      for (const naming of namings) {
        const canonical = naming.toCanonical(key, arch);
        if (canonical === undefined) continue;
        layers.push({ key, naming, canonical, keys });
        break;
      }
      break;
    }
  }
  return layers.sort((a, b) => compareText(a.canonical, b.canonical));
}

/** The namings by down suffix, each list in {@link NAMINGS} order. */
const BY_SUFFIX: ReadonlyMap<string, readonly Naming[]> = Map.groupBy(NAMINGS, (n) => n.downSuffix);

/**
 * The naming and canonical name of a layer name that kohya-style keys follow
 * (`<layer>.alpha`, `<layer>.hada_w1_a`, …: kohya, kohya with diffusers block
 * names, SimpleTuner, ComfyUI), for readers of other layer kinds (LyCORIS)
 * that need the same canonical names. kohya, which takes any name, comes last.
 *
 * @example
 * ```ts
 * import { resolveKohyaStyle } from "./detect.ts";
 * const r = resolveKohyaStyle("lycoris_down_blocks_1_attentions_0_proj_out", "sdxl");
 * if (r.naming.id !== "simpletuner" || r.canonical !== "lora_unet_input_blocks_4_1_proj_out") {
 *   throw new Error(r.canonical);
 * }
 * ```
 */
export function resolveKohyaStyle(
  layer: string,
  arch: Architecture,
): { readonly naming: Naming; readonly canonical: string } {
  for (const naming of NAMINGS) {
    if (naming.downSuffix !== KOHYA_DOWN) continue;
    const canonical = naming.toCanonical(layer, arch);
    if (canonical !== undefined) return { naming, canonical };
  }
  return { naming: kohya, canonical: layer }; // unreachable: kohya reads every name
}

/** What a LoRA file says about the architecture it was made for. */
export interface ArchitectureEvidence {
  /** The architecture. */
  readonly architecture: Architecture;
  /** A tensor key that shows it, and why. */
  readonly evidence: string;
}

/** Key patterns only one architecture has (either spelling of the UNet blocks, dots or underscores). */
const NAME_SIGNS: readonly (readonly [RegExp, Architecture, string])[] = [
  [/^lora_te2_|text_encoder_2[._]|clip_g[._]/, "sdxl", "a second text encoder (OpenCLIP-G)"],
  [/label_emb|add_embedding/, "sdxl", "a pooled-text embedding"],
  [/transformer_blocks[._][1-9]/, "sdxl", "several transformer blocks per attention"],
  [/^lora_te_text_model/, "sd15", "a single text encoder (lora_te_)"],
  [
    /input_blocks[._](9|10|11)[._]|down_blocks[._]3[._]|up_blocks[._]3[._]/,
    "sd15",
    "a 4th UNet level",
  ],
  [
    /input_blocks[._][12][._]1[._]|down_blocks[._]0[._]attentions/,
    "sd15",
    "attention in the first UNet level",
  ],
];

/** Cross-attention context width: 768 (CLIP-L) for SD1.5, 2048 (both encoders) for SDXL. */
const CONTEXT_WIDTH: ReadonlyMap<number, Architecture> = new Map([[768, "sd15"], [2048, "sdxl"]]);
/** A cross-attention key or value projection, in any naming (attention processors included). */
const CROSS_ATTENTION_KV = /attn2[._](?:processor[._])?to_[kv][._]/;

/**
 * The architecture a LoRA's tensors show it was made for: the width of its
 * cross-attention key/value inputs when it has such a layer, else key names
 * that only one architecture has; `undefined` when nothing shows it or the
 * names disagree.
 *
 * @example
 * ```ts
 * import { loraArchitecture } from "./detect.ts";
 * const a = loraArchitecture([
 *   { name: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight", shape: [4, 768] },
 * ]);
 * if (a?.architecture !== "sd15") throw new Error();
 * ```
 */
export function loraArchitecture(
  tensors: readonly { readonly name: string; readonly shape: readonly number[] }[],
): ArchitectureEvidence | undefined {
  for (const t of tensors) {
    if (!CROSS_ATTENTION_KV.test(t.name) || !isDownFactor(t.name) || t.shape.length !== 2) continue;
    const arch = CONTEXT_WIDTH.get(t.shape[1]);
    if (arch) {
      return { architecture: arch, evidence: `'${t.name}' (cross-attention input ${t.shape[1]})` };
    }
  }
  const found = new Map<Architecture, string>();
  for (const t of tensors) {
    // An up factor or alpha names the same layer as its down factor.
    if (
      t.name.endsWith("up.weight") || t.name.endsWith(".lora_B.weight") || t.name.endsWith(".alpha")
    ) continue;
    for (const [pattern, arch, why] of NAME_SIGNS) {
      if (!found.has(arch) && pattern.test(t.name)) found.set(arch, `'${t.name}' (${why})`);
    }
    if (found.size === 2) break;
  }
  if (found.size !== 1) return undefined;
  const [[architecture, evidence]] = found;
  return { architecture, evidence };
}

function isDownFactor(name: string): boolean {
  return NAMINGS.some((n) => name.endsWith(n.downSuffix));
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
