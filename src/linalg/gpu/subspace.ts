/**
 * `subspaceScales` on the GPU: |uᵢᵀ·W·vᵢ| = |T_B[:, i]ᵀ·C·T_A[:, i]| with the
 * r × r matrix C = Bᵀ·W·Aᵀ, computed as Z = W·Aᵀ (out × r, df32) and then
 * C = Bᵀ·Z (summed near-exactly, partials added on the host in float64).
 * W is processed in row blocks (C is a sum over rows), so a weight may be
 * larger than one GPU binding. The O(r²·k) last step runs on the host.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import { type BackendCallOptions, floatByteLength, type SubspaceRequest } from "../backend.ts";
import { dtypeSize } from "../../safetensors/dtype.ts";
import { checkFactors } from "../validation.ts";
import { runBatches, withBatchBuffers } from "./batches.ts";
import type { GpuContext } from "./device.ts";
import { Format, type Packed, Packer } from "./pack.ts";
import { OutMode, ProductItems, segments, tripleAt } from "./products.ts";
import { gpuDType, weightName, WeightReader } from "./weights.ts";

const BLOCK_BYTES = 32 << 20;
const BATCH_BYTES = 64 << 20;

/** A row block of one request's weight. */
interface Unit {
  readonly request: number;
  readonly rows: readonly [number, number];
}

/**
 * |uᵢᵀ·W·vᵢ| for every dimension of each layer, in input order.
 *
 * @example
 * ```ts ignore
 * import { subspaceOnGpu } from "./subspace.ts";
 * const [scales] = await subspaceOnGpu(ctx, [{ weight: ref, factors, decomposition }]);
 * ```
 */
export async function subspaceOnGpu(
  ctx: GpuContext,
  requests: readonly SubspaceRequest[],
  options: BackendCallOptions<Float64Array> = {},
): Promise<Float64Array[]> {
  const cap = Math.min(BATCH_BYTES, ctx.limits.storageBinding);
  const units = planUnits(requests, Math.min(BLOCK_BYTES, cap));
  // C of each request, summed over its row blocks; a request is done after its last block.
  const grams = requests.map((req) => new Float64Array(req.factors.rank ** 2));
  const remaining = requests.map(() => 0);
  for (const u of units) remaining[u.request]++;
  const finish = (index: number) => [index, scales(requests[index], grams[index])] as const;
  const reader = new WeightReader();
  try {
    return await runBatches(requests.length, {
      batches: planSubspaceBatches(requests, units, cap),
      finished: requests.flatMap((_, i) => remaining[i] === 0 ? [finish(i)] : []),
      run: (batch) => runSubspaceBatch(ctx, requests, batch, reader),
      collect: (batch, partials) =>
        batch.flatMap((u, i) => {
          const g = grams[u.request];
          for (const base of partials.offsets[i]) {
            for (let e = 0; e < g.length; e++) g[e] += tripleAt(partials.values, base + e);
          }
          return --remaining[u.request] === 0 ? [finish(u.request)] : [];
        }),
    }, options);
  } finally {
    reader.close();
  }
}

/** Bytes per weight element on the GPU (F64 goes as f32). */
function gpuElementBytes(w: SubspaceRequest["weight"]): number {
  return dtypeSize(gpuDType(w.dtype));
}

/** Checks every request and cuts each weight into row blocks of at most `blockCap` bytes. */
function planUnits(requests: readonly SubspaceRequest[], blockCap: number): Unit[] {
  const units: Unit[] = [];
  requests.forEach((req, index) => {
    const { weight: w, factors: f } = req;
    checkFactors(f, `subspace: layer ${index}`);
    if (w.rows !== f.out || w.cols !== f.inFlat) {
      throw new BackendError(
        `${weightName(w)}: subspace scales need a ${f.out}×${f.inFlat} weight for layer ${index}`,
      );
    }
    const k = req.decomposition.sigma.length;
    if (
      req.decomposition.upTransform.length !== f.rank * k ||
      req.decomposition.downTransform.length !== f.rank * k
    ) {
      throw new BackendError(`subspace: layer ${index}: transforms are not ${f.rank}×${k}`);
    }
    const rowBytes = Math.max(1, w.cols * gpuElementBytes(w));
    const blockRows = Math.max(1, Math.floor(blockCap / rowBytes));
    if (rowBytes > blockCap) {
      throw new BackendError(`${weightName(w)}: a row is larger than a GPU batch`);
    }
    for (let r0 = 0; r0 < w.rows; r0 += blockRows) {
      units.push({ request: index, rows: [r0, Math.min(w.rows, r0 + blockRows)] });
    }
  });
  return units;
}

/** Consecutive units whose W blocks, factors, Z and C partials each fit `cap` bytes. */
function planSubspaceBatches(
  requests: readonly SubspaceRequest[],
  units: readonly Unit[],
  cap: number,
): Unit[][] {
  const batches: Unit[][] = [];
  let start = 0;
  while (start < units.length) {
    let end = start, wBytes = 0, fWords = 0, zWords = 0, cWords = 0;
    while (end < units.length) {
      const u = units[end], f = requests[u.request].factors, w = requests[u.request].weight;
      const rows = u.rows[1] - u.rows[0];
      const nb = rows * w.cols * gpuElementBytes(w) + 4;
      const nf = Packer.wordsFor(f.up.dtype, floatByteLength(f.up)) +
        Packer.wordsFor(f.down.dtype, floatByteLength(f.down)) + 2;
      const nz = rows * f.rank * 2, nc = segments(rows).length * f.rank ** 2 * 3;
      if (
        end > start && (wBytes + nb > cap || (fWords + nf) * 4 > cap || (zWords + nz) * 4 > cap ||
          (cWords + nc) * 4 > cap)
      ) break;
      wBytes += nb, fWords += nf, zWords += nz, cWords += nc;
      end++;
    }
    batches.push(units.slice(start, end));
    start = end;
  }
  return batches;
}

