/**
 * The rebuild of a Kronecker (LoKr) layer's kept dimensions as LoRA factors: each factor's kept
 * dimensions (a product's through the backend's `rebuild`, a whole matrix's through its
 * `singularPairs`), then their Kronecker products: up column (i, j) = √σ1ᵢ·u1ᵢ ⊗ √σ2ⱼ·u2ⱼ, down
 * row (i, j) = (√σ1ᵢ·v1ᵢ ⊗ √σ2ⱼ·v2ⱼ)ᵀ (see `kronecker.ts` for why that is the SVD's).
 *
 * @module
 */

import { decodeFloats, encodeFloats } from "../safetensors/dtype.ts";
import type {
  Backend,
  BackendCallOptions,
  RebuildDType,
  RebuildRequest,
  RebuiltFactors,
  SingularPairsRequest,
} from "./backend.ts";
import {
  type FactorDecomposition,
  isFullMatrix,
  type KroneckerDecomposition,
  type KroneckerLayer,
  type KroneckerOperand,
  operandShape,
} from "./kronecker.ts";

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

/**
 * Builds the output factors for the kept dimensions of Kronecker layers,
 * under the contract of {@link RebuiltFactors}: up·down·scale = rescale·ΔW
 * restricted to the kept dimensions (so a writer sets alpha = scale·k′ as for
 * a LoRA). The kept dimensions of each factor (f32), then the Kronecker
 * products, rounded once to the requested type.
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
  const parts = await rebuildFactors(backend, [
    ...plans.map((p) => p.first),
    ...plans.map((p) => p.second),
  ], { signal: options.signal });
  return plans.map((plan, n) => {
    const result = plan.combine(parts[n], parts[requests.length + n]);
    options.onResult?.(n, result);
    return result;
  });
}

/** The rebuild of one factor's kept dimensions: a product's, or a whole matrix's pairs. */
export type FactorRebuild =
  | { readonly rebuild: RebuildRequest }
  | { readonly pairs: SingularPairsRequest };

/**
 * Each factor rebuild, in order, by the backend's `rebuild` and `singularPairs` (both calls at
 * once); `onResult` gets each part as it comes, by its index in `parts`.
 *
 * @example
 * ```ts ignore
 * const [a, b] = await rebuildFactors(backend, [plan.first, plan.second]);
 * ```
 */
export async function rebuildFactors(
  backend: Backend,
  parts: readonly FactorRebuild[],
  options: BackendCallOptions<RebuiltFactors> = {},
): Promise<RebuiltFactors[]> {
  const rebuilds: RebuildRequest[] = [], pairs: SingularPairsRequest[] = [];
  const back: number[][] = [[], []]; // part index of each request of each call
  parts.forEach((p, n) => {
    if ("rebuild" in p) {
      back[0].push(n);
      rebuilds.push(p.rebuild);
    } else {
      back[1].push(n);
      pairs.push(p.pairs);
    }
  });
  const done = [0, 0];
  const call = (c: number) => ({
    signal: options.signal,
    onResult: (j: number, f: RebuiltFactors) => options.onResult?.(back[c][j], f),
    onProgress: (d: number) => {
      done[c] = d;
      options.onProgress?.(done[0] + done[1], parts.length);
    },
  });
  const [a, b] = await Promise.all([
    rebuilds.length ? backend.rebuild(rebuilds, call(0)) : [],
    pairs.length ? backend.singularPairs(pairs, call(1)) : [],
  ]);
  const results: RebuiltFactors[] = new Array(parts.length);
  a.forEach((f, j) => results[back[0][j]] = f);
  b.forEach((f, j) => results[back[1][j]] = f);
  return results;
}

/**
 * One Kronecker rebuild as two factor rebuilds (each factor's kept dimensions, f32, rescale 1)
 * and the product that joins their results, so a caller can put the factor rebuilds into
 * backend calls of its own, among other layers'.
 */
export interface KroneckerRebuildPlan {
  /** The rebuild of W1's kept dimensions. */
  readonly first: FactorRebuild;
  /** The rebuild of W2's kept dimensions. */
  readonly second: FactorRebuild;
  /** The layer's output factors from the two results (see {@link rebuildKronecker}). */
  combine(first: RebuiltFactors, second: RebuiltFactors): RebuiltFactors;
}

/**
 * The rebuild of the given dimensions of one factor, unscaled: up·down = the factor over those
 * dimensions (f32).
 */
export function factorRebuild(
  operand: KroneckerOperand,
  decomposition: FactorDecomposition,
  keep: readonly number[],
): FactorRebuild {
  if (isFullMatrix(operand)) {
    if (!("tridiagonal" in decomposition)) {
      throw new RangeError("a whole factor needs its spectrum");
    }
    return { pairs: { matrix: operand, spectrum: decomposition, keep } };
  }
  if ("tridiagonal" in decomposition) throw new RangeError("a product needs its decomposition");
  return { rebuild: { factors: operand, decomposition, keep, rescale: 1 } };
}

/**
 * Plans the rebuild of one Kronecker layer's kept dimensions.
 *
 * @example
 * ```ts ignore
 * const plan = planKroneckerRebuild({ layer, decomposition, keep: [0, 1], rescale: 1 });
 * const [a, b] = await rebuildFactors(backend, [plan.first, plan.second]);
 * const { up, down } = plan.combine(a, b);
 * ```
 */
export function planKroneckerRebuild(request: KroneckerRebuildRequest): KroneckerRebuildPlan {
  const plan = pairsKept(request);
  const { layer, decomposition } = request;
  return {
    first: factorRebuild(layer.first, decomposition.first, plan.firsts),
    second: factorRebuild(layer.second, decomposition.second, plan.seconds),
    combine: (first, second) => kroneckerOutput(request, plan, first, second),
  };
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
  const { rows: o1, cols: i1 } = operandShape(layer.first);
  const { rows: o2, cols: i2 } = operandShape(layer.second);
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
