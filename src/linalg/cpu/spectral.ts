/**
 * Spectral norm σ_max(W) by Lanczos on WᵀW with full reorthogonalisation.
 *
 * Each step costs one pass over W (decoded to f32 once) in the WASM kernel
 * `gramMatvec`: z = WᵀW·v row block by row block, so W streams from memory
 * once per step. The Ritz value θ of the tridiagonal Lanczos matrix
 * approaches λ_max = σ_max² from below, and its residual ρ = β·|yₗₐₛₜ| bounds
 * the distance from θ to an eigenvalue; the iteration stops once
 * ρ ≤ 1e-4·θ (σ then within 5e-5 relative), when the Krylov space is
 * exhausted, or after 128 steps — a Krylov space that contains the iterate of
 * the original's 64 power iterations, so the estimate is never worse than
 * theirs. The start vector comes from a fixed-seed generator: same input, same
 * result.
 *
 * @module
 */

import { tridiagonalEigen } from "../tridiagonal.ts";
import type { Kernels } from "../wasm/kernels.ts";

/** A weight decoded to f32 in kernel memory. */
export interface F32Weight {
  /** Pointer to `rows × cols` f32, row-major. */
  readonly ptr: number;
  /** Rows (out). */
  readonly rows: number;
  /** Columns (in′). */
  readonly cols: number;
}

/** Tuning of {@link spectralNorm}. */
export interface SpectralOptions {
  /** Stop when the Ritz residual ≤ tolerance · θ (default 1e-4). */
  readonly tolerance?: number;
  /** Most Lanczos steps (default 128). */
  readonly maxSteps?: number;
}

/** σ_max with the number of Lanczos steps it took. */
export interface SpectralResult {
  /** The estimate of σ_max. */
  readonly norm: number;
  /** Lanczos steps (passes over W). */
  readonly steps: number;
}

/**
 * σ_max of a weight decoded to f32 in kernel memory. Allocates its vectors
 * from the kernels' arena (after the weight).
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { spectralNorm } from "./spectral.ts";
 * const k = await Kernels.load();
 * const ptr = k.alloc(4 * 4);
 * k.f32(ptr, 4).set([3, 0, 0, 2]); // diag(3, 2)
 * const { norm } = spectralNorm(k, { ptr, rows: 2, cols: 2 });
 * if (Math.abs(norm - 3) > 3e-4) throw new Error(`σ_max = ${norm}`);
 * ```
 */
export function spectralNorm(
  kernels: Kernels,
  weight: F32Weight,
  options: SpectralOptions = {},
): SpectralResult {
  const { rows, cols } = weight;
  const tolerance = options.tolerance ?? 1e-4;
  const maxSteps = Math.min(cols, options.maxSteps ?? 128);
  const vPtr = kernels.alloc(cols * 4);
  const zPtr = kernels.alloc(cols * 4);
  const scratch = kernels.alloc(32);

  const basis: Float64Array[] = [startVector(cols)];
  const alpha: number[] = [];
  const beta: number[] = [];
  let theta = 0;
  for (let j = 0; j < maxSteps; j++) {
    const q = basis[j];
    kernels.f32(vPtr, cols).set(q);
    kernels.exports.gramMatvec(weight.ptr, rows, cols, vPtr, zPtr, scratch);
    const w = Float64Array.from(kernels.f32(zPtr, cols));
    const a = dot(q, w);
    axpy(w, -a, q);
    if (j > 0) axpy(w, -beta[j - 1], basis[j - 1]);
    // Full reorthogonalisation, twice ("twice is enough").
    for (let pass = 0; pass < 2; pass++) {
      for (const b of basis) axpy(w, -dot(b, w), b);
    }
    const b = Math.sqrt(dot(w, w));
    alpha.push(a);
    const { values, last } = tridiagonalEigen(Float64Array.from(alpha), Float64Array.from(beta));
    theta = Math.max(values[0], 0);
    const residual = b * Math.abs(last[0]);
    if (residual <= tolerance * theta || !(b > 0) || j + 1 === maxSteps) {
      return { norm: Math.sqrt(theta), steps: j + 1 };
    }
    beta.push(b);
    basis.push(w.map((x) => x / b));
  }
  return { norm: Math.sqrt(theta), steps: maxSteps };
}

/** A fixed pseudo-random unit vector (xorshift32, fixed seed). */
function startVector(n: number): Float64Array {
  const v = new Float64Array(n);
  let s = 0x9e3779b9 | 0;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    v[i] = (s >>> 0) / 2 ** 32 - 0.5;
  }
  const norm = Math.sqrt(dot(v, v));
  for (let i = 0; i < n; i++) v[i] /= norm;
  return v;
}

function dot(x: Float64Array, y: Float64Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * y[i];
  return s;
}

function axpy(y: Float64Array, a: number, x: Float64Array): void {
  for (let i = 0; i < y.length; i++) y[i] += a * x[i];
}
