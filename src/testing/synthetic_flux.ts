/**
 * Synthetic kohya LoRAs for Flux.1 (dev/schnell): every linear layer of the 19 double-stream
 * and 38 single-stream blocks at their real widths (hidden size 3072, MLP 12288), in the names
 * kohya's sd-scripts writes for Flux (`lora_unet_double_blocks_0_img_attn_qkv`,
 * `lora_unet_single_blocks_0_linear1`, …). Values as {@link writeSyntheticLora}'s: per layer,
 * singular values `τ (k + 1)^-p` from seeded streams. No base is needed to resize them.
 *
 * @module
 */

import { basename } from "node:path";
import { dtypeSize, encodeFloats } from "../safetensors/dtype.ts";
import { type TensorSource, type WriteResult, writeSafetensors } from "../safetensors/writer.ts";
import {
  encode,
  SYNTHETIC_METADATA_KEY,
  SYNTHETIC_VERSION,
  type SyntheticDType,
} from "./generator.ts";
import { loraDown, loraUp } from "./synthetic_lora.ts";

/** Flux.1's hidden size. */
const HIDDEN = 3072;
/** Flux.1's MLP width (4 × hidden). */
const MLP = 12288;

/** One linear layer of a Flux LoRA. */
export interface FluxLayerSpec {
  /** kohya layer name. */
  readonly name: string;
  /** Output features. */
  readonly out: number;
  /** Input features. */
  readonly in: number;
}

/** Options of {@link fluxLoraLayers}. */
export interface FluxLayerOptions {
  /** Double-stream blocks (default 19, Flux.1's). */
  readonly doubleBlocks?: number;
  /** Single-stream blocks (default 38, Flux.1's). */
  readonly singleBlocks?: number;
}

/**
 * Every linear layer of the Flux transformer blocks, sorted by name: per double block, for the
 * image and the text stream, the modulation (3072 → 18432), q/k/v (3072 → 9216), attention
 * output (3072 → 3072) and the two MLP layers (3072 → 12288 → 3072); per single block,
 * `linear1` (3072 → 21504: q, k, v and the MLP input), `linear2` (15360 → 3072) and the
 * modulation (3072 → 9216).
 *
 * @example
 * ```ts
 * import { fluxLoraLayers } from "./synthetic_flux.ts";
 * const layers = fluxLoraLayers();
 * const linear1 = layers.find((l) => l.name === "lora_unet_single_blocks_0_linear1");
 * if (layers.length !== 19 * 10 + 38 * 3 || linear1?.out !== 21504) throw new Error("shapes");
 * ```
 */
