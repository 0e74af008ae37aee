/**
 * `baseNorms` on the GPU (`shaders/norms.wgsl`): many weights per batch,
 * each resident on the GPU for the whole computation.
 *
 * - Frobenius: every row's sum of squares in df32 (squares are exact: F16
 *   and BF16 squares fit f32, F32 values are split into 12-bit limbs), the
 *   rows summed on the host in float64 — accurate to ~1e-12 relative.
 * - Spectral: Lanczos on WᵀW from a fixed pseudo-random start vector (a
 *   hash of the column index: deterministic, independent of batching). The
 *   Krylov space after m steps contains the (m−1)-th power iterate, so the
 *   largest Ritz value is never worse than that many power iterations, and
 *   it converges much faster. Every {@link CHECK_EVERY} steps one readback of
 *   the tridiagonal coefficients serves the whole batch: a weight stops when
 *   the error bound min(ρ, ρ²/gap) on λ_max = σ² (ρ = β_m·|y_m|, the Ritz
 *   residual; gap = θ₁ − θ₂) is below {@link RESIDUAL_TOLERANCE}·θ, when its
 *   Krylov space is exhausted (β breaks down to f32 rounding level: T is cut
 *   there, since the noise vectors after it let θ drift above λ_max), when
 *   θ₁ has a ghost copy θ₂ (in f32 without reorthogonalisation orthogonality
 *   is lost exactly as θ₁ converges; continuing lets θ drift above λ_max
 *   by ~1e-5), or after {@link MAX_STEPS} steps (≥ 65: never worse than 64
 *   power iterations).
 *   After each check only the weights still iterating are dispatched.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import type { BackendCallOptions, BaseNorms, BaseWeightRef, NormRequest } from "../backend.ts";
import { tridiagonalEigen } from "../tridiagonal.ts";
import { dtypeSize } from "../../safetensors/dtype.ts";
import type { GpuContext } from "./device.ts";
import { Format } from "./pack.ts";
import { weightName, WeightReader } from "./weights.ts";

/** Lanczos steps at most (the history buffer's size). */
const MAX_STEPS = 128;
/** Lanczos steps between convergence checks (one readback each). */
const CHECK_EVERY = 8;
/** Relative error bound on λ = σ² at which σ_max counts as converged. */
const RESIDUAL_TOLERANCE = 1e-7;
/** β below this fraction of max|α| is a breakdown (f32 rounding level). */
const BREAKDOWN = 1e-5;
/** Two top Ritz values this close (relative) are a converged value and its ghost. */
const GHOST = 1e-5;

const SLOTS = 4;
const SLOT_BYTES = 128 << 20;
const PIECE_BYTES = 4 << 20;
const PIECE_ROWS = 256;
const ROWS_PER_JOB = 4;
const COLS_PER_JOB = 256;
const HEADER = 16;

interface PlannedPiece {
  readonly slot: number;
  readonly byteOffset: number;
  readonly rows: number;
  readonly rowOffset: number;
}

interface PlannedWeight {
  readonly index: number;
  readonly ref: BaseWeightRef;
  readonly pieces: PlannedPiece[];
}

interface NormBatch {
  readonly weights: PlannedWeight[];
  readonly slotBytes: number[];
}

/**
 * Computes the requested norms of base weights (see the module doc), in
 * input order.
 *
 * @example
 * ```ts ignore
 * import { GpuContext } from "./device.ts";
 * import { baseNormsOnGpu } from "./norms.ts";
 * const ctx = await GpuContext.create();
 * const [n] = await baseNormsOnGpu(ctx, [ref], { frobenius: true, spectral: true });
 * console.log(n.frobenius, n.spectral);
 * ```
 */
export async function baseNormsOnGpu(
  ctx: GpuContext,
  weights: readonly BaseWeightRef[],
  which: NormRequest,
  options: BackendCallOptions<BaseNorms> = {},
): Promise<BaseNorms[]> {
  const results: BaseNorms[] = weights.map(() => ({}));
  if (!which.frobenius && !which.spectral) return results;
  const batches = planNormBatches(ctx, weights);
  const reader = new WeightReader();
  try {
    let done = 0;
    for (let b = 0; b < batches.length; b++) {
      const norms = await runNormBatch(ctx, batches[b], reader, which);
      batches[b].weights.forEach((w, i) => {
        results[w.index] = norms[i];
        options.onResult?.(w.index, norms[i]);
        options.onProgress?.(++done, weights.length);
      });
    }
    return results;
  } finally {
    reader.close();
  }
}

