/**
 * The CPU backend's `subspaceScales` item: |uᵢᵀ·W·vᵢ| for every dimension of
 * one layer against its base weight.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import type { SubspaceRequest } from "../backend.ts";
import { DTYPE_CODES } from "../wasm/kernels.ts";
import { asF32, type ItemContext, loadFactor, loadWeight } from "./item_context.ts";

/**
 * |uᵢᵀ·W·vᵢ| for every dimension of a layer, with U = B·T_B and V = Aᵀ·T_A:
 * C = Bᵀ·(W·Aᵀ) (r × r) in one pass over W, then uᵢᵀ·W·vᵢ = T_B[:, i]ᵀ·C·T_A[:, i].
 *
 * @example
 * ```ts ignore
 * const scales = subspaceScales(context, { weight, factors, decomposition });
 * ```
 */
export function subspaceScales(
  context: ItemContext,
  request: SubspaceRequest,
): Float64Array {
  const { weight, factors, decomposition } = request;
  const { out, rank: r, inFlat } = factors;
  if (weight.rows !== out || weight.cols !== inFlat) {
    throw new BackendError(
      `${weight.path}: base weight at byte ${weight.offset} is ${weight.rows}×${weight.cols} but the layer's ΔW is ${out}×${inFlat}`,
    );
  }
  const { kernels } = context;
  const w = asF32(kernels, loadWeight(context, weight));
  const upRaw = loadFactor(context, factors.up);
  const downRaw = loadFactor(context, factors.down);
  const outStride = out + (out & 1);
  const a32 = kernels.alloc(r * inFlat * 4);
  const y = kernels.alloc(out * r * 8);
  const scratch = kernels.alloc(32);
  const bt = kernels.alloc(r * outStride * 8);
  const c = kernels.alloc(r * r * 8);
  const x = kernels.exports;
  x.decodeF32(downRaw, a32, r * inFlat, DTYPE_CODES[factors.down.dtype]);
  x.rowsTimesTransposed(w.ptr, out, inFlat, a32, r, y, scratch);
  x.decodeTransposedF64(upRaw, bt, out, r, outStride, DTYPE_CODES[factors.up.dtype]);
  x.matmulF64(bt, outStride, 1, y, r, c, r, r, out, r);
  const cm = kernels.f64(c, r * r);
  const k = decomposition.sigma.length;
  const tb = decomposition.upTransform, ta = decomposition.downTransform;
  const scales = new Float64Array(k);
  const ct = new Float64Array(r);
  for (let i = 0; i < k; i++) {
    // C·T_A[:, i], then T_B[:, i]ᵀ·(that).
    for (let a = 0; a < r; a++) {
      let s = 0;
      for (let b = 0; b < r; b++) s += cm[a * r + b] * ta[b * k + i];
      ct[a] = s;
    }
    let s = 0;
    for (let a = 0; a < r; a++) s += tb[a * k + i] * ct[a];
    scales[i] = Math.abs(s);
  }
  return scales;
}
