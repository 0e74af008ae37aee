/**
 * The CPU backend's `rebuild` item: output factors for the kept dimensions of
 * one layer, by the kernels' fused rebuild products.
 *
 * @module
 */

import type { RebuildRequest, RebuiltFactors } from "../backend.ts";
import { DTYPE_CODES } from "../wasm/kernels.ts";
import { type ItemContext, loadFactor } from "./item_context.ts";

/**
 * Output factors for the kept dimensions of one layer:
 * up = B·T_B[:, keep]·diag(g), down = diag(g)·T_A[:, keep]ᵀ·A with
 * g = √(σ·rescale/|scale|) (the sign of scale goes on up), computed in f32
 * and rounded once to the request's dtype (as `encodeFloats` rounds) by the
 * fused `rebuildUp` / `rebuildDown` kernels. Both results are views of one
 * buffer, taken out of kernel memory with one copy.
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { RangeReader } from "../range_reader.ts";
 * import { decomposeLayer } from "./decompose.ts";
 * import { rebuildLayer } from "./rebuild.ts";
 * const context = { kernels: await Kernels.load(), reader: new RangeReader() };
 * const f32 = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
 * const factors = {
 *   up: { dtype: "F32" as const, bytes: f32([1, 0]) },
 *   down: { dtype: "F32" as const, bytes: f32([2, 0, 0]) },
 *   out: 2,
 *   rank: 1,
 *   inFlat: 3,
 *   scale: 0.5,
 * };
 * const decomposition = decomposeLayer(context, factors);
 * const { up, down } = rebuildLayer(context, { factors, decomposition, keep: [0], rescale: 1 });
 * const [u] = new Float32Array(up.bytes.buffer, up.bytes.byteOffset, 1);
 * const [d] = new Float32Array(down.bytes.buffer, down.bytes.byteOffset, 1);
 * // Keeping the only dimension rebuilds ΔW[0][0] = 0.5·1·2 = 1 (up·down times the scale).
 * if (Math.abs(u * d * 0.5 - 1) > 1e-6) throw new Error(`ΔW[0][0] = ${u * d * 0.5}`);
 * ```
 */
export function rebuildLayer(context: ItemContext, request: RebuildRequest): RebuiltFactors {
  const { kernels } = context;
  const { factors, decomposition, keep, rescale } = request;
  const dtype = request.dtype ?? "F32";
  const { out, rank: r, inFlat, scale } = factors;
  const kept = keep.length;
  const size = dtype === "F32" ? 4 : 2;
  const upBytes = out * kept * size, downBytes = kept * inFlat * size;
  if (kept === 0) {
    const none = { dtype, bytes: new Uint8Array(0) };
    return { up: none, down: none };
  }
  const k = decomposition.sigma.length;
  const sign = scale < 0 ? -1 : 1;
  // Scaled transform columns: T_B[:, m]·g·sign (r × k′, rows padded with zeros to a whole
  // number of SIMD vectors) and T_A[:, m]ᵀ·g (k′ × r). The products run in f32: the factors are
  // rounded to an output dtype next, and the inputs (F16/BF16/F32) are exact in f32.
  const ldt = (kept + 3) & ~3;
  const tb = new Float32Array(r * ldt), tat = new Float32Array(kept * r);
  keep.forEach((m, j) => {
    const sigma = decomposition.sigma[m];
    const g = sigma > 0 ? Math.sqrt(sigma * rescale / Math.abs(scale)) : 0;
    for (let a = 0; a < r; a++) {
      tb[a * ldt + j] = sign * g * decomposition.upTransform[a * k + m];
      tat[j * r + a] = g * decomposition.downTransform[a * k + m];
    }
  });
  kernels.reset();
  const upRaw = loadFactor(context, factors.up);
  const downRaw = loadFactor(context, factors.down);
  const tbPtr = kernels.alloc(tb.byteLength);
  const tatPtr = kernels.alloc(tat.byteLength);
  const scratch = kernels.alloc(Math.max(UP_ROWS * (r + 2 * ldt), DOWN_COLUMNS * (r + kept)) * 4);
  const result = kernels.alloc(upBytes + downBytes);
  kernels.f32(tbPtr, tb.length).set(tb);
  kernels.f32(tatPtr, tat.length).set(tat);
  const x = kernels.exports, code = DTYPE_CODES[dtype];
  x.rebuildUp(
    upRaw,
    DTYPE_CODES[factors.up.dtype],
    out,
    r,
    tbPtr,
    ldt,
    kept,
    result,
    code,
    scratch,
  );
  x.rebuildDown(
    downRaw,
    DTYPE_CODES[factors.down.dtype],
    r,
    inFlat,
    tatPtr,
    kept,
    result + upBytes,
    code,
    scratch,
  );
  const buffer = kernels.u8(result, upBytes + downBytes).slice().buffer;
  return {
    up: { dtype, bytes: new Uint8Array(buffer, 0, upBytes) },
    down: { dtype, bytes: new Uint8Array(buffer, upBytes, downBytes) },
  };
}

/** Row and column blocks of the kernels' rebuildUp / rebuildDown (scratch sizes). */
const UP_ROWS = 64, DOWN_COLUMNS = 256;
