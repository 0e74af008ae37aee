/**
 * The work items the CPU backend hands to its threads, how they travel to a
 * worker (factors stored in a file as their file range, read by the worker;
 * other factor bytes copied into buffers of their own and transferred), and
 * how errors travel back.
 *
 * @module
 */

import {
  BackendError,
  type ErrorDetails,
  LoraError,
  ResizeLoraError,
  SafetensorsError,
} from "../../errors.ts";
import {
  type BaseNorms,
  type BaseWeightRef,
  type Decomposition,
  floatByteLength,
  type FloatData,
  type FullMatrix,
  type LowRankFactors,
  type MatrixSpectrum,
  type NamedMatrix,
  type NormRequest,
  type RebuildRequest,
  type RebuiltFactors,
  type SingularPairsRequest,
  StoredFloatData,
  type SubspaceRequest,
} from "../backend.ts";
import { FormedFloatData } from "../factor_matrix.ts";
import { decomposeLayer } from "./decompose.ts";
import { matrixSingularPairs, matrixSpectrum } from "./full_matrix.ts";
import type { ItemContext } from "./item_context.ts";
import { weightNorms } from "./norms.ts";
import { rebuildLayer } from "./rebuild.ts";
import { subspaceScales } from "./subspace.ts";

/** One work item. */
export type WorkItem =
  | { readonly kind: "decompose"; readonly layer: LowRankFactors }
  | { readonly kind: "rebuild"; readonly request: RebuildRequest }
  | { readonly kind: "norms"; readonly weight: BaseWeightRef; readonly which: NormRequest }
  | { readonly kind: "subspace"; readonly request: SubspaceRequest }
  | { readonly kind: "spectrum"; readonly matrix: FullMatrix }
  | { readonly kind: "singularPairs"; readonly request: SingularPairsRequest };

/** What each kind of task returns. */
export type WorkResult =
  | Decomposition
  | RebuiltFactors
  | BaseNorms
  | Float64Array
  | MatrixSpectrum;

/**
 * Runs a task on this thread.
 *
 * @example
 * ```ts ignore
 * const norms = runWorkItem({ kernels, reader }, { kind: "norms", weight, which });
 * ```
 */
export function runWorkItem(context: ItemContext, task: WorkItem): WorkResult {
  switch (task.kind) {
    case "decompose":
      return decomposeLayer(context, task.layer);
    case "rebuild":
      return rebuildLayer(context, task.request);
    case "norms":
      return weightNorms(context, task.weight, task.which);
    case "subspace":
      return subspaceScales(context, task.request);
    case "spectrum":
      return matrixSpectrum(context, task.matrix);
    case "singularPairs":
      return matrixSingularPairs(context, task.request);
  }
}

/** A task as posted to a worker, with the buffers to transfer. */
export interface PackedWorkItem {
  /** The message. */
  readonly task: WorkItem;
  /** Buffers owned by the message. */
  readonly transfer: ArrayBuffer[];
}

/**
 * Prepares a task for posting: stored factors go as their file range; other
 * factor bytes are copied into buffers of their own, so posting transfers
 * exactly those bytes (a view into a larger buffer would clone all of it) and
 * leaves the caller's arrays intact.
 *
 * @example
 * ```ts ignore
 * const { task: message, transfer } = packWorkItem(task);
 * worker.postMessage({ id, task: message }, transfer);
 * ```
 */
export function packWorkItem(task: WorkItem): PackedWorkItem {
  const transfer: ArrayBuffer[] = [];
  const own = (data: FloatData): FloatData => {
    // Stored factors travel as their dtype and file range (a StoredFloatData's own fields):
    // the worker reads them itself.
    if (data.source) return new StoredFloatData(data.dtype, data.source);
    // A Khatri–Rao product travels as its two factors: the worker forms it.
    if (data.khatriRao) return formedByWorker(data, own);
    const formed = data.bytes; // read once: formed data is formed on every read
    // Shared memory is posted as is.
    if (formed.buffer instanceof SharedArrayBuffer) return data;
    // Data formed on demand owns its fresh buffer: it is moved, not copied.
    const whole = data instanceof FormedFloatData && formed.byteOffset === 0 &&
      formed.byteLength === formed.buffer.byteLength;
    const bytes = whole ? formed : formed.slice();
    transfer.push(bytes.buffer as ArrayBuffer); // not shared: returned above
    return { dtype: data.dtype, bytes };
  };
  return { task: withFactorData(task, own), transfer };
}

/**
 * The bytes posting a task forms or copies: its factor data that is not stored in a file
 * (stored data travels as its file range; a Khatri–Rao product as its two factors).
 *
 * @example
 * ```ts
 * import { postedBytes } from "./work_items.ts";
 * const data = { dtype: "F32" as const, bytes: new Uint8Array(12) };
 * const layer = { up: data, down: data, out: 3, rank: 1, inFlat: 3, scale: 1 };
 * if (postedBytes({ kind: "decompose", layer }) !== 24) throw new Error("both factors count");
 * ```
 */
