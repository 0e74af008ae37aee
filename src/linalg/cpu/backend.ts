/**
 * The CPU {@link Backend}: float64 maths on small matrices, WASM SIMD kernels
 * for every pass over factors and base weights, and a pool of workers.
 *
 * Every item (a layer, a base weight) is computed start to finish by one
 * thread with the same code, so results are bit-identical for any worker
 * count; jobs below a size threshold run on the calling thread. Inputs are
 * validated here, before any work starts, with one-line {@link BackendError}s.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import type {
  Backend,
  BackendCallOptions,
  BaseNorms,
  BaseWeightRef,
  Decomposition,
  FullMatrix,
  LowRankFactors,
  MatrixSpectrum,
  NormRequest,
  RebuildRequest,
  RebuiltFactors,
  SingularPairsRequest,
  SubspaceRequest,
} from "../backend.ts";
import { Kernels } from "../wasm/kernels.ts";
import { RangeReader } from "../range_reader.ts";
import { WorkerPool } from "./pool.ts";
import { postedBytes, runWorkItem, type WorkItem, type WorkResult } from "./work_items.ts";
import {
  checkDecomposition,
  checkFactors,
  checkMatrix,
  checkRebuild,
  checkSingularPairs,
  checkWeight,
} from "../validation.ts";

/**
 * Options of {@link createCpuBackend}.
 *
 * @example
 * ```ts
 * import { type CpuBackendOptions, createCpuBackend } from "./backend.ts";
 * import { BackendError } from "../../errors.ts";
 * const inline: CpuBackendOptions = { workers: 0 }; // everything on the calling thread
 * await using backend = await createCpuBackend(inline);
 * if (backend.name !== "cpu") throw new Error(backend.name);
 * // Worker counts are whole numbers.
 * const refused = await createCpuBackend({ workers: 1.5 }).then(() => undefined, (e) => e);
 * if (!(refused instanceof BackendError)) throw new Error("1.5 workers were accepted");
 * ```
 */
export interface CpuBackendOptions {
  /** Worker threads (default: `navigator.hardwareConcurrency`); 0 runs everything on the calling thread. */
  readonly workers?: number;
  /**
   * Jobs estimated below this many multiply-adds run on the calling thread
   * (default 1e7; 0 sends every job to the workers).
   */
  readonly inlineWork?: number;
}

/**
 * Creates the CPU backend and starts its workers, which load their modules
 * and kernels in the background. This thread's own kernels are loaded on
 * its first inline job (big runs may have none).
 *
 * @example
 * ```ts
 * import { createCpuBackend } from "./backend.ts";
 * const f32 = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
 * await using backend = await createCpuBackend({ workers: 1 });
 * const [d] = await backend.decompose([{
 *   up: { dtype: "F32", bytes: f32([1, 0]) },
 *   down: { dtype: "F32", bytes: f32([2, 0, 0]) },
 *   out: 2,
 *   rank: 1,
 *   inFlat: 3,
 *   scale: 0.5,
 * }]);
 * // ΔW = 0.5·[1, 0]ᵀ·[2, 0, 0] has the single singular value 1.
 * if (d.sigma.length !== 1 || d.sigma[0] !== 1) throw new Error(`σ = ${d.sigma}`);
 * ```
 */
export function createCpuBackend(options: CpuBackendOptions = {}): Promise<Backend> {
  const workers = options.workers ?? navigator.hardwareConcurrency ?? 1;
  if (!Number.isInteger(workers) || workers < 0) {
    return Promise.reject(
      new BackendError(`CPU backend: workers must be a whole number ≥ 0, got ${workers}`),
    );
  }
  const inlineWork = options.inlineWork ?? 1e7;
  if (!(inlineWork >= 0)) {
    return Promise.reject(
      new BackendError(`CPU backend: inlineWork must be a number ≥ 0, got ${inlineWork}`),
    );
  }
  return Promise.resolve(new CpuBackend(workers, inlineWork));
}

/** Jobs per worker, at least: enough for the last jobs to even out the workers' finishing times. */
const JOBS_PER_WORKER = 24;
/** Most tasks in one job (each answered message carries all their results). */
const JOB_TASKS = 64;
/** Most formed bytes in one job (see the pool's bound on formed bytes posted ahead). */
const JOB_BYTES = 24 * 2 ** 20;

/** How {@link jobsOf} orders items. */
type JobOrder = "largest-first" | "in-order";

/**
 * Item indices grouped into jobs: a job takes items until its work reaches
 * total / (workers · JOBS_PER_WORKER), so small items share a message while a
 * big one goes alone. Largest items first balances items of very different
 * sizes (whole base weights); in input order, results arrive roughly in order
 * (layers: a consumer of `onResult` can start on the first ones), and no
 * layer is big enough for the order to unbalance the workers. A job also
 * closes at JOB_BYTES of formed data (`bytes`, per item).
 */
function jobsOf(
  work: readonly number[],
  bytes: readonly number[],
  workers: number,
  order: JobOrder,
): number[][] {
  const indices = Array.from(work.keys());
  if (order === "largest-first") indices.sort((a, b) => work[b] - work[a] || a - b);
  const total = work.reduce((a, b) => a + b, 0);
  const target = total / (workers * JOBS_PER_WORKER);
  const jobs: number[][] = [];
  let job: number[] = [], sum = 0, formed = 0;
  for (const i of indices) {
    job.push(i);
    sum += work[i];
    formed += bytes[i];
    if (sum >= target || job.length >= JOB_TASKS || formed >= JOB_BYTES) {
      jobs.push(job);
      job = [];
      sum = 0;
      formed = 0;
    }
  }
  if (job.length > 0) jobs.push(job);
  return jobs;
}

