/**
 * The batch loop that every GPU call shares. A call plans all of its items
 * into batches first, so bad input fails before any GPU work. Then, batch
 * by batch, it uploads the inputs, dispatches, reads the results back and
 * runs a host step that turns the readback into finished items, which are
 * reported as they finish. {@link BatchBuffers} holds one batch's GPU
 * buffers and releases them together, whatever happens.
 *
 * @module
 */

import type { BackendCallOptions } from "../backend.ts";
import type { GpuContext } from "./device.ts";
import { type PreparedProducts, prepareProducts, type ProductGroup } from "./products.ts";

/** One GPU call, planned: its batches and how each is run and collected. */
export interface BatchedCall<B, R, T> {
  /** The batches, in order. */
  readonly batches: readonly B[];
  /** Items finished without GPU work, as (index, result). */
  readonly finished?: Iterable<readonly [number, T]>;
  /** Uploads, dispatches and reads back one batch. */
  run(batch: B): Promise<R>;
  /** The host step: the items that a batch's readback finishes, as (index, result). */
  collect(batch: B, readback: R): Iterable<readonly [number, T]>;
  /**
   * Start the next batch's GPU work before this batch's host step, so that the
   * two overlap (for a host step that is real work: the decomposition core).
   */
  readonly overlap?: boolean;
}

/**
 * Runs a planned call: every batch in order, each finished item stored at its
 * index and reported (`onResult`, `onProgress`) once; checks `signal` before
 * each batch.
 *
 * @example
 * ```ts
 * import { runBatches } from "./batches.ts";
 * const seen: number[] = [];
 * const results = await runBatches(3, {
 *   batches: [[0, 2]],
 *   finished: [[1, "none"]],
 *   run: (batch) => Promise.resolve(batch.map((i) => `item ${i}`)),
 *   collect: (batch, readback) => batch.map((index, i) => [index, readback[i]] as const),
 * }, { onProgress: (done) => seen.push(done) });
 * if (results.join() !== "item 0,none,item 2" || seen.join() !== "1,2,3") throw new Error("order");
 * ```
 */
export async function runBatches<B, R, T>(
  total: number,
  call: BatchedCall<B, R, T>,
  options: BackendCallOptions<T> = {},
): Promise<T[]> {
  const results: T[] = new Array(total);
  let done = 0;
  const finish = ([index, result]: readonly [number, T]) => {
    results[index] = result;
    options.onResult?.(index, result);
    options.onProgress?.(++done, total);
  };
  for (const item of call.finished ?? []) finish(item);
  const { batches } = call;
  let next: Promise<R> | undefined;
  for (let b = 0; b < batches.length; b++) {
    options.signal?.throwIfAborted();
    const current = next ?? call.run(batches[b]);
    next = undefined;
    if (call.overlap && b + 1 < batches.length) {
      next = call.run(batches[b + 1]);
      // A failure of `next` must not go unobserved while `current` is awaited.
      next.catch(() => {});
    }
    const readback = await current;
    for (const item of call.collect(batches[b], readback)) finish(item);
  }
  return results;
}

/**
 * The GPU buffers and prepared products of one batch, released together by
 * {@link withBatchBuffers}.
 */
export class BatchBuffers {
  readonly #ctx: GpuContext;
  readonly #buffers: GPUBuffer[] = [];
  readonly #prepared: PreparedProducts[] = [];

  /** Buffers of `ctx`. */
  constructor(ctx: GpuContext) {
    this.#ctx = ctx;
  }

  /** A storage buffer holding `data`. */
  upload(data: ArrayBufferView, label: string): GPUBuffer {
    return this.#keep(this.#ctx.upload(data, GPUBufferUsage.STORAGE, label));
  }

  /** A buffer of `size` bytes (contents undefined). */
  buffer(size: number, usage: number, label: string): GPUBuffer {
    return this.#keep(this.#ctx.buffer(size, usage, label));
  }

  /** A storage buffer of `size` bytes whose contents can be read back. */
  output(size: number, label: string): GPUBuffer {
    return this.buffer(size, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, label);
  }

  /** The product dispatches of `groups`, ready to record (see `prepareProducts`). */
  async products(groups: readonly ProductGroup[]): Promise<PreparedProducts> {
    const prepared = await prepareProducts(this.#ctx, groups);
    this.#prepared.push(prepared);
    return prepared;
  }

  /** Releases everything (after the batch's last submit). */
  release(): void {
    for (const p of this.#prepared.splice(0)) p.release();
    this.#ctx.release(...this.#buffers.splice(0));
  }

  #keep(buffer: GPUBuffer): GPUBuffer {
    this.#buffers.push(buffer);
    return buffer;
  }
}

/**
 * Runs `fn` with a batch's {@link BatchBuffers}, releasing them afterwards.
 *
 * @example
 * ```ts ignore
 * const sums = await withBatchBuffers(ctx, async (gpu) => {
 *   const out = gpu.output(bytes, "sums");
 *   await ctx.submit("sums", (encoder) => record(encoder, out));
 *   return new Float32Array(await ctx.read(out, 0, bytes));
 * });
 * ```
 */
export async function withBatchBuffers<T>(
  ctx: GpuContext,
  fn: (gpu: BatchBuffers) => Promise<T>,
): Promise<T> {
  const gpu = new BatchBuffers(ctx);
  try {
    return await fn(gpu);
  } finally {
    gpu.release();
  }
}