function planNormBatches(ctx: GpuContext, weights: readonly BaseWeightRef[]): NormBatch[] {
  const slotCap = Math.min(SLOT_BYTES, ctx.limits.storageBinding);
  const batches: NormBatch[] = [];
  let batch: NormBatch | undefined;
  weights.forEach((ref, index) => {
    const elementBytes = ref.dtype === "F64" ? 4 : dtypeSize(ref.dtype);
    const rowBytes = ref.cols * elementBytes;
    if (rowBytes > slotCap) {
      throw new BackendError(`${weightName(ref)}: a row is larger than a GPU binding`);
    }
    const pieceRows = Math.max(
      1,
      Math.min(ref.rows, PIECE_ROWS, Math.floor(Math.min(PIECE_BYTES, slotCap) / rowBytes)),
    );
    const place = (b: NormBatch): PlannedPiece[] | undefined => {
      const used = [...b.slotBytes];
      const pieces: PlannedPiece[] = [];
      for (let r0 = 0; r0 < ref.rows; r0 += pieceRows) {
        const rows = Math.min(pieceRows, ref.rows - r0);
        const bytes = align4(rows * rowBytes);
        const slot = used.findIndex((u) => u + bytes <= slotCap);
        if (slot < 0) return undefined;
        pieces.push({ slot, byteOffset: used[slot], rows, rowOffset: r0 });
        used[slot] += bytes;
      }
      b.slotBytes.splice(0, SLOTS, ...used);
      return pieces;
    };
    let pieces = batch ? place(batch) : undefined;
    if (!pieces) {
      batch = { weights: [], slotBytes: new Array(SLOTS).fill(0) };
      batches.push(batch);
      pieces = place(batch);
      if (!pieces) {
        throw new BackendError(
          `${weightName(ref)}: larger than the ${SLOTS}×${slotCap} bytes a GPU batch can bind`,
        );
      }
    }
    batch!.weights.push({ index, ref, pieces });
  });
  return batches;
}

function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

