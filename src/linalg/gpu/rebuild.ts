/**
 * `rebuild` on the GPU: up = B·S_B and down = S_Aᵀ·A, with the small
 * S_B = T_B[:, keep]·diag(g) and S_A = T_A[:, keep]·diag(g) made on the host
 * in float64 (g = √(σ·rescale/|scale|); the sign of scale goes on up, as
 * alpha carries it too) and uploaded as df32. The products
 * of exact limbs are summed near-exactly and rounded once to f32, so the
 * result matches a float64 product rounded to f32.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import {
  type BackendCallOptions,
  floatByteLength,
  type FloatData,
  type RebuildDType,
  type RebuildRequest,
  type RebuiltFactors,
} from "../backend.ts";
import { encodeFloats } from "../../safetensors/dtype.ts";
import { checkRebuild } from "../validation.ts";
import { runBatches, withBatchBuffers } from "./batches.ts";
import type { GpuContext } from "./device.ts";
import { Packer } from "./pack.ts";
import { OutMode, ProductItems } from "./products.ts";

const BATCH_BYTES = 64 << 20;

interface Planned {
  readonly index: number;
  readonly out: number;
  readonly inFlat: number;
  readonly kept: number;
  readonly upBase: number;
  readonly downBase: number;
}

interface RebuildBatch {
  readonly planned: Planned[];
  readonly packer: Packer;
  readonly items: ProductItems;
  outputs: number;
}

/** The small r × k′ matrix T[:, keep]·diag(g), row-major. */
function scaledColumns(
  transform: Float64Array,
  k: number,
  keep: readonly number[],
  g: Float64Array,
): Float64Array {
  const r = transform.length / Math.max(1, k);
  const kept = keep.length;
  const s = new Float64Array(r * kept);
  for (let j = 0; j < r; j++) {
    for (let c = 0; c < kept; c++) s[j * kept + c] = transform[j * k + keep[c]] * g[c];
  }
  return s;
}

/**
 * Output factors for the kept dimensions of each layer, in input order.
 *
 * @example
 * ```ts ignore
 * import { rebuildOnGpu } from "./rebuild.ts";
 * const [{ up, down }] = await rebuildOnGpu(ctx, [{ factors, decomposition, keep: [0, 1], rescale: 1 }]);
 * ```
 */
export async function rebuildOnGpu(
  ctx: GpuContext,
  requests: readonly RebuildRequest[],
  options: BackendCallOptions<RebuiltFactors> = {},
): Promise<RebuiltFactors[]> {
  const maxWords = Math.min(BATCH_BYTES, ctx.limits.storageBinding) / 4;
  const batches: RebuildBatch[] = [];
  const finished: [number, RebuiltFactors][] = [];
  requests.forEach((req, index) => {
    const what = `rebuild: layer ${index}`;
    checkRebuild(req, what); // the same checks and messages as the CPU backend
    const { factors, keep } = req;
    const { out, rank: r, inFlat } = factors;
    const kept = keep.length;
    if (kept === 0) {
      const none = { dtype: req.dtype ?? "F32", bytes: new Uint8Array(0) };
      finished.push([index, { up: none, down: none }]);
      return;
    }
    const outputs = (out + inFlat) * kept;
    const words = Packer.wordsFor(factors.up.dtype, floatByteLength(factors.up)) +
      Packer.wordsFor(factors.down.dtype, floatByteLength(factors.down)) + 4 * r * kept + 4;
    if (words > maxWords || outputs > maxWords) {
      throw new BackendError(`${what}: too large for one GPU batch on this adapter`);
    }
    let batch = batches.at(-1);
    if (!batch || batch.packer.words + words > maxWords || batch.outputs + outputs > maxWords) {
      batch = { planned: [], packer: new Packer(), items: new ProductItems(), outputs: 0 };
      batches.push(batch);
    }
    batch.planned.push(planRebuild(batch, index, req));
  });
  return await runBatches(requests.length, {
    batches,
    finished,
    run: (batch) => runRebuildBatch(ctx, batch),
    collect: (batch, values) =>
      batch.planned.map((p) => {
        const dtype = requests[p.index].dtype ?? "F32";
        const factors = {
          up: encoded(values.subarray(p.upBase, p.upBase + p.out * p.kept), dtype),
          down: encoded(values.subarray(p.downBase, p.downBase + p.kept * p.inFlat), dtype),
        };
        return [p.index, factors] as const;
      }),
  }, options);
}

/** Packs a request's inputs into the batch and adds the items of its two products. */
function planRebuild(batch: RebuildBatch, index: number, req: RebuildRequest): Planned {
  const { factors, decomposition, keep, rescale } = req;
  const { out, rank: r, inFlat, scale } = factors;
  const k = decomposition.sigma.length;
  const kept = keep.length;
  const sign = scale < 0 ? -1 : 1;
  const g = Float64Array.from(keep, (i) => {
    const sigma = decomposition.sigma[i];
    return sigma > 0 ? Math.sqrt(sigma * rescale / Math.abs(scale)) : 0;
  });
  const gUp = g.map((x) => sign * x);
  const b = batch.packer.addData(factors.up);
  const a = batch.packer.addData(factors.down);
  const sb = batch.packer.addFloat64(scaledColumns(decomposition.upTransform, k, keep, gUp));
  const sa = batch.packer.addFloat64(scaledColumns(decomposition.downTransform, k, keep, g));
  const upBase = batch.outputs, downBase = upBase + out * kept;
  batch.outputs += (out + inFlat) * kept;
  // up[row, c] = Σ_j B[row, j]·S_B[j, c]: samples j, X = Bᵀ, Y = S_B.
  batch.items.add(
    b.format,
    { base: b.base, sampleStride: 1, featureStride: r, features: out },
    sb.format,
    { base: sb.base, sampleStride: kept, featureStride: 1, features: kept },
    { samples: [0, r], outBase: upBase, outStride: kept },
  );
  // down[c, col] = Σ_j S_A[j, c]·A[j, col]: samples j, X = S_A, Y = A.
  batch.items.add(
    sa.format,
    { base: sa.base, sampleStride: kept, featureStride: 1, features: kept },
    a.format,
    { base: a.base, sampleStride: inFlat, featureStride: 1, features: inFlat },
    { samples: [0, r], outBase: downBase, outStride: inFlat },
  );
  return { index, out, inFlat, kept, upBase, downBase };
}

/** f32 results as factor data of `dtype` (rounded as the CPU kernels round). */
function encoded(values: Float32Array, dtype: RebuildDType): FloatData {
  const bytes = dtype === "F32"
    ? new Uint8Array(values.slice().buffer)
    : encodeFloats(values, dtype);
  return { dtype, bytes };
}

function runRebuildBatch(ctx: GpuContext, batch: RebuildBatch): Promise<Float32Array> {
  return withBatchBuffers(ctx, async (gpu) => {
    const data = gpu.upload(batch.packer.finish(), "rebuild inputs");
    const bytes = batch.outputs * 4;
    const out = gpu.output(bytes, "rebuilt");
    const products = await gpu.products(batch.items.groups(data, data, out, OutMode.F32));
    await ctx.submit("rebuild", products.record);
    return new Float32Array(await ctx.read(out, 0, bytes));
  });
}
