// The r × r steps of a layer's decomposition after its Gram matrices (see svdFromKernelGrams in
// ../../gram_svd.ts): pivoted Cholesky of each Gram matrix, the core product, a symmetric
// eigensolver whose eigenvectors precondition the one-sided Jacobi SVD of the core, and the back
// substitutions that turn its singular vectors into transforms. Matrices are row-major f64.

import { dot, rotate } from "./jacobi";

const EPS: f64 = 2.220446049250313e-16;
const MAX_QL_ITERATIONS: i32 = 100;

@inline function at(p: usize, i: usize): f64 {
  return load<f64>(p + (i << 3));
}

@inline function put(p: usize, i: usize, x: f64): void {
  store<f64>(p + (i << 3), x);
}

@inline function pivot(pivots: usize, i: usize): usize {
  return <usize> load<i32>(pivots + (i << 2));
}

/** y ← y − (a·u + b·v) over len f64 (the symmetric rank-2 update keeps a symmetric matrix so). */
function subtract2(y: usize, a: f64, u: usize, b: f64, v: usize, len: usize): void {
  const vec = (len & ~(<usize> 1)) << 3;
  const av = f64x2.splat(a), bv = f64x2.splat(b);
  for (let o: usize = 0; o < vec; o += 16) {
    const t = f64x2.add(f64x2.mul(av, v128.load(u + o)), f64x2.mul(bv, v128.load(v + o)));
    v128.store(y + o, f64x2.sub(v128.load(y + o), t));
  }
  if (len & 1) store<f64>(y + vec, load<f64>(y + vec) - (a * load<f64>(u + vec) + b * load<f64>(v + vec)));
}

/** y ← y + a·x over len f64. */
function axpy(y: usize, a: f64, x: usize, len: usize): void {
  const vec = (len & ~(<usize> 1)) << 3;
  const av = f64x2.splat(a);
  for (let o: usize = 0; o < vec; o += 16) {
    v128.store(y + o, f64x2.add(v128.load(y + o), f64x2.mul(av, v128.load(x + o))));
  }
  if (len & 1) store<f64>(y + vec, load<f64>(y + vec) + a * load<f64>(x + vec));
}

/**
 * Pivoted Cholesky G ≈ Rᵀ·R of the symmetric r × r matrix g (upper triangle read), stopping once
 * every remaining Schur-complement diagonal is ≤ tolerance. R is written transposed: rt is
 * r × r, rt[c·r + i] = R[i][c] (zero where R is), so each column of R is contiguous. pivots
 * (r i32) receives the pivot order, d is scratch for r f64. Returns the rows of R kept.
 */
export function pivotedCholesky(
  g: usize,
  r: i32,
  tolerance: f64,
  rt: usize,
  pivots: usize,
  d: usize,
): i32 {
  const n = <usize> r;
  memory.fill(rt, 0, (n * n) << 3);
  for (let i: usize = 0; i < n; i++) {
    put(d, i, at(g, i * n + i));
    store<i32>(pivots + (i << 2), <i32> i);
  }
  let kept: i32 = 0;
  for (let k: usize = 0; k < n; k++) {
    let best = k, bestD = at(d, pivot(pivots, k));
    for (let j = k + 1; j < n; j++) {
      const dj = at(d, pivot(pivots, j));
      if (dj > bestD) {
        best = j;
        bestD = dj;
      }
    }
    if (!(bestD > tolerance)) break;
    const pk = pivot(pivots, best);
    store<i32>(pivots + (best << 2), load<i32>(pivots + (k << 2)));
    store<i32>(pivots + (k << 2), <i32> pk);
    const rkk = Math.sqrt(bestD);
    const colK = rt + ((pk * n) << 3);
    put(colK, k, rkk);
    for (let j = k + 1; j < n; j++) {
      const pj = pivot(pivots, j);
      const colJ = rt + ((pj * n) << 3);
      const gkj = pk <= pj ? at(g, pk * n + pj) : at(g, pj * n + pk);
      const rkj = (gkj - dot(colK, colJ, k)) / rkk;
      put(colJ, k, rkj);
      put(d, pj, at(d, pj) - rkj * rkj);
    }
    kept = <i32> k + 1;
  }
  return kept;
}

/**
 * Householder tridiagonalisation C = Q·T·Qᵀ of the symmetric n × n matrix c (full storage;
 * overwritten): T's diagonal into d (n f64) and off-diagonal into e (e[k] couples k and k + 1; n
 * f64, the last 0); reflector k, H = I − τ·v·vᵀ on indices k + 1…, keeps v in row k of c right of
 * the diagonal and τ in tau[k] (n f64; 0 where H = I). p is scratch for n f64.
 */