async function runNormBatch(
  ctx: GpuContext,
  batch: NormBatch,
  reader: WeightReader,
  which: NormRequest,
): Promise<BaseNorms[]> {
  const { weights } = batch;
  // Layout of the descriptor and of `vecs`; jobs are kept per weight so
  // that the lists can be rebuilt for the weights still iterating.
  const rowJobs: number[][] = [], colJobs: number[][] = [];
  const pieceWords: number[] = [], weightWords: number[] = [];
  let vecs = 0;
  const uBase: number[] = [], histBase: number[] = [];
  let piece = 0;
  weights.forEach((w, wi) => {
    const { rows, cols } = w.ref;
    const vBase = vecs;
    vecs += 2 * cols;
    uBase.push(vecs);
    vecs += rows;
    const partialBase = vecs;
    vecs += w.pieces.length * cols;
    histBase.push(wi * (1 + 2 * MAX_STEPS));
    weightWords.push(
      cols,
      rows,
      vBase,
      uBase[wi],
      piece,
      w.pieces.length,
      partialBase,
      histBase[wi],
    );
    const dtype = w.ref.dtype;
    const fmt = dtype === "F16" ? Format.F16 : dtype === "BF16" ? Format.BF16 : Format.F32;
    const rj: number[] = [], cj: number[] = [];
    for (const p of w.pieces) {
      pieceWords.push(p.slot, p.byteOffset / 4, fmt, cols, p.rows, p.rowOffset, wi, 0);
      for (let r = 0; r < p.rows; r += ROWS_PER_JOB) rj.push(piece, r);
      for (let c = 0; c < cols; c += COLS_PER_JOB) cj.push(piece, c);
      piece++;
    }
    rowJobs.push(rj);
    colJobs.push(cj);
  });
  const nWeights = weights.length;
  const offPieces = HEADER;
  const offWeights = offPieces + pieceWords.length;
  const offRowJobs = offWeights + weightWords.length;
  const offColJobs = offRowJobs + rowJobs.reduce((n, j) => n + j.length, 0);
  const offActive = offColJobs + colJobs.reduce((n, j) => n + j.length, 0);
  const desc = new Uint32Array(offActive + nWeights);
  desc.set([offPieces, offWeights, offRowJobs, offColJobs, offActive, nWeights]);
  desc.set(pieceWords, offPieces);
  desc.set(weightWords, offWeights);
  /** Job and active lists of the given weights; returns the dispatch sizes. */
  const activate = (active: readonly number[]) => {
    let r = offRowJobs, c = offColJobs;
    for (const wi of active) {
      desc.set(rowJobs[wi], r);
      r += rowJobs[wi].length;
      desc.set(colJobs[wi], c);
      c += colJobs[wi].length;
    }
    desc.set(active, offActive);
    const counts = {
      rows: (r - offRowJobs) / 2,
      cols: (c - offColJobs) / 2,
      weights: active.length,
    };
    desc.set([counts.rows, counts.cols, 0, counts.weights], 6);
    return counts;
  };
  let counts = activate(weights.map((_, wi) => wi));

  const buffers: GPUBuffer[] = [];
  const make = (size: number, usage: number, label: string) => {
    const b = ctx.buffer(size, usage, label);
    buffers.push(b);
    return b;
  };
  try {
    const slots = batch.slotBytes.map((bytes, s) =>
      make(Math.max(16, bytes), GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, `weights ${s}`)
    );
    // Each piece read into one reused buffer and copied to its slot (writeBuffer copies at once).
    const pieceBytes = (w: PlannedWeight, p: PlannedPiece) =>
      p.rows * w.ref.cols * (w.ref.dtype === "F16" || w.ref.dtype === "BF16" ? 2 : 4);
    const staging = new Uint8Array(
      weights.reduce((m, w) => w.pieces.reduce((n, p) => Math.max(n, pieceBytes(w, p)), m), 0),
    );
    for (const w of weights) {
      for (const p of w.pieces) {
        const view = staging.subarray(0, pieceBytes(w, p));
        reader.readRowsInto(w.ref, p.rowOffset, p.rows, view);
        ctx.write(slots[p.slot], p.byteOffset, view);
      }
    }
    const descBuf = make(
      desc.byteLength,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      "norms batch",
    );
    ctx.write(descBuf, 0, desc);
    const vecBuf = make(Math.max(1, vecs) * 4, GPUBufferUsage.STORAGE, "norms vectors");
    const froBuf = make(
      Math.max(1, vecs) * 8,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      "row sums of squares",
    );
    const histWords = nWeights * (1 + 2 * MAX_STEPS);
    const histBuf = make(
      histWords * 4,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      "lanczos",
    );

    const constants = { MAX_STEPS };
    const [init, rowFro, row, col, lanczos] = await Promise.all([
      ctx.pipeline("norms", "init_start", constants),
      ctx.pipeline("norms", "row_pass", { ...constants, WITH_FRO: 1 }),
      ctx.pipeline("norms", "row_pass", constants),
      ctx.pipeline("norms", "col_pass", constants),
      ctx.pipeline("norms", "lanczos", constants),
    ]);
    const bind = (pipeline: GPUComputePipeline, entries: [number, GPUBuffer][]) =>
      ctx.device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })),
      });
    const slotEntries: [number, GPUBuffer][] = slots.map((b, s) => [4 + s, b]);
    const groups = {
      init: bind(init, [[0, descBuf], [1, vecBuf], [3, histBuf]]),
      rowFro: bind(rowFro, [[0, descBuf], [1, vecBuf], [2, froBuf], ...slotEntries]),
      // `fro` is statically used by row_pass, so it is bound even without WITH_FRO.
      row: bind(row, [[0, descBuf], [1, vecBuf], [2, froBuf], ...slotEntries]),
      col: bind(col, [[0, descBuf], [1, vecBuf], ...slotEntries]),
      lanczos: bind(lanczos, [[0, descBuf], [1, vecBuf], [3, histBuf]]),
    };
    const results: BaseNorms[] = weights.map(() => ({}));
    /** CHECK_EVERY Lanczos steps of the active weights (the first row pass also summing squares). */
    const lanczosSteps = (pass: GPUComputePassEncoder, froFirst: boolean) => {
      for (let step = 0; step < CHECK_EVERY; step++) {
        const fro = step === 0 && froFirst;
        pass.setPipeline(fro ? rowFro : row);
        pass.setBindGroup(0, fro ? groups.rowFro : groups.row);
        ctx.dispatch(pass, counts.rows);
        pass.setPipeline(col);
        pass.setBindGroup(0, groups.col);
        ctx.dispatch(pass, counts.cols);
        pass.setPipeline(lanczos);
        pass.setBindGroup(0, groups.lanczos);
        ctx.dispatch(pass, counts.weights);
      }
    };

    // First submit: start vectors, the Frobenius row pass, and (for the
    // spectral norm) the first CHECK_EVERY Lanczos steps.
    await ctx.submit("norms", (encoder) => {
      const pass = encoder.beginComputePass({ label: "norms" });
      if (which.spectral) {
        pass.setPipeline(init);
        pass.setBindGroup(0, groups.init);
        ctx.dispatch(pass, nWeights);
      }
      if (which.spectral) lanczosSteps(pass, which.frobenius);
      else {
        pass.setPipeline(rowFro);
        pass.setBindGroup(0, groups.rowFro);
        ctx.dispatch(pass, counts.rows);
      }
      pass.end();
    });
    if (which.frobenius) {
      const sums = new Float32Array(await ctx.read(froBuf, 0, vecs * 8));
      weights.forEach((w, wi) => {
        let s = 0;
        for (let r = 0; r < w.ref.rows; r++) {
          const i = 2 * (uBase[wi] + r);
          s += sums[i] + sums[i + 1];
        }
        results[wi].frobenius = Math.sqrt(s);
      });
    }
    if (!which.spectral) return results;

    const active = new Set(weights.map((_, wi) => wi));
    for (;;) {
      const hist = new Float32Array(await ctx.read(histBuf, 0, histWords * 4));
      for (const wi of [...active]) {
        const spectral = converged(hist, histBase[wi], weights[wi].ref.cols);
        if (spectral !== undefined) {
          results[wi].spectral = spectral;
          active.delete(wi);
        }
      }
      if (active.size === 0) break;
      counts = activate([...active].sort((a, b) => a - b));
      ctx.write(descBuf, 0, desc);
      await ctx.submit("spectral norms", (encoder) => {
        const pass = encoder.beginComputePass({ label: "lanczos" });
        lanczosSteps(pass, false);
        pass.end();
      });
    }
    return results;
  } finally {
    ctx.release(...buffers);
  }
}