export function postedBytes(task: WorkItem): number {
  let bytes = 0;
  const count = (data: FloatData): FloatData => {
    if (data.khatriRao) [data.khatriRao.a.data, data.khatriRao.b.data].forEach(count);
    else if (!data.source) bytes += floatByteLength(data);
    return data;
  };
  withFactorData(task, count);
  return bytes;
}

/**
 * A task as a worker receives it, with stored factor data revived (posting
 * keeps a StoredFloatData's dtype and source, not its class).
 *
 * @example
 * ```ts ignore
 * const result = runWorkItem(context, unpackWorkItem(task));
 * ```
 */
export function unpackWorkItem(task: WorkItem): WorkItem {
  const revive = (d: FloatData): FloatData =>
    d.source ? new StoredFloatData(d.dtype, d.source) : d.khatriRao ? formedByWorker(d, revive) : d;
  return withFactorData(task, revive);
}

/** Khatri–Rao data as it travels: no bytes, its factors' data passed through `map`. */
function formedByWorker(data: FloatData, map: (data: FloatData) => FloatData): FloatData {
  const { side, a, b } = data.khatriRao!;
  const factor = (m: NamedMatrix): NamedMatrix => ({ ...m, data: map(m.data) });
  return {
    dtype: data.dtype,
    bytes: new Uint8Array(0),
    byteLength: floatByteLength(data),
    khatriRao: { side, a: factor(a), b: factor(b) },
  };
}

/** The task with `map` applied to the data of each of its factors. */
function withFactorData(task: WorkItem, map: (data: FloatData) => FloatData): WorkItem {
  const factors = (f: LowRankFactors): LowRankFactors => ({
    ...f,
    up: map(f.up),
    down: map(f.down),
  });
  // Just the matrix's own fields: a caller's matrix may carry more (a tensor name).
  const matrix = ({ data, rows, cols }: FullMatrix): FullMatrix => ({
    data: map(data),
    rows,
    cols,
  });
  switch (task.kind) {
    case "decompose":
      return { kind: "decompose", layer: factors(task.layer) };
    case "rebuild":
      return {
        kind: "rebuild",
        request: { ...task.request, factors: factors(task.request.factors) },
      };
    case "subspace":
      return {
        kind: "subspace",
        request: { ...task.request, factors: factors(task.request.factors) },
      };
    case "spectrum":
      return { kind: "spectrum", matrix: matrix(task.matrix) };
    case "singularPairs":
      return {
        kind: "singularPairs",
        request: { ...task.request, matrix: matrix(task.request.matrix) },
      };
    case "norms":
      return task;
  }
}

/**
 * Buffers of a result that can be transferred back.
 *
 * @example
 * ```ts
 * import { resultTransfer } from "./work_items.ts";
 * const scales = new Float64Array(2);
 * const [buffer] = resultTransfer(scales);
 * if (buffer !== scales.buffer) throw new Error("transfers the scales' buffer");
 * ```
 */
export function resultTransfer(result: WorkResult): ArrayBuffer[] {
  if (result instanceof Float64Array) return [result.buffer as ArrayBuffer];
  if ("tridiagonal" in result) {
    return [result.sigma.buffer, result.tridiagonal.buffer] as ArrayBuffer[];
  }
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
  /** What a ResizeLoraError names (file, tensor, key), where it does. */
  readonly details?: ErrorDetails;
}

/**
 * Serialises an error for posting.
 *
 * @example
 * ```ts
 * import { errorMessage } from "./work_items.ts";
 * const { name, message } = errorMessage(new RangeError("bad"));
 * if (name !== "RangeError" || message !== "bad") throw new Error(`${name}: ${message}`);
 * ```
 */
export function errorMessage(e: unknown): ErrorMessage {
  if (e instanceof ResizeLoraError) {
    const { file, tensor, key } = e;
    return { name: e.name, message: e.message, details: { file, tensor, key } };
  }
  return e instanceof Error
    ? { name: e.name, message: e.message }
    : { name: "Error", message: String(e) };
}

/**
 * Re-creates a worker's error on this side (ResizeLoraError classes keep their class).
 *
 * @example
 * ```ts
 * import { reviveError } from "./work_items.ts";
 * import { BackendError } from "../../errors.ts";
 * if (!(reviveError({ name: "BackendError", message: "x" }) instanceof BackendError)) {
 *   throw new Error("a BackendError comes back as one");
 * }
 * ```
 */
export function reviveError(e: ErrorMessage): ResizeLoraError {
  // undefined fields are left out, as the errors' constructors leave them.
  const details = Object.fromEntries(
    Object.entries(e.details ?? {}).filter(([, v]) => v !== undefined),
  );
  if (e.name === "SafetensorsError") return new SafetensorsError(e.message, details);
  if (e.name === "BackendError") return new BackendError(e.message, details);
  // A factor that is not finite, found where a worker formed a LoHa layer's factors.
  if (e.name === "LoraError") return new LoraError(e.message, details);
  return new BackendError(`CPU worker failed: ${e.name}: ${e.message}`);
}
