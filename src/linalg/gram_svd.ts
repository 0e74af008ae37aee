/**
 * The decomposition core shared by both backends: the SVD of one layer's
 * ΔW = scale · B · A from its Gram matrices G_B = BᵀB and G_A = A·Aᵀ (both
 * r × r, float64), computed by the WASM kernels. The CPU backend forms the
 * Grams with the kernels too; the GPU backend forms them on the GPU and runs
 * this step on the host.
 *
 * Pivoted Cholesky G_B = R_Bᵀ·R_B gives B = Q_B·R_B with Q_B = B·Π·R₁₁⁻¹
 * orthonormal (R₁₁ the leading triangle of R_B in pivot order), likewise
 * Aᵀ = Q_A·R_A; the SVD of the small core M = R_B·R_Aᵀ = U_M·diag(s)·V_Mᵀ then
 * gives ΔW = (B·T_B)·diag(scale·s)·(Aᵀ·T_A)ᵀ with T_B = Π·R₁₁⁻¹·U_M and
 * T_A = Π′·R′₁₁⁻¹·V_M.
 *
 * The SVD of M (k₁ × k₂): with A = M or Mᵀ (m × n, m ≥ n), the eigenvectors Z
 * of AᵀA (Householder tridiagonalisation, implicit QL) make the columns of A·Z
 * orthogonal up to ε·σ₁²/(σᵢ·σⱼ), so the one-sided Jacobi step that follows
 * (on the rows of Zᵀ·Aᵀ, rotating Zᵀ along) restores full accuracy in one or
 * two sweeps instead of the ten or so that a QR preconditioner needs at
 * rank 128. Everything O(r³) runs in WASM; the rest is O(r²).
 *
 * Rank: pivoting stops once every remaining Schur-complement diagonal is
 * ≤ ε · max(n, r) · max(diag G), with n the length of the sums that formed the
 * Gram matrix (out for G_B, in′ for G_A): that is rounding noise of an exactly
 * rank-deficient factor (duplicated or zero columns, r > out). What it drops is
 * below √(ε·max(n, r)) ≈ 1e-6 of the factor's largest column norm, far under
 * F16/BF16/F32 input precision.
 *
 * Result: k = min(out, in′, r) singular values, descending; when the product
 * has a smaller numerical rank the tail is exact zeros, and the transform
 * columns of a zero singular value are zero (so U·diag(σ)·Vᵀ = ΔW still holds,
 * and those columns of U and V are zero, not unit vectors). An all-zero layer
 * gives k zeros. A negative scale gives |scale|·s with the up transform negated.
 *
 * @module
 */

import { BackendError } from "../errors.ts";
import type { Decomposition, LowRankFactors } from "./backend.ts";
import type { Kernels } from "./wasm/kernels.ts";

/** The shape and scale of a layer, all the core needs besides its Gram matrices. */
export type LayerShape = Pick<LowRankFactors, "out" | "rank" | "inFlat" | "scale">;

/** A layer's Gram matrices BᵀB and A·Aᵀ, r × r row-major float64 (both triangles). */
export interface GramPair {
  /** G_B = BᵀB. */
  readonly up: Float64Array;
  /** G_A = A·Aᵀ. */
  readonly down: Float64Array;
}

const EPS = Number.EPSILON;

/** Jacobi stops at |cos| ≤ this · √m between all rows: rounding noise of their dot products. */
const JACOBI_TOLERANCE = EPS;

/**
 * The pivot threshold of the pivoted Cholesky for a Gram matrix with this
 * diagonal, formed from sums of length `n`: ε · max(n, r) · max(diagonal)
 * (see the module doc for why).
 *
 * @example
 * ```ts
 * import { pivotTolerance } from "./gram_svd.ts";
 * if (pivotTolerance([4, 1], 3) !== 4 * 3 * Number.EPSILON) throw new Error("tolerance");
 * ```
 */
export function pivotTolerance(diagonal: ArrayLike<number>, n: number): number {
  return Math.max(0, ...Array.from(diagonal)) * EPS * Math.max(n, diagonal.length);
}

