/**
 * The WebGPU {@link Backend}: Deno's built-in `navigator.gpu` with the WGSL
 * kernels of `shaders/`. Same maths as the CPU backend (`../cpu/`):
 *
 * - `decompose`: Gram matrices on the GPU, summed near-exactly (exact limb
 *   products, three-f32 cascade), then the CPU backend's float64 r × r core
 *   (`svdFromGrams` in `../gram_svd.ts`, WASM kernels) on the host — see `decompose.ts`
 *   for why that O(r³) step stays on the host.
 * - `rebuild`: up = B·S_B, down = S_Aᵀ·A on the GPU, rounded once to f32.
 * - `baseNorms`: weights read from the checkpoint (synchronous chunked reads
 *   into one reused buffer) into GPU memory; exact
 *   Frobenius norms and Lanczos spectral norms (`norms.ts`).
 * - `subspaceScales`: C = Bᵀ·W·Aᵀ on the GPU, |T_Bᵀ·C·T_A|ᵢᵢ on the host.
 *
 * Every call batches many layers or weights per submit with one readback
 * per batch, keeps buffers within the adapter's binding and buffer limits,
 * and turns GPU failures (validation, out of memory, device loss) into a
 * {@link BackendError}.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import type { LogFn } from "../../log.ts";
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
import { withBatchBuffers } from "./batches.ts";
import { decomposeOnGpu } from "./decompose.ts";
import { singularPairsOnHost, spectraOnHost } from "./full_matrix.ts";
import { GpuContext } from "./device.ts";
import { baseNormsOnGpu } from "./norms.ts";
import { Format } from "./pack.ts";
import { OutMode, ProductItems, tripleAt } from "./products.ts";
import { rebuildOnGpu } from "./rebuild.ts";
import { subspaceOnGpu } from "./subspace.ts";

/**
 * Options for {@link createGpuBackend}.
 *
 * @example
 * ```ts
 * import { createGpuBackend, type GpuBackendOptions } from "./backend.ts";
 * // A given adapter is used as it is: this stand-in cannot open a device, and says so in the log's
 * // place of choice, the error (no system adapter is asked for).
 * const adapter = {
 *   info: { description: "stand-in", vendor: "", device: "", architecture: "", isFallbackAdapter: true },
 *   limits: { maxStorageBufferBindingSize: 2 ** 27, maxBufferSize: 2 ** 28 },
 *   features: new Set<string>(),
 *   requestDevice: () => Promise.reject(new Error("no device here")),
 * } as unknown as GPUAdapter;
 * const lines: string[] = [];
 * const options: GpuBackendOptions = { adapter, log: (_, line) => lines.push(line) };
 * const error = await createGpuBackend(options).then(() => undefined, (e: Error) => e);
 * if (!error?.message.includes("cannot open stand-in")) throw new Error(`${error}`);
 * if (lines.length !== 0) throw new Error("a device that never opened was logged");
 * ```
 */
export interface GpuBackendOptions {
  /** Adapter to use (default: the system's preferred one). */
  readonly adapter?: GPUAdapter;
  /** Receives DEBUG lines (adapter, limits, self-test). */
  readonly log?: LogFn;
}

/**
 * Opens a WebGPU device and checks that its compiler evaluates the exact
 * float sums the kernels rely on; throws a {@link BackendError} when there
 * is no adapter or the check fails.
 *
 * Ask for the system's adapter (no `adapter` option) from the main thread of a `deno run`
 * process only: see the README's Library section. The example gives an adapter that cannot open
 * a device, to show the error without asking the system for one.
 *
 * @example
 * ```ts
 * import { createGpuBackend } from "./backend.ts";
 * import { BackendError } from "../../errors.ts";
 * const adapter = {
 *   info: { description: "stand-in", vendor: "", device: "", architecture: "", isFallbackAdapter: true },
 *   limits: { maxStorageBufferBindingSize: 2 ** 27, maxBufferSize: 2 ** 28 },
 *   features: new Set<string>(),
 *   requestDevice: () => Promise.reject(new Error("no device here")),
 * } as unknown as GPUAdapter;
 * const error = await createGpuBackend({ adapter }).then(() => undefined, (e) => e);
 * if (!(error instanceof BackendError)) throw new Error(`not a BackendError: ${error}`);
 * if (error.message !== "--device gpu: cannot open stand-in (vendor unknown, fallback): no device here") {
 *   throw new Error(error.message);
 * }
 * ```
 */
