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
import type { BackendCallOptions, SubspaceRequest } from "../backend.ts";
import { dtypeSize } from "../../safetensors/dtype.ts";
import { addProduct, type CrossGroup, OutMode, prepareCross, tripleAt } from "./products.ts";
import { checkFactors } from "../validation.ts";
import { segments } from "./decompose.ts";
import type { GpuContext } from "./device.ts";
import { Format, type Packed, Packer } from "./pack.ts";
import { weightName, WeightReader } from "./weights.ts";

const BLOCK_BYTES = 32 << 20;
const BATCH_BYTES = 64 << 20;

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
  const blockCap = Math.min(BLOCK_BYTES, cap);
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
    const rowBytes = Math.max(1, w.cols * (w.dtype === "F64" ? 4 : dtypeSize(w.dtype)));
    const blockRows = Math.max(1, Math.floor(blockCap / rowBytes));
    if (rowBytes > blockCap) {
      throw new BackendError(`${weightName(w)}: a row is larger than a GPU batch`);
    }
    for (let r0 = 0; r0 < w.rows; r0 += blockRows) {
      units.push({ request: index, rows: [r0, Math.min(w.rows, r0 + blockRows)] });
    }
  });
  const grams = requests.map((req) => new Float64Array(req.factors.rank ** 2));
  const remaining = requests.map(() => 0);
  for (const u of units) remaining[u.request]++;
  const results: Float64Array[] = new Array(requests.length);
  let done = 0;
  const finish = (index: number) => {
    results[index] = scales(requests[index], grams[index]);
    options.onResult?.(index, results[index]);
    options.onProgress?.(++done, requests.length);
  };
  requests.forEach((_, i) => remaining[i] === 0 && finish(i));
  const reader = new WeightReader();
  try {
    let start = 0;
    while (start < units.length) {
      // A batch: units whose W blocks, factors, Z and C partials fit the caps.
      let end = start, wBytes = 0, fWords = 0, zWords = 0, cWords = 0;
      while (end < units.length) {
        const u = units[end], f = requests[u.request].factors, w = requests[u.request].weight;
        const rows = u.rows[1] - u.rows[0];
        const nb = rows * w.cols * (w.dtype === "F64" ? 4 : dtypeSize(w.dtype)) + 4;
        const nf = Packer.wordsFor(f.up.dtype, f.up.bytes.byteLength) +
          Packer.wordsFor(f.down.dtype, f.down.bytes.byteLength) + 2;
        const nz = rows * f.rank * 2, nc = segments(rows).length * f.rank ** 2 * 3;
        if (
          end > start && (wBytes + nb > cap || (fWords + nf) * 4 > cap || (zWords + nz) * 4 > cap ||
            (cWords + nc) * 4 > cap)
        ) break;
        wBytes += nb, fWords += nf, zWords += nz, cWords += nc;
        end++;
      }
      const batch = units.slice(start, end);
      start = end;
      const blocks = batch.map((u) => {
        const w = requests[u.request].weight;
        const size = dtypeSize(w.dtype);
        return reader.read({
          ...w,
          offset: w.offset + u.rows[0] * w.cols * size,
          rows: u.rows[1] - u.rows[0],
        });
      });
      const partials = await runSubspaceBatch(ctx, requests, batch, blocks);
      batch.forEach((u, i) => {
        const g = grams[u.request];
        for (const base of partials.offsets[i]) {
          for (let e = 0; e < g.length; e++) g[e] += tripleAt(partials.values, base + e);
        }
        if (--remaining[u.request] === 0) finish(u.request);
      });
    }
    return results;
  } finally {
    reader.close();
  }
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

