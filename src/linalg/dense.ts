/**
 * Small dense float64 matrix routines: products, Householder QR, Jacobi
 * eigendecomposition and SVD, the tridiagonal eigenproblem (for Lanczos), and
 * the low-rank core step shared by the backends: {@link decompositionFromGrams}
 * turns the two r × r Gram matrices of a LoRA layer into its
 * {@link Decomposition}.
 *
 * Matrices are row-major {@link Matrix} values. Everything here is meant for
 * r × r sized problems (r = LoRA rank, Lanczos steps), not for weights.
 *
 * @module
 */

import type { Decomposition } from "./backend.ts";

/** A dense row-major float64 matrix. */
export interface Matrix {
  /** Number of rows. */
  readonly rows: number;
  /** Number of columns. */
  readonly cols: number;
  /** `rows × cols` elements, row-major. */
  readonly data: Float64Array;
}

const EPS = Number.EPSILON;
const MAX_SWEEPS = 64;

/**
 * Creates a matrix, copying `data` when given (zeros otherwise).
 *
 * @example
 * ```ts
 * import { matrix } from "./dense.ts";
 * const a = matrix(2, 2, [1, 2, 3, 4]);
 * console.log(a.data[2]); // 3
 * ```
 */
export function matrix(rows: number, cols: number, data?: ArrayLike<number>): Matrix {
  const out = new Float64Array(rows * cols);
  if (data !== undefined) {
    if (data.length !== rows * cols) {
      throw new RangeError(
        `matrix ${rows}×${cols} needs ${rows * cols} values, got ${data.length}`,
      );
    }
    out.set(data);
  }
  return { rows, cols, data: out };
}

/**
 * The n × n identity.
 *
 * @example
 * ```ts
 * import { identity } from "./dense.ts";
 * console.log(identity(2).data); // Float64Array [1, 0, 0, 1]
 * ```
 */
export function identity(n: number): Matrix {
  const a = matrix(n, n);
  for (let i = 0; i < n; i++) a.data[i * n + i] = 1;
  return a;
}

/**
 * The transpose of a matrix.
 *
 * @example
 * ```ts
 * import { matrix, transpose } from "./dense.ts";
 * console.log(transpose(matrix(1, 2, [1, 2])).rows); // 2
 * ```
 */
export function transpose(a: Matrix): Matrix {
  const t = matrix(a.cols, a.rows);
  for (let i = 0; i < a.rows; i++) {
    for (let j = 0; j < a.cols; j++) t.data[j * a.rows + i] = a.data[i * a.cols + j];
  }
  return t;
}

/**
 * The product a · b.
 *
 * @example
 * ```ts
 * import { matrix, multiply } from "./dense.ts";
 * const c = multiply(matrix(1, 2, [1, 2]), matrix(2, 1, [3, 4]));
 * console.log(c.data[0]); // 11
 * ```
 */
export function multiply(a: Matrix, b: Matrix): Matrix {
  if (a.cols !== b.rows) {
    throw new RangeError(`cannot multiply ${a.rows}×${a.cols} by ${b.rows}×${b.cols}`);
  }
  const { rows: m, cols: k } = a;
  const n = b.cols;
  const c = matrix(m, n);
  const ad = a.data, bd = b.data, cd = c.data;
  for (let i = 0; i < m; i++) {
    const ci = i * n;
    for (let p = 0; p < k; p++) {
      const aip = ad[i * k + p];
      if (aip === 0) continue;
      const bp = p * n;
      for (let j = 0; j < n; j++) cd[ci + j] += aip * bd[bp + j];
    }
  }
  return c;
}

/** A thin QR factorisation `a = q · r`. */
export interface QR {
  /** `m × k` with orthonormal columns (k = min(m, n)). */
  readonly q: Matrix;
  /** `k × n` upper triangular (trapezoidal when n > m). */
  readonly r: Matrix;
}

/**
 * Thin Householder QR of an m × n matrix.
 *
 * @example
 * ```ts
 * import { matrix, multiply, qr } from "./dense.ts";
 * const { q, r } = qr(matrix(3, 2, [1, 2, 3, 4, 5, 6]));
 * console.log(multiply(q, r).data.map(Math.round)); // Float64Array [1, 2, 3, 4, 5, 6]
 * ```
 */
