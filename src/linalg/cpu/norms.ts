/**
 * The CPU backend's `baseNorms` item: the Frobenius and spectral norms of one
 * base weight, read from its checkpoint.
 *
 * @module
 */

import { dtypeSize } from "../../safetensors/dtype.ts";
import type { BaseNorms, BaseWeightRef, NormRequest } from "../backend.ts";
import { DTYPE_CODES } from "../wasm/kernels.ts";
import { asF32, type ItemContext, loadWeight } from "./item_context.ts";
import { spectralNorm } from "./spectral.ts";

/**
 * Frobenius and/or spectral norm of one base weight, read from its file.
 *
 * @example
 * ```ts ignore
 * const norms = weightNorms(context, ref, { frobenius: true, spectral: true });
 * ```
 */
export function weightNorms(
  context: ItemContext,
  weight: BaseWeightRef,
  which: NormRequest,
): BaseNorms {
  const norms: BaseNorms = {};
  if (!which.frobenius && !which.spectral) return norms;
  if (!which.spectral) return { frobenius: Math.sqrt(streamedSumSquares(context, weight)) };
  const w = loadWeight(context, weight);
  if (which.frobenius) {
    norms.frobenius = Math.sqrt(
      context.kernels.exports.sumSquares(w.raw, w.rows * w.cols, w.dtype),
    );
  }
  if (which.spectral) {
    norms.spectral = spectralNorm(context.kernels, asF32(context.kernels, w)).norm;
  }
  return norms;
}

/** Bytes per chunk of streamedSumSquares: small enough to stay in a core's L2 cache. */
const STREAM_BYTES = 1 << 20;

/**
 * Σx² over a base weight read chunk by chunk into one cache-sized buffer, so
 * each chunk is summed while the copy from the page cache is still in cache.
 */
function streamedSumSquares(context: ItemContext, weight: BaseWeightRef): number {
  const { kernels, reader } = context;
  const size = dtypeSize(weight.dtype), total = weight.rows * weight.cols;
  const step = Math.max(1, Math.floor(STREAM_BYTES / size));
  kernels.reset();
  const buffer = kernels.alloc(Math.min(total, step) * size);
  let sum = 0;
  for (let at = 0; at < total; at += step) {
    const n = Math.min(step, total - at);
    reader.read(
      { path: weight.path, offset: weight.offset + at * size, byteLength: n * size },
      kernels.u8(buffer, n * size),
    );
    sum += kernels.exports.sumSquares(buffer, n, DTYPE_CODES[weight.dtype]);
  }
  return sum;
}
