/**
 * The exact SVD of a Kronecker product (a LoKr layer), from the SVDs of its
 * two factors (the rebuild of its kept dimensions as LoRA factors is in
 * `kronecker_rebuild.ts`).
 *
 * LoKr stores ΔW = scale · W1 ⊗ W2 (W1 o1 × i1, W2 o2 × i2′, conv kernels
 * flattened into i2′ = i2·kh·kw, which is how a Kronecker product of the
 * 4-D kernels flattens too). With W1 = U1·Σ1·V1ᵀ and W2 = U2·Σ2·V2ᵀ,
 * W1 ⊗ W2 = (U1 ⊗ U2)(Σ1 ⊗ Σ2)(V1 ⊗ V2)ᵀ, and U1 ⊗ U2, V1 ⊗ V2 have
 * orthonormal columns: that is an SVD, with singular values σ1ᵢ·σ2ⱼ. So
 * keeping the k largest products is the optimal rank-k truncation
 * (Eckart–Young), and dimension (i, j) becomes one LoRA rank with
 * up = √σ1ᵢ·u1ᵢ ⊗ √σ2ⱼ·u2ⱼ and down = (√σ1ᵢ·v1ᵢ ⊗ √σ2ⱼ·v2ⱼ)ᵀ.
 *
 * A factor stored as a product is its own up and down, decomposed as a LoRA
 * is. A factor stored whole (LyCORIS's usual `lokr_w1`, and `lokr_w2` at a
 * large dim) goes through the backends' two-step SVD of a full matrix: its
 * singular values alone for ranking, then the singular pairs of the few
 * dimensions kept (`full_matrix_svd.ts`). Its vectors for all 80–160
 * dimensions would cost several times what ranking needs, and a resize keeps
 * a handful of them.
 *
 * @module
 */

import { mergeDescendingRuns } from "../descending_runs.ts";
import { LoraError } from "../errors.ts";
import { decodeFloats } from "../safetensors/dtype.ts";
import type {
  Backend,
  BackendCallOptions,
  Decomposition,
  FloatData,
  FullMatrix,
  LowRankFactors,
  MatrixSpectrum,
} from "./backend.ts";
import {
  decodeFactor,
  f32Bytes,
  factorLabel,
  type FactorMatrix,
  FormedFloatData,
  identityF32,
} from "./factor_matrix.ts";

/** One Kronecker factor as stored: a full matrix, or a low-rank product up·down. */
export type KroneckerFactor =
  | { readonly full: FactorMatrix }
  | { readonly up: FactorMatrix; readonly down: FactorMatrix };

/**
 * One Kronecker factor as the backends take it: LoRA factors of scale 1 (a factor stored as a
 * product), or the matrix itself (a factor stored whole, a {@link FullMatrix} with its name).
 */
export type KroneckerOperand = LowRankFactors | FactorMatrix;

/**
 * Whether a Kronecker operand is a matrix stored whole.
 *
 * @example
 * ```ts
 * import { isFullMatrix } from "./kronecker.ts";
 * const data = { dtype: "F32" as const, bytes: new Uint8Array(16) };
 * if (!isFullMatrix({ data, rows: 2, cols: 2, name: "w" })) throw new Error("a full matrix");
 * ```
 */
export function isFullMatrix(f: KroneckerOperand): f is FactorMatrix {
  return "data" in f;
}

/**
 * Rows and columns of an operand.
 *
 * @example
 * ```ts
 * import { operandShape } from "./kronecker.ts";
 * const data = { dtype: "F32" as const, bytes: new Uint8Array(24) };
 * if (operandShape({ data, rows: 2, cols: 3, name: "w" }).cols !== 3) throw new Error();
 * ```
 */
export function operandShape(f: KroneckerOperand): { rows: number; cols: number } {
  return isFullMatrix(f) ? { rows: f.rows, cols: f.cols } : { rows: f.out, cols: f.inFlat };
}