/**
 * The SVD of one layer's ΔW from its Gram matrices, given as arrays (the GPU
 * backend forms them on the GPU): copies them into kernel memory and runs
 * {@link svdFromKernelGrams}.
 *
 * @example
 * ```ts
 * import { Kernels } from "./wasm/kernels.ts";
 * import { svdFromGrams } from "./gram_svd.ts";
 * const kernels = await Kernels.load();
 * // B = [1, 0]ᵀ and A = [2, 0, 0]: BᵀB = [1], A·Aᵀ = [4]; ΔW = 0.5·B·A has σ = 1.
 * const layer = { out: 2, rank: 1, inFlat: 3, scale: 0.5 };
 * const d = svdFromGrams(kernels, { up: new Float64Array([1]), down: new Float64Array([4]) }, layer);
 * if (d.sigma.length !== 1 || d.sigma[0] !== 1) throw new Error(`σ = ${d.sigma}`);
 * ```
 */
export function svdFromGrams(kernels: Kernels, grams: GramPair, layer: LayerShape): Decomposition {
  const r = layer.rank;
  if (grams.up.length !== r * r || grams.down.length !== r * r) {
    throw new BackendError(
      `Gram matrices of ${grams.up.length} and ${grams.down.length} values for rank ${r}`,
    );
  }
  kernels.reset();
  const gramUp = kernels.alloc(r * r * 8), gramDown = kernels.alloc(r * r * 8);
  kernels.f64(gramUp, r * r).set(grams.up);
  kernels.f64(gramDown, r * r).set(grams.down);
  return svdFromKernelGrams(kernels, gramUp, gramDown, layer);
}

/**
 * The SVD of one layer's ΔW from its Gram matrices already in kernel memory
 * (pointers to r × r float64, both triangles; read, not changed unless the
 * core overflows, see below), as the module doc describes.
 *
 * The eigensolver's sums grow as the 8th power of the factors, so factor
 * entries beyond about 1e38 (the F32 limit; F64 files can hold more) overflow
 * float64 and it cannot converge. The Grams are then scaled in place by powers
 * of two to a largest diagonal near 1 and the core runs again; power-of-two
 * scaling is exact (barring underflow), so the result is what the core would
 * give without the overflow. Inputs that do not overflow never take this path,
 * so their results do not depend on it.
 *
 * @example
 * ```ts
 * import { Kernels } from "./wasm/kernels.ts";
 * import { svdFromKernelGrams } from "./gram_svd.ts";
 * const kernels = await Kernels.load();
 * const gramUp = kernels.alloc(8), gramDown = kernels.alloc(8);
 * kernels.f64(gramUp, 1)[0] = 1;
 * kernels.f64(gramDown, 1)[0] = 4;
 * const d = svdFromKernelGrams(kernels, gramUp, gramDown, { out: 2, rank: 1, inFlat: 3, scale: -0.5 });
 * // A negative scale: σ = |scale|·1·2, the sign on the up transform.
 * if (d.sigma[0] !== 1 || d.upTransform[0] !== -1 || d.downTransform[0] !== 0.5) {
 *   throw new Error("unexpected decomposition");
 * }
 * ```
 */
export function svdFromKernelGrams(
  kernels: Kernels,
  gramUp: number,
  gramDown: number,
  layer: LayerShape,
): Decomposition {
  const r = layer.rank;
  if (
    !finiteDiagonal(kernels.f64(gramUp, r * r), r) ||
    !finiteDiagonal(kernels.f64(gramDown, r * r), r)
  ) {
    // A NaN or infinite factor element: σ is NaN, never mistaken for an all-zero layer (the
    // pivoting would drop the bad column silently). Callers name the element.
    const k = Math.min(layer.out, layer.inFlat, r);
    return {
      sigma: new Float64Array(k).fill(NaN),
      upTransform: new Float64Array(r * k),
      downTransform: new Float64Array(r * k),
    };
  }
  const direct = coreSvd(kernels, gramUp, gramDown, layer);
  if (direct) return direct;
  const eUp = scaleToUnit(kernels.f64(gramUp, r * r), r);
  const eDown = scaleToUnit(kernels.f64(gramDown, r * r), r);
  const scaled = coreSvd(kernels, gramUp, gramDown, layer);
  if (!scaled) {
    throw new BackendError(
      `the eigensolver of a ${layer.out}×${layer.inFlat} rank-${r} layer's decomposition did not converge`,
    );
  }
  // G scaled by 4⁻ᵉ scales R by 2⁻ᵉ: σ by 2^−(e_B + e_A), the transforms (R₁₁⁻¹·U) by 2^e.
  const { sigma, upTransform, downTransform } = scaled;
  scaleByPowerOfTwo(sigma, eUp + eDown);
  scaleByPowerOfTwo(upTransform, -eUp);
  scaleByPowerOfTwo(downTransform, -eDown);
  return scaled;
}

