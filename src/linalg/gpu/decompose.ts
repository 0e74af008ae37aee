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

import { BackendError } from "../../errors.ts";
import {
  type BackendCallOptions,
  type Decomposition,
  floatByteLength,
  type LowRankFactors,
} from "../backend.ts";
import { svdFromGrams } from "../gram_svd.ts";
import { checkFactors } from "../validation.ts";
import { Kernels } from "../wasm/kernels.ts";
import { runBatches, withBatchBuffers } from "./batches.ts";
import type { GpuContext } from "./device.ts";
import { Packer } from "./pack.ts";
import { OutMode, ProductItems, segments, tripleAt } from "./products.ts";

/** Bytes of packed factors per batch at most (also capped by the binding size). */
const BATCH_BYTES = 64 << 20;
/** Bytes of Gram partials per batch at most. */
const PARTIAL_BYTES = 32 << 20;

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
  readonly items: ProductItems;
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
 * ```
 */
export async function decomposeOnGpu(
  ctx: GpuContext,
  layers: readonly LowRankFactors[],
  options: BackendCallOptions<Decomposition> = {},
): Promise<Decomposition[]> {
  const batches = planBatches(ctx, layers);
  const kernels = await Kernels.shared();
  return runBatches(layers.length, {
    batches,
    run: (batch) => runBatch(ctx, batch),
    collect: (batch, partials) =>
      batch.layers.map((p) => [p.index, coreOf(kernels, p, partials)] as const),
    overlap: true,
  }, options);
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
    const words = Packer.wordsFor(layer.up.dtype, floatByteLength(layer.up)) +
      Packer.wordsFor(layer.down.dtype, floatByteLength(layer.down)) + 2;
    const segB = segments(layer.out), segA = segments(layer.inFlat);
    const partial = (segB.length + segA.length) * layer.rank ** 2 * 3;
    if (words > maxWords || partial > maxPartial) {
      throw new BackendError(`${what}: too large for one GPU batch on this adapter`);
    }
    if (
      !batch || batch.packer.words + words > maxWords ||
      batch.partialElements * 3 + partial > maxPartial
    ) {
      batch = { layers: [], packer: new Packer(), items: new ProductItems(), partialElements: 0 };
      batches.push(batch);
    }
    batch.layers.push(planLayer(batch, index, layer, segB, segA));
  });
  return batches;
}

/** Packs a layer's factors into the batch and adds the items of its segment Grams. */
function planLayer(
  batch: Batch,
  index: number,
  layer: LowRankFactors,
  segB: readonly [number, number][],
  segA: readonly [number, number][],
): PlannedLayer {
  const r = layer.rank;
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
    for (const seg of segs) {
      const outBase = batch.partialElements;
      batch.partialElements += r * r;
      parts.push(outBase);
      batch.items.add(format, view, format, view, {
        samples: seg,
        outBase,
        outStride: r,
        upperOnly: true,
      });
    }
  }
  return { index, layer, partsB, partsA };
}

function runBatch(ctx: GpuContext, batch: Batch): Promise<Float32Array> {
  return withBatchBuffers(ctx, async (gpu) => {
    const data = gpu.upload(batch.packer.finish(), "factors");
    const bytes = batch.partialElements * 3 * 4;
    const out = gpu.output(bytes, "grams");
    const products = await gpu.products(batch.items.groups(data, data, out, OutMode.Triple));
    await ctx.submit("Gram matrices", products.record);
    return new Float32Array(await ctx.read(out, 0, bytes));
  });
}

/** The layer's Grams summed from its segment partials, then the decomposition core. */
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