export function qr(a: Matrix): QR {
  const { q, r } = householder(a, false);
  return { q, r };
}

/** Householder QR, optionally with column pivoting (largest remaining column first). */
function householder(a: Matrix, pivot: boolean): QR & { readonly pivots: Int32Array } {
  const { rows: m, cols: n } = a;
  const k = Math.min(m, n);
  // Work on the transpose so that every column of `a` is a contiguous row.
  const w = transpose(a).data;
  const pivots = Int32Array.from({ length: n }, (_, i) => i);
  const beta = new Float64Array(k); // H_j = I − beta_j · v_j · v_jᵀ, v_j stored in w row j
  const diag = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    if (pivot) {
      // Exact remaining norms each step (no downdating drift; n is small).
      let best = j, bestNorm = -1;
      for (let c = j; c < n; c++) {
        let ss = 0;
        for (let i = j; i < m; i++) ss += w[c * m + i] * w[c * m + i];
        if (ss > bestNorm) [best, bestNorm] = [c, ss];
      }
      if (best !== j) {
        for (let i = 0; i < m; i++) {
          const t = w[j * m + i];
          w[j * m + i] = w[best * m + i];
          w[best * m + i] = t;
        }
        [pivots[j], pivots[best]] = [pivots[best], pivots[j]];
      }
    }
    const x = j * m;
    let ss = 0;
    for (let i = j; i < m; i++) ss += w[x + i] * w[x + i];
    if (ss === 0) continue; // column already zero below the diagonal: H_j = I
    const norm = Math.sqrt(ss);
    const alpha = w[x + j] > 0 ? -norm : norm;
    diag[j] = alpha;
    w[x + j] -= alpha;
    // vᵀv = 2·norm·(norm + |x_j|) = −2·alpha·v_j
    beta[j] = 1 / (-alpha * w[x + j]);
    for (let c = j + 1; c < n; c++) {
      const y = c * m;
      let dot = 0;
      for (let i = j; i < m; i++) dot += w[x + i] * w[y + i];
      const f = beta[j] * dot;
      for (let i = j; i < m; i++) w[y + i] -= f * w[x + i];
    }
  }
  const r = matrix(k, n);
  for (let i = 0; i < k; i++) {
    r.data[i * n + i] = diag[i];
    for (let j = i + 1; j < n; j++) r.data[i * n + j] = w[j * m + i];
  }
  // Q = H₀ · H₁ ⋯ H_{k−1} · I[:, :k], built column by column (as rows of Qᵀ).
  const qt = new Float64Array(k * m);
  for (let c = 0; c < k; c++) {
    const y = c * m;
    qt[y + c] = 1;
    for (let j = Math.min(c, k - 1); j >= 0; j--) {
      if (beta[j] === 0) continue;
      const x = j * m;
      let dot = 0;
      for (let i = j; i < m; i++) dot += w[x + i] * qt[y + i];
      const f = beta[j] * dot;
      for (let i = j; i < m; i++) qt[y + i] -= f * w[x + i];
    }
  }
  return { q: transpose({ rows: k, cols: m, data: qt }), r, pivots };
}

/** A symmetric eigendecomposition `a = vectors · diag(values) · vectorsᵀ`. */
export interface SymmetricEigen {
  /** Eigenvalues, descending. */
  readonly values: Float64Array;
  /** Orthonormal eigenvectors as columns, in the order of `values`. */
  readonly vectors: Matrix;
}

/**
 * Eigendecomposition of a symmetric matrix by cyclic Jacobi rotations (only
 * the upper triangle is read). Rotations stop once every off-diagonal element
 * is negligible against its diagonal pair, which gives positive semi-definite
 * matrices (Gram matrices) eigenvalues with high relative accuracy.
 *
 * @example
 * ```ts
 * import { matrix, symmetricEigen } from "./dense.ts";
 * const { values } = symmetricEigen(matrix(2, 2, [2, 1, 1, 2]));
 * console.log(values.map((x) => Math.round(x * 1e12) / 1e12)); // Float64Array [3, 1]
 * ```
 */
