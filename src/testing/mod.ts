/**
 * `@x/resize-lora/testing`: synthetic SDXL files for tests, benchmarks and demos: an SGM single-file
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
 * @example
 * ```ts
 * import { writeSyntheticBase, writeSyntheticLora } from "@x/resize-lora/testing";
 * import { plan } from "@x/resize-lora";
 * const dir = await Deno.makeTempDir();
 * await writeSyntheticBase(`${dir}/base.safetensors`, { scale: 1 / 64 });
 * await writeSyntheticLora(`${dir}/lora.safetensors`, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await plan({
 *   checkpoint: `${dir}/base.safetensors`,
 *   loras: [`${dir}/lora.safetensors`],
 *   device: "cpu",
 *   normsCache: false,
 * });
 * if (outputs[0].rankBefore !== 986 * 4 - 6 * 4) throw new Error(`rank ${outputs[0].rankBefore}`);
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */

export { SYNTHETIC_METADATA_KEY, SYNTHETIC_VERSION, type SyntheticDType } from "./generator.ts";
export {
  type BaseSpecOptions,
  SDXL_PREFIXES,
  sdxlBaseSpecs,
  type SdxlWidths,
  sdxlWidths,
  type TextEncoderWidths,
} from "./sdxl_shapes.ts";
export {
  type MatrixOptions,
  SPIKES,
  type SyntheticBaseOptions,
  syntheticBaseTensor,
  syntheticMatrix,
  writeSyntheticBase,
} from "./synthetic_base.ts";
export {
  LOCON_GROUPS,
  LORA_GROUPS,
  type LoraLayerOptions,
  type LoraLayerSpec,
  type LoraModuleGroup,
  sdxlLoraLayers,
  type SyntheticLoraOptions,
  writeSyntheticLora,
} from "./synthetic_lora.ts";
export {
  SD15_PREFIXES,
  sd15BaseSpecs,
  type Sd15SpecOptions,
  type SyntheticSd15Options,
  writeSyntheticSd15Base,
} from "./synthetic_sd15.ts";
export {
  type FluxLayerOptions,
  type FluxLayerSpec,
  fluxLoraLayers,
  type SyntheticFluxLoraOptions,
  writeSyntheticFluxLora,
} from "./synthetic_flux.ts";
export { type DemoFiles, type DemoOptions, writeDemoFiles } from "./demo_files.ts";
export {
  type KroneckerForm,
  kroneckerSplit,
  lohaTensors,
  lokrTensors,
  type LycorisLayerShape,
  type SyntheticLohaOptions,
  type SyntheticLokrOptions,
  type SyntheticLycorisOptions,
  writeSyntheticLoha,
  writeSyntheticLokr,
} from "./synthetic_lycoris.ts";