export function tridiagonalize(c: usize, size: i32, d: usize, e: usize, tau: usize, p: usize): void {
  const n = <usize> size;
  // Step k maps row k's part right of the diagonal, x, to e[k]·e₀ by
  // H = I − τ·v·vᵀ and updates the trailing block B ← H·B·H = B − v·qᵀ − q·vᵀ with
  // q = τ·B·v − (τ²/2)(vᵀ·B·v)·v; v is kept in row k.
  for (let k: usize = 0; k < n; k++) {
    const row = c + ((k * n) << 3);
    put(d, k, at(row, k));
    put(tau, k, 0);
    put(e, k, 0);
    if (k + 1 >= n) break;
    const len = n - k - 1, x = row + ((k + 1) << 3);
    if (k + 2 >= n) {
      put(e, k, at(x, 0));
      continue;
    }
    const ss = dot(x, x, len);
    if (ss == 0) continue;
    const norm = Math.sqrt(ss), x0 = at(x, 0);
    const alpha = x0 > 0 ? -norm : norm;
    put(x, 0, x0 - alpha);
    const t = 1 / (-alpha * (x0 - alpha));
    put(tau, k, t);
    put(e, k, alpha);
    const b = c + (((k + 1) * n + k + 1) << 3), ld = n << 3;
    for (let i: usize = 0; i < len; i++) put(p, i, t * dot(b + i * ld, x, len));
    const half = 0.5 * t * dot(p, x, len);
    for (let i: usize = 0; i < len; i++) put(p, i, at(p, i) - half * at(x, i));
    for (let i: usize = 0; i < len; i++) subtract2(b + i * ld, at(x, i), p, at(p, i), x, len);
  }
}

/**
 * Eigenvectors of the symmetric n × n matrix c (full storage; overwritten) as the rows of zt
 * (n × n, orthonormal to working precision): Householder tridiagonalisation C = Q·T·Qᵀ, Q
 * accumulated backwards, then implicit QL with Wilkinson shifts on T, each rotation applied to
 * two rows of Zᵀ = Qᵀ. Eigenvalues are left in d (n f64, unsorted); e and w are scratch for n
 * and 2n f64. Returns 0, or −1 when QL did not converge.
 */
export function symmetricEigenvectors(c: usize, size: i32, zt: usize, d: usize, e: usize, w: usize): i32 {
  const n = <usize> size;
  if (n == 0) return 0;
  const p = w, tau = w + (n << 3);
  tridiagonalize(c, size, d, e, tau, p);
  // Q = H₀·H₁ ⋯ (each Hₖ acting on indices k + 1…), built from the last reflector back so that
  // Hₖ only meets the trailing block; then transposed in place to Zᵀ = Qᵀ.
  memory.fill(zt, 0, (n * n) << 3);
  for (let i: usize = 0; i < n; i++) put(zt, i * n + i, 1);
  for (let k = <isize> n - 3; k >= 0; k--) {
    const t = at(tau, <usize> k);
    if (t == 0) continue;
    const k1 = <usize> k + 1, len = n - k1;
    const x = c + ((<usize> k * n + k1) << 3), y = zt + ((k1 * n + k1) << 3), ld = n << 3;
    memory.fill(p, 0, len << 3);
    for (let i: usize = 0; i < len; i++) axpy(p, at(x, i), y + i * ld, len);
    for (let i: usize = 0; i < len; i++) axpy(y + i * ld, -t * at(x, i), p, len);
  }
  for (let i: usize = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const a = at(zt, i * n + j);
      put(zt, i * n + j, at(zt, j * n + i));
      put(zt, j * n + i, a);
    }
  }
  return implicitQl(d, e, size, zt, true);
}

/**
 * √(a² + b²): hypot where vectors are rotated (the LoRA core, whose results are kept bit for
 * bit), the plain square root otherwise, for a tridiagonal scaled to norm ~1 by the caller
 * (tridiagonalEigenvalues), where a² + b² can neither overflow nor lose what matters to
 * underflow; hypot's care costs as much as the rest of the values-only iteration.
 */
@inline function length(a: f64, b: f64, exact: bool): f64 {
  return exact ? Math.hypot(a, b) : Math.sqrt(a * a + b * b);
}

/**
 * Implicit QL with Wilkinson shifts (as tridiagonalEigen in ../../tridiagonal.ts) on the
 * tridiagonal d, e (overwritten; eigenvalues left in d, unsorted), each rotation applied to rows
 * i, i + 1 of zt (n × n) when `vectors`. Without vectors, d and e must be scaled to a norm near
 * 1 (see length). Returns 0, or −1 when QL did not converge.
 */