export function symmetricEigen(a: Matrix): SymmetricEigen {
  const n = a.rows;
  if (a.cols !== n) {
    throw new RangeError(`symmetricEigen needs a square matrix, got ${n}×${a.cols}`);
  }
  // Full symmetric working copy (from the upper triangle) and Vᵀ (eigenvectors as rows).
  const w = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) w[i * n + j] = w[j * n + i] = a.data[i * n + j];
  }
  const vt = identity(n).data;
  // Below ε²·max|a| an element cannot change any eigenvalue that matters (avoids sweeps that
  // only chase denormals next to an exactly zero diagonal).
  let floor = 0;
  for (let i = 0; i < n * n; i++) floor = Math.max(floor, Math.abs(w[i]));
  floor *= EPS * EPS;
  for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = w[p * n + q];
        const app = w[p * n + p], aqq = w[q * n + q];
        const small = Math.abs(apq);
        if (small <= EPS * Math.sqrt(Math.abs(app)) * Math.sqrt(Math.abs(aqq)) || small <= floor) {
          continue;
        }
        rotated = true;
        const theta = (aqq - app) / (2 * apq);
        const t = Math.abs(theta) > 1e150
          ? 0.5 / theta
          : Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        w[p * n + p] = app - t * apq;
        w[q * n + q] = aqq + t * apq;
        w[p * n + q] = w[q * n + p] = 0;
        for (let k = 0; k < n; k++) {
          if (k === p || k === q) continue;
          const akp = w[k * n + p], akq = w[k * n + q];
          const kp = c * akp - s * akq, kq = s * akp + c * akq;
          w[k * n + p] = w[p * n + k] = kp;
          w[k * n + q] = w[q * n + k] = kq;
        }
        rotateRows(vt, p * n, q * n, n, c, s);
      }
    }
    if (!rotated) break;
  }
  const diagonal = new Float64Array(n);
  for (let i = 0; i < n; i++) diagonal[i] = w[i * n + i];
  const order = descendingOrder(diagonal);
  const values = new Float64Array(n);
  const vectors = matrix(n, n);
  order.forEach((from, to) => {
    values[to] = diagonal[from];
    for (let k = 0; k < n; k++) vectors.data[k * n + to] = vt[from * n + k];
  });
  return { values, vectors };
}

/**
 * A thin singular value decomposition `a = u · diag(s) · vᵀ`. Columns of `u`
 * and `v` for nonzero singular values are orthonormal; for a zero singular
 * value one of the two columns may be zero.
 */
export interface SVD {
  /** `m × k` left singular vectors (k = min(m, n)). */
  readonly u: Matrix;
  /** Singular values, descending, length k. */
  readonly s: Float64Array;
  /** `n × k` right singular vectors. */
  readonly v: Matrix;
}

/**
 * The one-sided Jacobi step of {@link svd}: rotates pairs of the `count` rows
 * (each `length` long) of `rows` until they are mutually orthogonal to working
 * precision, applying every rotation to the rows of `vt` (`count × count`) as
 * well. Both arrays are updated in place.
 */
export type RowOrthogonalizer = (
  rows: Float64Array,
  count: number,
  length: number,
  vt: Float64Array,
) => void;

/** Options of {@link svd}. */
export interface SvdOptions {
  /**
   * A faster implementation of the same Jacobi step (the CPU backend passes its
   * WASM kernel); default: the one in this module.
   */
  readonly orthogonalize?: RowOrthogonalizer;
}

/**
 * Thin SVD by one-sided (Hestenes) Jacobi with QR preconditioning
 * (Drmač–Veselić): a·Π = Q·R with column pivoting, then columns of Rᵀ are
 * rotated until mutually orthogonal to working precision — a few sweeps,
 * since the rows of a pivoted R are nearly orthogonal already. Small singular
 * values come out with high relative accuracy.
 *
 * @example
 * ```ts
 * import { matrix, svd } from "./dense.ts";
 * const { s } = svd(matrix(2, 2, [3, 0, 0, -4]));
 * console.log(s); // Float64Array [4, 3]
 * ```
 */
