/**
 * Entry point of a CPU backend worker: loads its own WASM kernels, keeps its
 * files open, and runs the jobs it is posted one at a time (the tasks of a
 * job in order, answered together).
 *
 * @module
 */

import { Kernels } from "../wasm/kernels.ts";
import { RangeReader } from "../range_reader.ts";
import {
  errorMessage,
  resultTransfer,
  runWorkItem,
  unpackWorkItem,
  type WorkItem,
} from "./work_items.ts";

/** The part of the worker global scope used here. */
interface WorkerScope {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  onmessage: ((event: MessageEvent<JobMessage>) => void) | null;
}

/** A posted job. */
interface JobMessage {
  readonly id: number;
  readonly tasks: readonly WorkItem[];
}

const scope = globalThis as unknown as WorkerScope;
const kernels = Kernels.load();
kernels.catch(() => {}); // reported with the first task instead
const reader = new RangeReader();
let queue: Promise<void> = Promise.resolve();

scope.onmessage = ({ data: { id, tasks } }) => {
  queue = queue.then(async () => {
    try {
      const context = { kernels: await kernels, reader };
      const results = tasks.map((task) => runWorkItem(context, unpackWorkItem(task)));
      scope.postMessage({ id, results }, results.flatMap(resultTransfer));
    } catch (e) {
      scope.postMessage({ id, error: errorMessage(e) });
    }
  });
};
