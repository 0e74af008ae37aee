/**
 * Subspace scales |uᵀ·W·v| of a Kronecker layer's dimensions, without forming its singular
 * vectors at full size.
 *
 * Dimension (p, q) of a LoKr layer has u = u1ₚ ⊗ u2_q and v = v1ₚ ⊗ v2_q. Seen as a four-index
 * tensor W[a, b, c, d] = W[a·o2 + b, c·i2′ + d], uᵀ·W·v = Σ_b u2_q[b] · Σ_d M_p[b, d] · v2_q[d]
 * with M_p[b, d] = Σ_{a,c} u1ₚ[a] · W[a, b, c, d] · v1ₚ[c]: one pass over W per dimension of
 * W1 (o·in′ multiply-adds each), then o2·i2′ per dimension of W2. The factors' singular vectors
 * come from a backend rebuild of every dimension of each factor (√σ·u and √σ·v, normalised
 * here: a zero singular value has zero vectors and scale 0, as for a LoRA).
 *
 * @module
 */

import { decodeFloats, dtypeSize } from "../safetensors/dtype.ts";
import { readFileRange } from "../safetensors/file_range.ts";
import type { Backend, BaseWeightRef, RebuiltFactors } from "./backend.ts";
import { type KroneckerDecomposition, type KroneckerLayer, operandShape } from "./kronecker.ts";
import { factorRebuild, rebuildFactors } from "./kronecker_rebuild.ts";

/** A request for the subspace scales of one Kronecker layer. */
export interface KroneckerSubspaceRequest {
  /** The base weight W (rows o1·o2, cols i1·i2′). */
  readonly weight: BaseWeightRef;
  /** The layer. */
  readonly layer: KroneckerLayer;
  /** Its decomposition. */
  readonly decomposition: KroneckerDecomposition;
}

/**
 * |uₜᵀ·W·vₜ| for every dimension t of each Kronecker layer, in the order of its `sigma`. The
 * base weights are read one at a time, on this thread.
 *
 * @example
 * ```ts ignore
 * const [scales] = await kroneckerSubspaceScales(backend, [{ weight, layer, decomposition }]);
 * ```
 */
export async function kroneckerSubspaceScales(
  backend: Backend,
  requests: readonly KroneckerSubspaceRequest[],
): Promise<Float64Array[]> {
  const all = (n: number) => [...Array(n).keys()];
  const vectors = await rebuildFactors(
    backend,
    requests.flatMap(({ layer, decomposition: d }) => [
      factorRebuild(layer.first, d.first, all(d.first.sigma.length)),
      factorRebuild(layer.second, d.second, all(d.second.sigma.length)),
    ]),
  );
  return requests.map((r, n) => scalesOf(r, vectors[2 * n], vectors[2 * n + 1]));
}

/** Columns of `up` (rows × k) and rows of `down` (k × cols), normalised, as f64. */
function unitVectors(f: RebuiltFactors, rows: number, cols: number) {
  const up = decodeFloats(f.up.bytes, f.up.dtype, Float64Array);
  const down = decodeFloats(f.down.bytes, f.down.dtype, Float64Array);
  const k = up.length / rows;
  for (let t = 0; t < k; t++) {
    let nu = 0, nd = 0;
    for (let i = 0; i < rows; i++) nu += up[i * k + t] ** 2;
    for (let j = 0; j < cols; j++) nd += down[t * cols + j] ** 2;
    const su = nu > 0 ? 1 / Math.sqrt(nu) : 0, sd = nd > 0 ? 1 / Math.sqrt(nd) : 0;
    for (let i = 0; i < rows; i++) up[i * k + t] *= su;
    for (let j = 0; j < cols; j++) down[t * cols + j] *= sd;
  }
  return { up, down, k };
}

function scalesOf(
  { weight, layer, decomposition }: KroneckerSubspaceRequest,
  first: RebuiltFactors,
  second: RebuiltFactors,
): Float64Array {
  const { rows: o1, cols: i1 } = operandShape(layer.first);
  const { rows: o2, cols: i2 } = operandShape(layer.second);
  const cols = i1 * i2;
  const w = decodeFloats(
    readFileRange({
      path: weight.path,
      offset: weight.offset,
      byteLength: weight.rows * weight.cols * dtypeSize(weight.dtype),
    }),
    weight.dtype,
    Float32Array,
  );
  const a = unitVectors(first, o1, i1), b = unitVectors(second, o2, i2);
  const byPair = new Float64Array(a.k * b.k);
  const m = new Float64Array(o2 * i2);
  for (let p = 0; p < a.k; p++) {
    // M_p = Σ_{a,c} u1ₚ[a]·v1ₚ[c]·W[a·o2 + ·, c·i2 + ·]
    m.fill(0);
    for (let r1 = 0; r1 < o1; r1++) {
      const x = a.up[r1 * a.k + p];
      if (x === 0) continue;
      for (let c = 0; c < i1; c++) {
        const xy = x * a.down[p * i1 + c];
        if (xy === 0) continue;
        for (let r2 = 0; r2 < o2; r2++) {
          const row = (r1 * o2 + r2) * cols + c * i2, at = r2 * i2;
          for (let d = 0; d < i2; d++) m[at + d] += xy * w[row + d];
        }
      }
    }
    for (let q = 0; q < b.k; q++) {
      let s = 0;
      for (let r2 = 0; r2 < o2; r2++) {
        let dot = 0;
        for (let d = 0; d < i2; d++) dot += m[r2 * i2 + d] * b.down[q * i2 + d];
        s += b.up[r2 * b.k + q] * dot;
      }
      byPair[p * b.k + q] = Math.abs(s);
    }
  }
  const { pairs, sigma } = decomposition;
  return Float64Array.from(sigma, (_, t) => byPair[pairs[2 * t] * b.k + pairs[2 * t + 1]]);
}
