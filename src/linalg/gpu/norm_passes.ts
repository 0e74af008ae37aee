/**
 * The GPU side of `baseNorms` (`shaders/norms.wgsl`): the batch descriptor
 * the shader reads, and its passes (start vectors, row and column passes of
 * WᵀW·v, Lanczos steps) bound to a batch's buffers.
 *
 * @module
 */

import type { BaseWeightRef } from "../backend.ts";
import type { GpuContext } from "./device.ts";
import { Format } from "./pack.ts";
import { gpuDType } from "./weights.ts";

/** Lanczos steps at most (the history buffer's size). */
export const MAX_STEPS = 128;
/** Lanczos steps between convergence checks (one readback each). */
export const CHECK_EVERY = 8;

const ROWS_PER_JOB = 4;
const COLS_PER_JOB = 256;
/** Words of the descriptor's header. */
const HEADER = 16;

/** A row block of a weight, placed in one of the batch's slot buffers. */
export interface PlannedPiece {
  /** Slot buffer. */
  readonly slot: number;
  /** Byte offset in the slot. */
  readonly byteOffset: number;
  /** Rows in the piece. */
  readonly rows: number;
  /** First row of the piece in its weight. */
  readonly rowOffset: number;
}

/** A weight of a batch and its pieces. */
export interface PlannedWeight {
  /** Index in the call's input. */
  readonly index: number;
  /** The weight. */
  readonly ref: BaseWeightRef;
  /** Its row blocks. */
  readonly pieces: PlannedPiece[];
}

/** Work items of one dispatch of each pass. */
export interface DispatchCounts {
  /** Row jobs (row pass). */
  readonly rows: number;
  /** Column jobs (column pass). */
  readonly cols: number;
  /** Weights (start vectors, Lanczos step). */
  readonly weights: number;
}

/**
 * The descriptor that `norms.wgsl` reads for a batch (pieces, weights, row and
 * column job lists, active weights) and the layout of its vector buffer. Jobs
 * are kept per weight so that the lists can be rebuilt for the weights still
 * iterating.
 */
export class NormDescriptor {
  /** The descriptor words. */
  readonly words: Uint32Array;
  /** Per weight: where u (its row vector, and its rows' sums of squares) starts in `vecs`. */
  readonly uBase: number[] = [];
  /** Per weight: where its Lanczos history starts. */
  readonly histBase: number[] = [];
  /** Elements of the vector buffer. */
  readonly vecs: number;
  /** Words of the Lanczos history buffer. */
  readonly histWords: number;
  readonly #rowJobs: number[][] = [];
  readonly #colJobs: number[][] = [];
  readonly #offRowJobs: number;
  readonly #offColJobs: number;
  readonly #offActive: number;

