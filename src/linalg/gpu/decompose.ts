/**
 * `decompose` on the GPU: the Gram matrices G_B = BᵀB and G_A = A·Aᵀ of many
 * layers per submit (the O((out + in′)·r²) part), summed exactly enough to
 * match float64 (three-f32 cascade over exact limb products), then the
 * r × r core on the host in float64 with the CPU backend's own WASM kernels
 * ({@link svdFromGrams}: the same core as after the CPU's Gram step).
 *
 * Why the core stays on the host: the eigendecompositions of the Grams and
 * the core SVD cost O(r³), nothing next to the Grams, but they square
 * condition numbers — an f32 (or even df32) Jacobi on the GPU would lose the
 * small singular values that the accuracy target (1e-4 relative for
 * σᵢ ≥ 1e-3·σ₁) and identical ranks need. The host step of one batch runs
 * while the GPU works on the next.
 *
 * @module
 */

import { checkFactors } from "../validation.ts";
import { BackendError } from "../../errors.ts";
import type { BackendCallOptions, Decomposition, LowRankFactors } from "../backend.ts";
import { svdFromGrams } from "../gram_svd.ts";
import { Kernels } from "../wasm/kernels.ts";
import {
  addProduct,
  type CrossGroup,
  OutMode,
  prepareCross,
  type PreparedCross,
  tripleAt,
} from "./products.ts";
import type { GpuContext } from "./device.ts";
import { type Format, Packer } from "./pack.ts";

/** Samples per segment at least (more segments = more parallel work items). */
const MIN_SEGMENT = 2048;
/** At most this many segments per Gram (bounds the readback). */
const MAX_SEGMENTS = 4;
/** Bytes of packed factors per batch at most (also capped by the binding size). */
const BATCH_BYTES = 64 << 20;
/** Bytes of Gram partials per batch at most. */
const PARTIAL_BYTES = 32 << 20;

/**
 * Segments of a sum over `n` samples: [start, end) pairs (at most four, of
 * at least 2048 samples each), computed by separate work items.
 *
 * @example
 * ```ts
 * import { segments } from "./decompose.ts";
 * console.log(segments(10240)); // [[0, 2560], [2560, 5120], [5120, 7680], [7680, 10240]]
 * ```
 */
export function segments(n: number): [number, number][] {
  const length = Math.max(MIN_SEGMENT, Math.ceil(n / MAX_SEGMENTS));
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += length) out.push([s, Math.min(n, s + length)]);
  return out.length > 0 ? out : [[0, 0]];
}

interface PlannedLayer {
  readonly index: number;
  readonly layer: LowRankFactors;
  /** Partial-buffer element offsets of the B and A segment Grams. */
  readonly partsB: number[];
  readonly partsA: number[];
}

interface Batch {
  readonly layers: PlannedLayer[];
  readonly packer: Packer;
  readonly items: Map<string, { fx: Format; fy: Format; items: number[] }>;
  partialElements: number;
}

/**
 * Decomposes layers on the GPU (see the module doc), in input order.
 *
 * @example
 * ```ts ignore
 * import { GpuContext } from "./device.ts";
 * import { decomposeOnGpu } from "./decompose.ts";
 * const ctx = await GpuContext.create();
 * const [d] = await decomposeOnGpu(ctx, [layer]);
 * console.log(d.sigma);
 * ```
 */
export async function decomposeOnGpu(
  ctx: GpuContext,
  layers: readonly LowRankFactors[],
  options: BackendCallOptions<Decomposition> = {},
): Promise<Decomposition[]> {
  const results: Decomposition[] = new Array(layers.length);
  const batches = planBatches(ctx, layers);
  const kernels = await Kernels.shared();
  let done = 0;
  let inflight = batches.length > 0 ? runBatch(ctx, batches[0]) : undefined;
  for (let b = 0; b < batches.length; b++) {
    options.signal?.throwIfAborted();
    const next = b + 1 < batches.length ? runBatch(ctx, batches[b + 1]) : undefined;
    // A failure of `next` must not go unobserved while `inflight` is awaited.
    next?.catch(() => {});
    const partials = await inflight!;
    for (const p of batches[b].layers) {
      results[p.index] = coreOf(kernels, p, partials);
      options.onResult?.(p.index, results[p.index]);
      options.onProgress?.(++done, layers.length);
    }
    inflight = next;
  }
  return results;
}