async function runSubspaceBatch(
  ctx: GpuContext,
  requests: readonly SubspaceRequest[],
  units: readonly Unit[],
  blocks: readonly { dtype: "F16" | "BF16" | "F32"; bytes: Uint8Array }[],
): Promise<{ values: Float32Array; offsets: number[][] }> {
  const wPack = new Packer(), fPack = new Packer();
  const zItems = new Map<string, { fx: Format; fy: Format; items: number[] }>();
  const cItems = new Map<string, { fx: Format; fy: Format; items: number[] }>();
  const items = (m: typeof zItems, fx: Format, fy: Format) => {
    const key = `${fx},${fy}`;
    let g = m.get(key);
    if (!g) m.set(key, g = { fx, fy, items: [] });
    return g.items;
  };
  const factorCache = new Map<number, { up: Packed; down: Packed }>();
  let z = 0, c = 0;
  const offsets: number[][] = [];
  units.forEach((u, i) => {
    const f = requests[u.request].factors;
    const r = f.rank, cols = f.inFlat, rows = u.rows[1] - u.rows[0];
    let packed = factorCache.get(u.request);
    if (!packed) {
      packed = {
        up: fPack.addData(f.up),
        down: fPack.addData(f.down),
      };
      factorCache.set(u.request, packed);
    }
    const w = wPack.add(blocks[i].dtype, blocks[i].bytes);
    // Z = W·Aᵀ (rows × r): samples are columns; X = Wᵀ, Y = Aᵀ.
    const zBase = z;
    z += rows * r;
    addProduct(
      items(zItems, w.format, packed.down.format),
      { base: w.base, sampleStride: 1, featureStride: cols, features: rows },
      { base: packed.down.base, sampleStride: 1, featureStride: cols, features: r },
      { samples: [0, cols], outBase: zBase, outStride: r },
    );
    // C += B[rows]ᵀ·Z (r × r): samples are rows.
    const parts: number[] = [];
    for (const seg of segments(rows)) {
      parts.push(c);
      addProduct(
        items(cItems, packed.up.format, Format.DF32),
        { base: packed.up.base + u.rows[0] * r, sampleStride: r, featureStride: 1, features: r },
        { base: zBase, sampleStride: r, featureStride: 1, features: r },
        { samples: seg, outBase: c, outStride: r },
      );
      c += r * r;
    }
    offsets.push(parts);
  });
  const buffers: GPUBuffer[] = [];
  const releases: (() => void)[] = [];
  try {
    const wBuf = ctx.upload(wPack.finish(), GPUBufferUsage.STORAGE, "subspace weights");
    buffers.push(wBuf);
    const fBuf = ctx.upload(fPack.finish(), GPUBufferUsage.STORAGE, "subspace factors");
    buffers.push(fBuf);
    const zBuf = ctx.buffer(Math.max(1, z) * 8, GPUBufferUsage.STORAGE, "W·Aᵀ");
    buffers.push(zBuf);
    const cBytes = Math.max(1, c) * 12;
    const cBuf = ctx.buffer(cBytes, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, "Bᵀ·W·Aᵀ");
    buffers.push(cBuf);
    const group = (
      g: { fx: Format; fy: Format; items: number[] },
      x: GPUBuffer,
      y: GPUBuffer,
      out: GPUBuffer,
      mode: OutMode,
    ): CrossGroup => ({ formatX: g.fx, formatY: g.fy, x, y, out, mode, items: g.items });
    const first = await prepareCross(
      ctx,
      [...zItems.values()].map((g) => group(g, wBuf, fBuf, zBuf, OutMode.DF32)),
    );
    releases.push(first.release);
    const second = await prepareCross(
      ctx,
      [...cItems.values()].map((g) => group(g, fBuf, zBuf, cBuf, OutMode.Triple)),
    );
    releases.push(second.release);
    await ctx.submit("subspace scales", (encoder) => {
      first.record(encoder);
      second.record(encoder);
    });
    return { values: new Float32Array(await ctx.read(cBuf, 0, c * 12)), offsets };
  } finally {
    for (const r of releases) r();
    ctx.release(...buffers);
  }
}
