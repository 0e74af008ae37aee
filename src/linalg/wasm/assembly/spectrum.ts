// The singular values of a matrix stored in full without its singular vectors, and afterwards
// the vectors of the few that are kept (../../full_matrix_svd.ts): the tridiagonal T = Qᵀ·G·Q of
// the matrix's Gram G (tridiagonalize in ./core), T's eigenvalues by implicit QL without
// vectors, then eigenvectors of chosen eigenvalues by inverse iteration, taken back through Q.
// Each step costs O(n²) or less after the O(n³) tridiagonalisation, where eigenvectors for all
// n would cost several times that.

import { implicitQl } from "./core";
import { dot } from "./jacobi";

const EPS: f64 = 2.220446049250313e-16;
/** Solves per eigenvector: the eigenvalue is exact to rounding, so each solve gains ~1/ε. */
const SOLVES: i32 = 3;
/** Eigenvalues closer than this · ‖T‖ form a cluster, whose vectors are orthogonalised. */
const CLUSTER: f64 = 1e-3;

@inline function at(p: usize, i: usize): f64 {
  return load<f64>(p + (i << 3));
}

@inline function put(p: usize, i: usize, x: f64): void {
  store<f64>(p + (i << 3), x);
}

/**
 * Eigenvalues of the symmetric tridiagonal matrix with diagonal d and off-diagonal e (as
 * tridiagonalize leaves them; both overwritten) into d, unsorted: symmetricEigenvectors' implicit
 * QL without the rotation of vectors, on the matrix scaled by a power of two (exact) to a norm
 * near 1. Returns 0, or −1 when QL did not converge.
 */
export function tridiagonalEigenvalues(d: usize, e: usize, size: i32): i32 {
  const n = <usize> size;
  let norm: f64 = 0;
  for (let i: usize = 0; i < n; i++) norm = Math.max(norm, Math.abs(at(d, i)) + Math.abs(at(e, i)));
  if (!(norm > 0) || !isFinite(norm)) return implicitQl(d, e, size, 0, false);
  const shift = <i32> Math.round(Math.log2(norm));
  scale(d, n, -shift);
  scale(e, n, -shift);
  const status = implicitQl(d, e, size, 0, false);
  scale(d, n, shift);
  return status;
}

/** x[0…n) ← x·2^k, in two exact steps (each factor a normal f64). */
function scale(x: usize, n: usize, k: i32): void {
  const half = k / 2, a = Math.pow(2, <f64> half), b = Math.pow(2, <f64> (k - half));
  for (let i: usize = 0; i < n; i++) put(x, i, at(x, i) * a * b);
}

/**
 * Unit eigenvectors of the symmetric tridiagonal T (diagonal d, off-diagonal e, both n f64, read
 * only) for the `count` eigenvalues in lambdas (descending, eigenvalues of T to rounding), as the
 * rows of out (count × n), by inverse iteration: from a fixed pseudo-random start, SOLVES solves
 * of (T − λ·I)·x = x by Gaussian elimination with partial pivoting, on T / ‖T‖ so that nothing
 * overflows. A vector is orthogonalised against the earlier ones of its cluster after each solve,
 * and an eigenvalue within 10·ε·‖T‖ of the previous one is moved that far below it, so that the
 * two solves differ. work is scratch for 5n f64.
 */
export function eigenvectorsAt(
  d: usize,
  e: usize,
  size: i32,
  lambdas: usize,
  count: i32,
  out: usize,
  work: usize,
): void {
  const n = <usize> size, bytes = n << 3;
  if (n == 0) return;
  let norm: f64 = 0;
  for (let i: usize = 0; i < n; i++) {
    let s = Math.abs(at(d, i));
    if (i > 0) s += Math.abs(at(e, i - 1));
    if (i + 1 < n) s += Math.abs(at(e, i));
    if (s > norm) norm = s;
  }
  if (!(norm > 0)) norm = 1; // T = 0: every vector is an eigenvector
  const inv = 1 / norm;
  let clusterStart: usize = 0, previous: f64 = 0;
  for (let j: usize = 0; j < <usize> count; j++) {
    let lambda = at(lambdas, j) * inv;
    if (j > 0) {
      if (previous - lambda > CLUSTER) clusterStart = j;
      else if (previous - lambda < 10 * EPS) lambda = previous - 10 * EPS;
    }
    previous = lambda;
    factorShifted(d, e, n, inv, lambda, work);
    const x = out + j * bytes;
    let seed: u32 = <u32> (j + 1) * 0x9e3779b9;
    for (let i: usize = 0; i < n; i++) {
      seed ^= seed << 13;
      seed ^= seed >> 17;
      seed ^= seed << 5;
      put(x, i, <f64> seed / 4294967296.0 - 0.5);
    }
    for (let solve: i32 = 0; solve < SOLVES; solve++) {
      solveShifted(x, n, work);
      for (let p = clusterStart; p < j; p++) {
        const y = out + p * bytes;
        const c = dot(x, y, n);
        for (let i: usize = 0; i < n; i++) put(x, i, at(x, i) - c * at(y, i));
      }
      const length = Math.sqrt(dot(x, x, n));
      const scale = length > 0 ? 1 / length : 0;
      for (let i: usize = 0; i < n; i++) put(x, i, at(x, i) * scale);
    }
  }
}

