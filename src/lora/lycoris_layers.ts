/**
 * LyCORIS LoHa and LoKr layers as LoRA layers (docs/design.md, "LyCORIS layers"): read with the
 * LoRA layers of a file, paired with the base weight that gives a conv layer its kernel, and
 * resized into ordinary `lora_down` / `lora_up` / `alpha` layers.
 *
 * A LoHa layer's `factors` are its exact Khatri–Rao (or dense) factors; a LoKr layer's are the
 * exact Kronecker product of its factors' own, which only what has no structured form reads
 * (the pipeline decomposes and rebuilds LoKr through `src/linalg/kronecker.ts`). Either way
 * `alpha` is the alpha of that exact LoRA, so alpha / rank is the layer's scale as for a LoRA.
 *
 * @module
 */

import { LoraError } from "../errors.ts";
import { kroneckerLowRank } from "../linalg/kronecker.ts";
import type { BaseEntry } from "../base/checkpoint.ts";
import { type Architecture, resolveKohyaStyle } from "../namings/mod.ts";
import type { SafetensorsFile } from "../safetensors/reader.ts";
import type { LoraLayer, RawTensor } from "./lora_file.ts";
import { checkKroneckerShape, type LycorisLayer, readLycorisLayers } from "./lycoris.ts";

/** The kind of adapter a layer was stored as. */
export type LayerType = "lora" | "loha" | "lokr";

/**
 * The kind of adapter `layer` was stored as.
 *
 * @example
 * ```ts ignore
 * if (layerType(layer) === "lokr") … // decomposed through its Kronecker factors
 * ```
 */
export function layerType(layer: Pick<LoraLayer, "lycoris">): LayerType {
  return layer.lycoris?.kind ?? "lora";
}

/**
 * A LoKr singular value counts as nonzero above this fraction of σ₁. The backends give a
 * rank-deficient factor's missing singular values as exact zeros (their pivoted Cholesky stops
 * at the factor's rank), while a full-rank factor's smallest ones can be 1e-8 of σ₁ and are
 * exact: the bound only guards against rounding noise.
 */
export const NONZERO_SIGMA_FRACTION = 1e-12;

/**
 * The rank and alpha of the exact LoRA a layer is (or converts to): a LoRA's stored rank and
 * alpha; r1·r2 for a LoHa, and for a LoKr the number of nonzero singular values,
 * rank(W1)·rank(W2); for both, alpha = scale·rank.
 *
 * @example
 * ```ts ignore
 * exactLora(lokrLayer, decomposition.sigma).rank; // e.g. 8·160 for a full 8×8 ⊗ 160×640
 * ```
 */
export function exactLora(
  layer: LoraLayer,
  sigma: ArrayLike<number>,
): { rank: number; alpha: number } {
  const l = layer.lycoris;
  if (!l) return { rank: layer.factors.rank, alpha: layer.alpha };
  let rank = l.rank;
  if (l.kind === "lokr") {
    rank = 0;
    for (let i = 0; i < sigma.length; i++) {
      if (sigma[i] > NONZERO_SIGMA_FRACTION * sigma[0]) rank++;
    }
  }
  return { rank, alpha: layer.factors.scale * rank };
}

/** Finds a file's LoHa and LoKr layers (Tucker ones are left to the pass-through set). */
export async function findLycorisLayers(file: SafetensorsFile): Promise<LycorisLayer[]> {
  return [...(await readLycorisLayers(file)).layers];
}

/** The tensor names of `layers` that are factors (read lazily), not alphas. */
export function lycorisFactorNames(layers: readonly LycorisLayer[]): Set<string> {
  return new Set(layers.flatMap((l) => l.tensors.filter((t) => !t.endsWith(".alpha"))));
}

/**
 * LoRA layers of LyCORIS layers, known by their canonical names, with their own tensors (`raw`: every tensor of the file by
 * name) for the pass-through set if they pair with nothing. A `dora_scale` is carried as a
 * LoRA's is.
 */
export function lycorisLoraLayers(
  layers: readonly LycorisLayer[],
  raw: ReadonlyMap<string, RawTensor>,
  architecture: Architecture,
): LoraLayer[] {
  return layers.map((l) => {
    // LyCORIS spells layers as kohya does (SGM or diffusers block names).
    const { naming, canonical } = resolveKohyaStyle(l.name, architecture);
    const doraScale = raw.get(`${l.name}.dora_scale`);
    const factors = l.kind === "loha" ? l.factors : kroneckerLowRank(l.kronecker);
    const tensors = [...l.tensors.map((n) => raw.get(n)!), ...(doraScale ? [doraScale] : [])];
    const inShape = l.kind === "lokr" && l.inShape ? l.inShape : [l.inFlat];
    return {
      name: canonical,
      key: l.name,
      naming: naming.id,
      factors,
      alpha: factors.scale * factors.rank,
      inShape,
      upShape: [l.out, factors.rank, ...inShape.slice(1).map(() => 1)],
      ...(doraScale ? { doraScale } : {}),
      tensors,
      lycoris: l,
    };
  });
}

/**
 * A LyCORIS layer checked against its base weight and given the weight's trailing dims (a
 * LoHa's conv factors, and a LoKr's decomposed W2, are flat over in·kh·kw: the kernel comes
 * from the base). Throws a {@link LoraError} naming the layer when the shapes disagree.
 */
export function fitLycorisToBase(path: string, layer: LoraLayer, base: BaseEntry): LoraLayer {
  const l = layer.lycoris!;
  const baseIn = base.shape.slice(1);
  const baseShape = [base.rows, ...baseIn];
  if (l.kind === "lokr") checkKroneckerShape(path, l, baseShape);
  else if (l.out !== base.rows || l.inFlat !== base.cols) {
    const { w1a, w1b } = l.hadamard;
    throw new LoraError(
      `${path}: layer '${l.name}': Hadamard product of '${w1a.name}' ${w1a.rows}×${w1a.cols} and '${w1b.name}' ${w1b.rows}×${w1b.cols} is ${l.out}×${l.inFlat}, but the base weight ${base.label} is ${
        baseShape.join("×")
      }`,
      { file: path, key: l.name, tensor: base.key },
    );
  }
  return {
    ...layer,
    inShape: baseIn,
    upShape: [layer.factors.out, layer.factors.rank, ...baseIn.slice(1).map(() => 1)],
  };
}

/**
 * The error for a file holding two layers of one canonical name, one of them LyCORIS (a LoRA
 * pair and LoHa/LoKr factors, or two spellings of one module).
 */
export function clashError(path: string, key: string): LoraError {
  return new LoraError(
    `${path}: layer '${key}' modifies a module another layer of the file already modifies (LoRA, LoHa and LoKr factors of one module); expected one`,
    { file: path, key },
  );
}