/** |T_B[:, i]ᵀ·C·T_A[:, i]| for i < k. */
function scales(req: SubspaceRequest, c: Float64Array): Float64Array {
  const { upTransform: tb, downTransform: ta, sigma } = req.decomposition;
  const r = req.factors.rank, k = sigma.length;
  const out = new Float64Array(k);
  for (let i = 0; i < k; i++) {
    let s = 0;
    for (let a = 0; a < r; a++) {
      const ta_ = tb[a * k + i];
      if (ta_ === 0) continue;
      let row = 0;
      for (let b = 0; b < r; b++) row += c[a * r + b] * ta[b * k + i];
      s += ta_ * row;
    }
    out[i] = Math.abs(s);
  }
  return out;
}

/** A batch's packed inputs and product items (see {@link planSubspaceProducts}). */
interface SubspaceProducts {
  readonly weights: Packer;
  readonly factors: Packer;
  /** Z = W·Aᵀ items. */
  readonly z: ProductItems;
  /** C = Bᵀ·Z items. */
  readonly c: ProductItems;
  /** Elements of Z and of C's partials. */
  readonly zElements: number;
  readonly cElements: number;
  /** Per unit: element offsets of its C partials (triples). */
  readonly offsets: number[][];
}

/** Packs a batch's weight blocks and factors and lists the items of Z and C. */
function planSubspaceProducts(
  requests: readonly SubspaceRequest[],
  units: readonly Unit[],
  blocks: readonly { dtype: "F16" | "BF16" | "F32"; bytes: Uint8Array }[],
): SubspaceProducts {
  const weights = new Packer(), factors = new Packer();
  const zItems = new ProductItems(), cItems = new ProductItems();
  const factorCache = new Map<number, { up: Packed; down: Packed }>();
  let z = 0, c = 0;
  const offsets: number[][] = [];
  units.forEach((u, i) => {
    const f = requests[u.request].factors;
    const r = f.rank, cols = f.inFlat, rows = u.rows[1] - u.rows[0];
    let packed = factorCache.get(u.request);
    if (!packed) {
      packed = { up: factors.addData(f.up), down: factors.addData(f.down) };
      factorCache.set(u.request, packed);
    }
    const w = weights.add(blocks[i].dtype, blocks[i].bytes);
    // Z = W·Aᵀ (rows × r): samples are columns; X = Wᵀ, Y = Aᵀ.
    const zBase = z;
    z += rows * r;
    zItems.add(
      w.format,
      { base: w.base, sampleStride: 1, featureStride: cols, features: rows },
      packed.down.format,
      { base: packed.down.base, sampleStride: 1, featureStride: cols, features: r },
      { samples: [0, cols], outBase: zBase, outStride: r },
    );
    // C += B[rows]ᵀ·Z (r × r): samples are rows.
    const parts: number[] = [];
    for (const seg of segments(rows)) {
      parts.push(c);
      cItems.add(
        packed.up.format,
        { base: packed.up.base + u.rows[0] * r, sampleStride: r, featureStride: 1, features: r },
        Format.DF32,
        { base: zBase, sampleStride: r, featureStride: 1, features: r },
        { samples: seg, outBase: c, outStride: r },
      );
      c += r * r;
    }
    offsets.push(parts);
  });
  return { weights, factors, z: zItems, c: cItems, zElements: z, cElements: c, offsets };
}

/** Reads a batch's weight blocks, runs Z = W·Aᵀ then C = Bᵀ·Z, and reads C's partials back. */
function runSubspaceBatch(
  ctx: GpuContext,
  requests: readonly SubspaceRequest[],
  units: readonly Unit[],
  reader: WeightReader,
): Promise<{ values: Float32Array; offsets: number[][] }> {
  const blocks = units.map((u) => {
    const w = requests[u.request].weight;
    const size = dtypeSize(w.dtype);
    return reader.read({
      ...w,
      offset: w.offset + u.rows[0] * w.cols * size,
      rows: u.rows[1] - u.rows[0],
    });
  });
  const plan = planSubspaceProducts(requests, units, blocks);
  return withBatchBuffers(ctx, async (gpu) => {
    const wBuf = gpu.upload(plan.weights.finish(), "subspace weights");
    const fBuf = gpu.upload(plan.factors.finish(), "subspace factors");
    const zBuf = gpu.buffer(Math.max(1, plan.zElements) * 8, GPUBufferUsage.STORAGE, "W·Aᵀ");
    const cBuf = gpu.output(Math.max(1, plan.cElements) * 12, "Bᵀ·W·Aᵀ");
    const first = await gpu.products(plan.z.groups(wBuf, fBuf, zBuf, OutMode.DF32));
    const second = await gpu.products(plan.c.groups(fBuf, zBuf, cBuf, OutMode.Triple));
    await ctx.submit("subspace scales", (encoder) => {
      first.record(encoder);
      second.record(encoder);
    });
    const values = new Float32Array(await ctx.read(cBuf, 0, plan.cElements * 12));
    return { values, offsets: plan.offsets };
  });
}