export function implicitQl(d: usize, e: usize, size: i32, zt: usize, vectors: bool): i32 {
  const n = <usize> size;
  const ld = n << 3;
  for (let l: isize = 0; l < <isize> n; l++) {
    for (let iter: i32 = 0;; iter++) {
      let m = l;
      for (; m < <isize> n - 1; m++) {
        if (Math.abs(at(e, m)) <= EPS * (Math.abs(at(d, m)) + Math.abs(at(d, m + 1)))) break;
      }
      if (m == l) break;
      if (iter == MAX_QL_ITERATIONS) return -1;
      let g = (at(d, l + 1) - at(d, l)) / (2 * at(e, l));
      let r = length(g, 1, vectors);
      g = at(d, m) - at(d, l) + at(e, l) / (g + (g >= 0 ? r : -r));
      let s: f64 = 1, co: f64 = 1, q: f64 = 0;
      let i = m - 1;
      for (; i >= l; i--) {
        const f = s * at(e, i), bb = co * at(e, i);
        r = length(f, g, vectors);
        put(e, i + 1, r);
        if (r == 0) {
          put(d, i + 1, at(d, i + 1) - q);
          put(e, m, 0);
          break;
        }
        s = f / r;
        co = g / r;
        g = at(d, i + 1) - q;
        r = (at(d, i) - g) * s + 2 * co * bb;
        q = s * r;
        put(d, i + 1, g + q);
        g = co * r - bb;
        if (vectors) rotate(zt + <usize> i * ld, zt + <usize> (i + 1) * ld, n, co, s);
      }
      if (r == 0 && i >= l) continue;
      put(d, l, at(d, l) - q);
      put(e, l, g);
      put(e, m, 0);
    }
  }
  return 0;
}

/**
 * Y ← R₁₁⁻¹·Y by back substitution, R₁₁ the leading kept × kept triangle of a pivoted Cholesky
 * factor in pivot order (R₁₁[i][j] = rt[pivots[j]·r + i], see pivotedCholesky); Y is
 * kept × count with row stride ldy, all columns at once.
 */
export function backSubstitute(
  rt: usize,
  r: i32,
  pivots: usize,
  kept: i32,
  y: usize,
  count: i32,
  ldy: i32,
): void {
  const n = <usize> r, cols = <usize> count, ld = <usize> ldy << 3;
  for (let i = <isize> kept - 1; i >= 0; i--) {
    const yi = y + <usize> i * ld;
    let j = <usize> i + 1;
    // Four rows per pass over yi: one load and store of yi per four multiply-adds.
    for (; j + 4 <= <usize> kept; j += 4) {
      const f0 = f64x2.splat(at(rt, pivot(pivots, j) * n + <usize> i));
      const f1 = f64x2.splat(at(rt, pivot(pivots, j + 1) * n + <usize> i));
      const f2 = f64x2.splat(at(rt, pivot(pivots, j + 2) * n + <usize> i));
      const f3 = f64x2.splat(at(rt, pivot(pivots, j + 3) * n + <usize> i));
      const y0 = y + j * ld;
      const vec = (cols & ~(<usize> 1)) << 3;
      for (let o: usize = 0; o < vec; o += 16) {
        let t = f64x2.mul(f0, v128.load(y0 + o));
        t = f64x2.add(t, f64x2.mul(f1, v128.load(y0 + ld + o)));
        t = f64x2.add(t, f64x2.mul(f2, v128.load(y0 + 2 * ld + o)));
        t = f64x2.add(t, f64x2.mul(f3, v128.load(y0 + 3 * ld + o)));
        v128.store(yi + o, f64x2.sub(v128.load(yi + o), t));
      }
      if (cols & 1) {
        let t = f64x2.extract_lane(f0, 0) * at(y0 + vec, 0);
        t += f64x2.extract_lane(f1, 0) * at(y0 + ld + vec, 0);
        t += f64x2.extract_lane(f2, 0) * at(y0 + 2 * ld + vec, 0);
        t += f64x2.extract_lane(f3, 0) * at(y0 + 3 * ld + vec, 0);
        put(yi + vec, 0, at(yi + vec, 0) - t);
      }
    }
    for (; j < <usize> kept; j++) {
      axpy(yi, -at(rt, pivot(pivots, j) * n + <usize> i), y + j * ld, cols);
    }
    const dv = f64x2.splat(at(rt, pivot(pivots, <usize> i) * n + <usize> i));
    const vec = (cols & ~(<usize> 1)) << 3;
    for (let o: usize = 0; o < vec; o += 16) v128.store(yi + o, f64x2.div(v128.load(yi + o), dv));
    if (cols & 1) put(yi + vec, 0, at(yi + vec, 0) / f64x2.extract_lane(dv, 0));
  }
}
