/**
 * One work item of the CPU backend, computed start to finish on one thread
 * (a worker, or the caller's thread for small jobs) with that thread's WASM
 * kernels. The same functions run everywhere, so results do not depend on
 * where an item ran.
 *
 * @module
 */

import { BackendError, SafetensorsError } from "../../errors.ts";
import { dtypeSize } from "../../safetensors/dtype.ts";
import { type FileRange, readRangeInto } from "../../safetensors/file_range.ts";
import { describeOsError } from "../../safetensors/reader.ts";
import type {
  BaseNorms,
  BaseWeightRef,
  Decomposition,
  FloatData,
  LowRankFactors,
  NormRequest,
  RebuildRequest,
  RebuiltFactors,
  SubspaceRequest,
} from "../backend.ts";
import { decompositionFromGrams, matrix, pivotTolerance } from "../dense.ts";
import { DTYPE_CODES, type Kernels } from "../wasm/kernels.ts";
import { type F32Weight, spectralNorm } from "./spectral.ts";

/**
 * Opens files (checkpoints, LoRAs) on demand and keeps them open, one handle
 * per path, reading byte ranges straight into kernel memory.
 *
 * @example
 * ```ts ignore
 * const reader = new RangeReader();
 * try {
 *   reader.read({ path, offset, byteLength: into.byteLength }, into);
 * } finally {
 *   reader.close();
 * }
 * ```
 */
export class RangeReader {
  #files = new Map<string, Deno.FsFile>();

  /** Fills `into` with the bytes at `range.offset` of its file (`into.byteLength` of them). */
  read(range: FileRange, into: Uint8Array): void {
    let file = this.#files.get(range.path);
    if (!file) {
      try {
        file = Deno.openSync(range.path, { read: true });
      } catch (e) {
        throw new SafetensorsError(`${range.path}: cannot open (${describeOsError(e)})`, {
          cause: e,
        });
      }
      this.#files.set(range.path, file);
    }
    // Synchronous: this thread has nothing else to do meanwhile, and from the
    // page cache sync reads cost a fraction of async ones.
    readRangeInto(file, range, into);
  }

