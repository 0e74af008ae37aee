/**
 * The WebGPU backend's `spectra` and `singularPairs`: on the host, with the CPU backend's items
 * and WASM kernels (`../cpu/full_matrix.ts`). A full LoKr factor is at most a few hundred wide,
 * its Gram a few MFLOP: the time goes into an n × n tridiagonalisation, sequential work that a
 * GPU does not speed up (and `-d auto` runs these calls on the CPU backend, whose workers share
 * it).
 *
 * @module
 */

import type {
  BackendCallOptions,
  FullMatrix,
  MatrixSpectrum,
  RebuiltFactors,
  SingularPairsRequest,
} from "../backend.ts";
import { matrixSingularPairs, matrixSpectrum } from "../cpu/full_matrix.ts";
import type { ItemContext } from "../cpu/item_context.ts";
import { RangeReader } from "../range_reader.ts";
import { checkMatrix, checkSingularPairs } from "../validation.ts";
import { Kernels } from "../wasm/kernels.ts";

/** Runs `each` over `items` on the host kernels, reporting as the backend contract asks. */
async function onHost<I, T>(
  items: readonly I[],
  each: (context: ItemContext, item: I) => T,
  options: BackendCallOptions<T>,
): Promise<T[]> {
  const context = { kernels: await Kernels.shared(), reader: new RangeReader() };
  try {
    const results: T[] = [];
    for (const [i, item] of items.entries()) {
      options.signal?.throwIfAborted();
      results.push(each(context, item));
      options.onResult?.(i, results[i]);
      options.onProgress?.(i + 1, items.length);
    }
    return results;
  } finally {
    context.reader.close();
  }
}

/**
 * The singular values of each full matrix (see `Backend.spectra`).
 *
 * @example
 * ```ts
 * import { spectraOnHost } from "./full_matrix.ts";
 * const bytes = new Uint8Array(new Float32Array([0, 2, 0, 0]).buffer);
 * const [{ sigma }] = await spectraOnHost([{ data: { dtype: "F32", bytes }, rows: 2, cols: 2 }]);
 * if (sigma.join() !== "2,0") throw new Error(`σ = ${sigma}`);
 * ```
 */
export function spectraOnHost(
  matrices: readonly FullMatrix[],
  options: BackendCallOptions<MatrixSpectrum> = {},
): Promise<MatrixSpectrum[]> {
  matrices.forEach((matrix, i) => checkMatrix(matrix, `spectra: matrix ${i}`));
  return onHost(matrices, matrixSpectrum, options);
}

/**
 * The kept singular pairs of each full matrix (see `Backend.singularPairs`).
 *
 * @example
 * ```ts
 * import { singularPairsOnHost, spectraOnHost } from "./full_matrix.ts";
 * const bytes = new Uint8Array(new Float32Array([0, 2, 0, 0]).buffer);
 * const matrix = { data: { dtype: "F32" as const, bytes }, rows: 2, cols: 2 };
 * const [spectrum] = await spectraOnHost([matrix]);
 * const [{ up, down }] = await singularPairsOnHost([{ matrix, spectrum, keep: [0] }]);
 * const u = new Float32Array(up.bytes.slice().buffer), d = new Float32Array(down.bytes.slice().buffer);
 * if (Math.abs(u[0] * d[1] - 2) > 1e-6) throw new Error("the pair rebuilds the 2");
 * ```
 */
export function singularPairsOnHost(
  requests: readonly SingularPairsRequest[],
  options: BackendCallOptions<RebuiltFactors> = {},
): Promise<RebuiltFactors[]> {
  requests.forEach((request, i) => checkSingularPairs(request, `singularPairs: matrix ${i}`));
  return onHost(requests, matrixSingularPairs, options);
}