  /** Lays out the batch of these weights; `activate` then writes the job lists. */
  constructor(weights: readonly PlannedWeight[]) {
    const pieceWords: number[] = [], weightWords: number[] = [];
    let vecs = 0, piece = 0;
    weights.forEach((w, wi) => {
      const { rows, cols } = w.ref;
      const vBase = vecs;
      vecs += 2 * cols;
      this.uBase.push(vecs);
      vecs += rows;
      const partialBase = vecs;
      vecs += w.pieces.length * cols;
      this.histBase.push(wi * (1 + 2 * MAX_STEPS));
      weightWords.push(cols, rows, vBase, this.uBase[wi], piece, w.pieces.length, partialBase);
      weightWords.push(this.histBase[wi]);
      const dtype = gpuDType(w.ref.dtype);
      const fmt = dtype === "F16" ? Format.F16 : dtype === "BF16" ? Format.BF16 : Format.F32;
      const rj: number[] = [], cj: number[] = [];
      for (const p of w.pieces) {
        pieceWords.push(p.slot, p.byteOffset / 4, fmt, cols, p.rows, p.rowOffset, wi, 0);
        for (let r = 0; r < p.rows; r += ROWS_PER_JOB) rj.push(piece, r);
        for (let c = 0; c < cols; c += COLS_PER_JOB) cj.push(piece, c);
        piece++;
      }
      this.#rowJobs.push(rj);
      this.#colJobs.push(cj);
    });
    this.vecs = vecs;
    this.histWords = weights.length * (1 + 2 * MAX_STEPS);
    const offPieces = HEADER;
    const offWeights = offPieces + pieceWords.length;
    this.#offRowJobs = offWeights + weightWords.length;
    this.#offColJobs = this.#offRowJobs + this.#rowJobs.reduce((n, j) => n + j.length, 0);
    this.#offActive = this.#offColJobs + this.#colJobs.reduce((n, j) => n + j.length, 0);
    this.words = new Uint32Array(this.#offActive + weights.length);
    this.words.set([
      offPieces,
      offWeights,
      this.#offRowJobs,
      this.#offColJobs,
      this.#offActive,
      weights.length,
    ]);
    this.words.set(pieceWords, offPieces);
    this.words.set(weightWords, offWeights);
  }

  /** Writes the job and active lists of the given weights; returns the dispatch sizes. */
  activate(active: readonly number[]): DispatchCounts {
    const desc = this.words;
    let r = this.#offRowJobs, c = this.#offColJobs;
    for (const wi of active) {
      desc.set(this.#rowJobs[wi], r);
      r += this.#rowJobs[wi].length;
      desc.set(this.#colJobs[wi], c);
      c += this.#colJobs[wi].length;
    }
    desc.set(active, this.#offActive);
    const counts = {
      rows: (r - this.#offRowJobs) / 2,
      cols: (c - this.#offColJobs) / 2,
      weights: active.length,
    };
    desc.set([counts.rows, counts.cols, 0, counts.weights], 6);
    return counts;
  }
}

/** The buffers of a batch besides its weights. */
export interface NormBuffers {
  /** The descriptor. */
  readonly desc: GPUBuffer;
  /** Lanczos vectors and partial sums. */
  readonly vecs: GPUBuffer;
  /** Rows' sums of squares (df32). */
  readonly fro: GPUBuffer;
  /** Lanczos coefficients (α, β) per weight. */
  readonly hist: GPUBuffer;
}

/** The passes of `norms.wgsl`, bound to a batch's buffers. */
export class NormPasses {
  readonly #ctx: GpuContext;
  readonly #pipelines: GPUComputePipeline[];
  readonly #groups: GPUBindGroup[];

  private constructor(ctx: GpuContext, pipelines: GPUComputePipeline[], groups: GPUBindGroup[]) {
    this.#ctx = ctx;
    this.#pipelines = pipelines;
    this.#groups = groups;
  }

  /** Builds the pipelines and binds them to a batch's buffers and weight slots. */
  static async create(ctx: GpuContext, b: NormBuffers, slots: GPUBuffer[]): Promise<NormPasses> {
    const constants = { MAX_STEPS };
    const pipelines = await Promise.all([
      ctx.pipeline("norms", "init_start", constants),
      ctx.pipeline("norms", "row_pass", { ...constants, WITH_FRO: 1 }),
      ctx.pipeline("norms", "row_pass", constants),
      ctx.pipeline("norms", "col_pass", constants),
      ctx.pipeline("norms", "lanczos", constants),
    ]);
    const slotEntries: [number, GPUBuffer][] = slots.map((buffer, s) => [4 + s, buffer]);
    // `fro` is statically used by row_pass, so it is bound even without WITH_FRO.
    const entries: [number, GPUBuffer][][] = [
      [[0, b.desc], [1, b.vecs], [3, b.hist]],
      [[0, b.desc], [1, b.vecs], [2, b.fro], ...slotEntries],
      [[0, b.desc], [1, b.vecs], [2, b.fro], ...slotEntries],
      [[0, b.desc], [1, b.vecs], ...slotEntries],
      [[0, b.desc], [1, b.vecs], [3, b.hist]],
    ];
    const groups = pipelines.map((pipeline, i) =>
      ctx.device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: entries[i].map(([binding, buffer]) => ({ binding, resource: { buffer } })),
      })
    );
    return new NormPasses(ctx, pipelines, groups);
  }

  /** Start vectors of `weights` weights. */
  init(pass: GPUComputePassEncoder, weights: number): void {
    this.#run(pass, Pass.Init, weights);
  }

  /** One row pass that also sums each row's squares. */
  frobenius(pass: GPUComputePassEncoder, counts: DispatchCounts): void {
    this.#run(pass, Pass.RowWithFrobenius, counts.rows);
  }

  /** CHECK_EVERY Lanczos steps of the active weights (the first row pass also summing squares). */
  lanczosSteps(pass: GPUComputePassEncoder, counts: DispatchCounts, froFirst: boolean): void {
    for (let step = 0; step < CHECK_EVERY; step++) {
      this.#run(pass, step === 0 && froFirst ? Pass.RowWithFrobenius : Pass.Row, counts.rows);
      this.#run(pass, Pass.Column, counts.cols);
      this.#run(pass, Pass.Lanczos, counts.weights);
    }
  }

  #run(pass: GPUComputePassEncoder, which: Pass, count: number): void {
    pass.setPipeline(this.#pipelines[which]);
    pass.setBindGroup(0, this.#groups[which]);
    this.#ctx.dispatch(pass, count);
  }
}

/** Indices of {@link NormPasses}' pipelines. */
const Pass = { Init: 0, RowWithFrobenius: 1, Row: 2, Column: 3, Lanczos: 4 } as const;
type Pass = typeof Pass[keyof typeof Pass];