  /** Closes every handle. */
  close(): void {
    for (const file of this.#files.values()) file.close();
    this.#files.clear();
  }
}

/** What an item needs besides its input. */
export interface ItemContext {
  /** This thread's kernels. */
  readonly kernels: Kernels;
  /** This thread's file reader (base weights, stored factors). */
  readonly reader: RangeReader;
}

const even = (n: number) => n + (n & 1);

/** Puts factor data into kernel memory: read from its file when stored there, else copied. */
function load(context: ItemContext, data: FloatData): number {
  const { kernels } = context;
  if (!data.source) return kernels.put(data.bytes);
  const ptr = kernels.alloc(data.source.byteLength);
  context.reader.read(data.source, kernels.u8(ptr, data.source.byteLength));
  return ptr;
}

/**
 * The SVD of one layer's ΔW = scale·up·down, via its Gram matrices (see
 * {@link decompositionFromGrams}).
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { decomposeLayer, RangeReader } from "./compute.ts";
 * const context = { kernels: await Kernels.load(), reader: new RangeReader() };
 * const f32 = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
 * const d = decomposeLayer(context, {
 *   up: { dtype: "F32", bytes: f32([1, 0]) },
 *   down: { dtype: "F32", bytes: f32([2, 0, 0]) },
 *   out: 2,
 *   rank: 1,
 *   inFlat: 3,
 *   scale: 0.5,
 * });
 * console.log(d.sigma); // Float64Array [1]
 * ```
 */
export function decomposeLayer(context: ItemContext, layer: LowRankFactors): Decomposition {
  const { out, rank: r, inFlat } = layer;
  const { kernels } = context;
  kernels.reset();
  const up = load(context, layer.up);
  const down = load(context, layer.down);
  const gramUp = kernels.alloc(r * r * 8);
  const gramDown = kernels.alloc(r * r * 8);
  const x = kernels.exports;
  const scratch = kernels.alloc(r * x.gramBlockWidth(r) * 12);
  // BᵀB (the Gram matrix of Bᵀ's rows) and A·Aᵀ, each decoded block by block.
  x.gramOf(up, DTYPE_CODES[layer.up.dtype], out, r, true, gramUp, scratch);
  x.gramOf(down, DTYPE_CODES[layer.down.dtype], r, inFlat, false, gramDown, scratch);
  return decomposeGrams(kernels, gramUp, gramDown, layer);
}

/**
 * The SVD of one layer's ΔW from its Gram matrices BᵀB and A·Aᵀ (r × r, f64, row-major, both
 * triangles), computed as {@link decomposeLayer} computes it after its Gram step: for a backend
 * that forms the Grams elsewhere (the GPU) and does the r × r work on this thread.
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { decompositionOfGrams } from "./compute.ts";
 * const kernels = await Kernels.load();
 * // B = [1, 0]ᵀ and A = [2, 0, 0]: BᵀB = [1], A·Aᵀ = [4]; ΔW = 0.5·B·A has σ = 1.
 * const layer = { out: 2, rank: 1, inFlat: 3, scale: 0.5 };
 * const d = decompositionOfGrams(kernels, { up: new Float64Array([1]), down: new Float64Array([4]) }, layer);
 * console.log(d.sigma); // Float64Array [1]
 * ```
 */
export function decompositionOfGrams(
  kernels: Kernels,
  grams: { readonly up: Float64Array; readonly down: Float64Array },
  layer: Pick<LowRankFactors, "out" | "rank" | "inFlat" | "scale">,
): Decomposition {
  const r = layer.rank;
  if (grams.up.length !== r * r || grams.down.length !== r * r) {
    throw new BackendError(
      `Gram matrices of ${grams.up.length} and ${grams.down.length} values for rank ${r}`,
    );
  }
  kernels.reset();
  const gramUp = kernels.alloc(r * r * 8), gramDown = kernels.alloc(r * r * 8);
  kernels.f64(gramUp, r * r).set(grams.up);
  kernels.f64(gramDown, r * r).set(grams.down);
  return decomposeGrams(kernels, gramUp, gramDown, layer);
}

/**
 * {@link decompositionFromGrams} on the kernels, for Gram matrices already in kernel memory:
 * the same pivoted Cholesky factors, rank rule and transforms, but the SVD of the core M (k₁ × k₂)
 * is preconditioned differently. With A = M or Mᵀ (m × n, m ≥ n), the eigenvectors Z of AᵀA
 * (Householder tridiagonalisation, implicit QL) make the columns of A·Z orthogonal up to
 * ε·σ₁²/(σᵢ·σⱼ), so the one-sided Jacobi step that follows (on the rows of Zᵀ·Aᵀ, rotating Zᵀ
 * along) restores full accuracy in one or two sweeps instead of the ten or so that a QR
 * preconditioner needs at rank 128. Everything O(r³) runs in WASM; the rest is O(r²).
 */
function decomposeGrams(
  kernels: Kernels,
  gramUp: number,
  gramDown: number,
  layer: Pick<LowRankFactors, "out" | "rank" | "inFlat" | "scale">,
): Decomposition {
  const { out, rank: r, inFlat, scale } = layer;
  const k = Math.min(out, inFlat, r);
  const sigma = new Float64Array(k);
  const upTransform = new Float64Array(r * k);
  const downTransform = new Float64Array(r * k);
  const x = kernels.exports;
  const diagonal = (g: number) => {
    const view = kernels.f64(g, r * r);
    return Float64Array.from({ length: r }, (_, i) => view[i * r + i]);
  };
  const tolUp = pivotTolerance(diagonal(gramUp), out);
  const tolDown = pivotTolerance(diagonal(gramDown), inFlat);
  const rtB = kernels.alloc(r * r * 8), rtA = kernels.alloc(r * r * 8);
  const pivB = kernels.alloc(r * 4), pivA = kernels.alloc(r * 4);
  const scratch = kernels.alloc(4 * r * 8);
  const k1 = x.pivotedCholesky(gramUp, r, tolUp, rtB, pivB, scratch);
  const k2 = x.pivotedCholesky(gramDown, r, tolDown, rtA, pivA, scratch);
  if (k1 === 0 || k2 === 0) return { sigma, upTransform, downTransform };
  // A = M = R_B·R_Aᵀ when k₁ ≥ k₂, else Mᵀ; Aᵀ (n × m, rows padded to even length for gramRows)
  // is Xᵀ·Y of the transposed factors.
  const tall = k1 >= k2;
  const m = tall ? k1 : k2, n = tall ? k2 : k1, ldm = even(m);
  const at = kernels.alloc(n * ldm * 8);
  const c = kernels.alloc(n * n * 8);
  const zt = kernels.alloc(n * n * 8);
  const wt = kernels.alloc(n * m * 8);
  const yB = kernels.alloc(k1 * n * 8), yA = kernels.alloc(k2 * n * 8);
  if (tall) x.matmulF64(rtA, 1, r, rtB, r, at, ldm, n, r, m);
  else x.matmulF64(rtB, 1, r, rtA, r, at, ldm, n, r, m);
  if (ldm !== m) {
    const view = kernels.f64(at, n * ldm);
    for (let i = 0; i < n; i++) view[i * ldm + m] = 0;
  }
  x.gramRows(at, n, ldm, c);
  const s = scratch + r * 8;
  if (x.symmetricEigenvectors(c, n, zt, scratch, s, s + r * 8) !== 0) {
    // QL did not converge (not seen on finite input): the TypeScript path gives the same result.
    return decompositionFromGrams(
      matrix(r, r, kernels.f64(gramUp, r * r)),
      matrix(r, r, kernels.f64(gramDown, r * r)),
      { ...layer, orthogonalize: kernels.orthogonalize },
    );
  }
  x.matmulF64(zt, n, 1, at, ldm, wt, m, n, n, m);
  x.orthogonalizeRows(wt, n, m, zt, n, scratch, JACOBI_TOLERANCE * Math.sqrt(m));
  // Rows of Wᵀ are σᵢ·(left singular vectors of A), rows of Zᵀ the right ones.
  const w = kernels.f64(wt, n * m), z = kernels.f64(zt, n * n);
  const norms = Float64Array.from({ length: n }, (_, i) => {
    let ss = 0;
    for (let j = 0; j < m; j++) ss += w[i * m + j] * w[i * m + j];
    return Math.sqrt(ss);
  });
  const order = Array.from(norms.keys()).sort((i, j) => norms[j] - norms[i] || i - j);
  let count = 0; // σ descending: zeros come last
  while (count < Math.min(k, n) && norms[order[count]] > 0) count++;
  // Singular vectors of M as columns: U_M into yB (k₁ × count), V_M into yA (k₂ × count).
  const uM = kernels.f64(yB, k1 * count), vM = kernels.f64(yA, k2 * count);
  const [left, right] = tall ? [uM, vM] : [vM, uM];
  for (let col = 0; col < count; col++) {
    const from = order[col], norm = norms[from];
    sigma[col] = Math.abs(scale) * norm;
    for (let i = 0; i < m; i++) left[i * count + col] = w[from * m + i] / norm;
    for (let i = 0; i < n; i++) right[i * count + col] = z[from * n + i];
  }
  if (count > 0) {
    x.backSubstitute(rtB, r, pivB, k1, yB, count, count);
    x.backSubstitute(rtA, r, pivA, k2, yA, count, count);
  }
  scatter(upTransform, k, kernels.f64(yB, k1 * count), kernels.i32(pivB, k1), count, sign(scale));
  scatter(downTransform, k, kernels.f64(yA, k2 * count), kernels.i32(pivA, k2), count, 1);
  return { sigma, upTransform, downTransform };
}

/** Jacobi stops at |cos| ≤ this · √m between all rows: rounding noise of their dot products. */
const JACOBI_TOLERANCE = Number.EPSILON;

const sign = (x: number) => x < 0 ? -1 : 1;

/** Rows i of `rows` (count wide) into row pivots[i] of the r × k transform, times `factor`. */
function scatter(
  into: Float64Array,
  k: number,
  rows: Float64Array,
  pivots: Int32Array,
  count: number,
  factor: number,
): void {
  pivots.forEach((p, i) => {
    for (let c = 0; c < count; c++) into[p * k + c] = factor * rows[i * count + c];
  });
}

/**
 * Output factors for the kept dimensions of one layer:
 * up = B·T_B[:, keep]·diag(g), down = diag(g)·T_A[:, keep]ᵀ·A with
 * g = √(σ·rescale/|scale|) (the sign of scale goes on up), computed in f32
 * and rounded once to the request's dtype (as `encodeFloats` rounds) by the
 * fused `rebuildUp` / `rebuildDown` kernels. Both results are views of one
 * buffer, taken out of kernel memory with one copy.
 *
 * @example
 * ```ts
 * import { Kernels } from "../wasm/kernels.ts";
 * import { decomposeLayer, RangeReader, rebuildLayer } from "./compute.ts";
 * const context = { kernels: await Kernels.load(), reader: new RangeReader() };
 * const f32 = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
 * const factors = {
 *   up: { dtype: "F32" as const, bytes: f32([1, 0]) },
 *   down: { dtype: "F32" as const, bytes: f32([2, 0, 0]) },
 *   out: 2,
 *   rank: 1,
 *   inFlat: 3,
 *   scale: 0.5,
 * };
 * const decomposition = decomposeLayer(context, factors);
 * const { up, down } = rebuildLayer(context, { factors, decomposition, keep: [0], rescale: 1 });
 * const [u] = new Float32Array(up.bytes.buffer, up.bytes.byteOffset, 1);
 * const [d] = new Float32Array(down.bytes.buffer, down.bytes.byteOffset, 1);
 * console.log(Math.abs(u * d * 0.5)); // 1 (ΔW[0][0])
 * ```
 */
export function rebuildLayer(context: ItemContext, request: RebuildRequest): RebuiltFactors {
  const { kernels } = context;
  const { factors, decomposition, keep, rescale } = request;
  const dtype = request.dtype ?? "F32";
  const { out, rank: r, inFlat, scale } = factors;
  const kept = keep.length;
  const size = dtype === "F32" ? 4 : 2;
  const upBytes = out * kept * size, downBytes = kept * inFlat * size;
  if (kept === 0) {
    const none = { dtype, bytes: new Uint8Array(0) };
    return { up: none, down: none };
  }
  const k = decomposition.sigma.length;
  const sign = scale < 0 ? -1 : 1;
  // Scaled transform columns: T_B[:, m]·g·sign (r × k′, rows padded with zeros to a whole
  // number of SIMD vectors) and T_A[:, m]ᵀ·g (k′ × r). The products run in f32: the factors are
  // rounded to an output dtype next, and the inputs (F16/BF16/F32) are exact in f32.
  const ldt = (kept + 3) & ~3;
  const tb = new Float32Array(r * ldt), tat = new Float32Array(kept * r);
  keep.forEach((m, j) => {
    const sigma = decomposition.sigma[m];
    const g = sigma > 0 ? Math.sqrt(sigma * rescale / Math.abs(scale)) : 0;
    for (let a = 0; a < r; a++) {
      tb[a * ldt + j] = sign * g * decomposition.upTransform[a * k + m];
      tat[j * r + a] = g * decomposition.downTransform[a * k + m];
    }
  });
  kernels.reset();
  const upRaw = load(context, factors.up);
  const downRaw = load(context, factors.down);
  const tbPtr = kernels.alloc(tb.byteLength);
  const tatPtr = kernels.alloc(tat.byteLength);
  const scratch = kernels.alloc(Math.max(UP_ROWS * (r + 2 * ldt), DOWN_COLUMNS * (r + kept)) * 4);
  const result = kernels.alloc(upBytes + downBytes);
  kernels.f32(tbPtr, tb.length).set(tb);
  kernels.f32(tatPtr, tat.length).set(tat);
  const x = kernels.exports, code = DTYPE_CODES[dtype];
  x.rebuildUp(
    upRaw,
    DTYPE_CODES[factors.up.dtype],
    out,
    r,
    tbPtr,
    ldt,
    kept,
    result,
    code,
    scratch,
  );
  x.rebuildDown(
    downRaw,
    DTYPE_CODES[factors.down.dtype],
    r,
    inFlat,
    tatPtr,
    kept,
    result + upBytes,
    code,
    scratch,
  );
  const buffer = kernels.u8(result, upBytes + downBytes).slice().buffer;
  return {
    up: { dtype, bytes: new Uint8Array(buffer, 0, upBytes) },
    down: { dtype, bytes: new Uint8Array(buffer, upBytes, downBytes) },
  };
}

/** Row and column blocks of the kernels' rebuildUp / rebuildDown (scratch sizes). */
const UP_ROWS = 64, DOWN_COLUMNS = 256;

/** A base weight read into kernel memory. */
interface LoadedWeight {
  /** Raw bytes. */
  readonly raw: number;
  /** Kernel dtype code. */
  readonly dtype: number;
  /** Rows. */
  readonly rows: number;
  /** Columns. */
  readonly cols: number;
}

function loadWeight(context: ItemContext, weight: BaseWeightRef): LoadedWeight {
  const { kernels, reader } = context;
  const bytes = weight.rows * weight.cols * dtypeSize(weight.dtype);
  kernels.reset();
  const raw = kernels.alloc(bytes);
  reader.read(
    { path: weight.path, offset: weight.offset, byteLength: bytes },
    kernels.u8(raw, bytes),
  );
  return { raw, rows: weight.rows, cols: weight.cols, dtype: DTYPE_CODES[weight.dtype] };
}

/** The weight as f32 (F32 in place; other dtypes decoded once, F64 rounded). */
function asF32(kernels: Kernels, w: LoadedWeight): F32Weight {
  if (w.dtype === DTYPE_CODES.F32) return { ptr: w.raw, rows: w.rows, cols: w.cols };
  const ptr = kernels.alloc(w.rows * w.cols * 4);
  kernels.exports.decodeF32(w.raw, ptr, w.rows * w.cols, w.dtype);
  return { ptr, rows: w.rows, cols: w.cols };
}

/**
 * Frobenius and/or spectral norm of one base weight, read from its file.
 *
 * @example
 * ```ts ignore
 * const norms = weightNorms(context, ref, { frobenius: true, spectral: true });
 * ```
 */
export function weightNorms(
  context: ItemContext,
  weight: BaseWeightRef,
  which: NormRequest,
): BaseNorms {
  const norms: BaseNorms = {};
  if (!which.frobenius && !which.spectral) return norms;
  if (!which.spectral) return { frobenius: Math.sqrt(streamedSumSquares(context, weight)) };
  const w = loadWeight(context, weight);
  if (which.frobenius) {
    norms.frobenius = Math.sqrt(
      context.kernels.exports.sumSquares(w.raw, w.rows * w.cols, w.dtype),
    );
  }
  if (which.spectral) {
    norms.spectral = spectralNorm(context.kernels, asF32(context.kernels, w)).norm;
  }
  return norms;
}

/** Bytes per chunk of streamedSumSquares: small enough to stay in a core's L2 cache. */
const STREAM_BYTES = 1 << 20;

/**
 * Σx² over a base weight read chunk by chunk into one cache-sized buffer, so
 * each chunk is summed while the copy from the page cache is still in cache.
 */
function streamedSumSquares(context: ItemContext, weight: BaseWeightRef): number {
  const { kernels, reader } = context;
  const size = dtypeSize(weight.dtype), total = weight.rows * weight.cols;
  const step = Math.max(1, Math.floor(STREAM_BYTES / size));
  kernels.reset();
  const buffer = kernels.alloc(Math.min(total, step) * size);
  let sum = 0;
  for (let at = 0; at < total; at += step) {
    const n = Math.min(step, total - at);
    reader.read(
      { path: weight.path, offset: weight.offset + at * size, byteLength: n * size },
      kernels.u8(buffer, n * size),
    );
    sum += kernels.exports.sumSquares(buffer, n, DTYPE_CODES[weight.dtype]);
  }
  return sum;
}

/**
 * |uᵢᵀ·W·vᵢ| for every dimension of a layer, with U = B·T_B and V = Aᵀ·T_A:
 * C = Bᵀ·(W·Aᵀ) (r × r) in one pass over W, then uᵢᵀ·W·vᵢ = T_B[:, i]ᵀ·C·T_A[:, i].
 *
 * @example
 * ```ts ignore
 * const scales = subspaceScales(context, { weight, factors, decomposition });
 * ```
 */
export function subspaceScales(
  context: ItemContext,
  request: SubspaceRequest,
): Float64Array {
  const { weight, factors, decomposition } = request;
  const { out, rank: r, inFlat } = factors;
  if (weight.rows !== out || weight.cols !== inFlat) {
    throw new BackendError(
      `${weight.path}: base weight at byte ${weight.offset} is ${weight.rows}×${weight.cols} but the layer's ΔW is ${out}×${inFlat}`,
    );
  }
  const { kernels } = context;
  const w = asF32(kernels, loadWeight(context, weight));
  const upRaw = load(context, factors.up);
  const downRaw = load(context, factors.down);
  const outStride = even(out);
  const a32 = kernels.alloc(r * inFlat * 4);
  const y = kernels.alloc(out * r * 8);
  const scratch = kernels.alloc(32);
  const bt = kernels.alloc(r * outStride * 8);
  const c = kernels.alloc(r * r * 8);
  const x = kernels.exports;
  x.decodeF32(downRaw, a32, r * inFlat, DTYPE_CODES[factors.down.dtype]);
  x.rowsTimesTransposed(w.ptr, out, inFlat, a32, r, y, scratch);
  x.decodeTransposedF64(upRaw, bt, out, r, outStride, DTYPE_CODES[factors.up.dtype]);
  x.matmulF64(bt, outStride, 1, y, r, c, r, r, out, r);
  const cm = kernels.f64(c, r * r);
  const k = decomposition.sigma.length;
  const tb = decomposition.upTransform, ta = decomposition.downTransform;
  const scales = new Float64Array(k);
  const ct = new Float64Array(r);
  for (let i = 0; i < k; i++) {
    // C·T_A[:, i], then T_B[:, i]ᵀ·(that).
    for (let a = 0; a < r; a++) {
      let s = 0;
      for (let b = 0; b < r; b++) s += cm[a * r + b] * ta[b * k + i];
      ct[a] = s;
    }
    let s = 0;
    for (let a = 0; a < r; a++) s += tb[a * k + i] * ct[a];
    scales[i] = Math.abs(s);
  }
  return scales;
}
