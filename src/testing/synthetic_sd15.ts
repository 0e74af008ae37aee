/**
 * Synthetic SD1.5 base checkpoints: the LDM single-file key set of the UNet
 * (`model.diffusion_model.…`) and CLIP-L (`cond_stage_model.transformer.…`)
 * at any width scale, with the values of {@link syntheticBaseTensor}. The VAE
 * is left out: nothing pairs with it.
 *
 * Widths scale like the SDXL set's: with `h = max(1, round(64 · scale))`, UNet
 * channels 5h/10h/20h/20h, time embedding 20h, cross-attention context and
 * CLIP-L width 12h (MLP 48h). Four UNet levels of two resnets each, attention
 * (one transformer block, 1×1-conv `proj_in`/`proj_out`) in the first three,
 * and a one-block middle; 12 CLIP-L layers. `scale: 1` is SD1.5's own shapes.
 *
 * @module
 */

import type { TensorSpec } from "../safetensors/header.ts";
import { type TensorSource, type WriteResult, writeSafetensors } from "../safetensors/writer.ts";
import type { SyntheticDType } from "./generator.ts";
import { syntheticBaseTensor } from "./synthetic_base.ts";
import { tensorSpecBuilder } from "./sdxl_shapes.ts";

/** Key prefixes of an SD1.5 single-file checkpoint's UNet and text encoder. */
export const SD15_PREFIXES = {
  unet: "model.diffusion_model.",
  te: "cond_stage_model.transformer.text_model.",
} as const;

/** Which UNet levels have attention (SD1.5: all but the last). */
const ATTENTION = [true, true, true, false] as const;
const MULT = [5, 10, 20, 20] as const;
const CLIP_LAYERS = 12;

/** Options of {@link sd15BaseSpecs}. */
export interface Sd15SpecOptions {
  /** Width scale (default 1: SD1.5's shapes). */
  readonly scale?: number;
  /** Float dtype of every tensor but `position_ids` (default F16). */
  readonly dtype?: SyntheticDType;
}

/**
 * Every tensor (name, dtype, shape) of a synthetic SD1.5 single-file
 * checkpoint (UNet and CLIP-L), built from the architecture.
 *
 * @example
 * ```ts
 * import { sd15BaseSpecs } from "./synthetic_sd15.ts";
 * const specs = sd15BaseSpecs({ scale: 1 / 64 });
 * const q = specs.find((s) => s.name.endsWith("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"));
 * if (q?.shape.join() !== "5,12") throw new Error(String(q?.shape));
 * ```
 */
export function sd15BaseSpecs(options: Sd15SpecOptions = {}): TensorSpec[] {
  const h = Math.max(1, Math.round(64 * (options.scale ?? 1)));
  const dtype = options.dtype ?? "F16";
  const { specs, add, norm, linear, conv } = tensorSpecBuilder(dtype);
  unet(SD15_PREFIXES.unet, h, { norm, linear, conv });
  const d = 12 * h, te = SD15_PREFIXES.te;
  add(`${te}embeddings.position_embedding.weight`, [77, d]);
  add(`${te}embeddings.position_ids`, [1, 77], "I64");
  add(`${te}embeddings.token_embedding.weight`, [772 * h, d]);
  for (let i = 0; i < CLIP_LAYERS; i++) {
    const l = `${te}encoder.layers.${i}`;
    norm(`${l}.layer_norm1`, d);
    norm(`${l}.layer_norm2`, d);
    linear(`${l}.mlp.fc1`, 4 * d, d);
    linear(`${l}.mlp.fc2`, d, 4 * d);
    for (const proj of ["q", "k", "v", "out"]) linear(`${l}.self_attn.${proj}_proj`, d, d);
  }
  norm(`${te}final_layer_norm`, d);
  return specs;
}

interface Builders {
  norm(name: string, c: number): void;
  linear(name: string, out: number, inp: number, bias?: boolean): void;
  conv(name: string, out: number, inp: number, k: number): void;
}