/** A LoKr layer: ΔW = scale · first ⊗ second, each factor as backend input (scale 1). */
export interface KroneckerLayer {
  /** W1. */
  readonly first: KroneckerOperand;
  /** W2. */
  readonly second: KroneckerOperand;
  /** Scale of the product. */
  readonly scale: number;
  /** Rows of ΔW: o1·o2. */
  readonly out: number;
  /** Columns of ΔW: i1·i2′. */
  readonly inFlat: number;
}

/**
 * The SVD of one Kronecker factor: a product's decomposition, or a whole matrix's spectrum
 * (its kept vectors are found when the layer is rebuilt).
 */
export type FactorDecomposition = Decomposition | MatrixSpectrum;

/** The SVD of a Kronecker layer, from its factors' SVDs. */
export interface KroneckerDecomposition {
  /** |scale|·σ1ᵢ·σ2ⱼ for every pair, descending (ties: by i, then j). */
  readonly sigma: Float64Array;
  /** The pair (i, j) of each singular value: `pairs[2t]` = i, `pairs[2t + 1]` = j. */
  readonly pairs: Uint32Array;
  /** The SVD of W1. */
  readonly first: FactorDecomposition;
  /** The SVD of W2. */
  readonly second: FactorDecomposition;
}

/** Rows and columns of a Kronecker factor. */
function factorShape(f: KroneckerFactor): { rows: number; cols: number } {
  if ("full" in f) return { rows: f.full.rows, cols: f.full.cols };
  if (f.up.cols !== f.down.rows) {
    const { up, down } = f;
    throw new LoraError(
      `${
        factorLabel(up)
      } (${up.rows}×${up.cols}) does not chain with '${down.name}' (${down.rows}×${down.cols})`,
    );
  }
  return { rows: f.up.rows, cols: f.down.cols };
}

/** Factor bytes checked finite when they are read (a NaN fails naming the tensor). */
function checked(m: FactorMatrix): FormedFloatData {
  return new FormedFloatData(m.data.dtype, m.rows * m.cols, () => {
    decodeFactor(m);
    return m.data.bytes;
  });
}

/**
 * A Kronecker factor as the backends take it: a product as LoRA factors of scale 1 (their
 * values checked finite when read), a whole matrix as itself (read where it lies: a NaN gives
 * NaN singular values, and the layer's exact LoRA factors then name the tensor).
 *
 * @example
 * ```ts
 * import { isFullMatrix, kroneckerOperand } from "./kronecker.ts";
 * const full = { data: { dtype: "F32" as const, bytes: new Uint8Array(4 * 8) }, rows: 2, cols: 4, name: "w" };
 * const f = kroneckerOperand({ full });
 * if (!isFullMatrix(f) || f.rows !== 2 || f.cols !== 4) throw new Error("the matrix itself");
 * ```
 */
export function kroneckerOperand(f: KroneckerFactor): KroneckerOperand {
  if ("full" in f) return f.full;
  const { rows, cols } = factorShape(f);
  return {
    up: checked(f.up),
    down: checked(f.down),
    out: rows,
    rank: f.up.cols,
    inFlat: cols,
    scale: 1,
  };
}

/**
 * An operand as LoRA factors of scale 1: a whole matrix goes on the side that leaves the shorter
 * inner dimension, with the identity on the other, its values checked finite when read.
 */
function operandAsLowRank(f: KroneckerOperand): LowRankFactors {
  if (!isFullMatrix(f)) return f;
  const { rows, cols } = f;
  const m = checked(f);
  return rows <= cols
    ? {
      up: new FormedFloatData("F32", rows * rows, () => identityF32(rows)),
      down: m,
      out: rows,
      rank: rows,
      inFlat: cols,
      scale: 1,
    }
    : {
      up: m,
      down: new FormedFloatData("F32", cols * cols, () => identityF32(cols)),
      out: rows,
      rank: cols,
      inFlat: cols,
      scale: 1,
    };
}

/**
 * A LoKr layer from its two factors and scale.
 *
 * @example
 * ```ts
 * import { kroneckerLayer } from "./kronecker.ts";
 * const m = (rows: number, cols: number) =>
 *   ({ data: { dtype: "F32" as const, bytes: new Uint8Array(4 * rows * cols) }, rows, cols, name: "w" });
 * const layer = kroneckerLayer({ full: m(4, 2) }, { up: m(40, 3), down: m(3, 90) }, 0.5);
 * if (layer.out !== 160 || layer.inFlat !== 180) throw new Error("o1·o2 × i1·i2′");
 * ```
 */
