/**
 * The CPU backend's `spectrum` and `singularPairs` items: a full matrix read into this thread's
 * kernel memory and handed to the shared two-step SVD (`../full_matrix_svd.ts`).
 *
 * @module
 */

import type {
  FullMatrix,
  MatrixSpectrum,
  RebuiltFactors,
  SingularPairsRequest,
} from "../backend.ts";
import {
  fullMatrixSingularPairs,
  fullMatrixSpectrum,
  type KernelMatrix,
} from "../full_matrix_svd.ts";
import { DTYPE_CODES } from "../wasm/kernels.ts";
import { type ItemContext, loadFactor } from "./item_context.ts";

/** The matrix in kernel memory (after releasing the kernels' earlier regions). */
function loadMatrix(context: ItemContext, matrix: FullMatrix): KernelMatrix {
  context.kernels.reset();
  const ptr = loadFactor(context, matrix.data);
  return { ptr, dtype: DTYPE_CODES[matrix.data.dtype], rows: matrix.rows, cols: matrix.cols };
}

/**
 * The singular values of a full matrix and its tridiagonal form.
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { RangeReader } from "../range_reader.ts";
 * import { matrixSpectrum } from "./full_matrix.ts";
 * const context = { kernels: await Kernels.load(), reader: new RangeReader() };
 * const bytes = new Uint8Array(new Float32Array([0, 2, 0, 0, 0, 0]).buffer);
 * const { sigma } = matrixSpectrum(context, { data: { dtype: "F32", bytes }, rows: 2, cols: 3 });
 * if (sigma.join() !== "2,0") throw new Error(`σ = ${sigma}`);
 * ```
 */
export function matrixSpectrum(context: ItemContext, matrix: FullMatrix): MatrixSpectrum {
  return fullMatrixSpectrum(context.kernels, loadMatrix(context, matrix));
}

/**
 * The kept singular pairs of a full matrix as f32 LoRA factors.
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { RangeReader } from "../range_reader.ts";
 * import { matrixSingularPairs, matrixSpectrum } from "./full_matrix.ts";
 * const context = { kernels: await Kernels.load(), reader: new RangeReader() };
 * const bytes = new Uint8Array(new Float32Array([0, 2, 0, 0, 0, 0]).buffer);
 * const matrix = { data: { dtype: "F32" as const, bytes }, rows: 2, cols: 3 };
 * const spectrum = matrixSpectrum(context, matrix);
 * const { up, down } = matrixSingularPairs(context, { matrix, spectrum, keep: [0] });
 * const u = new Float32Array(up.bytes.slice().buffer), d = new Float32Array(down.bytes.slice().buffer);
 * if (Math.abs(u[0] * d[1] - 2) > 1e-6) throw new Error("the pair rebuilds the 2");
 * ```
 */
export function matrixSingularPairs(
  context: ItemContext,
  request: SingularPairsRequest,
): RebuiltFactors {
  const m = loadMatrix(context, request.matrix);
  return fullMatrixSingularPairs(context.kernels, m, request.spectrum, request.keep);
}