class CpuBackend implements Backend {
  readonly name = "cpu";
  readonly description: string;
  readonly #pool: WorkerPool | undefined;
  readonly #inlineWork: number;
  #inline: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(workers: number, inlineWork: number) {
    this.#pool = workers > 0 ? new WorkerPool(workers) : undefined;
    // Workers load their modules and kernels while the caller reads its inputs.
    this.#pool?.start();
    this.#inlineWork = inlineWork;
    this.description = `CPU, WASM SIMD, ${
      workers === 0 ? "no workers" : `${workers} worker${workers === 1 ? "" : "s"}`
    }`;
  }

  decompose(
    layers: readonly LowRankFactors[],
    options?: BackendCallOptions<Decomposition>,
  ): Promise<Decomposition[]> {
    layers.forEach((layer, i) => checkFactors(layer, `decompose: layer ${i}`));
    return this.#run(
      layers.map((layer) => ({ kind: "decompose", layer })),
      layers.map((l) => (l.out + l.inFlat) * l.rank * l.rank),
      "in-order",
      options,
    );
  }

  rebuild(
    requests: readonly RebuildRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]> {
    requests.forEach((request, i) => checkRebuild(request, `rebuild: layer ${i}`));
    return this.#run(
      requests.map((request) => ({ kind: "rebuild", request })),
      requests.map(({ factors: f, keep }) => (f.out + f.inFlat) * f.rank * keep.length),
      "in-order",
      options,
    );
  }

  baseNorms(
    weights: readonly BaseWeightRef[],
    which: NormRequest,
    options?: BackendCallOptions<BaseNorms>,
  ): Promise<BaseNorms[]> {
    weights.forEach((weight, i) => checkWeight(weight, `baseNorms: weight ${i}`));
    const passes = (which.frobenius ? 1 : 0) + (which.spectral ? 60 : 0);
    return this.#run(
      weights.map((weight) => ({ kind: "norms", weight, which })),
      weights.map((w) => w.rows * w.cols * passes),
      "largest-first",
      options,
    );
  }

  subspaceScales(
    requests: readonly SubspaceRequest[],
    options?: BackendCallOptions<Float64Array>,
  ): Promise<Float64Array[]> {
    requests.forEach((request, i) => {
      const where = `subspaceScales: layer ${i}`;
      checkFactors(request.factors, where);
      checkDecomposition(request.decomposition, request.factors, where);
      checkWeight(request.weight, where);
      const { weight: w, factors: f } = request;
      if (w.rows !== f.out || w.cols !== f.inFlat) {
        throw new BackendError(
          `${w.path}: base weight at byte ${w.offset} is ${w.rows}×${w.cols} but the layer's ΔW is ${f.out}×${f.inFlat}`,
        );
      }
    });
    return this.#run(
      requests.map((request) => ({ kind: "subspace", request })),
      requests.map(({ weight: w, factors: f }) => w.rows * w.cols * f.rank),
      "largest-first",
      options,
    );
  }

  spectra(
    matrices: readonly FullMatrix[],
    options?: BackendCallOptions<MatrixSpectrum>,
  ): Promise<MatrixSpectrum[]> {
    matrices.forEach((matrix, i) => checkMatrix(matrix, `spectra: matrix ${i}`));
    return this.#run(
      matrices.map((matrix) => ({ kind: "spectrum", matrix })),
      matrices.map(({ rows, cols }) => Math.min(rows, cols) ** 2 * (rows + cols)),
      "in-order",
      options,
    );
  }

  singularPairs(
    requests: readonly SingularPairsRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]> {
    requests.forEach((request, i) => checkSingularPairs(request, `singularPairs: matrix ${i}`));
    return this.#run(
      requests.map((request) => ({ kind: "singularPairs", request })),
      requests.map(({ matrix: m, keep }) => (m.rows + m.cols) ** 2 * Math.max(1, keep.length)),
      "in-order",
      options,
    );
  }

  close(): Promise<void> {
    this.#closed = true;
    return this.#pool?.close() ?? Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Runs tasks whose results are `T`s (the task kind decides). */
  async #run<T extends WorkResult>(
    tasks: readonly WorkItem[],
    work: readonly number[],
    order: JobOrder,
    options: BackendCallOptions<T> = {},
  ): Promise<T[]> {
    if (this.#closed) throw new BackendError("the CPU backend is closed");
    options.signal?.throwIfAborted();
    const results: T[] = new Array(tasks.length);
    let done = 0;
    const finished = (i: number, result: WorkResult) => {
      results[i] = result as T;
      options.onResult?.(i, result as T);
      options.onProgress?.(++done, tasks.length);
    };
    const total = work.reduce((a, b) => a + b, 0);
    if (!this.#pool || total < this.#inlineWork) {
      // One arena on this thread: inline jobs run one after another.
      const run = this.#inline.then(async () => {
        const kernels = await Kernels.shared();
        const reader = new RangeReader();
        try {
          for (let i = 0; i < tasks.length; i++) {
            options.signal?.throwIfAborted();
            finished(i, runWorkItem({ kernels, reader }, tasks[i]));
          }
        } finally {
          reader.close();
        }
      });
      this.#inline = run.catch(() => {});
      await run;
      return results;
    }
    // Jobs not started are dropped when one fails or the caller aborts.
    const abort = new AbortController();
    const signal = options.signal ? AbortSignal.any([abort.signal, options.signal]) : abort.signal;
    const pool = this.#pool;
    try {
      await Promise.all(
        jobsOf(work, tasks.map(postedBytes), pool.size, order).map((job) =>
          pool.run(job.map((i) => tasks[i]), signal).then((rs) =>
            rs.forEach((r, j) => finished(job[j], r))
          )
        ),
      );
    } catch (e) {
      abort.abort(e);
      throw e;
    }
    return results;
  }
}