export async function createGpuBackend(options: GpuBackendOptions = {}): Promise<Backend> {
  const ctx = await GpuContext.create(options);
  try {
    await selfTest(ctx);
  } catch (e) {
    ctx.destroy();
    throw e;
  }
  options.log?.("DEBUG", `WebGPU self-test passed on ${ctx.description}`);
  return new GpuBackend(ctx);
}

class GpuBackend implements Backend {
  readonly name = "webgpu";
  readonly description: string;
  #ctx: GpuContext;

  constructor(ctx: GpuContext) {
    this.#ctx = ctx;
    this.description = `WebGPU: ${ctx.description}`;
  }

  decompose(
    layers: readonly LowRankFactors[],
    options?: BackendCallOptions<Decomposition>,
  ): Promise<Decomposition[]> {
    return decomposeOnGpu(this.#ctx, layers, options);
  }

  rebuild(
    requests: readonly RebuildRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]> {
    return rebuildOnGpu(this.#ctx, requests, options);
  }

  baseNorms(
    weights: readonly BaseWeightRef[],
    which: NormRequest,
    options?: BackendCallOptions<BaseNorms>,
  ): Promise<BaseNorms[]> {
    return baseNormsOnGpu(this.#ctx, weights, which, options);
  }

  subspaceScales(
    requests: readonly SubspaceRequest[],
    options?: BackendCallOptions<Float64Array>,
  ): Promise<Float64Array[]> {
    return subspaceOnGpu(this.#ctx, requests, options);
  }

  spectra(
    matrices: readonly FullMatrix[],
    options?: BackendCallOptions<MatrixSpectrum>,
  ): Promise<MatrixSpectrum[]> {
    return spectraOnHost(matrices, options);
  }

  singularPairs(
    requests: readonly SingularPairsRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]> {
    return singularPairsOnHost(requests, options);
  }

  close(): Promise<void> {
    this.#ctx.destroy();
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Runs the product kernel on values whose exact sum of squares needs the
 * low-order parts (xᵢ = 1 + i·2⁻²³): a compiler that rewrites the
 * error-free sums, or flushes them, gets it wrong by ~1e-10.
 */
async function selfTest(ctx: GpuContext): Promise<void> {
  const n = 40;
  const x = Float32Array.from({ length: n }, (_, i) => 1 + (i + 1) * 2 ** -23);
  let exact = 0;
  for (const v of x) exact += v * v; // every partial sum fits 53 bits: exact
  const got = await withBatchBuffers(ctx, async (gpu) => {
    const data = gpu.upload(x, "self-test data");
    const out = gpu.output(12, "self-test out");
    const items = new ProductItems();
    const view = { base: 0, sampleStride: 1, featureStride: n, features: 1 };
    items.add(Format.F32, view, Format.F32, view, { samples: [0, n], outBase: 0, outStride: 1 });
    const products = await gpu.products(items.groups(data, data, out, OutMode.Triple));
    await ctx.submit("self-test", products.record);
    return tripleAt(new Float32Array(await ctx.read(out, 0, 12)), 0);
  });
  if (got !== exact) {
    throw new BackendError(
      `WebGPU adapter ${ctx.description} does not evaluate exact f32 sums ` +
        `(self-test: ${got} instead of ${exact}); use --device cpu`,
    );
  }
}
