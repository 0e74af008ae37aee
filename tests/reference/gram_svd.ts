/**
 * A plain TypeScript version of the decomposition core (`src/linalg/gram_svd.ts`,
 * WASM kernels in production), used only by the tests as an independent
 * reference for its results.
 *
 * @module
 */

import type { Decomposition } from "../../src/linalg/backend.ts";
import { pivotTolerance } from "../../src/linalg/gram_svd.ts";
import { type Matrix, matrix, svd, type SvdOptions } from "./matrix.ts";

/** Shape and scale of the layer whose Gram matrices are factorised. */
export interface GramOptions extends SvdOptions {
  /** α / r: multiplies every singular value (its sign goes on the up transform). */
  readonly scale: number;
  /** Rows of ΔW (rows of B). */
  readonly out: number;
  /** Columns of ΔW (columns of A). */
  readonly inFlat: number;
}

/**
 * The SVD of ΔW = scale · B · A from the Gram matrices G_B = BᵀB and
 * G_A = A·Aᵀ (both r × r; only their upper triangles are read), by the steps
 * `src/linalg/gram_svd.ts` describes (pivoted Cholesky of each Gram, the same
 * rank rule, SVD of the core M = R_B·R_Aᵀ, back substitution), but written
 * plainly in TypeScript, with a QR-preconditioned Jacobi SVD of the core
 * instead of the kernels' eigenvector-preconditioned one: the reference the
 * production core is tested against.
 */
export function referenceSvdFromGrams(
  gramUp: Matrix,
  gramDown: Matrix,
  options: GramOptions,
): Decomposition {
  const r = gramUp.rows;
  if (gramUp.cols !== r || gramDown.rows !== r || gramDown.cols !== r) {
    throw new RangeError(
      `Gram matrices ${gramUp.rows}×${gramUp.cols} and ${gramDown.rows}×${gramDown.cols} are not both r×r`,
    );
  }
  const { scale, out, inFlat } = options;
  const k = Math.min(out, inFlat, r);
  const up = gramFactor(gramUp, out);
  const down = gramFactor(gramDown, inFlat);
  const k1 = up.kept, k2 = down.kept;
  const sigma = new Float64Array(k);
  const upTransform = new Float64Array(r * k);
  const downTransform = new Float64Array(r * k);
  if (k1 === 0 || k2 === 0) return { sigma, upTransform, downTransform };
  // M = R_B·R_Aᵀ (k₁ × k₂), both R in the original column order.
  const core = matrix(k1, k2);
  for (let i = 0; i < k1; i++) {
    for (let j = 0; j < k2; j++) core.data[i * k2 + j] = dotRowsOf(up.r, i, down.r, j, r);
  }
  const { u, s, v } = svd(core, options);
  let nonzero = 0; // s is descending: zeros come last
  while (nonzero < Math.min(k, s.length) && s[nonzero] > 0) nonzero++;
  for (let c = 0; c < nonzero; c++) sigma[c] = Math.abs(scale) * s[c];
  fillTransform(upTransform, k, nonzero, up, u, scale < 0 ? -1 : 1);
  fillTransform(downTransform, k, nonzero, down, v, 1);
  return { sigma, upTransform, downTransform };
}

/** A pivoted Cholesky factor G ≈ Rᵀ·R of a Gram matrix, truncated at its numerical rank. */
interface GramFactor {
  /** r. */
  readonly rank: number;
  /** Rows of R kept (numerical rank). */
  readonly kept: number;
  /** R, `kept × r` row-major, in the original column order. */
  readonly r: Float64Array;
  /** Pivot order: R's leading triangle is R[i][pivots[j]] (j ≥ i). */
  readonly pivots: Int32Array;
}

function gramFactor(gram: Matrix, n: number): GramFactor {
  const r = gram.rows, g = gram.data;
  const at = (i: number, j: number) => i <= j ? g[i * r + j] : g[j * r + i];
  const d = Float64Array.from({ length: r }, (_, i) => at(i, i));
  const pivots = Int32Array.from({ length: r }, (_, i) => i);
  const factor = new Float64Array(r * r);
  const tolerance = pivotTolerance(d, n);
  let kept = 0;
  for (let k = 0; k < r; k++) {
    let best = k;
    for (let j = k + 1; j < r; j++) if (d[pivots[j]] > d[pivots[best]]) best = j;
    const pk = pivots[best];
    if (!(d[pk] > tolerance)) break;
    [pivots[k], pivots[best]] = [pk, pivots[k]];
    const rkk = Math.sqrt(d[pk]);
    factor[k * r + pk] = rkk;
    for (let j = k + 1; j < r; j++) {
      const pj = pivots[j];
      let s = at(pk, pj);
      for (let i = 0; i < k; i++) s -= factor[i * r + pk] * factor[i * r + pj];
      const rkj = s / rkk;
      factor[k * r + pj] = rkj;
      d[pj] -= rkj * rkj;
    }
    kept = k + 1;
  }
  return { rank: r, kept, r: factor.subarray(0, kept * r), pivots };
}

function dotRowsOf(a: Float64Array, i: number, b: Float64Array, j: number, n: number): number {
  let s = 0;
  for (let k = 0; k < n; k++) s += a[i * n + k] * b[j * n + k];
  return s;
}

/** Columns 0..count of T = Π·R₁₁⁻¹·W (W = U_M or V_M, kept × m) into an r × k transform. */
function fillTransform(
  into: Float64Array,
  k: number,
  count: number,
  factor: GramFactor,
  w: Matrix,
  sign: number,
): void {
  const { rank: r, kept: n, r: rf, pivots } = factor;
  // R₁₁[i][j] = R[i][pivots[j]] (upper triangular), gathered contiguously.
  const t = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) t[i * n + j] = rf[i * r + pivots[j]];
  }
  // X = R₁₁⁻¹·W[:, :count] by back substitution, all columns at once (rows of X contiguous).
  const x = new Float64Array(n * count);
  for (let i = n - 1; i >= 0; i--) {
    const xi = i * count;
    for (let c = 0; c < count; c++) x[xi + c] = w.data[i * w.cols + c];
    for (let j = i + 1; j < n; j++) {
      const f = t[i * n + j], xj = j * count;
      for (let c = 0; c < count; c++) x[xi + c] -= f * x[xj + c];
    }
    const d = t[i * n + i];
    for (let c = 0; c < count; c++) x[xi + c] /= d;
  }
  for (let i = 0; i < n; i++) {
    const row = pivots[i] * k, xi = i * count;
    for (let c = 0; c < count; c++) into[row + c] = sign * x[xi + c];
  }
}
