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
 *   it converges much faster. Every `CHECK_EVERY` (8) steps one readback of
 *   the tridiagonal coefficients serves the whole batch: a weight stops when
 *   the error bound min(ρ, ρ²/gap) on λ_max = σ² (ρ = β_m·|y_m|, the Ritz
 *   residual; gap = θ₁ − θ₂) is below {@link RESIDUAL_TOLERANCE}·θ, when its
 *   Krylov space is exhausted (β breaks down to f32 rounding level: T is cut
 *   there, since the noise vectors after it let θ drift above λ_max), when
 *   θ₁ has a ghost copy θ₂ (in f32 without reorthogonalisation orthogonality
 *   is lost exactly as θ₁ converges; continuing lets θ drift above λ_max
 *   by ~1e-5), or after `MAX_STEPS` (128) steps (≥ 65: never worse than 64
 *   power iterations).
 *   After each check only the weights still iterating are dispatched.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import type { BackendCallOptions, BaseNorms, BaseWeightRef, NormRequest } from "../backend.ts";
import { tridiagonalEigen } from "../tridiagonal.ts";
import { type BatchBuffers, runBatches, withBatchBuffers } from "./batches.ts";
import { dtypeSize } from "../../safetensors/dtype.ts";
import type { GpuContext } from "./device.ts";
import {
  MAX_STEPS,
  type NormBuffers,
  NormDescriptor,
  NormPasses,
  type PlannedPiece,
  type PlannedWeight,
} from "./norm_passes.ts";
import { gpuDType, weightName, WeightReader } from "./weights.ts";

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

/** Weights whose pieces fit the slots of one batch. */
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
 * ```
 */
export async function baseNormsOnGpu(
  ctx: GpuContext,
  weights: readonly BaseWeightRef[],
  which: NormRequest,
  options: BackendCallOptions<BaseNorms> = {},
): Promise<BaseNorms[]> {
  if (!which.frobenius && !which.spectral) return weights.map(() => ({}));
  const batches = planNormBatches(ctx, weights);
  const reader = new WeightReader();
  try {
    return await runBatches(weights.length, {
      batches,
      run: (batch) => runNormBatch(ctx, batch, reader, which),
      collect: (batch, norms) => batch.weights.map((w, i) => [w.index, norms[i]] as const),
    }, options);
  } finally {
    reader.close();
  }
}

function planNormBatches(ctx: GpuContext, weights: readonly BaseWeightRef[]): NormBatch[] {
  const slotCap = Math.min(SLOT_BYTES, ctx.limits.storageBinding);
  const batches: NormBatch[] = [];
  let batch: NormBatch | undefined;
  weights.forEach((ref, index) => {
    const elementBytes = dtypeSize(gpuDType(ref.dtype));
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

/** The weights of a batch in their slot buffers, each piece read into one reused buffer. */
function uploadWeights(
  ctx: GpuContext,
  gpu: BatchBuffers,
  batch: NormBatch,
  reader: WeightReader,
): GPUBuffer[] {
  const slots = batch.slotBytes.map((bytes, s) =>
    gpu.buffer(
      Math.max(16, bytes),
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      `weights ${s}`,
    )
  );
  // writeBuffer copies at once, so one staging buffer serves every piece.
  const pieceBytes = (w: PlannedWeight, p: PlannedPiece) =>
    p.rows * w.ref.cols * dtypeSize(gpuDType(w.ref.dtype));
  const staging = new Uint8Array(
    batch.weights.reduce((m, w) => w.pieces.reduce((n, p) => Math.max(n, pieceBytes(w, p)), m), 0),
  );
  for (const w of batch.weights) {
    for (const p of w.pieces) {
      const view = staging.subarray(0, pieceBytes(w, p));
      reader.readRowsInto(w.ref, p.rowOffset, p.rows, view);
      ctx.write(slots[p.slot], p.byteOffset, view);
    }
  }
  return slots;
}

async function runNormBatch(
  ctx: GpuContext,
  batch: NormBatch,
  reader: WeightReader,
  which: NormRequest,
): Promise<BaseNorms[]> {
  const { weights } = batch;
  const layout = new NormDescriptor(weights);
  let counts = layout.activate(weights.map((_, wi) => wi));
  return await withBatchBuffers(ctx, async (gpu) => {
    const slots = uploadWeights(ctx, gpu, batch, reader);
    const storage = GPUBufferUsage.STORAGE, readable = storage | GPUBufferUsage.COPY_SRC;
    const buffers: NormBuffers = {
      desc: gpu.buffer(layout.words.byteLength, storage | GPUBufferUsage.COPY_DST, "norms batch"),
      vecs: gpu.buffer(Math.max(1, layout.vecs) * 4, storage, "norms vectors"),
      fro: gpu.buffer(Math.max(1, layout.vecs) * 8, readable, "row sums of squares"),
      hist: gpu.buffer(layout.histWords * 4, readable, "lanczos"),
    };
    ctx.write(buffers.desc, 0, layout.words);
    const passes = await NormPasses.create(ctx, buffers, slots);
    const results: BaseNorms[] = weights.map(() => ({}));
    // First submit: start vectors, the Frobenius row pass, and (for the
    // spectral norm) the first CHECK_EVERY Lanczos steps.
    await ctx.submit("norms", (encoder) => {
      const pass = encoder.beginComputePass({ label: "norms" });
      if (which.spectral) {
        passes.init(pass, weights.length);
        passes.lanczosSteps(pass, counts, which.frobenius);
      } else passes.frobenius(pass, counts);
      pass.end();
    });
    if (which.frobenius) {
      const sums = new Float32Array(await ctx.read(buffers.fro, 0, layout.vecs * 8));
      weights.forEach((w, wi) => {
        let s = 0;
        for (let r = 0; r < w.ref.rows; r++) {
          const i = 2 * (layout.uBase[wi] + r);
          s += sums[i] + sums[i + 1];
        }
        results[wi].frobenius = Math.sqrt(s);
      });
    }
    if (!which.spectral) return results;
    const active = new Set(weights.map((_, wi) => wi));
    for (;;) {
      const hist = new Float32Array(await ctx.read(buffers.hist, 0, layout.histWords * 4));
      for (const wi of [...active]) {
        const spectral = converged(hist, layout.histBase[wi], weights[wi].ref.cols);
        if (spectral !== undefined) {
          results[wi].spectral = spectral;
          active.delete(wi);
        }
      }
      if (active.size === 0) return results;
      counts = layout.activate([...active].sort((a, b) => a - b));
      ctx.write(buffers.desc, 0, layout.words);
      await ctx.submit("spectral norms", (encoder) => {
        const pass = encoder.beginComputePass({ label: "lanczos" });
        passes.lanczosSteps(pass, counts, false);
        pass.end();
      });
    }
  });
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
