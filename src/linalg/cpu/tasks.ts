/**
 * The work items the CPU backend hands to its threads, how they travel to a
 * worker (raw factor bytes copied into buffers of their own and transferred),
 * and how errors travel back.
 *
 * @module
 */

import { BackendError, type ResizeLoraError, SafetensorsError } from "../../errors.ts";
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
import {
  decomposeLayer,
  type ItemContext,
  rebuildLayer,
  subspaceScales,
  weightNorms,
} from "./compute.ts";

/** One work item. */
export type Task =
  | { readonly kind: "decompose"; readonly layer: LowRankFactors }
  | { readonly kind: "rebuild"; readonly request: RebuildRequest }
  | { readonly kind: "norms"; readonly weight: BaseWeightRef; readonly which: NormRequest }
  | { readonly kind: "subspace"; readonly request: SubspaceRequest };

/** What each kind of task returns. */
export type TaskResult = Decomposition | RebuiltFactors | BaseNorms | Float64Array;

/**
 * Runs a task on this thread.
 *
 * @example
 * ```ts ignore
 * const norms = await runTask({ kernels, reader }, { kind: "norms", weight, which });
 * ```
 */
export function runTask(context: ItemContext, task: Task): Promise<TaskResult> | TaskResult {
  switch (task.kind) {
    case "decompose":
      return decomposeLayer(context.kernels, task.layer);
    case "rebuild":
      return rebuildLayer(context.kernels, task.request);
    case "norms":
      return weightNorms(context, task.weight, task.which);
    case "subspace":
      return subspaceScales(context, task.request);
  }
}

/** A task as posted to a worker, with the buffers to transfer. */
export interface PackedTask {
  /** The message. */
  readonly task: Task;
  /** Buffers owned by the message. */
  readonly transfer: ArrayBuffer[];
}

/**
 * Copies a task's factor bytes into buffers of their own, so posting transfers
 * exactly those bytes (a view into a larger buffer would clone all of it) and
 * leaves the caller's arrays intact.
 *
 * @example
 * ```ts ignore
 * const { task: message, transfer } = packTask(task);
 * worker.postMessage({ id, task: message }, transfer);
 * ```
 */
export function packTask(task: Task): PackedTask {
  const transfer: ArrayBuffer[] = [];
  const own = (data: FloatData): FloatData => {
    // Shared memory (LoRA files are read into it) is posted as is.
    if (data.bytes.buffer instanceof SharedArrayBuffer) return data;
    const bytes = data.bytes.slice();
    transfer.push(bytes.buffer);
    return { dtype: data.dtype, bytes };
  };
  const factors = (f: LowRankFactors): LowRankFactors => ({
    ...f,
    up: own(f.up),
    down: own(f.down),
  });
  switch (task.kind) {
    case "decompose":
      return { task: { kind: "decompose", layer: factors(task.layer) }, transfer };
    case "rebuild": {
      const { request } = task;
      return {
        task: { kind: "rebuild", request: { ...request, factors: factors(request.factors) } },
        transfer,
      };
    }
    case "subspace": {
      const { request } = task;
      return {
        task: { kind: "subspace", request: { ...request, factors: factors(request.factors) } },
        transfer,
      };
    }
    case "norms":
      return { task, transfer };
  }
}

/**
 * Buffers of a result that can be transferred back.
 *
 * @example
 * ```ts
 * import { resultTransfer } from "./tasks.ts";
 * console.log(resultTransfer(new Float64Array(2)).length); // 1
 * ```
 */
export function resultTransfer(result: TaskResult): ArrayBuffer[] {
  if (result instanceof Float64Array) return [result.buffer as ArrayBuffer];
  if ("sigma" in result) {
    return [result.sigma, result.upTransform, result.downTransform].map((a) =>
      a.buffer as ArrayBuffer
    );
  }
  if ("up" in result) {
    // The arrays of a rebuilt layer may share one buffer; each buffer is listed once.
    return [...new Set([result.up.bytes.buffer, result.down.bytes.buffer])] as ArrayBuffer[];
  }
  return [];
}

/** An error as posted by a worker. */
export interface ErrorMessage {
  /** Class name. */
  readonly name: string;
  /** One-line message. */
  readonly message: string;
}

/**
 * Serialises an error for posting.
 *
 * @example
 * ```ts
 * import { errorMessage } from "./tasks.ts";
 * console.log(errorMessage(new RangeError("bad"))); // { name: "RangeError", message: "bad" }
 * ```
 */
export function errorMessage(e: unknown): ErrorMessage {
  return e instanceof Error
    ? { name: e.name, message: e.message }
    : { name: "Error", message: String(e) };
}

/**
 * Re-creates a worker's error on this side (ResizeLoraError classes keep their class).
 *
 * @example
 * ```ts
 * import { reviveError } from "./tasks.ts";
 * console.log(reviveError({ name: "BackendError", message: "x" }).name); // "BackendError"
 * ```
 */
export function reviveError(e: ErrorMessage): ResizeLoraError {
  if (e.name === "SafetensorsError") return new SafetensorsError(e.message);
  if (e.name === "BackendError") return new BackendError(e.message);
  return new BackendError(`CPU worker failed: ${e.name}: ${e.message}`);
}