function planBatches(ctx: GpuContext, layers: readonly LowRankFactors[]): Batch[] {
  const maxWords = Math.min(BATCH_BYTES, ctx.limits.storageBinding) / 4;
  const maxPartial = Math.min(PARTIAL_BYTES, ctx.limits.storageBinding) / 4;
  const batches: Batch[] = [];
  let batch: Batch | undefined;
  layers.forEach((layer, index) => {
    const what =
      `decompose: layer ${index} (${layer.out}×${layer.rank}·${layer.rank}×${layer.inFlat})`;
    checkFactors(layer, what);
    const r = layer.rank;
    const words = Packer.wordsFor(layer.up.dtype, layer.up.bytes.byteLength) +
      Packer.wordsFor(layer.down.dtype, layer.down.bytes.byteLength) + 2;
    const segB = segments(layer.out), segA = segments(layer.inFlat);
    const partial = (segB.length + segA.length) * r * r * 3;
    if (words > maxWords || partial > maxPartial) {
      throw new BackendError(`${what}: too large for one GPU batch on this adapter`);
    }
    if (
      !batch || batch.packer.words + words > maxWords ||
      batch.partialElements * 3 + partial > maxPartial
    ) {
      batch = { layers: [], packer: new Packer(), items: new Map(), partialElements: 0 };
      batches.push(batch);
    }
    const up = batch.packer.addData(layer.up);
    const down = batch.packer.addData(layer.down);
    const partsB: number[] = [], partsA: number[] = [];
    // G_B = BᵀB: samples are B's rows; G_A = A·Aᵀ: samples are A's columns.
    const viewB = { base: up.base, sampleStride: r, featureStride: 1, features: r };
    const viewA = { base: down.base, sampleStride: 1, featureStride: layer.inFlat, features: r };
    for (
      const [view, segs, parts, format] of [
        [viewB, segB, partsB, up.format],
        [viewA, segA, partsA, down.format],
      ] as const
    ) {
      const key = `${format}`;
      let group = batch.items.get(key);
      if (!group) batch.items.set(key, group = { fx: format, fy: format, items: [] });
      for (const seg of segs) {
        const outBase = batch.partialElements;
        batch.partialElements += r * r;
        parts.push(outBase);
        addProduct(group.items, view, view, {
          samples: seg,
          outBase,
          outStride: r,
          upperOnly: true,
        });
      }
    }
    batch.layers.push({ index, layer, partsB, partsA });
  });
  return batches;
}

async function runBatch(ctx: GpuContext, batch: Batch): Promise<Float32Array> {
  const data = ctx.upload(batch.packer.finish(), GPUBufferUsage.STORAGE, "factors");
  const bytes = batch.partialElements * 3 * 4;
  const out = ctx.buffer(bytes, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, "grams");
  let prepared: PreparedCross | undefined;
  try {
    const groups: CrossGroup[] = [...batch.items.values()].map((g) => ({
      formatX: g.fx,
      formatY: g.fy,
      x: data,
      y: data,
      out,
      mode: OutMode.Triple,
      items: g.items,
    }));
    prepared = await prepareCross(ctx, groups);
    await ctx.submit("Gram matrices", prepared.record);
    return new Float32Array(await ctx.read(out, 0, bytes));
  } finally {
    prepared?.release();
    ctx.release(data, out);
  }
}

function coreOf(kernels: Kernels, p: PlannedLayer, partials: Float32Array): Decomposition {
  const { layer } = p;
  const r = layer.rank;
  const gram = (parts: number[]) => {
    const g = new Float64Array(r * r);
    for (const base of parts) {
      for (let i = 0; i < r; i++) {
        for (let j = i; j < r; j++) g[i * r + j] += tripleAt(partials, base + i * r + j);
      }
    }
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < i; j++) g[i * r + j] = g[j * r + i];
    }
    return g;
  };
  return svdFromGrams(kernels, { up: gram(p.partsB), down: gram(p.partsA) }, layer);
}
