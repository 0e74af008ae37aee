/**
 * Synthetic kohya LoRA / LoCon files for the synthetic base: which layers a LoRA trains, and
 * the writer (singular values `τ (k + 1)^-p` per layer).
 *
 * @module
 */

import { basename } from "node:path";
import { dtypeSize, encodeFloats } from "../safetensors/dtype.ts";
import { type TensorSource, type WriteResult, writeSafetensors } from "../safetensors/writer.ts";
import {
  encode,
  Rng,
  SYNTHETIC_METADATA_KEY,
  SYNTHETIC_VERSION,
  type SyntheticDType,
} from "./generator.ts";
import { SDXL_PREFIXES, sdxlBaseSpecs } from "./sdxl_shapes.ts";

// ------------------------------------------------------------------ LoRA layers

/** Groups of layers a synthetic LoRA can train (the conformance manifest's names). */
export type LoraModuleGroup =
  | "unet_attn"
  | "unet_ff"
  | "unet_proj"
  | "unet_res_linear"
  | "unet_res_skip"
  | "unet_conv3"
  | "te1_attn"
  | "te1_mlp"
  | "te2_attn"
  | "te2_mlp";

/**
 * The default LoRA: every UNet transformer linear (attn1/attn2 q, k, v, out;
 * ff; proj_in/out) and both text encoders' attention and MLP: 986 layers, the
 * set of the conformance LoRA A.
 */
export const LORA_GROUPS: readonly LoraModuleGroup[] = [
  "unet_attn",
  "unet_ff",
  "unet_proj",
  "te1_attn",
  "te1_mlp",
  "te2_attn",
  "te2_mlp",
];

/**
 * A kohya LoCon's UNet layers (like the conformance LoCon B): proj_in/out,
 * ResBlock `emb_layers.1`, 1×1 `skip_connection`, and the 3×3 convolutions
 * (`in_layers.2`, `out_layers.3`, downsample `op`, upsample `conv`).
 */
export const LOCON_GROUPS: readonly LoraModuleGroup[] = [
  "unet_proj",
  "unet_res_linear",
  "unet_res_skip",
  "unet_conv3",
];

/** One LoRA layer and the base weight (or q/k/v row block) it modifies. */
export interface LoraLayerSpec {
  /** kohya layer name (`lora_unet_…`, `lora_te1_…`, `lora_te2_…`). */
  readonly name: string;
  /** Its group. */
  readonly group: LoraModuleGroup;
  /** Base tensor key. */
  readonly base: string;
  /** For a CLIP-G q/k/v layer: its rows `[begin, end)` of `in_proj_weight`. */
  readonly rows?: readonly [number, number];
  /** Output features (rows of the base weight or block). */
  readonly out: number;
  /** Input features (`in` for a linear, input channels for a conv). */
  readonly in: number;
  /** Kernel size: 0 for a linear layer, 1 or 3 for a convolution. */
  readonly kernel: 0 | 1 | 3;
}

/**
 * The group of a base weight key, and its kohya layer name(s), or undefined.
 */
