/**
 * Dense float64 matrix routines for the tests: products, Householder QR,
 * Jacobi eigendecomposition and a QR-preconditioned one-sided Jacobi SVD.
 * They are straightforward textbook versions, independent of the WASM
 * kernels, so the tests can check the kernels' results against them.
 *
 * Matrices are row-major {@link Matrix} values, meant for small problems.
 *
 * @module
 */

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
 */
export function identity(n: number): Matrix {
  const a = matrix(n, n);
  for (let i = 0; i < n; i++) a.data[i * n + i] = 1;
  return a;
}

/**
 * The transpose of a matrix.
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
