/**
 * The CPU backend's `decompose` item: one layer's Gram matrices BᵀB and A·Aᵀ
 * formed by the kernels, block by block, then the shared decomposition core
 * ({@link svdFromKernelGrams}).
 *
 * @module
 */

import type { Decomposition, LowRankFactors } from "../backend.ts";
import { svdFromKernelGrams } from "../gram_svd.ts";
import { DTYPE_CODES } from "../wasm/kernels.ts";
import { type ItemContext, loadFactor } from "./item_context.ts";

/**
 * The SVD of one layer's ΔW = scale·up·down, via its Gram matrices (see
 * {@link svdFromKernelGrams}).
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { RangeReader } from "../range_reader.ts";
 * import { decomposeLayer } from "./decompose.ts";
 * const context = { kernels: await Kernels.load(), reader: new RangeReader() };
 * const f32 = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
 * const d = decomposeLayer(context, {
 *   up: { dtype: "F32", bytes: f32([1, 0]) },
 *   down: { dtype: "F32", bytes: f32([2, 0, 0]) },
 *   out: 2,
 *   rank: 1,
 *   inFlat: 3,
 *   scale: 0.5,
 * });
 * // ΔW = 0.5·[1, 0]ᵀ·[2, 0, 0] has the single singular value 1.
 * if (d.sigma.length !== 1 || d.sigma[0] !== 1) throw new Error(`σ = ${d.sigma}`);
 * ```
 */
export function decomposeLayer(context: ItemContext, layer: LowRankFactors): Decomposition {
  const { out, rank: r, inFlat } = layer;
  const { kernels } = context;
  kernels.reset();
  const up = loadFactor(context, layer.up);
  const down = loadFactor(context, layer.down);
  const gramUp = kernels.alloc(r * r * 8);
  const gramDown = kernels.alloc(r * r * 8);
  const x = kernels.exports;
  const scratch = kernels.alloc(r * x.gramBlockWidth(r) * 12);
  // BᵀB (the Gram matrix of Bᵀ's rows) and A·Aᵀ, each decoded block by block.
  x.gramOf(up, DTYPE_CODES[layer.up.dtype], out, r, true, gramUp, scratch);
  x.gramOf(down, DTYPE_CODES[layer.down.dtype], r, inFlat, false, gramDown, scratch);
  return svdFromKernelGrams(kernels, gramUp, gramDown, layer);
}
