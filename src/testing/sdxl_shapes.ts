/**
 * The key set and shapes of an SGM single-file SDXL 1.0 base checkpoint at any width scale,
 * built from the architecture (see `mod.ts` for the width rule).
 *
 * @module
 */

import type { DType } from "../safetensors/dtype.ts";
import type { TensorSpec } from "../safetensors/header.ts";
import type { SyntheticDType } from "./generator.ts";

// ------------------------------------------------------------------ widths

/** The widths of a synthetic SDXL (see the module doc for the rule). */
export interface SdxlWidths {
  /** Attention head width `h` (64 at full size). */
  readonly headWidth: number;
  /** UNet channels of the three levels (320, 640, 1280 at full size). */
  readonly unetChannels: readonly [number, number, number];
  /** UNet time-embedding width (1280). */
  readonly timeEmbed: number;
  /** UNet `label_emb` input width (2816). */
  readonly admIn: number;
  /** Cross-attention context width (2048 = CLIP-L + CLIP-G widths). */
  readonly context: number;
  /** CLIP-L (text encoder 1). */
  readonly clipL: TextEncoderWidths;
  /** OpenCLIP-G (text encoder 2). */
  readonly clipG: TextEncoderWidths;
  /** VAE base channels (128) and level multipliers. */
  readonly vae: { readonly channels: number; readonly mult: readonly number[] };
}

/** Widths of one text encoder. */
export interface TextEncoderWidths {
  /** Model width. */
  readonly width: number;
  /** MLP hidden width (4 × width). */
  readonly mlp: number;
  /** Number of transformer layers. */
  readonly layers: number;
  /** Vocabulary size (49408 at full size). */
  readonly vocab: number;
}

/** UNet input/output channels (latent channels). */
const LATENT = 4;
/** CLIP context length. */
const POSITIONS = 77;
/** Transformer depth per UNet level, and in the middle block. */
const UNET_DEPTHS = [0, 2, 10] as const;
const MIDDLE_DEPTH = 10;
const RES_BLOCKS = 2;

/**
 * The widths of a synthetic SDXL at a scale (1 = SDXL 1.0 base).
 *
 * @example
 * ```ts
 * import { sdxlWidths } from "./mod.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(sdxlWidths(1).unetChannels, [320, 640, 1280]);
 * assert.deepEqual(sdxlWidths(1 / 64).clipG.width, 20);
 * ```
 */
export function sdxlWidths(scale = 1): SdxlWidths {
  if (!(scale > 0) || !Number.isFinite(scale)) {
    throw new RangeError(`synthetic SDXL scale must be a positive number (got ${scale})`);
  }
  const h = Math.max(1, Math.round(64 * scale));
  return {
    headWidth: h,
    unetChannels: [5 * h, 10 * h, 20 * h],
    timeEmbed: 20 * h,
    admIn: 44 * h,
    context: 32 * h,
    clipL: { width: 12 * h, mlp: 48 * h, layers: 12, vocab: 772 * h },
    clipG: { width: 20 * h, mlp: 80 * h, layers: 32, vocab: 772 * h },
    vae: { channels: 2 * h, mult: [1, 2, 4, 4] },
  };
}

// ------------------------------------------------------------------ base key set

/** Options of {@link sdxlBaseSpecs}. */
export interface BaseSpecOptions {
  /** Width scale (default 1: the real SDXL 1.0 shapes). */
  readonly scale?: number;
  /** Float dtype of every tensor but the I64 `position_ids` (default F16). */
  readonly dtype?: SyntheticDType;
}

/** Key prefixes of the four components of an SGM SDXL checkpoint. */
export const SDXL_PREFIXES = {
  unet: "model.diffusion_model.",
  te1: "conditioner.embedders.0.transformer.text_model.",
  te2: "conditioner.embedders.1.model.",
  vae: "first_stage_model.",
} as const;

/** Adds the tensors of one module (weight and bias) to a list of specs. */
export interface TensorSpecBuilder {
  /** The specs added so far, in order. */
  readonly specs: TensorSpec[];
  /** One tensor (of the builder's dtype unless given). */
  add(name: string, shape: number[], dtype?: DType): void;
  /** A norm's weight and bias, `[c]` each. */
  norm(name: string, c: number): void;
  /** A linear layer's `[out, in]` weight and (unless `bias` is false) its `[out]` bias. */
  linear(name: string, out: number, inp: number, bias?: boolean): void;
  /** A `k × k` conv's weight and bias. */
  conv(name: string, out: number, inp: number, k: number): void;
}

/**
 * A list of tensor specs built module by module, shared by the SDXL and SD1.5 shape sets.
 *
 * @example
 * ```ts
 * import { tensorSpecBuilder } from "./sdxl_shapes.ts";
 * const b = tensorSpecBuilder("F16");
 * b.linear("proj", 4, 3);
 * b.conv("conv", 2, 3, 3);
 * if (b.specs.map((s) => s.shape.join("x")).join() !== "4x3,4,2x3x3x3,2") throw new Error();
 * ```
 */
