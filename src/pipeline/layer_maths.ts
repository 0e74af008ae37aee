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
  type FactorDecomposition,
  isFullMatrix,
  type KroneckerDecomposition,
  type KroneckerOperand,
} from "../linalg/kronecker.ts";
import {
  type FactorRebuild,
  type KroneckerRebuildPlan,
  planKroneckerRebuild,
  rebuildFactors,
} from "../linalg/kronecker_rebuild.ts";
import type { LoraLayer } from "../lora/lora_file.ts";

/**
 * A decomposition holding the transforms of its leading dimensions only: a high-rank layer's
 * full transforms (rank × k f64 each) are let go once decomposed, so that a file of rank-256
 * layers does not hold gigabytes of them until selection ends. A rebuild that keeps a dimension
 * past the leading ones decomposes the layer again (the same numbers: results do not depend on
 * batching).
 */
export interface TrimmedDecomposition {
  /** Every singular value, as the backend gave them. */
  readonly sigma: Float64Array;
  /** The decomposition of the leading dimensions (`sigma` and transforms cut to them). */
  readonly leading: Decomposition;
}

/** The SVD of one layer: as the backend gives it (maybe trimmed), or a LoKr layer's. */
export type LayerDecomposition = Decomposition | KroneckerDecomposition | TrimmedDecomposition;

/** Whether a layer's decomposition is a Kronecker one (a LoKr layer's). */
export function isKronecker(d: LayerDecomposition): d is KroneckerDecomposition {
  return "pairs" in d;
}

/** Whether a layer's decomposition holds its leading dimensions' transforms only. */
export function isTrimmed(d: LayerDecomposition): d is TrimmedDecomposition {
  return "leading" in d;
}

/** Options of {@link decomposeLayers}. */
export interface DecomposeOptions
  extends Pick<BackendCallOptions<unknown>, "onProgress" | "signal"> {
  /**
   * Keep the transforms of this many leading dimensions of each layer decomposed beyond it
   * (see {@link TrimmedDecomposition}); all of them when undefined.
   */
  readonly heldDimensions?: number;
  /** With `heldDimensions`: transform bytes per backend call (default {@link SLICE_BYTES}). */
  readonly sliceBytes?: number;
}

/** Transform bytes in one backend call when decompositions are trimmed (two run at a time). */
export const SLICE_BYTES = 64 * 2 ** 20;

/**
 * The SVD of every layer, in order: one backend call for the low-rank products and one for
 * factors stored whole. With `heldDimensions`, in slices of about {@link SLICE_BYTES} of
 * transforms, two slices at a time, each trimmed as it completes.
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
  options: DecomposeOptions = {},
): Promise<LayerDecomposition[]> {
  // A LoKr layer's factors are never trimmed: Kronecker pairs index all their dimensions.
  const trimmable: boolean[] = [];
  const items = layers.flatMap((l): KroneckerOperand[] => {
    const k = l.lycoris?.kind === "lokr" ? l.lycoris.kronecker : undefined;
    trimmable.push(...(k ? [false, false] : [true]));
    return k ? [k.first, k.second] : [l.factors];
  });
  const { heldDimensions: held } = options;
  const results = held === undefined
    ? await decomposeOperands(backend, items, options)
    : await decomposeTrimmed(
      backend,
      items,
      (d, i) => trimmable[i] ? trimmed(d, held) : d,
      options,
    );
  let next = 0;
  return layers.map((l) => {
    if (l.lycoris?.kind !== "lokr") return results[next++] as Decomposition | TrimmedDecomposition;
    const [a, b] = [results[next], results[next + 1]] as FactorDecomposition[];
    next += 2;
    return combineKronecker(a, b, l.lycoris.kronecker.scale);
  });
}

/** The decompositions of `items` in slices, each passed through `trim` as its slice completes. */
async function decomposeTrimmed(
  backend: Backend,
  items: readonly KroneckerOperand[],
  trim: (d: FactorDecomposition, item: number) => FactorDecomposition | TrimmedDecomposition,
  options: DecomposeOptions,
): Promise<(FactorDecomposition | TrimmedDecomposition)[]> {
  const slices: number[][] = [[]], limit = options.sliceBytes ?? SLICE_BYTES;
  let bytes = 0;
  items.forEach((f, i) => {
    const size = isFullMatrix(f) ? 0 : 16 * f.rank * Math.min(f.out, f.inFlat, f.rank);
    if (bytes + size > limit && slices.at(-1)!.length > 0) {
      slices.push([]);
      bytes = 0;
    }
    slices.at(-1)!.push(i);
    bytes += size;
  });
  const results: (FactorDecomposition | TrimmedDecomposition)[] = new Array(items.length);
  const done = slices.map(() => 0);
  let next = 0;
  // A failing slice stops the other, and the caller's signal stops both.
  const failed = new AbortController();
  const signal = options.signal ? AbortSignal.any([failed.signal, options.signal]) : failed.signal;
  const run = async (): Promise<void> => {
    for (let s = next++; s < slices.length && !signal.aborted; s = next++) {
      const part = await decomposeOperands(backend, slices[s].map((i) => items[i]), {
        signal,
        onProgress: (d) => {
          done[s] = d;
          options.onProgress?.(done.reduce((a, b) => a + b, 0), items.length);
        },
      });
      part.forEach((d, j) => results[slices[s][j]] = trim(d, slices[s][j]));
    }
  };
  await Promise.all([run(), run()].map((p) =>
    p.catch((e) => {
      failed.abort(e);
      throw e;
    })
  ));
  signal.throwIfAborted(); // aborted between slices
  return results;
}