/**
 * σ_max from a weight's Lanczos history once it has converged, else
 * `undefined` (see the module doc for the stopping rule).
 */
function converged(hist: Float32Array, base: number, cols: number): number | undefined {
  const steps = Math.round(hist[base]);
  if (steps === 0) return undefined;
  const alpha = Float64Array.from(hist.subarray(base + 1, base + 1 + steps));
  const beta = Float64Array.from(hist.subarray(base + 1 + MAX_STEPS, base + 1 + MAX_STEPS + steps));
  // A breakdown (β at f32 rounding level: the Krylov space is invariant)
  // ends the useful part of T; the noise vectors after it would let the
  // Ritz values drift past λ_max.
  const scale = Math.max(...alpha.map(Math.abs));
  let m = steps;
  for (let j = 0; j < steps; j++) {
    if (beta[j] <= BREAKDOWN * scale) {
      m = j + 1;
      break;
    }
  }
  const { values, last } = tridiagonalEigen(alpha.subarray(0, m), beta.subarray(0, m - 1));
  const theta = Math.max(0, values[0]);
  // |λ − θ| ≤ ρ, and ≤ ρ²/gap once the gap to the next Ritz value dominates.
  const residual = Math.abs(beta[m - 1] * last[0]);
  const gap = m > 1 ? theta - values[1] : Infinity;
  const bound = Math.min(residual, residual * residual / gap);
  // Without reorthogonalisation (f32), a converged Ritz value gets a ghost
  // copy (Paige); the bounds above then no longer shrink, so a ghost pair
  // counts as convergence.
  const ghost = m > 1 && values[1] >= (1 - GHOST) * theta;
  const done = m < steps || m >= MAX_STEPS || m >= cols || ghost ||
    bound <= RESIDUAL_TOLERANCE * theta;
  return done ? Math.sqrt(theta) : undefined;
}
