/**
 * A pool of CPU backend workers (`worker.ts`), started on first use. Each
 * worker runs one task at a time and gets the next queued one when it
 * finishes, so big and small items balance out; which worker runs an item
 * does not change its result.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import { type ErrorMessage, packTask, reviveError, type Task, type TaskResult } from "./tasks.ts";

const WORKER_URL = new URL("./worker.ts", import.meta.url);

interface Job {
  readonly task: Task;
  readonly signal?: AbortSignal;
  readonly resolve: (result: TaskResult) => void;
  readonly reject: (error: unknown) => void;
}

interface Slot {
  readonly worker: Worker;
  job?: Job;
}

interface ReplyMessage {
  readonly id: number;
  readonly result?: TaskResult;
  readonly error?: ErrorMessage;
}

/**
 * Runs tasks on up to `size` workers.
 *
 * @example
 * ```ts ignore
 * const pool = new WorkerPool(2);
 * const norms = await pool.run({ kind: "norms", weight, which: { frobenius: true, spectral: false } });
 * pool.close();
 * ```
 */
export class WorkerPool {
  /** Most workers. */
  readonly size: number;
  #slots: Slot[] = [];
  #queue: Job[] = [];
  #closed = false;
  #nextId = 0;

  constructor(size: number) {
    this.size = size;
  }

  /** Queues a task; a task whose `signal` is aborted before it starts is rejected unrun. */
  run(task: Task, signal?: AbortSignal): Promise<TaskResult> {
    if (this.#closed) return Promise.reject(new BackendError("the CPU backend is closed"));
    return new Promise((resolve, reject) => {
      this.#queue.push({ task, signal, resolve, reject });
      this.#pump();
    });
  }

  /** Terminates every worker; queued and running tasks are rejected. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new BackendError("the CPU backend was closed while working");
    for (const slot of this.#slots) {
      slot.worker.terminate();
      slot.job?.reject(closed);
    }
    for (const job of this.#queue) job.reject(closed);
    this.#slots = [];
    this.#queue = [];
  }

  #pump(): void {
    while (this.#queue.length > 0 && !this.#closed) {
      let slot = this.#slots.find((s) => s.job === undefined);
      if (!slot) {
        if (this.#slots.length >= this.size) return;
        slot = this.#spawn();
      }
      const job = this.#queue.shift()!;
      if (job.signal?.aborted) {
        job.reject(job.signal.reason);
        continue;
      }
      try {
        const { task, transfer } = packTask(job.task);
        slot.worker.postMessage({ id: this.#nextId++, task }, transfer);
        slot.job = job;
      } catch (e) {
        job.reject(e);
      }
    }
  }

  #spawn(): Slot {
    const worker = new Worker(WORKER_URL, { type: "module" });
    const slot: Slot = { worker };
    worker.onmessage = ({ data }: MessageEvent<ReplyMessage>) => {
      const job = slot.job;
      slot.job = undefined;
      if (data.error) job?.reject(reviveError(data.error));
      else job?.resolve(data.result!);
      this.#pump();
    };
    worker.onerror = (event) => {
      event.preventDefault();
      worker.terminate();
      this.#slots = this.#slots.filter((s) => s !== slot);
      slot.job?.reject(new BackendError(`CPU worker failed: ${event.message}`));
      this.#pump();
    };
    this.#slots.push(slot);
    return slot;
  }
}
