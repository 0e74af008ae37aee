/**
 * Entry point of a CPU backend worker: loads its own WASM kernels, keeps its
 * checkpoint files open, and runs the tasks it is posted one at a time.
 *
 * @module
 */

import { Kernels } from "../wasm/kernels.ts";
import { RangeReader } from "./compute.ts";
import { errorMessage, resultTransfer, runTask, type Task, unpackTask } from "./tasks.ts";

/** The part of the worker global scope used here. */
interface WorkerScope {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  onmessage: ((event: MessageEvent<TaskMessage>) => void) | null;
}

/** A posted task. */
interface TaskMessage {
  readonly id: number;
  readonly task: Task;
}

const scope = globalThis as unknown as WorkerScope;
const kernels = Kernels.load();
kernels.catch(() => {}); // reported with the first task instead
const reader = new RangeReader();
let queue: Promise<void> = Promise.resolve();

scope.onmessage = ({ data: { id, task } }) => {
  queue = queue.then(async () => {
    try {
      const result = await runTask({ kernels: await kernels, reader }, unpackTask(task));
      scope.postMessage({ id, result }, resultTransfer(result));
    } catch (e) {
      scope.postMessage({ id, error: errorMessage(e) });
    }
  });
};