/** A backend decomposition cut to its leading `held` dimensions (unchanged when it has no more). */
function trimmed(d: FactorDecomposition, held: number): FactorDecomposition | TrimmedDecomposition {
  if ("tridiagonal" in d || d.sigma.length <= held) return d;
  const k = d.sigma.length, r = d.upTransform.length / k;
  const cut = (t: Float64Array) => {
    const out = new Float64Array(r * held);
    for (let a = 0; a < r; a++) out.set(t.subarray(a * k, a * k + held), a * held);
    return out;
  };
  const leading = {
    sigma: d.sigma.slice(0, held),
    upTransform: cut(d.upTransform),
    downTransform: cut(d.downTransform),
  };
  return { sigma: d.sigma, leading };
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

/** Options of {@link rebuildLayers}. */
export interface RebuildOptions extends BackendCallOptions<RebuiltFactors> {
  /** Transform bytes of the layers decomposed again per run (default {@link SLICE_BYTES}). */
  readonly sliceBytes?: number;
}

/**
 * Output factors of the kept dimensions of every layer, in order (`onResult` with each as soon
 * as it is ready): up·down·(layer scale) = rescale·ΔW over the kept dimensions, for every kind,
 * so a writer sets alpha = scale·k′. Layers kept past their held dimensions are decomposed again
 * first, in runs of about {@link SLICE_BYTES} of transforms, each run rebuilt before the next
 * (so their full transforms are never all held at once).
 */
export async function rebuildLayers(
  backend: Backend,
  requests: readonly LayerRebuildRequest[],
  options: RebuildOptions = {},
): Promise<RebuiltFactors[]> {
  const runs = rebuildRuns(requests, options.sliceBytes ?? SLICE_BYTES);
  const results: RebuiltFactors[] = [];
  const items = runs.map((run) =>
    run.reduce((n, r) => n + (isKronecker(r.decomposition) ? 2 : 1), 0)
  );
  const total = items.reduce((a, b) => a + b, 0);
  let offset = 0, itemsDone = 0;
  for (const [i, run] of runs.entries()) {
    const decompositions = await untrimmed(backend, run, options.signal);
    const at = offset, before = itemsDone;
    results.push(
      ...await rebuildRun(backend, run, decompositions, {
        signal: options.signal,
        onResult: (n, f) => options.onResult?.(at + n, f),
        onProgress: (d) => options.onProgress?.(before + d, total),
      }),
    );
    offset += run.length;
    itemsDone += items[i];
  }
  return results;
}

/**
 * Consecutive runs of requests, each closing once the layers it must decompose again would
 * hold {@link SLICE_BYTES} of transforms (one run when none must).
 */
function rebuildRuns(
  requests: readonly LayerRebuildRequest[],
  limit: number,
): LayerRebuildRequest[][] {
  const runs: LayerRebuildRequest[][] = [[]];
  let bytes = 0;
  for (const r of requests) {
    runs.at(-1)!.push(r);
    if (!decomposedAgain(r)) continue;
    const f = r.layer.factors;
    bytes += 16 * f.rank * Math.min(f.out, f.inFlat, f.rank);
    if (bytes >= limit) {
      runs.push([]);
      bytes = 0;
    }
  }
  return runs.filter((run) => run.length > 0);
}

/** Whether a request keeps a dimension past those its (trimmed) decomposition holds. */
function decomposedAgain({ decomposition: d, keep }: LayerRebuildRequest): boolean {
  if (!isTrimmed(d)) return false;
  const held = d.leading.sigma.length;
  return keep.some((m) => m >= held);
}

/** {@link rebuildLayers} for one run, its decompositions untrimmed. */
async function rebuildRun(
  backend: Backend,
  requests: readonly LayerRebuildRequest[],
  decompositions: readonly (Decomposition | KroneckerDecomposition)[],
  options: BackendCallOptions<RebuiltFactors>,
): Promise<RebuiltFactors[]> {
  const plans: (KroneckerRebuildPlan | undefined)[] = [];
  const items: FactorRebuild[] = [];
  const owner: number[] = []; // request index of each backend item
  requests.forEach((r, n) => {
    const decomposition = decompositions[n];
    const lokr = r.layer.lycoris?.kind === "lokr" ? r.layer.lycoris : undefined;
    if (lokr && isKronecker(decomposition)) {
      const plan = planKroneckerRebuild({
        layer: lokr.kronecker,
        decomposition,
        keep: r.keep,
        rescale: r.rescale,
        dtype: r.dtype,
      });
      plans.push(plan);
      items.push(plan.first, plan.second);
      owner.push(n, n);
    } else if (!isKronecker(decomposition)) {
      plans.push(undefined);
      const { layer, keep, rescale, dtype } = r;
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
  const parts = await rebuildFactors(backend, items, { ...options, onResult: take });
  parts.forEach((f, j) => take(j, f)); // what was not reported as it came
  return results;
}

/**
 * Each request's decomposition as a rebuild can take it: a trimmed one's leading part when the
 * kept dimensions lie in it, else the layer decomposed again (all such layers in one call).
 */
async function untrimmed(
  backend: Backend,
  requests: readonly LayerRebuildRequest[],
  signal?: AbortSignal,
): Promise<(Decomposition | KroneckerDecomposition)[]> {
  const again: number[] = [];
  const out = requests.map((r, n) => {
    const d = r.decomposition;
    if (!isTrimmed(d)) return d;
    if (decomposedAgain(r)) again.push(n); // replaced below
    return d.leading;
  });
  if (again.length > 0) {
    const full = await backend.decompose(again.map((n) => requests[n].layer.factors), { signal });
    again.forEach((n, j) => out[n] = full[j]);
  }
  return out;
}
