/**
 * Singular values by one-sided Jacobi rotations (Hestenes), in f64: a test
 * reference independent of the library's Gram/eigen route. Rotations make
 * the columns of a copy of the matrix mutually orthogonal; their norms are
 * then the singular values.
 *
 * @module
 */

/** Singular values of a `rows × cols` row-major matrix, descending. */
export function jacobiSingularValues(a: Float64Array, rows: number, cols: number): Float64Array {
  // Work on the orientation with fewer columns (fewer pairs to rotate), stored column-major.
  const t = cols > rows;
  const m = t ? cols : rows, n = t ? rows : cols;
  const c = new Float64Array(m * n);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      if (t) c[i * m + j] = a[i * cols + j];
      else c[j * m + i] = a[i * cols + j];
    }
  }
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let alpha = 0, beta = 0, gamma = 0;
        for (let k = 0; k < m; k++) {
          const x = c[p * m + k], y = c[q * m + k];
          alpha += x * x;
          beta += y * y;
          gamma += x * y;
        }
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta) || gamma === 0) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const tan = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const cos = 1 / Math.sqrt(1 + tan * tan), sin = cos * tan;
        for (let k = 0; k < m; k++) {
          const x = c[p * m + k], y = c[q * m + k];
          c[p * m + k] = cos * x - sin * y;
          c[q * m + k] = sin * x + cos * y;
        }
      }
    }
    if (!rotated) break;
  }
  const sigma = new Float64Array(n);
  for (let p = 0; p < n; p++) {
    let s = 0;
    for (let k = 0; k < m; k++) s += c[p * m + k] ** 2;
    sigma[p] = Math.sqrt(s);
  }
  return sigma.sort().reverse();
}
