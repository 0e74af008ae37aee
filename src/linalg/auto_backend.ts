/**
 * The `-d auto` backend on a host with a real WebGPU adapter: every call goes
 * to the CPU backend or to the WebGPU one, as `place` decides for its workload
 * and size (`select_backend.ts` holds the rule). The WebGPU backend is opened
 * on the first call that goes to it; when it cannot be opened, the CPU
 * backend does that work.
 *
 * @module
 */

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
} from "./backend.ts";
import { dtypeSize } from "../safetensors/dtype.ts";

/** The kinds of work a backend does. */
export type Workload = "decompose" | "rebuild" | "frobenius" | "spectral" | "subspace";

/** Options of {@link createAutoBackend}. */
export interface AutoBackendOptions {
  /** The CPU backend (owned by the result from now on). */
  readonly cpu: Backend;
  /** Where a call runs, from its workload and the bytes it reads. */
  readonly place: (workload: Workload, bytes: number) => "cpu" | "gpu";
  /**
   * Opens the GPU backend (called once, on the first call placed there); `undefined` when it
   * cannot be used, and the CPU backend runs that work instead.
   */
  readonly openGpu: () => Promise<Backend | undefined>;
}

/**
 * A backend that places each call on the CPU or the GPU backend.
 *
 * @example
 * ```ts
 * import { createAutoBackend } from "./auto_backend.ts";
 * import { createCpuBackend } from "./cpu/backend.ts";
 * await using backend = createAutoBackend({
 *   cpu: await createCpuBackend({ workers: 0 }),
 *   place: () => "cpu",
 *   openGpu: () => Promise.resolve(undefined),
 * });
 * if (backend.name !== "auto") throw new Error(backend.name);
 * ```
 */
export function createAutoBackend(options: AutoBackendOptions): Backend {
  return new AutoBackend(options);
}

const factorBytes = (f: LowRankFactors): number =>
  (f.out * dtypeSize(f.up.dtype) + f.inFlat * dtypeSize(f.down.dtype)) * f.rank;
const weightBytes = (w: BaseWeightRef): number => w.rows * w.cols * dtypeSize(w.dtype);
const sum = <T>(items: readonly T[], size: (item: T) => number): number =>
  items.reduce((n, item) => n + size(item), 0);

class AutoBackend implements Backend {
  readonly name = "auto";
  readonly description: string;
  #gpu?: Promise<Backend | undefined>;
  constructor(readonly options: AutoBackendOptions) {
    this.description = `auto: ${options.cpu.description}, and WebGPU where it is faster`;
  }

  /** The backend for one call. */
  async #pick(workload: Workload, bytes: number): Promise<Backend> {
    const { cpu, place, openGpu } = this.options;
    if (place(workload, bytes) === "cpu") return cpu;
    this.#gpu ??= openGpu();
    return (await this.#gpu) ?? cpu;
  }

  async decompose(
    layers: readonly LowRankFactors[],
    options?: BackendCallOptions<Decomposition>,
  ): Promise<Decomposition[]> {
    return (await this.#pick("decompose", sum(layers, factorBytes))).decompose(layers, options);
  }

  async rebuild(
    requests: readonly RebuildRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]> {
    const bytes = sum(requests, (r) => factorBytes(r.factors));
    return (await this.#pick("rebuild", bytes)).rebuild(requests, options);
  }

  async baseNorms(
    weights: readonly BaseWeightRef[],
    which: NormRequest,
    options?: BackendCallOptions<BaseNorms>,
  ): Promise<BaseNorms[]> {
    const workload = which.spectral ? "spectral" : "frobenius";
    const backend = await this.#pick(workload, sum(weights, weightBytes));
    return backend.baseNorms(weights, which, options);
  }

  async subspaceScales(
    requests: readonly SubspaceRequest[],
    options?: BackendCallOptions<Float64Array>,
  ): Promise<Float64Array[]> {
    const bytes = sum(requests, (r) => weightBytes(r.weight));
    return (await this.#pick("subspace", bytes)).subspaceScales(requests, options);
  }

  // Full matrices run on the host's WASM kernels whichever backend takes them; the CPU
  // backend's workers share the work out.
  spectra(
    matrices: readonly FullMatrix[],
    options?: BackendCallOptions<MatrixSpectrum>,
  ): Promise<MatrixSpectrum[]> {
    return this.options.cpu.spectra(matrices, options);
  }

  singularPairs(
    requests: readonly SingularPairsRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]> {
    return this.options.cpu.singularPairs(requests, options);
  }

  async close(): Promise<void> {
    const gpu = await this.#gpu?.catch(() => undefined);
    await Promise.all([this.options.cpu.close(), gpu?.close()]);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
