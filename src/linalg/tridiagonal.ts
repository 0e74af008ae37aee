/**
 * The symmetric tridiagonal eigenproblem of Lanczos (spectral norms): eigenvalues
 * and the first and last rows of the eigenvector matrix.
 *
 * @module
 */

const EPS = Number.EPSILON;

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
 * import { tridiagonalEigen } from "./tridiagonal.ts";
 * const { values } = tridiagonalEigen(new Float64Array([2, 2]), new Float64Array([1]));
 * // [[2, 1], [1, 2]] has the eigenvalues 3 and 1.
 * if (Math.abs(values[0] - 3) > 1e-12 || Math.abs(values[1] - 1) > 1e-12) throw new Error("λ");
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

/** Indices sorting `values` descending; ties keep index order (deterministic). */
function descendingOrder(values: Float64Array): number[] {
  return Array.from(values.keys()).sort((i, j) => values[j] - values[i] || i - j);
}