export function kroneckerLayer(
  first: KroneckerFactor,
  second: KroneckerFactor,
  scale: number,
): KroneckerLayer {
  const a = factorShape(first), b = factorShape(second);
  return {
    first: kroneckerOperand(first),
    second: kroneckerOperand(second),
    scale,
    out: a.rows * b.rows,
    inFlat: a.cols * b.cols,
  };
}

/**
 * The SVD of scale·W1 ⊗ W2 from the SVDs of W1 and W2: every product of
 * their singular values, in descending order, ties broken by (i, j) so the
 * order is deterministic.
 *
 * Both spectra are descending, so each i gives a descending run σ1ᵢ·σ2₀, σ1ᵢ·σ2₁, …
 * (multiplying by a fixed factor ≥ 0 keeps floating-point order), and the runs are merged
 * through a heap (`../descending_runs.ts`) instead of sorting all k1·k2 products.
 *
 * @example
 * ```ts
 * import { combineKronecker } from "./kronecker.ts";
 * const d = (s: number[]) => ({ sigma: new Float64Array(s), tridiagonal: new Float64Array(0) });
 * const k = combineKronecker(d([3, 1]), d([2, 0.5]), -1);
 * if (k.sigma.join() !== "6,2,1.5,0.5" || k.pairs.join() !== "0,0,1,0,0,1,1,1") throw new Error();
 * ```
 */
export function combineKronecker(
  first: FactorDecomposition,
  second: FactorDecomposition,
  scale: number,
): KroneckerDecomposition {
  const s1 = first.sigma, s2 = second.sigma, k1 = s1.length, k2 = s2.length;
  const sigma = new Float64Array(k1 * k2), pairs = new Uint32Array(2 * k1 * k2);
  if ([...s1, ...s2].some(Number.isNaN)) {
    // A factor's bad element: every product NaN, in index order, for the caller to name.
    sigma.fill(NaN);
    for (let t = 0; t < k1 * k2; t++) [pairs[2 * t], pairs[2 * t + 1]] = [t / k2 | 0, t % k2];
    return { sigma, pairs, first, second };
  }
  const runs = Array.from(s1, (x) => {
    const lead = Math.abs(scale) * x;
    return Float64Array.from(s2, (y) => lead * y);
  });
  const { run, index, value } = mergeDescendingRuns(runs);
  sigma.set(value);
  for (let t = 0; t < run.length; t++) [pairs[2 * t], pairs[2 * t + 1]] = [run[t], index[t]];
  return { sigma, pairs, first, second };
}

/**
 * Decomposes Kronecker layers with a backend: products through `decompose`, whole matrices
 * through `spectra` (both calls at once), combined per layer.
 *
 * @example
 * ```ts ignore
 * const [d] = await decomposeKronecker(backend, [kroneckerLayer(w1, w2, scale)]);
 * const largest = d.sigma[0]; // the layer's largest singular value
 * ```
 */
export async function decomposeKronecker(
  backend: Backend,
  layers: readonly KroneckerLayer[],
  options: Pick<BackendCallOptions<unknown>, "onProgress" | "signal"> = {},
): Promise<KroneckerDecomposition[]> {
  const operands = [...layers.map((l) => l.first), ...layers.map((l) => l.second)];
  const d = await decomposeOperands(backend, operands, options);
  return layers.map((l, n) => combineKronecker(d[n], d[layers.length + n], l.scale));
}

/**
 * The SVD of each operand, in order: products through the backend's `decompose`, whole
 * matrices through its `spectra`, the two calls at once, progress counted over both.
 *
 * @example
 * ```ts ignore
 * const [d] = await decomposeOperands(backend, [layer.first]);
 * ```
 */
