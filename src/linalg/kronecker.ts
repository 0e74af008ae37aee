/**
 * The exact SVD of a Kronecker product (a LoKr layer), from the SVDs of its
 * two factors, and the rebuild of its kept dimensions as LoRA factors.
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
 * The factor SVDs are ordinary backend decompositions (a factor stored as a
 * product is its own up and down; a full one is itself times an identity on
 * its short side), so every backend serves LoKr unchanged.
 *
 * @module
 */

import { LoraError } from "../errors.ts";
import { decodeFloats, encodeFloats } from "../safetensors/dtype.ts";
import type {
  Backend,
  BackendCallOptions,
  Decomposition,
  FloatData,
  LowRankFactors,
  RebuildDType,
  RebuildRequest,
  RebuiltFactors,
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

/** A LoKr layer: ΔW = scale · first ⊗ second, each factor as backend input (scale 1). */
export interface KroneckerLayer {
  /** W1 as LoRA factors (its own scale is 1). */
  readonly first: LowRankFactors;
  /** W2 as LoRA factors (its own scale is 1). */
  readonly second: LowRankFactors;
  /** Scale of the product. */
  readonly scale: number;
  /** Rows of ΔW: o1·o2. */
  readonly out: number;
  /** Columns of ΔW: i1·i2′. */
  readonly inFlat: number;
}

/** The SVD of a Kronecker layer, from its factors' SVDs. */
export interface KroneckerDecomposition {
  /** |scale|·σ1ᵢ·σ2ⱼ for every pair, descending (ties: by i, then j). */
  readonly sigma: Float64Array;
  /** The pair (i, j) of each singular value: `pairs[2t]` = i, `pairs[2t + 1]` = j. */
  readonly pairs: Uint32Array;
  /** The SVD of W1. */
  readonly first: Decomposition;
  /** The SVD of W2. */
  readonly second: Decomposition;
}

/** A request to build output factors for the kept dimensions of one Kronecker layer. */
export interface KroneckerRebuildRequest {
  /** The layer. */
  readonly layer: KroneckerLayer;
  /** Its decomposition. */
  readonly decomposition: KroneckerDecomposition;
  /** Indices (into `sigma`) of the dimensions to keep, ascending. */
  readonly keep: readonly number[];
  /** Factor multiplying every singular value (recipe `rescale`). */
  readonly rescale: number;
  /** Element type of the output factors (default `"F32"`). */
  readonly dtype?: RebuildDType;
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

/**
 * A Kronecker factor as LoRA factors of scale 1. A full matrix goes on the
 * side that leaves the shorter inner dimension (the rank the decomposition
 * works at), with the identity on the other; its values are checked finite
 * when read.
 *
 * @example
 * ```ts
 * import { kroneckerFactorAsLowRank } from "./kronecker.ts";
 * const full = { data: { dtype: "F32" as const, bytes: new Uint8Array(4 * 8) }, rows: 2, cols: 4, name: "w" };
 * const f = kroneckerFactorAsLowRank({ full });
 * if (f.rank !== 2 || f.out !== 2 || f.inFlat !== 4) throw new Error("identity on the short side");
 * ```
 */
export function kroneckerFactorAsLowRank(f: KroneckerFactor): LowRankFactors {
  const { rows, cols } = factorShape(f);
  const checked = (m: FactorMatrix) =>
    new FormedFloatData(m.data.dtype, m.rows * m.cols, () => {
      decodeFactor(m); // fails on a NaN, naming the tensor
      return m.data.bytes;
    });
  if (!("full" in f)) {
    return {
      up: checked(f.up),
      down: checked(f.down),
      out: rows,
      rank: f.up.cols,
      inFlat: cols,
      scale: 1,
    };
  }
  const m = f.full;
  return rows <= cols
    ? {
      up: new FormedFloatData("F32", rows * rows, () => identityF32(rows)),
      down: checked(m),
      out: rows,
      rank: rows,
      inFlat: cols,
      scale: 1,
    }
    : {
      up: checked(m),
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
    first: kroneckerFactorAsLowRank(first),
    second: kroneckerFactorAsLowRank(second),
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
 * @example
 * ```ts
 * import { combineKronecker } from "./kronecker.ts";
 * const d = (s: number[]) => ({
 *   sigma: new Float64Array(s), upTransform: new Float64Array(0), downTransform: new Float64Array(0),
 * });
 * const k = combineKronecker(d([3, 1]), d([2, 0.5]), -1);
 * if (k.sigma.join() !== "6,2,1.5,0.5" || k.pairs.join() !== "0,0,1,0,0,1,1,1") throw new Error();
 * ```
 */
export function combineKronecker(
  first: Decomposition,
  second: Decomposition,
  scale: number,
): KroneckerDecomposition {
  const k1 = first.sigma.length, k2 = second.sigma.length;
  const values = new Float64Array(k1 * k2);
  const order = new Uint32Array(k1 * k2);
  for (let i = 0; i < k1; i++) {
    for (let j = 0; j < k2; j++) {
      values[i * k2 + j] = Math.abs(scale) * first.sigma[i] * second.sigma[j];
      order[i * k2 + j] = i * k2 + j;
    }
  }
  // Index order breaks ties: (i, j) ascending.
  order.sort((a, b) => values[b] - values[a] || a - b);
  const sigma = new Float64Array(order.length), pairs = new Uint32Array(2 * order.length);
  order.forEach((t, n) => {
    sigma[n] = values[t];
    pairs[2 * n] = Math.floor(t / k2);
    pairs[2 * n + 1] = t % k2;
  });
  return { sigma, pairs, first, second };
}

/**
 * Decomposes Kronecker layers with a backend: one backend call for all the
 * factors (first factors, then second factors), combined per layer.
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
  options: Pick<BackendCallOptions<Decomposition>, "onProgress" | "signal"> = {},
): Promise<KroneckerDecomposition[]> {
  const factors = [...layers.map((l) => l.first), ...layers.map((l) => l.second)];
  const d = await backend.decompose(factors, options);
  return layers.map((l, n) => combineKronecker(d[n], d[layers.length + n], l.scale));
}

/**
 * Builds the output factors for the kept dimensions of Kronecker layers,
 * under the contract of {@link RebuiltFactors}: up·down·scale = rescale·ΔW
 * restricted to the kept dimensions (so a writer sets alpha = scale·k′ as for
 * a LoRA). One backend rebuild of each factor's kept dimensions (f32), then
 * the Kronecker products, rounded once to the requested type.
 *
 * @example
 * ```ts ignore
 * const [out] = await rebuildKronecker(backend, [{ layer, decomposition, keep: [0, 1], rescale: 1 }]);
 * ```
 */
export async function rebuildKronecker(
  backend: Backend,
  requests: readonly KroneckerRebuildRequest[],
  options: Pick<BackendCallOptions<RebuiltFactors>, "onResult" | "signal"> = {},
): Promise<RebuiltFactors[]> {
  const plans = requests.map(planKroneckerRebuild);
  const parts = await backend.rebuild([
    ...plans.map((p) => p.first),
    ...plans.map((p) => p.second),
  ], { signal: options.signal });
  return plans.map((plan, n) => {
    const result = plan.combine(parts[n], parts[requests.length + n]);
    options.onResult?.(n, result);
    return result;
  });
}

/**
 * One Kronecker rebuild as two ordinary rebuilds (each factor's kept dimensions, f32, rescale
 * 1) and the product that joins their results, so a caller can put the factor rebuilds into a
 * backend call of its own, among other layers'.
 */
export interface KroneckerRebuildPlan {
  /** The rebuild of W1's kept dimensions. */
  readonly first: RebuildRequest;
  /** The rebuild of W2's kept dimensions. */
  readonly second: RebuildRequest;
  /** The layer's output factors from the two results (see {@link rebuildKronecker}). */
  combine(first: RebuiltFactors, second: RebuiltFactors): RebuiltFactors;
}

/**
 * Plans the rebuild of one Kronecker layer's kept dimensions.
 *
 * @example
 * ```ts ignore
 * const plan = planKroneckerRebuild({ layer, decomposition, keep: [0, 1], rescale: 1 });
 * const [a, b] = await backend.rebuild([plan.first, plan.second]);
 * const { up, down } = plan.combine(a, b);
 * ```
 */
export function planKroneckerRebuild(request: KroneckerRebuildRequest): KroneckerRebuildPlan {
  const plan = pairsKept(request);
  const { layer, decomposition } = request;
  return {
    first: {
      factors: layer.first,
      decomposition: decomposition.first,
      keep: plan.firsts,
      rescale: 1,
    },
    second: {
      factors: layer.second,
      decomposition: decomposition.second,
      keep: plan.seconds,
      rescale: 1,
    },
    combine: (first, second) => kroneckerOutput(request, plan, first, second),
  };
}

/**
 * A Kronecker layer as exact LoRA factors: up = B1 ⊗ B2, down = A1 ⊗ A2 (each factor's own up
 * and down), so scale·up·down = scale·(B1·A1) ⊗ (B2·A2) = ΔW. Its rank is the product of the
 * factors' ranks, often far above ΔW's dimension count's worth of work: the structured
 * {@link decomposeKronecker} and {@link rebuildKronecker} are what the pipeline uses; these
 * factors serve what has no structured form (their bytes are formed, f32, on each read).
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
  const { first: a, second: b } = layer;
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

/** Which dimensions of each factor a request needs, and where each kept pair finds them. */
interface KeptPairs {
  /** Distinct i of the kept pairs, ascending. */
  readonly firsts: number[];
  /** Distinct j of the kept pairs, ascending. */
  readonly seconds: number[];
  /** For kept dimension t: the position of its i in `firsts`, and of its j in `seconds`. */
  readonly at: [number, number][];
}

function pairsKept(request: KroneckerRebuildRequest): KeptPairs {
  const { keep, decomposition: { pairs, sigma } } = request;
  if (keep.length === 0) throw new RangeError("Kronecker rebuild: nothing to keep");
  keep.forEach((m, t) => {
    if (!Number.isInteger(m) || m < 0 || m >= sigma.length || (t > 0 && m <= keep[t - 1])) {
      throw new RangeError(
        `Kronecker rebuild: keep must be ascending indices below ${sigma.length}, got [${
          keep.join(", ")
        }]`,
      );
    }
  });
  const firsts = [...new Set(keep.map((m) => pairs[2 * m]))].sort((a, b) => a - b);
  const seconds = [...new Set(keep.map((m) => pairs[2 * m + 1]))].sort((a, b) => a - b);
  const fi = new Map(firsts.map((i, p) => [i, p])), si = new Map(seconds.map((j, p) => [j, p]));
  const at = keep.map((m): [number, number] => [fi.get(pairs[2 * m])!, si.get(pairs[2 * m + 1])!]);
  return { firsts, seconds, at };
}

/**
 * Kronecker products of the rebuilt factor dimensions: up column t =
 * up1[:, i] ⊗ up2[:, j], down row t = down1[i, :] ⊗ down2[j, :], each side
 * times √rescale, computed in f64 and rounded once.
 */
function kroneckerOutput(
  request: KroneckerRebuildRequest,
  plan: KeptPairs,
  first: RebuiltFactors,
  second: RebuiltFactors,
): RebuiltFactors {
  const { layer, rescale } = request;
  const dtype = request.dtype ?? "F32";
  const o1 = layer.first.out, i1 = layer.first.inFlat;
  const o2 = layer.second.out, i2 = layer.second.inFlat;
  const n1 = plan.firsts.length, n2 = plan.seconds.length, k = plan.at.length;
  const up1 = decodeFloats(first.up.bytes, first.up.dtype, Float64Array);
  const down1 = decodeFloats(first.down.bytes, first.down.dtype, Float64Array);
  const up2 = decodeFloats(second.up.bytes, second.up.dtype, Float64Array);
  const down2 = decodeFloats(second.down.bytes, second.down.dtype, Float64Array);
  // The scale stays out (the writer's alpha carries it), its sign included.
  const side = Math.sqrt(rescale);
  const up = new Float64Array(o1 * o2 * k);
  for (let a = 0; a < o1; a++) {
    for (let b = 0; b < o2; b++) {
      const row = (a * o2 + b) * k;
      for (let t = 0; t < k; t++) {
        const [p, q] = plan.at[t];
        up[row + t] = side * up1[a * n1 + p] * up2[b * n2 + q];
      }
    }
  }
  const inFlat = i1 * i2;
  const down = new Float64Array(k * inFlat);
  for (let t = 0; t < k; t++) {
    const [p, q] = plan.at[t];
    for (let c = 0; c < i1; c++) {
      const x = side * down1[p * i1 + c];
      const at = t * inFlat + c * i2;
      for (let d = 0; d < i2; d++) down[at + d] = x * down2[q * i2 + d];
    }
  }
  return {
    up: { dtype, bytes: encodeFloats(up, dtype) },
    down: { dtype, bytes: encodeFloats(down, dtype) },
  };
}
