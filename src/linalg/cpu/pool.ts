/**
 * A pool of CPU backend workers (`worker.ts`), started on first use or by
 * {@link WorkerPool.start}. Work goes in jobs — a few tasks posted in one
 * message, answered in one, so that small items do not pay a round trip each.
 * Each worker runs one job at a time and has a few more posted ahead (fewer
 * when their factors are formed data, whose bytes exist from posting until
 * the answer: see FORMED_BYTES_AHEAD); the rest wait in a queue and go to
 * whichever worker frees up first, so big and small jobs balance out. Which worker runs an item does not change its
 * result.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import {
  type ErrorMessage,
  packWorkItem,
  postedBytes,
  reviveError,
  type WorkItem,
  type WorkResult,
} from "./work_items.ts";

const WORKER_URL = new URL("./worker.ts", import.meta.url);

interface Job {
  readonly tasks: readonly WorkItem[];
  /** Formed bytes its tasks post. */
  readonly bytes: number;
  readonly signal?: AbortSignal;
  readonly resolve: (results: WorkResult[]) => void;
  readonly reject: (error: unknown) => void;
}

interface Slot {
  readonly worker: Worker;
  /** Posted and not yet answered, oldest first (a worker answers in order). */
  readonly jobs: Job[];
  /** After close: called once the worker has answered every job posted to it. */
  drained?: () => void;
}

/**
 * Jobs posted ahead to each worker, so it never waits for the next one, not even while this
 * thread is busy for a while (a module load, a GC, building an output).
 */
const DEPTH = 4;

/**
 * Formed factor bytes (a LoHa layer's Khatri–Rao factors, copies of in-memory data) that may be
 * posted to one worker and not yet answered; a job that would go past it waits, unless the
 * worker has nothing posted. Stored factors travel as file ranges and do not count.
 */
const FORMED_BYTES_AHEAD = 96 * 2 ** 20;

/** The longest a closing pool waits for a worker to answer the jobs posted to it. */
const DRAIN_MS = 10_000;

interface ReplyMessage {
  readonly id: number;
  readonly results?: WorkResult[];
  readonly error?: ErrorMessage;
}

/**
 * Runs tasks on up to `size` workers.
 *
 * @example
 * ```ts ignore
 * const pool = new WorkerPool(2);
 * const [norms] = await pool.run([{ kind: "norms", weight, which: { frobenius: true, spectral: false } }]);
 * await pool.close();
 * ```
 */
export class WorkerPool {
  /** Most workers. */
  readonly size: number;
  #slots: Slot[] = [];
  #queue: Job[] = [];
  #closed = false;
  #drained: Promise<void> = Promise.resolve();
  #nextId = 0;
  #peakBytesAhead = 0;

  /** A pool of at most `size` workers (none is started yet). */
  constructor(size: number) {
    this.size = size;
  }

  /** The most formed bytes posted to one worker and not yet answered, so far (diagnostics). */
  get peakBytesAhead(): number {
    return this.#peakBytesAhead;
  }

  /** Starts every worker now (each loads its code and kernels while the caller goes on). */
  start(): void {
    while (!this.#closed && this.#slots.length < this.size) this.#spawn();
  }

  /**
   * Queues a job (tasks run in order by one worker, results in the same order);
   * a job whose `signal` is aborted before it starts is rejected unrun.
   */
  run(tasks: readonly WorkItem[], signal?: AbortSignal): Promise<WorkResult[]> {
    if (this.#closed) return Promise.reject(new BackendError("the CPU backend is closed"));
    return new Promise((resolve, reject) => {
      this.#queue.push({ tasks, bytes: sum(tasks.map(postedBytes)), signal, resolve, reject });
      this.#pump();
    });
  }

  /**
   * Closes the pool: every job not done is rejected at once, and each worker is terminated as soon
   * as it has answered the jobs already posted to it (at most {@link DEPTH}), or after
   * {@link DRAIN_MS} at the latest. Stopping a worker in the middle of a job has crashed Deno at
   * exit (a native heap corruption after the process's own work was done). Resolves when every
   * worker is terminated.
   */
  close(): Promise<void> {
    if (this.#closed) return this.#drained;
    this.#closed = true;
    const closed = new BackendError("the CPU backend was closed while working");
    for (const job of this.#queue) job.reject(closed);
    this.#queue = [];
    this.#drained = Promise.all(this.#slots.map((slot) => {
      for (const job of slot.jobs) job.reject(closed);
      if (slot.jobs.length === 0) return this.#retire(slot);
      return new Promise<void>((resolve) => {
        const timer = setTimeout(() => resolve(this.#retire(slot)), DRAIN_MS);
        Deno.unrefTimer(timer);
        slot.drained = () => {
          clearTimeout(timer);
          resolve(this.#retire(slot));
        };
      });
    })).then(() => {});
    return this.#drained;
  }

  #retire(slot: Slot): void {
    slot.worker.terminate();
    this.#slots = this.#slots.filter((s) => s !== slot);
  }

  #pump(): void {
    while (this.#queue.length > 0 && !this.#closed) {
      // An idle worker first, then a new one, then the one with the fewest jobs ahead.
      let slot = this.#slots.find((s) => s.jobs.length === 0);
      if (!slot && this.#slots.length < this.size) slot = this.#spawn();
      slot ??= this.#slots.reduce((a, b) => b.jobs.length < a.jobs.length ? b : a);
      if (slot.jobs.length >= DEPTH) return;
      const ahead = sum(slot.jobs.map((j) => j.bytes));
      if (slot.jobs.length > 0 && ahead + this.#queue[0].bytes > FORMED_BYTES_AHEAD) return;
      const job = this.#queue.shift()!;
      if (job.signal?.aborted) {
        job.reject(job.signal.reason);
        continue;
      }
      try {
        const packed = job.tasks.map(packWorkItem);
        slot.worker.postMessage(
          { id: this.#nextId++, tasks: packed.map((p) => p.task) },
          packed.flatMap((p) => p.transfer),
        );
        slot.jobs.push(job);
        this.#peakBytesAhead = Math.max(this.#peakBytesAhead, ahead + job.bytes);
      } catch (e) {
        job.reject(e);
      }
    }
  }

  #spawn(): Slot {
    const worker = new Worker(WORKER_URL, { type: "module" });
    const slot: Slot = { worker, jobs: [] };
    worker.onmessage = ({ data }: MessageEvent<ReplyMessage>) => {
      const job = slot.jobs.shift();
      if (data.error) job?.reject(reviveError(data.error));
      else job?.resolve(data.results!);
      if (this.#closed) {
        if (slot.jobs.length === 0) slot.drained?.();
        return;
      }
      this.#pump();
    };
    worker.onerror = (event) => {
      event.preventDefault();
      this.#retire(slot);
      const failed = new BackendError(`CPU worker failed: ${event.message}`);
      for (const job of slot.jobs.splice(0)) job.reject(failed);
      slot.drained?.();
      this.#pump();
    };
    this.#slots.push(slot);
    return slot;
  }
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
