// One-sided Jacobi rotations for the small SVD of the decomposition core (../../gram_svd.ts); the
// tests check them against the plain TypeScript version in tests/reference/matrix.ts.

const MAX_SWEEPS: i32 = 64;

/** Σ x[i]·y[i] over len f64 (pairs summed in two lanes). */
export function dot(x: usize, y: usize, len: usize): f64 {
  const vec = (len & ~(<usize> 1)) << 3;
  let acc = f64x2.splat(0);
  for (let o: usize = 0; o < vec; o += 16) {
    acc = f64x2.add(acc, f64x2.mul(v128.load(x + o), v128.load(y + o)));
  }
  let s = f64x2.extract_lane(acc, 0) + f64x2.extract_lane(acc, 1);
  if (len & 1) s += load<f64>(x + vec) * load<f64>(y + vec);
  return s;
}

/** (x, y) ← (c·x − s·y, s·x + c·y) */
export function rotate(x: usize, y: usize, len: usize, c: f64, s: f64): void {
  const vec = (len & ~(<usize> 1)) << 3;
  const cv = f64x2.splat(c), sv = f64x2.splat(s);
  for (let o: usize = 0; o < vec; o += 16) {
    const a = v128.load(x + o), b = v128.load(y + o);
    v128.store(x + o, f64x2.sub(f64x2.mul(cv, a), f64x2.mul(sv, b)));
    v128.store(y + o, f64x2.add(f64x2.mul(sv, a), f64x2.mul(cv, b)));
  }
  if (len & 1) {
    const a = load<f64>(x + vec), b = load<f64>(y + vec);
    store<f64>(x + vec, c * a - s * b);
    store<f64>(y + vec, s * a + c * b);
  }
}

/**
 * Rotates pairs of the `count` rows (length `len`, f64) of w until they are mutually orthogonal
 * to working precision — |cos| ≤ tolerance for every pair (ε for the decomposition core) —
 * applying the same rotations to the rows (length `vlen`) of vt. `norms` is scratch for `count`
 * f64. Returns the number of sweeps that rotated.
 */
export function orthogonalizeRows(
  w: usize,
  count: i32,
  len: i32,
  vt: usize,
  vlen: i32,
  norms: usize,
  tolerance: f64,
): i32 {
  const n = <usize> count, m = <usize> len, p = <usize> vlen;
  for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
    for (let i: usize = 0; i < n; i++) {
      store<f64>(norms + (i << 3), dot(w + i * m * 8, w + i * m * 8, m));
    }
    let rotated = false;
    for (let i: usize = 0; i + 1 < n; i++) {
      for (let j = i + 1; j < n; j++) {
        const alpha = load<f64>(norms + (i << 3)), beta = load<f64>(norms + (j << 3));
        const gamma = dot(w + i * m * 8, w + j * m * 8, m);
        if (gamma == 0 || Math.abs(gamma) <= tolerance * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.abs(zeta) > 1e150
          ? 0.5 / zeta
          : (zeta >= 0 ? 1.0 : -1.0) / (Math.abs(zeta) + Math.sqrt(zeta * zeta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        rotate(w + i * m * 8, w + j * m * 8, m, c, s);
        rotate(vt + i * p * 8, vt + j * p * 8, p, c, s);
        store<f64>(norms + (i << 3), alpha - t * gamma);
        store<f64>(norms + (j << 3), beta + t * gamma);
      }
    }
    if (!rotated) return sweep;
  }
  return MAX_SWEEPS;
}