export function svd(a: Matrix, options: SvdOptions = {}): SVD {
  if (a.rows < a.cols) {
    const t = svd(transpose(a), options);
    return { u: t.v, s: t.s, v: t.u };
  }
  const { rows: m, cols: n } = a;
  const { q, r, pivots } = householder(a, true);
  // Columns of X = Rᵀ are the rows of R. X·V₁ = U₁·Σ, so a = (Q·V₁)·Σ·(Π·U₁)ᵀ.
  const w = r.data;
  const vt = identity(n).data; // rows: columns of V₁
  (options.orthogonalize ?? orthogonalizeRows)(w, n, n, vt);
  const norms = new Float64Array(n);
  for (let i = 0; i < n; i++) norms[i] = Math.sqrt(dotRows(w, i * n, i * n, n));
  const order = descendingOrder(norms);
  const s = new Float64Array(n);
  const u = matrix(m, n), v = matrix(n, n);
  order.forEach((from, to) => {
    const sigma = norms[from];
    s[to] = sigma;
    for (let row = 0; row < m; row++) {
      let sum = 0;
      for (let p = 0; p < n; p++) sum += q.data[row * n + p] * vt[from * n + p];
      u.data[row * n + to] = sum;
    }
    if (sigma > 0) {
      for (let p = 0; p < n; p++) v.data[pivots[p] * n + to] = w[from * n + p] / sigma;
    }
  });
  return { u, s, v };
}

/**
 * One-sided Jacobi: rotates pairs of the `count` rows (length `len`) of `w`
 * until they are mutually orthogonal to working precision, applying the same
 * rotations to the rows of `vt`. Squared row norms are updated with each
 * rotation and recomputed at every sweep.
 */
