/**
 * Synthetic LyCORIS LoHa and LoKr files, for tests and benchmarks: the
 * tensor names and shapes LyCORIS writes (without Tucker), deterministic
 * values, and the layer set of a synthetic SDXL LoRA (or any layers given).
 *
 * @module
 */

import { basename } from "node:path";
import { encodeFloats } from "../safetensors/dtype.ts";
import type { TensorSource, WriteResult } from "../safetensors/writer.ts";
import { writeSafetensors } from "../safetensors/writer.ts";
import type { SyntheticDType } from "./generator.ts";
import { syntheticMatrix } from "./synthetic_base.ts";
import { type LoraModuleGroup, sdxlLoraLayers } from "./synthetic_lora.ts";

/** The shape of one layer to write. */
export interface LycorisLayerShape {
  /** Layer name (`lora_unet_…`). */
  readonly name: string;
  /** Output features. */
  readonly out: number;
  /** Input features (input channels for a conv). */
  readonly in: number;
  /** Kernel size: 0 for a linear layer. */
  readonly kernel: number;
}

/** Options shared by both writers. */
export interface SyntheticLycorisOptions {
  /** The layers (default: the synthetic SDXL LoRA's layers of `include` at `scale`). */
  readonly layers?: readonly LycorisLayerShape[];
  /** Width scale of the synthetic SDXL layers (default 1). */
  readonly scale?: number;
  /** Groups of synthetic SDXL layers (default: every UNet attention and MLP linear). */
  readonly include?: readonly LoraModuleGroup[];
  /** Stored alpha of every layer (default: the rank, i.e. scale 1); `null` writes none. */
  readonly alpha?: number | null;
  /** Element type of every tensor (default F16). */
  readonly dtype?: SyntheticDType;
  /** Integer seed (default 1). */
  readonly seed?: number;
  /** Extra `__metadata__` entries. */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Options of {@link lohaTensors} and {@link writeSyntheticLoha}. */
export interface SyntheticLohaOptions extends SyntheticLycorisOptions {
  /** Rank of each Hadamard factor (default 8: a rank-64 LoRA). */
  readonly rank?: number;
}

/** How a Kronecker factor is stored. */
export type KroneckerForm = "full" | "decomposed";

/** Options of {@link lokrTensors} and {@link writeSyntheticLokr}. */
export interface SyntheticLokrOptions extends SyntheticLycorisOptions {
  /** LyCORIS `factor`: W1 is at most factor × factor (default 8). */
  readonly factor?: number;
  /** How W1 is stored (default full). */
  readonly w1?: KroneckerForm;
  /** How W2 is stored (default full). */
  readonly w2?: KroneckerForm;
  /** Rank of a decomposed factor (default 8). */
  readonly rank?: number;
  /** Rank of W1 when decomposed (default `rank`). */
  readonly w1Rank?: number;
}

const UNET_LINEARS: readonly LoraModuleGroup[] = ["unet_attn", "unet_ff"];

/**
 * `dim = m·n` with m the largest divisor of dim not above `factor`: W1 takes
 * m, W2 takes n (LyCORIS puts the small side in W1).
 *
 * @example
 * ```ts
 * import { kroneckerSplit } from "./synthetic_lycoris.ts";
 * if (kroneckerSplit(1280, 8).join() !== "8,160" || kroneckerSplit(77, 8).join() !== "7,11") {
 *   throw new Error("split");
 * }
 * ```
 */
export function kroneckerSplit(dim: number, factor: number): [number, number] {
  for (let m = Math.min(factor, dim); m > 1; m--) if (dim % m === 0) return [m, dim / m];
  return [1, dim];
}

/** A factor tensor with deterministic values (noise plus power-law spikes). */
function factor(
  name: string,
  shape: readonly number[],
  o: { seed: number; dtype: SyntheticDType; gain?: number },
): TensorSource {
  const rows = shape[0], cols = shape.slice(1).reduce((a, b) => a * b, 1);
  return {
    name,
    dtype: o.dtype,
    shape,
    data: () =>
      encodeFloats(syntheticMatrix(rows, cols, { seed: o.seed, name, gain: o.gain }), o.dtype),
  };
}

function alphaTensor(name: string, alpha: number | null, dtype: SyntheticDType): TensorSource[] {
  if (alpha === null) return [];
  return [{ name: `${name}.alpha`, dtype, shape: [], data: encodeFloats([alpha], dtype) }];
}

/**
 * The tensors of one LoHa layer: `hada_w1_a` `[out, r]`, `hada_w1_b`
 * `[r, in·kh·kw]`, the same for `hada_w2_*`, and `alpha`.
 *
 * @example
 * ```ts
 * import { lohaTensors } from "./synthetic_lycoris.ts";
 * const t = lohaTensors({ name: "x", out: 8, in: 4, kernel: 3 }, { rank: 2 });
 * if (t.find((x) => x.name === "x.hada_w1_b")!.shape.join() !== "2,36") throw new Error("2-D");
 * ```
 */
export function lohaTensors(
  layer: LycorisLayerShape,
  options: SyntheticLohaOptions = {},
): TensorSource[] {
  const r = options.rank ?? 8, dtype = options.dtype ?? "F16", seed = options.seed ?? 1;
  const inFlat = layer.in * (layer.kernel || 1) ** 2;
  const o = { seed, dtype };
  return [
    ...alphaTensor(layer.name, options.alpha === undefined ? r : options.alpha, dtype),
    factor(`${layer.name}.hada_w1_a`, [layer.out, r], { ...o, gain: 0.3 }),
    factor(`${layer.name}.hada_w1_b`, [r, inFlat], o),
    factor(`${layer.name}.hada_w2_a`, [layer.out, r], { ...o, gain: 0.3 }),
    factor(`${layer.name}.hada_w2_b`, [r, inFlat], o),
  ];
}

/**
 * The tensors of one LoKr layer as LyCORIS writes them: W1 `lokr_w1`
 * `[o1, i1]` (or `lokr_w1_a`/`_b`), W2 `lokr_w2` `[o2, i2]` or
 * `[o2, i2, kh, kw]` (or `lokr_w2_a` `[o2, r]` / `lokr_w2_b` `[r, i2·kh·kw]`),
 * and `alpha` (written only with a decomposed factor, as LyCORIS does unless
 * asked). A decomposed factor's rank is capped at its smaller side.
 *
 * @example
 * ```ts
 * import { lokrTensors } from "./synthetic_lycoris.ts";
 * const t = lokrTensors({ name: "x", out: 64, in: 32, kernel: 3 }, { factor: 4 });
 * if (t.find((x) => x.name === "x.lokr_w2")!.shape.join() !== "16,8,3,3") throw new Error("4-D");
 * ```
 */
export function lokrTensors(
  layer: LycorisLayerShape,
  options: SyntheticLokrOptions = {},
): TensorSource[] {
  const f = options.factor ?? 8, dtype = options.dtype ?? "F16", seed = options.seed ?? 1;
  const rank = options.rank ?? 8;
  const [o1, o2] = kroneckerSplit(layer.out, f), [i1, i2] = kroneckerSplit(layer.in, f);
  const k = layer.kernel;
  const o = { seed, dtype };
  const tensors: TensorSource[] = [];
  const decomposed = (
    which: "w1" | "w2",
    rows: number,
    cols: number,
    kernel: readonly number[],
  ) => {
    const wanted = which === "w1" ? options.w1Rank ?? rank : rank;
    const r = Math.min(wanted, rows, cols * (kernel[0] ?? 1) * (kernel[1] ?? 1));
    tensors.push(
      factor(`${layer.name}.lokr_${which}_a`, [rows, r], { ...o, gain: 0.5 }),
      factor(`${layer.name}.lokr_${which}_b`, [r, cols * (kernel[0] ?? 1) * (kernel[1] ?? 1)], o),
    );
    return r;
  };
  let dim: number | undefined;
  if (options.w1 === "decomposed") dim = decomposed("w1", o1, i1, []);
  else tensors.push(factor(`${layer.name}.lokr_w1`, [o1, i1], { ...o, gain: 0.5 }));
  if (options.w2 === "decomposed") dim = decomposed("w2", o2, i2, k ? [k, k] : []);
  else tensors.push(factor(`${layer.name}.lokr_w2`, k ? [o2, i2, k, k] : [o2, i2], o));
  const alpha = options.alpha === undefined ? (dim ?? null) : options.alpha;
  return [...alphaTensor(layer.name, alpha, dtype), ...tensors];
}

function layersOf(options: SyntheticLycorisOptions): readonly LycorisLayerShape[] {
  return options.layers ??
    sdxlLoraLayers({ scale: options.scale, include: options.include ?? UNET_LINEARS });
}

function lycorisMetadata(
  path: string,
  args: Record<string, string>,
  extra: Readonly<Record<string, string>> | undefined,
): Record<string, string> {
  const title = basename(path).replace(/\.safetensors$/, "");
  return {
    "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    "modelspec.title": title,
    "ss_base_model_version": "sdxl_base_v1-0",
    "ss_network_args": JSON.stringify(args),
    "ss_network_module": "lycoris.kohya",
    "ss_output_name": title,
    "ss_training_comment": "synthetic LyCORIS — not a trained model",
    ...extra,
  };
}

/**
 * Writes a synthetic LoHa file (by default over every UNet attention and MLP
 * linear of the synthetic SDXL base at `scale`).
 *
 * @example
 * ```ts ignore
 * import { writeSyntheticLoha } from "./synthetic_lycoris.ts";
 * await writeSyntheticLoha("/tmp/loha.safetensors", { scale: 1 / 16, rank: 8 });
 * ```
 */
export function writeSyntheticLoha(
  path: string,
  options: SyntheticLohaOptions = {},
): Promise<WriteResult> {
  const tensors = layersOf(options).flatMap((l) => lohaTensors(l, options));
  const rank = options.rank ?? 8;
  const args = { algo: "loha", dim: String(rank) };
  return writeSafetensors(path, tensors, {
    metadata: lycorisMetadata(path, args, options.metadata),
  });
}

/**
 * Writes a synthetic LoKr file (by default over every UNet attention and MLP
 * linear of the synthetic SDXL base at `scale`, both factors full, factor 8).
 *
 * @example
 * ```ts ignore
 * import { writeSyntheticLokr } from "./synthetic_lycoris.ts";
 * await writeSyntheticLokr("/tmp/lokr.safetensors", { scale: 1 / 16, factor: 8 });
 * ```
 */
export function writeSyntheticLokr(
  path: string,
  options: SyntheticLokrOptions = {},
): Promise<WriteResult> {
  const tensors = layersOf(options).flatMap((l) => lokrTensors(l, options));
  const args = { algo: "lokr", factor: String(options.factor ?? 8) };
  return writeSafetensors(path, tensors, {
    metadata: lycorisMetadata(path, args, options.metadata),
  });
}