export async function decomposeOperands(
  backend: Backend,
  operands: readonly KroneckerOperand[],
  options: Pick<BackendCallOptions<unknown>, "onProgress" | "signal"> = {},
): Promise<FactorDecomposition[]> {
  const whole: FullMatrix[] = [], lowRank: LowRankFactors[] = [];
  const at = operands.map((f) => isFullMatrix(f) ? whole.push(f) - 1 : lowRank.push(f) - 1);
  const done = [0, 0], total = whole.length + lowRank.length;
  const progress = (part: number) => (d: number) => {
    done[part] = d;
    options.onProgress?.(done[0] + done[1], total);
  };
  const { signal } = options;
  const [spectra, decompositions] = await Promise.all([
    whole.length ? backend.spectra(whole, { signal, onProgress: progress(0) }) : [],
    lowRank.length ? backend.decompose(lowRank, { signal, onProgress: progress(1) }) : [],
  ]);
  return operands.map((f, n) => {
    if (!isFullMatrix(f)) return decompositions[at[n]];
    // A NaN or infinite element gives NaN singular values: named here, as a product's factors
    // are when they are read.
    if (!spectra[at[n]].sigma.every(Number.isFinite)) decodeFactor(f);
    return spectra[at[n]];
  });
}

/**
 * A Kronecker layer as exact LoRA factors: up = B1 ⊗ B2, down = A1 ⊗ A2 (each factor's own up
 * and down; a whole matrix is itself times an identity), so scale·up·down = ΔW. Its rank is
 * the product of the factors' ranks, often far above ΔW's dimension count's worth of work: the
 * structured {@link decomposeKronecker} and `rebuildKronecker` are what the pipeline uses;
 * these factors serve what has no structured form (their bytes are formed, f32, on each read).
 *
 * @example
 * ```ts
 * import { kroneckerLayer, kroneckerLowRank } from "./kronecker.ts";
 * const m = (rows: number, cols: number, v: number[]) => ({
 *   data: { dtype: "F32" as const, bytes: new Uint8Array(new Float32Array(v).buffer) },
 *   rows, cols, name: "w",
 * });
 * // [2] ⊗ [[1, 3]] = [[2, 6]], times 0.5.
 * const f = kroneckerLowRank(kroneckerLayer({ full: m(1, 1, [2]) }, { full: m(1, 2, [1, 3]) }, 0.5));
 * const up = new Float32Array(f.up.bytes.buffer), down = new Float32Array(f.down.bytes.buffer);
 * if (f.scale * up[0] * down[0] !== 1 || f.scale * up[0] * down[1] !== 3) throw new Error();
 * ```
 */
export function kroneckerLowRank(layer: KroneckerLayer): LowRankFactors {
  const a = operandAsLowRank(layer.first), b = operandAsLowRank(layer.second);
  const f32 = (d: FloatData) => decodeFloats(d.bytes, d.dtype, Float32Array);
  const rank = a.rank * b.rank;
  const up = new FormedFloatData("F32", layer.out * rank, () => {
    const x = f32(a.up), y = f32(b.up), out = new Float32Array(layer.out * rank);
    let at = 0;
    for (let i = 0; i < a.out; i++) {
      for (let k = 0; k < b.out; k++) {
        for (let p = 0; p < a.rank; p++) {
          const v = x[i * a.rank + p];
          for (let q = 0; q < b.rank; q++) out[at++] = v * y[k * b.rank + q];
        }
      }
    }
    return f32Bytes(out);
  });
  const down = new FormedFloatData("F32", rank * layer.inFlat, () => {
    const x = f32(a.down), y = f32(b.down), out = new Float32Array(rank * layer.inFlat);
    let at = 0;
    for (let p = 0; p < a.rank; p++) {
      for (let q = 0; q < b.rank; q++) {
        for (let c = 0; c < a.inFlat; c++) {
          const v = x[p * a.inFlat + c];
          for (let d = 0; d < b.inFlat; d++) out[at++] = v * y[q * b.inFlat + d];
        }
      }
    }
    return f32Bytes(out);
  });
  return { up, down, out: layer.out, rank, inFlat: layer.inFlat, scale: layer.scale };
}
