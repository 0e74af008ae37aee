/**
 * Synthetic SDXL files for tests, benchmarks and the demo: an SGM single-file
 * SDXL 1.0 base checkpoint (UNet, CLIP-L, OpenCLIP-G, VAE) with the real key
 * set at any width scale, and kohya LoRA / LoCon files that pair with it.
 *
 * **Shapes.** The key set is built from the architecture (loops over levels,
 * blocks and layers), never from a list. Every SDXL width is a multiple of
 * the 64-wide attention head, so a scale sets the head width
 * `h = max(1, round(64 · scale))` and every width becomes `(full width / 64) · h`:
 * UNet channels 5h/10h/20h (10 and 20 heads of width h in the transformer
 * levels), time embedding 20h, `adm_in` 44h (20h pooled CLIP-G + 6 × 4h size
 * embeddings), context 32h (12h CLIP-L + 20h CLIP-G), CLIP-L width 12h (12
 * heads, MLP 48h), CLIP-G width 20h (20 heads, MLP 80h, fused q/k/v 60h),
 * vocabulary 772h, VAE base channels 2h. What is not a width stays: kernel
 * sizes, depths, 77 positions, 4 latent and 3 image channels. So `scale: 1`
 * is SDXL 1.0 base (2515 tensors, 3,468,837,945 parameters) and `scale: 1/64`
 * is the conformance micro SDXL; a scale that is not a multiple of 1/64 is
 * rounded to the nearest one (1/10 → h = 6, i.e. 3/32).
 *
 * **Values.** Deterministic from a seed: each tensor has its own xoshiro128**
 * stream seeded from (seed, tensor name), so a tensor does not depend on which
 * others are written. A weight, flattened to `out × in′`, is uniform noise of
 * standard deviation `1/√in′` plus up to {@link SPIKES} rank-one spikes
 * `σₖ uₖ vₖᵀ` with power-law strengths `σₖ = 5 · edge / (k + 1)` above the noise
 * bulk edge `(√out + √in′)/√in′`, all times a per-tensor factor
 * `e^{U(-0.3, 0.3)}`, so spectra decay like trained weights' and spectral and
 * Frobenius norms differ. CLIP-G's fused `in_proj_weight` gets
 * separate q, k and v row blocks of different strengths (so scoring against
 * the wrong block is visible). Norm weights are ≈ 1, biases ≈ 0,
 * `position_ids` are 0..76 (I64) and `logit_scale` is ln 100.
 *
 * A LoRA layer's `α/r · up · down` has singular values `τ (k + 1)^-p` (up to
 * the near-orthogonality of random vectors), with a per-layer strength
 * `τ = 0.02 · √out · e^{U(-1.2, 1.2)}` and decay `p ∈ [1, 1.8]`, so the default
 * recipes keep some dimensions of each layer and drop others.
 *
 * @module
 */

import { basename, join } from "node:path";
import { type DType, dtypeSize, encodeFloats } from "./safetensors/dtype.ts";
import { numel, type TensorSpec } from "./safetensors/header.ts";
import {
  type TensorSource,
  type WriteOptions,
  type WriteResult,
  writeSafetensors,
} from "./safetensors/writer.ts";

/** Version of the generator; bumped whenever the bytes it writes change. */
export const SYNTHETIC_VERSION = 1;

/** Metadata key under which generated files record how they were made (JSON). */
export const SYNTHETIC_METADATA_KEY = "resize_lora.synthetic";

/** Most rank-one spikes a generated base weight carries. */
export const SPIKES = 4;

/** Float dtypes the generator writes. */
export type SyntheticDType = "F16" | "BF16" | "F32";

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
 * import { sdxlWidths } from "./synthetic.ts";
 * console.log(sdxlWidths(1).unetChannels); // [320, 640, 1280]
 * console.log(sdxlWidths(1 / 64).clipG.width); // 20
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

/**
 * Every tensor (name, dtype, shape) of an SGM single-file SDXL base
 * checkpoint at a scale, built from the architecture.
 *
 * @example
 * ```ts
 * import { sdxlBaseSpecs } from "./synthetic.ts";
 * const specs = sdxlBaseSpecs();
 * console.log(specs.length); // 2515
 * ```
 */