function classify(key: string): { group: LoraModuleGroup; names: string[] } | undefined {
  const { unet, te1, te2 } = SDXL_PREFIXES;
  if (key.startsWith(unet) && key.endsWith(".weight")) {
    const stem = key.slice(unet.length, -".weight".length);
    const name = `lora_unet_${stem.replaceAll(".", "_")}`;
    let group: LoraModuleGroup | undefined;
    if (/\.transformer_blocks\.\d+\.attn[12]\.(to_[qkv]|to_out\.0)$/.test(stem)) {
      group = "unet_attn";
    } else if (/\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$/.test(stem)) group = "unet_ff";
    else if (/\.proj_(in|out)$/.test(stem)) group = "unet_proj";
    else if (/\.emb_layers\.1$/.test(stem)) group = "unet_res_linear";
    else if (/\.skip_connection$/.test(stem)) group = "unet_res_skip";
    else if (/\.(in_layers\.2|out_layers\.3|op|\d+\.conv)$/.test(stem)) group = "unet_conv3";
    return group && { group, names: [name] };
  }
  const te1Layers = `${te1}encoder.layers.`;
  if (key.startsWith(te1Layers) && key.endsWith(".weight")) {
    const rest = key.slice(te1Layers.length, -".weight".length);
    const group = /\.self_attn\./.test(rest)
      ? "te1_attn"
      : /\.mlp\./.test(rest)
      ? "te1_mlp"
      : undefined;
    return group &&
      { group, names: [`lora_te1_text_model_encoder_layers_${rest.replaceAll(".", "_")}`] };
  }
  const te2Blocks = `${te2}transformer.resblocks.`;
  if (key.startsWith(te2Blocks)) {
    const m =
      /^(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$/
        .exec(key.slice(te2Blocks.length));
    if (!m) return undefined;
    const layer = `lora_te2_text_model_encoder_layers_${m[1]}`;
    switch (m[2]) {
      case "attn.in_proj_weight":
        return {
          group: "te2_attn",
          names: ["q", "k", "v"].map((x) => `${layer}_self_attn_${x}_proj`),
        };
      case "attn.out_proj.weight":
        return { group: "te2_attn", names: [`${layer}_self_attn_out_proj`] };
      case "mlp.c_fc.weight":
        return { group: "te2_mlp", names: [`${layer}_mlp_fc1`] };
      default:
        return { group: "te2_mlp", names: [`${layer}_mlp_fc2`] };
    }
  }
  return undefined;
}

/** Options of {@link sdxlLoraLayers}. */
export interface LoraLayerOptions {
  /** Width scale of the base (default 1). */
  readonly scale?: number;
  /** Groups to include (default {@link LORA_GROUPS}). */
  readonly include?: readonly LoraModuleGroup[];
}

/**
 * The kohya LoRA layers of the chosen groups, sorted by name, each with the
 * base weight it modifies and its shape.
 *
 * @example
 * ```ts
 * import { sdxlLoraLayers } from "./mod.ts";
 * import assert from "node:assert/strict";
 * const layers = sdxlLoraLayers();
 * assert.deepEqual(layers.length, 986);
 * ```
 */
export function sdxlLoraLayers(options: LoraLayerOptions = {}): LoraLayerSpec[] {
  const include = new Set(options.include ?? LORA_GROUPS);
  const layers: LoraLayerSpec[] = [];
  for (const spec of sdxlBaseSpecs({ scale: options.scale })) {
    const c = classify(spec.name);
    if (!c || !include.has(c.group)) continue;
    const [rows, inp] = spec.shape;
    const kernel = spec.shape.length === 4 ? spec.shape[2] as 1 | 3 : 0;
    if (c.names.length === 1) {
      layers.push({
        name: c.names[0],
        group: c.group,
        base: spec.name,
        out: rows,
        in: inp,
        kernel,
      });
    } else {
      const n = rows / c.names.length;
      c.names.forEach((name, i) =>
        layers.push({
          name,
          group: c.group,
          base: spec.name,
          rows: [i * n, (i + 1) * n],
          out: n,
          in: inp,
          kernel,
        })
      );
    }
  }
  return layers.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

// ------------------------------------------------------------------ LoRA files

/** Options of {@link writeSyntheticLora}. */
export interface SyntheticLoraOptions extends LoraLayerOptions {
  /** Rank of linear and 1×1 layers (default 32). */
  readonly rank?: number;
  /** Alpha of linear and 1×1 layers (default rank / 2). */
  readonly alpha?: number;
  /** Rank of 3×3 conv layers (default rank / 2, at least 1). */
  readonly convRank?: number;
  /** Alpha of 3×3 conv layers (default 1). */
  readonly convAlpha?: number;
  /** Dtype of every tensor, alphas included (default F16). */
  readonly dtype?: SyntheticDType;
  /**
   * Layers written with an all-zero `lora_up` (untrained), by name. Default:
   * the included layers of CLIP-L layer 11, as sd-scripts leaves them (SDXL
   * uses the penultimate CLIP-L layer, so the last one gets no gradient).
   */
  readonly zeroLayers?: readonly string[];
  /** Integer seed (default 1). */
  readonly seed?: number;
  /** Extra `__metadata__` entries (override the generated ones). */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Python's `str(float)` for the simple values used in `ss_network_alpha`. */
function pyFloat(x: number): string {
  return Number.isInteger(x) ? x.toFixed(1) : String(x);
}

/**
 * kohya-style `__metadata__` of a synthetic LoRA (`ss_*` and `modelspec.*`,
 * with non-ASCII and quotes in `ss_tag_frequency`).
 */
function loraMetadata(
  title: string,
  o: Required<Pick<SyntheticLoraOptions, "rank" | "alpha">> & {
    conv?: { rank: number; alpha: number };
  },
): Record<string, string> {
  const meta: Record<string, string> = {
    "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.prediction_type": "epsilon",
    "modelspec.resolution": "1024x1024",
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.title": title,
    "ss_base_model_version": "sdxl_base_v1-0",
    "ss_network_alpha": pyFloat(o.alpha),
    "ss_network_dim": String(o.rank),
    "ss_network_module": "networks.lora",
    "ss_output_name": title,
    "ss_sd_model_name": "sd_xl_base_1.0.safetensors",
    "ss_tag_frequency": JSON.stringify({
      "10_subject": { "1girl": 120, "solo": 98, "東京": 7, 'café "quoted"': 3 },
    }),
    "ss_training_comment": "synthetic LoRA — not a trained model",
    "ss_v2": "False",
  };
  if (o.conv) {
    meta["ss_network_args"] = JSON.stringify({
      conv_dim: String(o.conv.rank),
      conv_alpha: String(o.conv.alpha),
    });
  }
  return meta;
}

/** The default all-zero layers: CLIP-L layer 11. */
const TE1_LAST = "lora_te1_text_model_encoder_layers_11_";

/**
 * Writes a synthetic kohya LoRA (or LoCon, with conv groups) for the
 * synthetic base of the same scale: per layer `.alpha` (0-dim),
 * `.lora_down.weight` (`r×in`, or `r×in×k×k` for a conv) and
 * `.lora_up.weight` (`out×r`, or `out×r×1×1`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { LOCON_GROUPS, writeSyntheticLora } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const lora = await writeSyntheticLora(`${dir}/lora.safetensors`, { scale: 1 / 64, rank: 16 });
 * const locon = await writeSyntheticLora(`${dir}/locon.safetensors`, {
 *   scale: 1 / 64, rank: 8, alpha: 4, convRank: 4, convAlpha: 1, include: LOCON_GROUPS,
 * });
 * assert.ok(lora.bytes > locon.bytes);
 * ```
 */
export function writeSyntheticLora(
  path: string,
  options: SyntheticLoraOptions = {},
): Promise<WriteResult> {
  const rank = options.rank ?? 32;
  const alpha = options.alpha ?? rank / 2;
  const convRank = options.convRank ?? Math.max(1, Math.floor(rank / 2));
  const convAlpha = options.convAlpha ?? 1;
  const dtype = options.dtype ?? "F16";
  const seed = options.seed ?? 1;
  for (const [what, v] of [["rank", rank], ["convRank", convRank]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new RangeError(`synthetic LoRA ${what} must be a positive integer (got ${v})`);
    }
  }
  const layers = sdxlLoraLayers(options);
  const zero = new Set(
    options.zeroLayers ?? layers.map((l) => l.name).filter((n) => n.startsWith(TE1_LAST)),
  );
  const tensors: TensorSource[] = [];
  for (const layer of layers) {
    const conv3 = layer.kernel === 3;
    const r = conv3 ? convRank : rank;
    const a = conv3 ? convAlpha : alpha;
    const inFlat = layer.in * (layer.kernel || 1) ** 2;
    const downShape = layer.kernel ? [r, layer.in, layer.kernel, layer.kernel] : [r, layer.in];
    const upShape = layer.kernel ? [layer.out, r, 1, 1] : [layer.out, r];
    const zeroUp = zero.has(layer.name);
    tensors.push(
      { name: `${layer.name}.alpha`, dtype, shape: [], data: encodeFloats([a], dtype) },
      {
        name: `${layer.name}.lora_down.weight`,
        dtype,
        shape: downShape,
        data: () => encode(loraDown(seed, layer.name, r, inFlat), dtype),
      },
      {
        name: `${layer.name}.lora_up.weight`,
        dtype,
        shape: upShape,
        data: () =>
          zeroUp
            ? new Uint8Array(layer.out * r * dtypeSize(dtype))
            : encode(loraUp(seed, layer.name, layer.out, r, a), dtype),
      },
    );
  }
  const title = basename(path).replace(/\.safetensors$/, "");
  const hasConv = layers.some((l) => l.kernel === 3);
  const metadata = {
    ...loraMetadata(title, {
      rank,
      alpha,
      conv: hasConv ? { rank: convRank, alpha: convAlpha } : undefined,
    }),
    [SYNTHETIC_METADATA_KEY]: JSON.stringify({
      version: SYNTHETIC_VERSION,
      kind: "lora",
      seed,
      scale: options.scale ?? 1,
      rank,
      alpha,
      ...(hasConv ? { convRank, convAlpha } : {}),
      dtype,
      include: options.include ?? LORA_GROUPS,
    }),
    ...options.metadata,
  };
  return writeSafetensors(path, tensors, { metadata });
}

/** A layer's strength `τ` and spectral decay `p`, from its own stream. */
function layerSpectrum(seed: number, name: string): { tau: number; decay: number } {
  const rng = new Rng(seed, name);
  return { tau: Math.exp(2.4 * (rng.next() - 0.5)), decay: 1 + 0.8 * rng.next() };
}

/** `down` rows `(k+1)^-p · uₖ` (unit vectors `uₖ`), flattened `rank × inFlat` (also Flux layers). */
export function loraDown(seed: number, name: string, rank: number, inFlat: number): Float32Array {
  const { decay } = layerSpectrum(seed, name);
  const rng = new Rng(seed, `${name}.lora_down.weight`);
  const down = new Float32Array(rank * inFlat);
  for (let k = 0; k < rank; k++) {
    const u = rng.unit(inFlat);
    const s = (k + 1) ** -decay;
    for (let j = 0; j < inFlat; j++) down[k * inFlat + j] = s * u[j];
  }
  return down;
}

/**
 * `up` columns `t · wₖ` (unit vectors `wₖ`) with `t = τ · r/α` and
 * `τ = 0.02 · √out · e^{U(-1.2, 1.2)}`, so `α/r · up · down ≈ Σ τ (k+1)^-p wₖ uₖᵀ`.
 */
export function loraUp(
  seed: number,
  name: string,
  out: number,
  rank: number,
  alpha: number,
): Float32Array {
  const t = 0.02 * Math.sqrt(out) * layerSpectrum(seed, name).tau * rank / alpha;
  const rng = new Rng(seed, `${name}.lora_up.weight`);
  const up = new Float32Array(out * rank);
  for (let k = 0; k < rank; k++) {
    const w = rng.unit(out);
    for (let i = 0; i < out; i++) up[i * rank + k] = t * w[i];
  }
  return up;
}