export function tensorSpecBuilder(dtype: DType): TensorSpecBuilder {
  const specs: TensorSpec[] = [];
  const add = (name: string, shape: number[], dt: DType = dtype) => {
    specs.push({ name, dtype: dt, shape });
  };
  return {
    specs,
    add,
    norm: (name, c) => {
      add(`${name}.weight`, [c]);
      add(`${name}.bias`, [c]);
    },
    linear: (name, out, inp, bias = true) => {
      add(`${name}.weight`, [out, inp]);
      if (bias) add(`${name}.bias`, [out]);
    },
    conv: (name, out, inp, k) => {
      add(`${name}.weight`, [out, inp, k, k]);
      add(`${name}.bias`, [out]);
    },
  };
}

/**
 * Every tensor (name, dtype, shape) of an SGM single-file SDXL base
 * checkpoint at a scale, built from the architecture.
 *
 * @example
 * ```ts
 * import { sdxlBaseSpecs } from "./mod.ts";
 * import assert from "node:assert/strict";
 * const specs = sdxlBaseSpecs();
 * assert.deepEqual(specs.length, 2515);
 * ```
 */
export function sdxlBaseSpecs(options: BaseSpecOptions = {}): TensorSpec[] {
  const w = sdxlWidths(options.scale ?? 1);
  const dtype = options.dtype ?? "F16";
  const { specs, add, norm, linear, conv } = tensorSpecBuilder(dtype);
  unetSpecs(w, SDXL_PREFIXES.unet, { norm, linear, conv });
  clipLSpecs(w, SDXL_PREFIXES.te1, { norm, linear, add });
  clipGSpecs(w, SDXL_PREFIXES.te2, { norm, linear, add });
  vaeSpecs(w, SDXL_PREFIXES.vae, { norm, conv });
  return specs;
}

interface Builders {
  norm(name: string, c: number): void;
  linear(name: string, out: number, inp: number, bias?: boolean): void;
  conv(name: string, out: number, inp: number, k: number): void;
  add(name: string, shape: number[], dtype?: DType): void;
}

function unetSpecs(w: SdxlWidths, p: string, b: Pick<Builders, "norm" | "linear" | "conv">) {
  const temb = w.timeEmbed;
  const resBlock = (name: string, inp: number, out: number) => {
    b.norm(`${name}.in_layers.0`, inp);
    b.conv(`${name}.in_layers.2`, out, inp, 3);
    b.linear(`${name}.emb_layers.1`, out, temb);
    b.norm(`${name}.out_layers.0`, out);
    b.conv(`${name}.out_layers.3`, out, out, 3);
    if (inp !== out) b.conv(`${name}.skip_connection`, out, inp, 1);
  };
  const transformer = (name: string, c: number, depth: number) => {
    b.norm(`${name}.norm`, c);
    b.linear(`${name}.proj_in`, c, c);
    for (let d = 0; d < depth; d++) {
      const t = `${name}.transformer_blocks.${d}`;
      for (const [attn, ctx] of [["attn1", c], ["attn2", w.context]] as const) {
        b.linear(`${t}.${attn}.to_q`, c, c, false);
        b.linear(`${t}.${attn}.to_k`, c, ctx, false);
        b.linear(`${t}.${attn}.to_v`, c, ctx, false);
        b.linear(`${t}.${attn}.to_out.0`, c, c);
      }
      b.linear(`${t}.ff.net.0.proj`, 8 * c, c); // GEGLU: two 4c halves
      b.linear(`${t}.ff.net.2`, c, 4 * c);
      for (const n of ["norm1", "norm2", "norm3"]) b.norm(`${t}.${n}`, c);
    }
    b.linear(`${name}.proj_out`, c, c);
  };

  b.linear(`${p}time_embed.0`, temb, w.unetChannels[0]);
  b.linear(`${p}time_embed.2`, temb, temb);
  b.linear(`${p}label_emb.0.0`, temb, w.admIn);
  b.linear(`${p}label_emb.0.2`, temb, temb);
  b.conv(`${p}input_blocks.0.0`, w.unetChannels[0], LATENT, 3);

  let ch = w.unetChannels[0];
  const skips = [ch];
  let block = 1;
  for (let level = 0; level < 3; level++) {
    const out = w.unetChannels[level];
    for (let i = 0; i < RES_BLOCKS; i++, block++) {
      resBlock(`${p}input_blocks.${block}.0`, ch, out);
      ch = out;
      if (UNET_DEPTHS[level]) transformer(`${p}input_blocks.${block}.1`, ch, UNET_DEPTHS[level]);
      skips.push(ch);
    }
    if (level < 2) {
      b.conv(`${p}input_blocks.${block}.0.op`, ch, ch, 3);
      skips.push(ch);
      block++;
    }
  }

  resBlock(`${p}middle_block.0`, ch, ch);
  transformer(`${p}middle_block.1`, ch, MIDDLE_DEPTH);
  resBlock(`${p}middle_block.2`, ch, ch);

  block = 0;
  for (let level = 2; level >= 0; level--) {
    const out = w.unetChannels[level];
    for (let i = 0; i <= RES_BLOCKS; i++, block++) {
      resBlock(`${p}output_blocks.${block}.0`, ch + skips.pop()!, out);
      ch = out;
      let sub = 1;
      if (UNET_DEPTHS[level]) {
        transformer(`${p}output_blocks.${block}.${sub++}`, ch, UNET_DEPTHS[level]);
      }
      if (level > 0 && i === RES_BLOCKS) {
        b.conv(`${p}output_blocks.${block}.${sub}.conv`, ch, ch, 3);
      }
    }
  }

  b.norm(`${p}out.0`, ch);
  b.conv(`${p}out.2`, LATENT, ch, 3);
}