const orthogonalizeRows: RowOrthogonalizer = (w, count, len, vt) => {
  const norms = new Float64Array(count);
  for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
    for (let i = 0; i < count; i++) norms[i] = dotRows(w, i * len, i * len, len);
    let rotated = false;
    for (let i = 0; i < count - 1; i++) {
      for (let j = i + 1; j < count; j++) {
        const alpha = norms[i], beta = norms[j];
        const gamma = dotRows(w, i * len, j * len, len);
        if (gamma === 0 || Math.abs(gamma) <= EPS * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.abs(zeta) > 1e150
          ? 0.5 / zeta
          : Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(zeta * zeta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        rotateRows(w, i * len, j * len, len, c, s);
        rotateRows(vt, i * count, j * count, count, c, s);
        norms[i] = alpha - t * gamma;
        norms[j] = beta + t * gamma;
      }
    }
    if (!rotated) break;
  }
};

function dotRows(w: Float64Array, x: number, y: number, len: number): number {
  let s = 0;
  for (let k = 0; k < len; k++) s += w[x + k] * w[y + k];
  return s;
}

/** Eigenvalues of a symmetric tridiagonal matrix and two rows of its eigenvector matrix. */
export interface TridiagonalEigen {
  /** Eigenvalues, descending. */
  readonly values: Float64Array;
  /** First component of each eigenvector (order of `values`). */
  readonly first: Float64Array;
  /** Last component of each eigenvector (order of `values`); Lanczos residuals use it. */
  readonly last: Float64Array;
}

/**
 * Eigenvalues of the symmetric tridiagonal matrix with the given diagonal
 * (length n) and off-diagonal (length n − 1), by implicit QL with Wilkinson
 * shifts. Only the first and last rows of the eigenvector matrix are
 * accumulated, so a call costs O(n²).
 *
 * @example
 * ```ts
 * import { tridiagonalEigen } from "./dense.ts";
 * const { values } = tridiagonalEigen(new Float64Array([2, 2]), new Float64Array([1]));
 * console.log(values.map((x) => Math.round(x * 1e12) / 1e12)); // Float64Array [3, 1]
 * ```
 */
export function tridiagonalEigen(
  diagonal: Float64Array,
  offDiagonal: Float64Array,
): TridiagonalEigen {
  const n = diagonal.length;
  if (n > 0 && offDiagonal.length < n - 1) {
    throw new RangeError(`tridiagonalEigen: ${n} diagonal values need ${n - 1} off-diagonal ones`);
  }
  const d = Float64Array.from(diagonal);
  const e = new Float64Array(n); // e[i] couples i and i + 1; e[n − 1] = 0
  e.set(offDiagonal.subarray(0, Math.max(0, n - 1)));
  const z0 = new Float64Array(n), z1 = new Float64Array(n); // rows 0 and n − 1 of Z
  if (n > 0) {
    z0[0] = 1;
    z1[n - 1] = 1;
  }
  for (let l = 0; l < n; l++) {
    for (let iter = 0;; iter++) {
      let m = l;
      for (; m < n - 1; m++) {
        if (Math.abs(e[m]) <= EPS * (Math.abs(d[m]) + Math.abs(d[m + 1]))) break;
      }
      if (m === l) break;
      if (iter === 100) throw new Error("tridiagonalEigen: no convergence");
      let g = (d[l + 1] - d[l]) / (2 * e[l]);
      let r = Math.hypot(g, 1);
      g = d[m] - d[l] + e[l] / (g + (g >= 0 ? r : -r));
      let s = 1, c = 1, p = 0;
      let i = m - 1;
      for (; i >= l; i--) {
        const f = s * e[i], b = c * e[i];
        r = Math.hypot(f, g);
        e[i + 1] = r;
        if (r === 0) {
          d[i + 1] -= p;
          e[m] = 0;
          break;
        }
        s = f / r;
        c = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + 2 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
        for (const z of [z0, z1]) {
          const zi1 = z[i + 1];
          z[i + 1] = s * z[i] + c * zi1;
          z[i] = c * z[i] - s * zi1;
        }
      }
      if (r === 0 && i >= l) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0;
    }
  }
  const order = descendingOrder(d);
  return {
    values: Float64Array.from(order, (i) => d[i]),
    first: Float64Array.from(order, (i) => z0[i]),
    last: Float64Array.from(order, (i) => z1[i]),
  };
}

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
 * G_A = A·Aᵀ (both r × r, float64; only their upper triangles are read).
 *
 * Pivoted Cholesky G_B = R_Bᵀ·R_B gives B = Q_B·R_B with Q_B = B·Π·R₁₁⁻¹
 * orthonormal (R₁₁ the leading triangle of R_B in pivot order), likewise
 * Aᵀ = Q_A·R_A; the SVD of the small core M = R_B·R_Aᵀ = U_M·diag(s)·V_Mᵀ then
 * gives ΔW = (B·T_B)·diag(scale·s)·(Aᵀ·T_A)ᵀ with T_B = Π·R₁₁⁻¹·U_M and
 * T_A = Π′·R′₁₁⁻¹·V_M.
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
 * @example
 * ```ts
 * import { decompositionFromGrams, matrix } from "./dense.ts";
 * // B = [[1], [0]], A = [[2, 0, 0]]: ΔW has the single singular value 0.5 · 2.
 * const d = decompositionFromGrams(matrix(1, 1, [1]), matrix(1, 1, [4]), {
 *   scale: 0.5,
 *   out: 2,
 *   inFlat: 3,
 * });
 * console.log(d.sigma); // Float64Array [1]
 * ```
 */
export function decompositionFromGrams(
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

/**
 * The pivot threshold of the pivoted Cholesky in {@link decompositionFromGrams}
 * for a Gram matrix with this diagonal, formed from sums of length `n`:
 * ε · max(n, r) · max(diagonal) (see there for why).
 *
 * @example
 * ```ts
 * import { pivotTolerance } from "./dense.ts";
 * console.log(pivotTolerance([4, 1], 3) === 4 * 3 * Number.EPSILON); // true
 * ```
 */
export function pivotTolerance(diagonal: ArrayLike<number>, n: number): number {
  return Math.max(0, ...Array.from(diagonal)) * EPS * Math.max(n, diagonal.length);
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

function rotateRows(
  data: Float64Array,
  x: number,
  y: number,
  n: number,
  c: number,
  s: number,
): void {
  for (let k = 0; k < n; k++) {
    const a = data[x + k], b = data[y + k];
    data[x + k] = c * a - s * b;
    data[y + k] = s * a + c * b;
  }
}

/** Indices sorting `values` descending; ties keep index order (deterministic). */
function descendingOrder(values: Float64Array): number[] {
  return Array.from(values.keys()).sort((i, j) => values[j] - values[i] || i - j);
}