export function fluxLoraLayers(options: FluxLayerOptions = {}): FluxLayerSpec[] {
  const layers: FluxLayerSpec[] = [];
  for (let b = 0; b < (options.doubleBlocks ?? 19); b++) {
    for (const stream of ["img", "txt"]) {
      const at = `lora_unet_double_blocks_${b}_${stream}`;
      layers.push(
        { name: `${at}_mod_lin`, out: 6 * HIDDEN, in: HIDDEN },
        { name: `${at}_attn_qkv`, out: 3 * HIDDEN, in: HIDDEN },
        { name: `${at}_attn_proj`, out: HIDDEN, in: HIDDEN },
        { name: `${at}_mlp_0`, out: MLP, in: HIDDEN },
        { name: `${at}_mlp_2`, out: HIDDEN, in: MLP },
      );
    }
  }
  for (let b = 0; b < (options.singleBlocks ?? 38); b++) {
    const at = `lora_unet_single_blocks_${b}`;
    layers.push(
      { name: `${at}_linear1`, out: 3 * HIDDEN + MLP, in: HIDDEN },
      { name: `${at}_linear2`, out: HIDDEN, in: HIDDEN + MLP },
      { name: `${at}_modulation_lin`, out: 3 * HIDDEN, in: HIDDEN },
    );
  }
  return layers.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Options of {@link writeSyntheticFluxLora}. */
export interface SyntheticFluxLoraOptions extends FluxLayerOptions {
  /** Rank of every layer (default 32). */
  readonly rank?: number;
  /** Alpha of every layer (default rank / 2). */
  readonly alpha?: number;
  /** Dtype of every tensor (default BF16, as Flux LoRAs are usually saved). */
  readonly dtype?: SyntheticDType;
  /** Which layers to write (default: all), by name. */
  readonly only?: (name: string) => boolean;
  /** Layers written with an all-zero `lora_up` (untrained), by name. */
  readonly zeroLayers?: readonly string[];
  /** Layers written without an `.alpha` tensor (kohya then takes alpha = rank), by name. */
  readonly withoutAlpha?: readonly string[];
  /** Integer seed (default 1). */
  readonly seed?: number;
}

/**
 * Writes a synthetic kohya Flux LoRA, one tensor at a time (the whole file is never in
 * memory): per layer `.alpha` (0-dim), `.lora_down.weight` (`r × in`) and `.lora_up.weight`
 * (`out × r`). At rank 32 in BF16 the full set is 306 MB; at rank 64, 612 MB.
 *
 * @example
 * ```ts
 * import { writeSyntheticFluxLora } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { bytes } = await writeSyntheticFluxLora(`${dir}/flux.safetensors`, {
 *   rank: 4,
 *   only: (name) => name.startsWith("lora_unet_single_blocks_0_"),
 * });
 * if (bytes < 2 * 4 * (24576 + 18432 + 12288)) throw new Error(`${bytes} bytes`);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function writeSyntheticFluxLora(
  path: string,
  options: SyntheticFluxLoraOptions = {},
): Promise<WriteResult> {
  const rank = options.rank ?? 32;
  const alpha = options.alpha ?? rank / 2;
  const dtype = options.dtype ?? "BF16";
  const seed = options.seed ?? 1;
  if (!Number.isSafeInteger(rank) || rank < 1) {
    throw new RangeError(`synthetic Flux LoRA rank must be a positive integer (got ${rank})`);
  }
  const zero = new Set(options.zeroLayers ?? []);
  const noAlpha = new Set(options.withoutAlpha ?? []);
  const tensors: TensorSource[] = [];
  for (const layer of fluxLoraLayers(options)) {
    if (options.only && !options.only(layer.name)) continue;
    // Without a stored alpha the layer's scale is 1: its up factor is made for alpha = rank.
    const a = noAlpha.has(layer.name) ? rank : alpha;
    if (!noAlpha.has(layer.name)) {
      tensors.push({
        name: `${layer.name}.alpha`,
        dtype,
        shape: [],
        data: encodeFloats([a], dtype),
      });
    }
    tensors.push(
      {
        name: `${layer.name}.lora_down.weight`,
        dtype,
        shape: [rank, layer.in],
        data: () => encode(loraDown(seed, layer.name, rank, layer.in), dtype),
      },
      {
        name: `${layer.name}.lora_up.weight`,
        dtype,
        shape: [layer.out, rank],
        data: () =>
          zero.has(layer.name)
            ? new Uint8Array(layer.out * rank * dtypeSize(dtype))
            : encode(loraUp(seed, layer.name, layer.out, rank, a), dtype),
      },
    );
  }
  const title = basename(path).replace(/\.safetensors$/, "");
  const metadata = {
    "modelspec.architecture": "flux-1-dev/lora",
    "modelspec.title": title,
    "ss_base_model_version": "flux1",
    "ss_network_alpha": Number.isInteger(alpha) ? alpha.toFixed(1) : String(alpha),
    "ss_network_dim": String(rank),
    "ss_network_module": "networks.lora_flux",
    "ss_training_comment": "synthetic Flux LoRA — not a trained model",
    [SYNTHETIC_METADATA_KEY]: JSON.stringify({
      version: SYNTHETIC_VERSION,
      kind: "flux-lora",
      seed,
      rank,
      alpha,
      dtype,
    }),
  };
  return writeSafetensors(path, tensors, { metadata });
}