/**
 * Gaussian elimination with partial pivoting of (T·inv − λ·I) into lu (5n f64: U's diagonal,
 * first and second superdiagonals, then each step's multiplier and row swap), pivots below ε
 * replaced by ±ε (T·inv has norm 1). The row being eliminated has nonzeros in two columns only,
 * so U's second superdiagonal is nonzero only where rows were swapped.
 */
function factorShifted(d: usize, e: usize, n: usize, inv: f64, lambda: f64, lu: usize): void {
  const u0 = lu, u1 = lu + (n << 3), u2 = lu + 2 * (n << 3);
  const mult = lu + 3 * (n << 3), swap = lu + 4 * (n << 3);
  let r0 = at(d, 0) * inv - lambda, r1 = n > 1 ? at(e, 0) * inv : 0;
  for (let i: usize = 0; i + 1 < n; i++) {
    const sub = at(e, i) * inv, next = at(d, i + 1) * inv - lambda;
    const after = i + 2 < n ? at(e, i + 1) * inv : 0;
    if (Math.abs(r0) >= Math.abs(sub)) {
      const pivot = guard(r0), m = sub / pivot;
      put(u0, i, pivot);
      put(u1, i, r1);
      put(u2, i, 0);
      put(mult, i, m);
      put(swap, i, 0);
      r0 = next - m * r1;
      r1 = after;
    } else {
      const m = r0 / sub;
      put(u0, i, guard(sub));
      put(u1, i, next);
      put(u2, i, after);
      put(mult, i, m);
      put(swap, i, 1);
      r0 = r1 - m * next;
      r1 = -m * after;
    }
  }
  put(u0, n - 1, guard(r0));
}

@inline function guard(pivot: f64): f64 {
  return Math.abs(pivot) >= EPS ? pivot : pivot < 0 ? -EPS : EPS;
}

/** x ← U⁻¹·L⁻¹·x with the factorisation factorShifted left in lu. */
function solveShifted(x: usize, n: usize, lu: usize): void {
  const u0 = lu, u1 = lu + (n << 3), u2 = lu + 2 * (n << 3);
  const mult = lu + 3 * (n << 3), swap = lu + 4 * (n << 3);
  let carry = at(x, 0);
  for (let i: usize = 0; i + 1 < n; i++) {
    const below = at(x, i + 1), m = at(mult, i);
    if (at(swap, i) == 0) {
      put(x, i, carry);
      carry = below - m * carry;
    } else {
      put(x, i, below);
      carry = carry - m * below;
    }
  }
  put(x, n - 1, carry / at(u0, n - 1));
  for (let i = <isize> n - 2; i >= 0; i--) {
    const k = <usize> i;
    let s = at(x, k) - at(u1, k) * at(x, k + 1);
    if (k + 2 < n) s -= at(u2, k) * at(x, k + 2);
    put(x, k, s / at(u0, k));
  }
}

/**
 * Each of the `count` rows y of ys (length n) ← Q·y, Q = H₀·H₁ ⋯ the reflectors that
 * tridiagonalize left in c and tau (so an eigenvector of T becomes one of the matrix).
 */
export function applyReflectors(c: usize, size: i32, tau: usize, ys: usize, count: i32): void {
  const n = <usize> size;
  for (let j: usize = 0; j < <usize> count; j++) {
    const y = ys + ((j * n) << 3);
    for (let k = <isize> n - 3; k >= 0; k--) {
      const t = at(tau, <usize> k);
      if (t == 0) continue;
      const k1 = <usize> k + 1, len = n - k1;
      const v = c + ((<usize> k * n + k1) << 3), z = y + (k1 << 3);
      const f = -t * dot(v, z, len);
      for (let i: usize = 0; i < len; i++) put(z, i, at(z, i) + f * at(v, i));
    }
  }
}
