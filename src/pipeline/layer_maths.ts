/**
 * Decomposition and rebuild of a LoRA's layers, whatever they were stored as: LoRA and LoHa
 * layers through their (exact) low-rank factors, LoKr layers through the SVDs of their two
 * Kronecker factors (docs/design.md, "LyCORIS layers"). Each stage is one backend call for the
 * low-rank products and one for the factors stored whole (running together), with a LoKr
 * layer's two factors next to each other in layer order, so that results still come roughly in
 * layer order for the writer.
 *
 * @module
 */

import type {
  Backend,
  BackendCallOptions,
  Decomposition,
  RebuildDType,
  RebuiltFactors,
} from "../linalg/backend.ts";
import {
  combineKronecker,
  decomposeOperands,
  type FactorRebuild,
  type KroneckerDecomposition,
  type KroneckerOperand,
  type KroneckerRebuildPlan,
  planKroneckerRebuild,
  rebuildFactors,
} from "../linalg/kronecker.ts";
import type { LoraLayer } from "../lora/lora_file.ts";

/** The SVD of one layer: as the backend gives it, or from a LoKr layer's two factors. */
export type LayerDecomposition = Decomposition | KroneckerDecomposition;

/** Whether a layer's decomposition is a Kronecker one (a LoKr layer's). */
export function isKronecker(d: LayerDecomposition): d is KroneckerDecomposition {
  return "pairs" in d;
}

/**
 * The SVD of every layer, in order: one backend call for all of them.
 *
 * @example
 * ```ts ignore
 * const [d] = await decomposeLayers(backend, [lokrLayer]);
 * d.sigma; // every σ1ᵢ·σ2ⱼ·|scale|, descending
 * ```
 */
export async function decomposeLayers(
  backend: Backend,
  layers: readonly LoraLayer[],
  options: Pick<BackendCallOptions<Decomposition>, "onProgress" | "signal"> = {},
): Promise<LayerDecomposition[]> {
  const items = layers.flatMap((l): KroneckerOperand[] => {
    const k = l.lycoris?.kind === "lokr" ? l.lycoris.kronecker : undefined;
    return k ? [k.first, k.second] : [l.factors];
  });
  const results = await decomposeOperands(backend, items, options);
  let next = 0;
  return layers.map((l) => {
    if (l.lycoris?.kind !== "lokr") return results[next++] as Decomposition;
    const d = combineKronecker(results[next], results[next + 1], l.lycoris.kronecker.scale);
    next += 2;
    return d;
  });
}

/** A request to rebuild the kept dimensions of one layer. */
export interface LayerRebuildRequest {
  /** The layer. */
  readonly layer: LoraLayer;
  /** Its decomposition (from {@link decomposeLayers}). */
  readonly decomposition: LayerDecomposition;
  /** Indices (into `sigma`) of the dimensions to keep, ascending. */
  readonly keep: readonly number[];
  /** Factor multiplying every singular value (recipe `rescale`). */
  readonly rescale: number;
  /** Element type of the output factors (default `"F32"`). */
  readonly dtype?: RebuildDType;
}

/**
 * Output factors of the kept dimensions of every layer, in order (`onResult` with each as soon
 * as it is ready): up·down·(layer scale) = rescale·ΔW over the kept dimensions, for every kind,
 * so a writer sets alpha = scale·k′.
 */
export async function rebuildLayers(
  backend: Backend,
  requests: readonly LayerRebuildRequest[],
  options: BackendCallOptions<RebuiltFactors> = {},
): Promise<RebuiltFactors[]> {
  const plans: (KroneckerRebuildPlan | undefined)[] = [];
  const items: FactorRebuild[] = [];
  const owner: number[] = []; // request index of each backend item
  requests.forEach((r, n) => {
    const lokr = r.layer.lycoris?.kind === "lokr" ? r.layer.lycoris : undefined;
    if (lokr && isKronecker(r.decomposition)) {
      const plan = planKroneckerRebuild({
        layer: lokr.kronecker,
        decomposition: r.decomposition,
        keep: r.keep,
        rescale: r.rescale,
        dtype: r.dtype,
      });
      plans.push(plan);
      items.push(plan.first, plan.second);
      owner.push(n, n);
    } else if (!isKronecker(r.decomposition)) {
      plans.push(undefined);
      const { layer, decomposition, keep, rescale, dtype } = r;
      items.push({ rebuild: { factors: layer.factors, decomposition, keep, rescale, dtype } });
      owner.push(n);
    } else {
      throw new RangeError(`rebuild: layer '${r.layer.name}' is not a LoKr layer`); // cannot happen
    }
  });
  const results: RebuiltFactors[] = new Array(requests.length);
  const halves = new Map<number, RebuiltFactors[]>(); // a LoKr layer's parts, by item parity
  const take = (j: number, f: RebuiltFactors) => {
    const n = owner[j], plan = plans[n];
    if (results[n] !== undefined) return;
    if (plan) {
      // A LoKr layer's two parts are adjacent items, finished in either order.
      const parts = halves.get(n) ?? [];
      parts[owner[j - 1] === n ? 1 : 0] = f;
      halves.set(n, parts);
      if (parts[0] === undefined || parts[1] === undefined) return;
      halves.delete(n);
      f = plan.combine(parts[0], parts[1]);
    }
    results[n] = f;
    options.onResult?.(n, f);
  };
  const parts = await rebuildFactors(backend, items, {
    onProgress: options.onProgress,
    signal: options.signal,
    onResult: take,
  });
  parts.forEach((f, j) => take(j, f)); // what was not reported as it came
  return results;
}