function unet(p: string, h: number, b: Builders): void {
  const temb = 20 * h, context = 12 * h;
  const resBlock = (name: string, inp: number, out: number) => {
    b.norm(`${name}.in_layers.0`, inp);
    b.conv(`${name}.in_layers.2`, out, inp, 3);
    b.linear(`${name}.emb_layers.1`, out, temb);
    b.norm(`${name}.out_layers.0`, out);
    b.conv(`${name}.out_layers.3`, out, out, 3);
    if (inp !== out) b.conv(`${name}.skip_connection`, out, inp, 1);
  };
  const transformer = (name: string, c: number) => {
    b.norm(`${name}.norm`, c);
    b.conv(`${name}.proj_in`, c, c, 1);
    const t = `${name}.transformer_blocks.0`;
    for (const [attn, ctx] of [["attn1", c], ["attn2", context]] as const) {
      b.linear(`${t}.${attn}.to_q`, c, c, false);
      b.linear(`${t}.${attn}.to_k`, c, ctx, false);
      b.linear(`${t}.${attn}.to_v`, c, ctx, false);
      b.linear(`${t}.${attn}.to_out.0`, c, c);
    }
    b.linear(`${t}.ff.net.0.proj`, 8 * c, c);
    b.linear(`${t}.ff.net.2`, c, 4 * c);
    for (const n of ["norm1", "norm2", "norm3"]) b.norm(`${t}.${n}`, c);
    b.conv(`${name}.proj_out`, c, c, 1);
  };

  const channels = MULT.map((m) => m * h);
  b.linear(`${p}time_embed.0`, temb, channels[0]);
  b.linear(`${p}time_embed.2`, temb, temb);
  b.conv(`${p}input_blocks.0.0`, channels[0], 4, 3);
  let ch = channels[0];
  const skips = [ch];
  let block = 1;
  for (let level = 0; level < 4; level++) {
    for (let i = 0; i < 2; i++, block++) {
      resBlock(`${p}input_blocks.${block}.0`, ch, channels[level]);
      ch = channels[level];
      if (ATTENTION[level]) transformer(`${p}input_blocks.${block}.1`, ch);
      skips.push(ch);
    }
    if (level < 3) {
      b.conv(`${p}input_blocks.${block}.0.op`, ch, ch, 3);
      skips.push(ch);
      block++;
    }
  }
  resBlock(`${p}middle_block.0`, ch, ch);
  transformer(`${p}middle_block.1`, ch);
  resBlock(`${p}middle_block.2`, ch, ch);
  block = 0;
  for (let level = 3; level >= 0; level--) {
    for (let i = 0; i <= 2; i++, block++) {
      resBlock(`${p}output_blocks.${block}.0`, ch + skips.pop()!, channels[level]);
      ch = channels[level];
      let sub = 1;
      if (ATTENTION[level]) transformer(`${p}output_blocks.${block}.${sub++}`, ch);
      if (level > 0 && i === 2) b.conv(`${p}output_blocks.${block}.${sub}.conv`, ch, ch, 3);
    }
  }
  b.norm(`${p}out.0`, ch);
  b.conv(`${p}out.2`, 4, ch, 3);
}

/** Options of {@link writeSyntheticSd15Base}. */
export interface SyntheticSd15Options extends Sd15SpecOptions {
  /** Integer seed of every value (default 0). */
  readonly seed?: number;
}

/**
 * Writes a synthetic SD1.5 single-file base checkpoint (UNet and CLIP-L).
 *
 * @example
 * ```ts ignore
 * import { writeSyntheticSd15Base } from "./synthetic_sd15.ts";
 * await writeSyntheticSd15Base("/tmp/sd15.safetensors", { scale: 1 / 32, seed: 1 });
 * ```
 */
export function writeSyntheticSd15Base(
  path: string,
  options: SyntheticSd15Options = {},
): Promise<WriteResult> {
  const seed = options.seed ?? 0;
  const tensors: TensorSource[] = sd15BaseSpecs(options).map((spec) => ({
    ...spec,
    data: () => syntheticBaseTensor(spec, { seed }),
  }));
  return writeSafetensors(path, tensors, {
    metadata: {
      "modelspec.architecture": "stable-diffusion-v1",
      "modelspec.title": "Synthetic SD1.5",
    },
  });
}