export function sdxlBaseSpecs(options: BaseSpecOptions = {}): TensorSpec[] {
  const w = sdxlWidths(options.scale ?? 1);
  const dtype = options.dtype ?? "F16";
  const specs: TensorSpec[] = [];
  const add = (name: string, shape: number[], dt: DType = dtype) =>
    specs.push({ name, dtype: dt, shape });
  const norm = (name: string, c: number) => {
    add(`${name}.weight`, [c]);
    add(`${name}.bias`, [c]);
  };
  const linear = (name: string, out: number, inp: number, bias = true) => {
    add(`${name}.weight`, [out, inp]);
    if (bias) add(`${name}.bias`, [out]);
  };
  const conv = (name: string, out: number, inp: number, k: number) => {
    add(`${name}.weight`, [out, inp, k, k]);
    add(`${name}.bias`, [out]);
  };
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

// ------------------------------------------------------------------ random numbers

/** FNV-1a over the UTF-16 code units of a string. */
function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** xoshiro128** seeded through splitmix32: fast, and good enough for weights. */
class Rng {
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  constructor(seed: number, name: string) {
    let x = (seed ^ Math.imul(hashName(name), 0x9e3779b9)) >>> 0;
    const next = () => {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) | 0;
    };
    this.#s0 = next();
    this.#s1 = next();
    this.#s2 = next();
    this.#s3 = next() | 1; // never the all-zero state
  }

  /** Fills `out[from, to)` with uniform values in `[-a, a)`. */
  fill(out: Float32Array, from: number, to: number, a: number): void {
    let s0 = this.#s0, s1 = this.#s1, s2 = this.#s2, s3 = this.#s3;
    const k = a * 2 ** -31;
    for (let i = from; i < to; i++) {
      const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = rotl(s3, 11);
      out[i] = r * k;
    }
    this.#s0 = s0;
    this.#s1 = s1;
    this.#s2 = s2;
    this.#s3 = s3;
  }

  /** One uniform value in `[0, 1)`. */
  next(): number {
    const one = new Float32Array(1);
    this.fill(one, 0, 1, 1);
    return (one[0] + 1) / 2;
  }

  /** A random unit vector (uniform entries, normalised). */
  unit(n: number): Float32Array {
    const v = new Float32Array(n);
    this.fill(v, 0, n, 1);
    let ss = 0;
    for (let i = 0; i < n; i++) ss += v[i] * v[i];
    const inv = ss > 0 ? 1 / Math.sqrt(ss) : 0;
    for (let i = 0; i < n; i++) v[i] *= inv;
    return v;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ------------------------------------------------------------------ tensor values

/** Elements generated per step: bounds the scratch memory of a tensor. */
const CHUNK = 1 << 16;

/** Writes float32 values into a tensor's byte buffer at an element offset. */
function store(out: Uint8Array, dtype: SyntheticDType, at: number, values: Float32Array): void {
  switch (dtype) {
    case "F16":
      new Float16Array(out.buffer, out.byteOffset + 2 * at, values.length).set(values);
      break;
    case "F32":
      new Float32Array(out.buffer, out.byteOffset + 4 * at, values.length).set(values);
      break;
    case "BF16":
      out.set(encodeFloats(values, "BF16"), 2 * at);
      break;
  }
}

/** Options of {@link syntheticMatrix}. */
export interface MatrixOptions {
  /** Integer seed (default 0). */
  readonly seed?: number;
  /** Stream name mixed into the seed (default "matrix"). */
  readonly name?: string;
  /** Overall factor (default 1). */
  readonly gain?: number;
}

/**
 * A `rows × cols` matrix (row-major float32) built like a generated base
 * weight: noise of standard deviation `gain/√cols` plus power-law rank-one
 * spikes. For tests that need realistic spectra without a file.
 *
 * @example
 * ```ts
 * import { syntheticMatrix } from "./synthetic.ts";
 * const w = syntheticMatrix(64, 32, { seed: 1 });
 * console.log(w.length); // 2048
 * ```
 */
export function syntheticMatrix(
  rows: number,
  cols: number,
  options: MatrixOptions = {},
): Float32Array {
  const out = new Uint8Array(rows * cols * 4);
  const rng = new Rng(options.seed ?? 0, options.name ?? "matrix");
  fillMatrix(out, "F32", 0, rows, cols, rng, options.gain ?? 1);
  return new Float32Array(out.buffer);
}

/** Generates a `rows × cols` block into `out` starting at row `row0`. */
function fillMatrix(
  out: Uint8Array,
  dtype: SyntheticDType,
  row0: number,
  rows: number,
  cols: number,
  rng: Rng,
  gain: number,
): void {
  const std = gain / Math.sqrt(cols);
  const edge = std * (Math.sqrt(rows) + Math.sqrt(cols));
  // Exactly SPIKES (= 4) spike slots, unrolled below; slots beyond min(rows, cols) stay zero.
  const k = Math.min(SPIKES, rows, cols);
  const u: Float32Array[] = [];
  const v: Float32Array[] = [];
  const sigma: number[] = [];
  for (let s = 0; s < SPIKES; s++) {
    u.push(s < k ? rng.unit(rows) : new Float32Array(rows));
    v.push(s < k ? rng.unit(cols) : new Float32Array(cols));
    sigma.push(s < k ? 5 * edge / (s + 1) : 0);
  }
  const [u0, u1, u2, u3] = u;
  const [v0, v1, v2, v3] = v;
  const chunkRows = Math.max(1, Math.floor(CHUNK / cols));
  const scratch = new Float32Array(Math.min(rows, chunkRows) * cols);
  const amplitude = std * Math.sqrt(3);
  for (let r0 = 0; r0 < rows; r0 += chunkRows) {
    const n = Math.min(chunkRows, rows - r0);
    const chunk = scratch.subarray(0, n * cols);
    rng.fill(chunk, 0, n * cols, amplitude);
    for (let r = 0; r < n; r++) {
      const i = r0 + r;
      const a0 = sigma[0] * u0[i],
        a1 = sigma[1] * u1[i],
        a2 = sigma[2] * u2[i],
        a3 = sigma[3] * u3[i];
      const o = r * cols;
      for (let j = 0; j < cols; j++) {
        chunk[o + j] += a0 * v0[j] + a1 * v1[j] + a2 * v2[j] + a3 * v3[j];
      }
    }
    store(out, dtype, (row0 + r0) * cols, chunk);
  }
}

/** Fills `n` elements with `center + uniform(-spread, spread)`. */
function fillVector(
  out: Uint8Array,
  dtype: SyntheticDType,
  n: number,
  rng: Rng,
  center: number,
  spread: number,
) {
  for (let at = 0; at < n; at += CHUNK) {
    const chunk = new Float32Array(Math.min(CHUNK, n - at));
    rng.fill(chunk, 0, chunk.length, spread);
    for (let i = 0; i < chunk.length; i++) chunk[i] += center;
    store(out, dtype, at, chunk);
  }
}

/** Row-block gains of CLIP-G's fused q, k, v projection. */
const QKV_GAINS = [1, 0.7, 0.45];

/**
 * The bytes of one generated base tensor (deterministic from seed and name).
 *
 * @example
 * ```ts
 * import { syntheticBaseTensor } from "./synthetic.ts";
 * const b = syntheticBaseTensor({ name: "x.weight", dtype: "F16", shape: [8, 4] }, { seed: 3 });
 * console.log(b.length); // 64
 * ```
 */
export function syntheticBaseTensor(
  spec: TensorSpec,
  options: { readonly seed?: number } = {},
): Uint8Array {
  const { name, dtype, shape } = spec;
  const n = numel(shape);
  const out = new Uint8Array(n * dtypeSize(dtype));
  if (dtype === "I64") {
    // position_ids: 0, 1, 2, … in every row
    const ids = new BigInt64Array(out.buffer);
    const row = shape[shape.length - 1] ?? 1;
    for (let i = 0; i < n; i++) ids[i] = BigInt(i % row);
    return out;
  }
  if (dtype !== "F16" && dtype !== "BF16" && dtype !== "F32") {
    throw new RangeError(`synthetic tensor '${name}': unsupported dtype ${dtype}`);
  }
  const rng = new Rng(options.seed ?? 0, name);
  if (shape.length === 0) {
    store(out, dtype, 0, new Float32Array([name.endsWith("logit_scale") ? Math.log(100) : 1]));
  } else if (shape.length === 1) {
    const bias = name.endsWith("bias");
    fillVector(out, dtype, n, rng, bias ? 0 : 1, bias ? 0.02 : 0.1);
  } else {
    const rows = shape[0];
    const cols = n / rows;
    const gain = Math.exp(0.6 * (rng.next() - 0.5)); // layers differ a little in scale
    if (name.endsWith("attn.in_proj_weight") && rows % 3 === 0) {
      for (let b = 0; b < 3; b++) {
        fillMatrix(out, dtype, b * rows / 3, rows / 3, cols, rng, gain * QKV_GAINS[b]);
      }
    } else {
      fillMatrix(out, dtype, 0, rows, cols, rng, gain);
    }
  }
  return out;
}

// ------------------------------------------------------------------ base file

/** Options of {@link writeSyntheticBase}. */
export interface SyntheticBaseOptions extends BaseSpecOptions {
  /** Integer seed of every value (default 0). */
  readonly seed?: number;
  /** Extra `__metadata__` entries. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Progress callback, as {@link WriteOptions.onProgress}. */
  readonly onProgress?: WriteOptions["onProgress"];
}

/**
 * Writes a synthetic SGM SDXL base checkpoint, streaming tensor by tensor
 * (memory: one tensor plus a small scratch buffer; the full-size file is
 * 6.9 GB).
 *
 * @example
 * ```ts ignore
 * import { writeSyntheticBase } from "./synthetic.ts";
 * await writeSyntheticBase("/tmp/micro_base.safetensors", { scale: 1 / 64, seed: 7 });
 * ```
 */
export function writeSyntheticBase(
  path: string,
  options: SyntheticBaseOptions = {},
): Promise<WriteResult> {
  const seed = options.seed ?? 0;
  const scale = options.scale ?? 1;
  const specs = sdxlBaseSpecs(options);
  const tensors: TensorSource[] = specs.map((spec) => ({
    ...spec,
    data: () => syntheticBaseTensor(spec, { seed }),
  }));
  const metadata = {
    "modelspec.architecture": "stable-diffusion-xl-v1-base",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.resolution": "1024x1024",
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.title": `Synthetic SDXL base (scale ${
      sdxlWidths(scale).headWidth
    }/64, random weights)`,
    [SYNTHETIC_METADATA_KEY]: JSON.stringify({
      version: SYNTHETIC_VERSION,
      kind: "base",
      seed,
      scale,
    }),
    ...options.metadata,
  };
  return writeSafetensors(path, tensors, { metadata, onProgress: options.onProgress });
}

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
 * import { sdxlLoraLayers } from "./synthetic.ts";
 * const layers = sdxlLoraLayers();
 * console.log(layers.length); // 986
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
 * ```ts ignore
 * import { LOCON_GROUPS, writeSyntheticLora } from "./synthetic.ts";
 * await writeSyntheticLora("/tmp/lora.safetensors", { scale: 1 / 16, rank: 16 });
 * await writeSyntheticLora("/tmp/locon.safetensors", {
 *   scale: 1 / 16, rank: 8, alpha: 4, convRank: 4, convAlpha: 1, include: LOCON_GROUPS,
 * });
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

function encode(values: Float32Array, dtype: SyntheticDType): Uint8Array {
  const out = new Uint8Array(values.length * dtypeSize(dtype));
  store(out, dtype, 0, values);
  return out;
}

/** A layer's strength `τ` and spectral decay `p`, from its own stream. */
function layerSpectrum(seed: number, name: string): { tau: number; decay: number } {
  const rng = new Rng(seed, name);
  return { tau: Math.exp(2.4 * (rng.next() - 0.5)), decay: 1 + 0.8 * rng.next() };
}

/** `down` rows `(k+1)^-p · uₖ` (unit vectors `uₖ`), flattened `rank × inFlat`. */
function loraDown(seed: number, name: string, rank: number, inFlat: number): Float32Array {
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
function loraUp(
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

// ------------------------------------------------------------------ demo

/** Options of {@link writeDemoFiles}. */
export interface DemoOptions {
  /** Width scale of the base (default 1/16: about 27 MB). */
  readonly scale?: number;
  /** LoRA rank (default 16; alpha is half of it). */
  readonly rank?: number;
  /** Seed of both files (default 0). */
  readonly seed?: number;
}

/** Paths of the files {@link writeDemoFiles} wrote. */
export interface DemoFiles {
  /** The synthetic base checkpoint. */
  readonly base: string;
  /** The synthetic LoRA (the default layer set). */
  readonly lora: string;
}

/**
 * Writes a small synthetic base and a LoRA for it into a folder (created if
 * missing) in a few seconds, for `deno task demo`.
 *
 * @example
 * ```ts ignore
 * import { writeDemoFiles } from "./synthetic.ts";
 * const { base, lora } = await writeDemoFiles("/tmp/demo");
 * console.log(base, lora);
 * ```
 */
export async function writeDemoFiles(dir: string, options: DemoOptions = {}): Promise<DemoFiles> {
  const scale = options.scale ?? 1 / 16;
  const rank = options.rank ?? 16;
  const seed = options.seed ?? 0;
  await Deno.mkdir(dir, { recursive: true });
  const base = join(dir, "demo_sdxl_base.safetensors");
  const lora = join(dir, `demo_lora_r${rank}.safetensors`);
  await writeSyntheticBase(base, { scale, seed });
  await writeSyntheticLora(lora, { scale, rank, seed: seed + 1 });
  return { base, lora };
}