/** Whether every diagonal entry of the r × r matrix g is finite. */
function finiteDiagonal(g: Float64Array, r: number): boolean {
  for (let i = 0; i < r; i++) if (!Number.isFinite(g[i * r + i])) return false;
  return true;
}

/**
 * Scales the r × r matrix g in place by 4⁻ᵉ, e chosen so that its largest diagonal is near 1;
 * returns e. Powers of two scale exactly (barring underflow).
 *
 * @example
 * ```ts
 * import { scaleToUnit } from "./gram_svd.ts";
 * const g = new Float64Array([64, 1, 1, 16]);
 * if (scaleToUnit(g, 2) !== 3 || g.join() !== "1,0.015625,0.015625,0.25") throw new Error(`${g}`);
 * ```
 */
export function scaleToUnit(g: Float64Array, r: number): number {
  let max = 0;
  for (let i = 0; i < r; i++) max = Math.max(max, g[i * r + i]);
  const e = max > 0 && Number.isFinite(max) ? Math.round(Math.log2(max) / 2) : 0;
  scaleByPowerOfTwo(g, -2 * e);
  return e;
}

/**
 * x ← x·2ᵉ in place, in two exact steps (each factor a normal float64).
 *
 * @example
 * ```ts
 * import { scaleByPowerOfTwo } from "./gram_svd.ts";
 * const x = new Float64Array([3, 1e-300]);
 * scaleByPowerOfTwo(x, 900);
 * scaleByPowerOfTwo(x, -900);
 * if (x[0] !== 3 || x[1] !== 1e-300) throw new Error(`${x}`);
 * ```
 */
export function scaleByPowerOfTwo(x: Float64Array, e: number): void {
  const half = Math.trunc(e / 2), a = 2 ** half, b = 2 ** (e - half);
  for (let i = 0; i < x.length; i++) x[i] = x[i] * a * b;
}

/** A pivoted Cholesky factor in kernel memory (see the kernels' `pivotedCholesky`). */
interface KernelFactor {
  /** Rᵀ, r × r: column c of R contiguous. */
  readonly rt: number;
  /** Pivot order, r i32. */
  readonly pivots: number;
  /** Rows of R kept (numerical rank). */
  readonly kept: number;
}

/**
 * Pivoted Cholesky factors of both Grams, the core's SVD and the transforms;
 * `undefined` when the core's eigensolver did not converge (overflow).
 */
function coreSvd(
  kernels: Kernels,
  gramUp: number,
  gramDown: number,
  layer: LayerShape,
): Decomposition | undefined {
  const { out, rank: r, inFlat, scale } = layer;
  const k = Math.min(out, inFlat, r);
  const sigma = new Float64Array(k);
  const upTransform = new Float64Array(r * k);
  const downTransform = new Float64Array(r * k);
  const diagonal = (g: number) => {
    const view = kernels.f64(g, r * r);
    return Float64Array.from({ length: r }, (_, i) => view[i * r + i]);
  };
  const tolUp = pivotTolerance(diagonal(gramUp), out);
  const tolDown = pivotTolerance(diagonal(gramDown), inFlat);
  const rtB = kernels.alloc(r * r * 8), rtA = kernels.alloc(r * r * 8);
  const pivB = kernels.alloc(r * 4), pivA = kernels.alloc(r * 4);
  const scratch = kernels.alloc(4 * r * 8);
  const x = kernels.exports;
  const up = {
    rt: rtB,
    pivots: pivB,
    kept: x.pivotedCholesky(gramUp, r, tolUp, rtB, pivB, scratch),
  };
  const down = {
    rt: rtA,
    pivots: pivA,
    kept: x.pivotedCholesky(gramDown, r, tolDown, rtA, pivA, scratch),
  };
  if (up.kept === 0 || down.kept === 0) return { sigma, upTransform, downTransform };
  const vectors = coreSingularVectors(kernels, up, down, r, k, scratch);
  if (!vectors) return undefined;
  const { yB, yA, count, norms } = vectors;
  for (let c = 0; c < count; c++) sigma[c] = Math.abs(scale) * norms[c];
  if (count > 0) {
    x.backSubstitute(rtB, r, pivB, up.kept, yB, count, count);
    x.backSubstitute(rtA, r, pivA, down.kept, yA, count, count);
  }
  const sign = scale < 0 ? -1 : 1;
  const rows = (y: number, f: KernelFactor) => kernels.f64(y, f.kept * count);
  const pivots = (f: KernelFactor) => kernels.i32(f.pivots, f.kept);
  scatter(upTransform, k, rows(yB, up), pivots(up), count, sign);
  scatter(downTransform, k, rows(yA, down), pivots(down), count, 1);
  return { sigma, upTransform, downTransform };
}