function clipLSpecs(w: SdxlWidths, p: string, b: Pick<Builders, "norm" | "linear" | "add">) {
  const { width: d, mlp, layers, vocab } = w.clipL;
  b.add(`${p}embeddings.position_embedding.weight`, [POSITIONS, d]);
  b.add(`${p}embeddings.position_ids`, [1, POSITIONS], "I64");
  b.add(`${p}embeddings.token_embedding.weight`, [vocab, d]);
  for (let i = 0; i < layers; i++) {
    const l = `${p}encoder.layers.${i}`;
    b.norm(`${l}.layer_norm1`, d);
    b.norm(`${l}.layer_norm2`, d);
    b.linear(`${l}.mlp.fc1`, mlp, d);
    b.linear(`${l}.mlp.fc2`, d, mlp);
    for (const proj of ["q", "k", "v", "out"]) b.linear(`${l}.self_attn.${proj}_proj`, d, d);
  }
  b.norm(`${p}final_layer_norm`, d);
}

function clipGSpecs(w: SdxlWidths, p: string, b: Pick<Builders, "norm" | "linear" | "add">) {
  const { width: d, mlp, layers, vocab } = w.clipG;
  b.norm(`${p}ln_final`, d);
  b.add(`${p}logit_scale`, []);
  b.add(`${p}positional_embedding`, [POSITIONS, d]);
  b.add(`${p}text_projection`, [d, d]);
  b.add(`${p}token_embedding.weight`, [vocab, d]);
  for (let i = 0; i < layers; i++) {
    const l = `${p}transformer.resblocks.${i}`;
    b.add(`${l}.attn.in_proj_weight`, [3 * d, d]); // rows q, k, v
    b.add(`${l}.attn.in_proj_bias`, [3 * d]);
    b.linear(`${l}.attn.out_proj`, d, d);
    b.norm(`${l}.ln_1`, d);
    b.norm(`${l}.ln_2`, d);
    b.linear(`${l}.mlp.c_fc`, mlp, d);
    b.linear(`${l}.mlp.c_proj`, d, mlp);
  }
}

function vaeSpecs(w: SdxlWidths, p: string, b: Pick<Builders, "norm" | "conv">) {
  const { channels, mult } = w.vae;
  const levels = mult.map((m) => m * channels);
  const top = levels[levels.length - 1];
  const resnet = (name: string, inp: number, out: number) => {
    b.norm(`${name}.norm1`, inp);
    b.conv(`${name}.conv1`, out, inp, 3);
    b.norm(`${name}.norm2`, out);
    b.conv(`${name}.conv2`, out, out, 3);
    if (inp !== out) b.conv(`${name}.nin_shortcut`, out, inp, 1);
  };
  const mid = (name: string) => {
    resnet(`${name}.block_1`, top, top);
    b.norm(`${name}.attn_1.norm`, top);
    for (const x of ["q", "k", "v", "proj_out"]) b.conv(`${name}.attn_1.${x}`, top, top, 1);
    resnet(`${name}.block_2`, top, top);
  };

  b.conv(`${p}encoder.conv_in`, channels, 3, 3);
  let ch = channels;
  levels.forEach((out, i) => {
    for (let j = 0; j < 2; j++, ch = out) resnet(`${p}encoder.down.${i}.block.${j}`, ch, out);
    if (i < levels.length - 1) b.conv(`${p}encoder.down.${i}.downsample.conv`, ch, ch, 3);
  });
  mid(`${p}encoder.mid`);
  b.norm(`${p}encoder.norm_out`, top);
  b.conv(`${p}encoder.conv_out`, 2 * LATENT, top, 3);
  b.conv(`${p}quant_conv`, 2 * LATENT, 2 * LATENT, 1);
  b.conv(`${p}post_quant_conv`, LATENT, LATENT, 1);

  b.conv(`${p}decoder.conv_in`, top, LATENT, 3);
  mid(`${p}decoder.mid`);
  ch = top;
  for (let i = levels.length - 1; i >= 0; i--) {
    for (let j = 0; j < 3; j++, ch = levels[i]) {
      resnet(`${p}decoder.up.${i}.block.${j}`, ch, levels[i]);
    }
    if (i > 0) b.conv(`${p}decoder.up.${i}.upsample.conv`, ch, ch, 3);
  }
  b.norm(`${p}decoder.norm_out`, channels);
  b.conv(`${p}decoder.conv_out`, 3, channels, 3);
}