/** The nonzero singular values of M = R_B·R_Aᵀ and its singular vectors in kernel memory. */
interface CoreVectors {
  /** U_M, k₁ × count row-major. */
  readonly yB: number;
  /** V_M, k₂ × count row-major. */
  readonly yA: number;
  /** Nonzero singular values (≤ k). */
  readonly count: number;
  /** The singular values of M, descending (length ≥ count). */
  readonly norms: Float64Array;
}

/**
 * The SVD of the core M (see the module doc); `undefined` when the
 * eigensolver did not converge. `scratch` holds 4r float64.
 */
function coreSingularVectors(
  kernels: Kernels,
  up: KernelFactor,
  down: KernelFactor,
  r: number,
  k: number,
  scratch: number,
): CoreVectors | undefined {
  const x = kernels.exports;
  const k1 = up.kept, k2 = down.kept;
  // A = M = R_B·R_Aᵀ when k₁ ≥ k₂, else Mᵀ; Aᵀ (n × m, rows padded to even length for gramRows)
  // is Xᵀ·Y of the transposed factors.
  const tall = k1 >= k2;
  const m = tall ? k1 : k2, n = tall ? k2 : k1, ldm = m + (m & 1);
  const at = kernels.alloc(n * ldm * 8);
  const c = kernels.alloc(n * n * 8);
  const zt = kernels.alloc(n * n * 8);
  const wt = kernels.alloc(n * m * 8);
  const yB = kernels.alloc(k1 * n * 8), yA = kernels.alloc(k2 * n * 8);
  if (tall) x.matmulF64(down.rt, 1, r, up.rt, r, at, ldm, n, r, m);
  else x.matmulF64(up.rt, 1, r, down.rt, r, at, ldm, n, r, m);
  if (ldm !== m) {
    const view = kernels.f64(at, n * ldm);
    for (let i = 0; i < n; i++) view[i * ldm + m] = 0;
  }
  x.gramRows(at, n, ldm, c);
  const s = scratch + r * 8;
  if (x.symmetricEigenvectors(c, n, zt, scratch, s, s + r * 8) !== 0) return undefined;
  x.matmulF64(zt, n, 1, at, ldm, wt, m, n, n, m);
  x.orthogonalizeRows(wt, n, m, zt, n, scratch, JACOBI_TOLERANCE * Math.sqrt(m));
  // Rows of Wᵀ are σᵢ·(left singular vectors of A), rows of Zᵀ the right ones.
  const w = kernels.f64(wt, n * m), z = kernels.f64(zt, n * n);
  const rowNorms = Float64Array.from({ length: n }, (_, i) => {
    let ss = 0;
    for (let j = 0; j < m; j++) ss += w[i * m + j] * w[i * m + j];
    return Math.sqrt(ss);
  });
  const order = Array.from(rowNorms.keys()).sort((i, j) => rowNorms[j] - rowNorms[i] || i - j);
  let count = 0; // σ descending: zeros come last
  while (count < Math.min(k, n) && rowNorms[order[count]] > 0) count++;
  // Singular vectors of M as columns: U_M into yB (k₁ × count), V_M into yA (k₂ × count).
  const uM = kernels.f64(yB, k1 * count), vM = kernels.f64(yA, k2 * count);
  const [left, right] = tall ? [uM, vM] : [vM, uM];
  for (let col = 0; col < count; col++) {
    const from = order[col], norm = rowNorms[from];
    for (let i = 0; i < m; i++) left[i * count + col] = w[from * m + i] / norm;
    for (let i = 0; i < n; i++) right[i * count + col] = z[from * n + i];
  }
  return { yB, yA, count, norms: Float64Array.from(order, (i) => rowNorms[i]) };
}

/** Rows i of `rows` (count wide) into row pivots[i] of the r × k transform, times `factor`. */
function scatter(
  into: Float64Array,
  k: number,
  rows: Float64Array,
  pivots: Int32Array,
  count: number,
  factor: number,
): void {
  pivots.forEach((p, i) => {
    for (let c = 0; c < count; c++) into[p * k + c] = factor * rows[i * count + c];
  });
}
