/**
 * The WebGPU device behind the GPU backend: adapter and limits, WGSL
 * modules and pipelines (loaded from `shaders/`, cached), tracked buffers,
 * and submission and readback that turn every GPU failure — validation
 * error, out of memory, lost device — into a {@link BackendError} instead of
 * a hang.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import { type LogFn, silent } from "../../log.ts";
import { loadAsset } from "../asset.ts";

/** Kernels in `shaders/` (each is compiled with `df32.wgsl` in front). */
export type ShaderName = "products" | "norms";

/** Options for {@link GpuContext.create}. */
export interface GpuContextOptions {
  /** Adapter to use (default: `navigator.gpu.requestAdapter()`). */
  readonly adapter?: GPUAdapter;
  /** Receives DEBUG lines about the adapter. */
  readonly log?: LogFn;
}

/** Sizes the GPU code plans its batches with. */
export interface GpuLimits {
  /** Largest storage binding, bytes (multiple of 4). */
  readonly storageBinding: number;
  /** Largest buffer, bytes. */
  readonly bufferSize: number;
  /** Largest workgroup count per dispatch dimension. */
  readonly workgroupsPerDimension: number;
  /** Storage buffer offset alignment, bytes. */
  readonly offsetAlignment: number;
}

const SHADER_ROOT = "../../../shaders/";

/**
 * Short human description of an adapter (for logs and `Backend.description`).
 *
 * @example
 * ```ts ignore
 * import { describeAdapter } from "./device.ts";
 * const adapter = await navigator.gpu.requestAdapter();
 * // e.g. "llvmpipe (…) (vendor 65541, fallback)"
 * const description = adapter ? describeAdapter(adapter) : "no adapter";
 * ```
 */
export function describeAdapter(adapter: GPUAdapter): string {
  const info = adapter.info;
  const name = info.description || info.device || "unknown adapter";
  const vendor = info.vendor ? `vendor ${info.vendor}` : "vendor unknown";
  return `${name} (${vendor}${info.isFallbackAdapter ? ", fallback" : ""})`;
}

/**
 * One WebGPU device with the resize-lora kernels.
 *
 * @example
 * ```ts ignore
 * import { GpuContext } from "./device.ts";
 * const ctx = await GpuContext.create();
 * const buf = ctx.upload(new Uint32Array([1, 2, 3]), GPUBufferUsage.STORAGE);
 * const back = new Uint32Array(await ctx.read(buf, 0, 12));
 * if (back.join() !== "1,2,3") throw new Error(`read back ${back}`);
 * ctx.destroy();
 * ```
 */
export class GpuContext {
  /** The adapter. */
  readonly adapter: GPUAdapter;
  /** The device. */
  readonly device: GPUDevice;
  /** Planning limits. */
  readonly limits: GpuLimits;
  /** Adapter description. */
  readonly description: string;
  #log: LogFn;
  #buffers = new Set<GPUBuffer>();
  #modules = new Map<ShaderName, Promise<GPUShaderModule>>();
  #pipelines = new Map<string, Promise<GPUComputePipeline>>();
  #lost: string | undefined;
  #lostPromise: Promise<never>;
  #destroyed = false;

  private constructor(adapter: GPUAdapter, device: GPUDevice, log: LogFn) {
    this.adapter = adapter;
    this.device = device;
    this.#log = log;
    this.description = describeAdapter(adapter);
    const l = device.limits;
    this.limits = {
      storageBinding: Math.floor(Math.min(l.maxStorageBufferBindingSize, l.maxBufferSize) / 4) * 4,
      bufferSize: l.maxBufferSize,
      workgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      offsetAlignment: l.minStorageBufferOffsetAlignment,
    };
    this.#lostPromise = device.lost.then((info) => {
      this.#lost = info.message || info.reason || "unknown reason";
      throw this.#lostError();
    });
    this.#lostPromise.catch(() => {}); // observed by whoever races it
  }

  /**
   * Requests a device on the given (or default) adapter, with the adapter's
   * full buffer-size limits.
   */
  static async create(options: GpuContextOptions = {}): Promise<GpuContext> {
    const log = options.log ?? silent;
    const adapter = options.adapter ?? await requestAdapter();
    if (!adapter) throw new BackendError("--device gpu: no WebGPU adapter is available");
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({
        label: "resize-lora",
        requiredLimits: {
          maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
          maxBufferSize: adapter.limits.maxBufferSize,
        },
      });
    } catch (e) {
      throw new BackendError(
        `--device gpu: cannot open ${describeAdapter(adapter)}: ${errorText(e)}`,
        { cause: e },
      );
    }
    const ctx = new GpuContext(adapter, device, log);
    log(
      "DEBUG",
      `WebGPU device on ${ctx.description}: storage binding ${ctx.limits.storageBinding} B, ` +
        `buffer ${ctx.limits.bufferSize} B`,
    );
    return ctx;
  }

  #lostError(): BackendError {
    return new BackendError(`WebGPU device lost on ${this.description}: ${this.#lost}`);
  }

  /** Throws when the device is lost or destroyed. */
  check(): void {
    if (this.#destroyed) throw new BackendError("the WebGPU backend is closed");
    if (this.#lost !== undefined) throw this.#lostError();
  }

  /** A compiled pipeline of a kernel entry point with override constants (cached). */
  pipeline(
    shader: ShaderName,
    entryPoint: string,
    constants: Record<string, number> = {},
  ): Promise<GPUComputePipeline> {
    const key = `${shader}:${entryPoint}:${JSON.stringify(constants)}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      p = this.#createPipeline(shader, entryPoint, constants);
      this.#pipelines.set(key, p);
      p.catch(() => this.#pipelines.delete(key));
    }
    return p;
  }

  async #createPipeline(
    shader: ShaderName,
    entryPoint: string,
    constants: Record<string, number>,
  ): Promise<GPUComputePipeline> {
    const module = await this.#module(shader);
    this.check();
    // Push, create and pop with no await in between: error scopes are one
    // stack per device, shared with concurrent submits.
    this.device.pushErrorScope("validation");
    let pipeline: GPUComputePipeline | undefined;
    let thrown: unknown;
    try {
      pipeline = this.device.createComputePipeline({
        label: `${shader}.${entryPoint}`,
        layout: "auto",
        compute: { module, entryPoint, constants },
      });
    } catch (e) {
      thrown = e;
    }
    const error = await this.device.popErrorScope();
    if (error || thrown || !pipeline) {
      throw new BackendError(
        `shaders/${shader}.wgsl: cannot build '${entryPoint}' on ${this.description}: ` +
          oneLine(error?.message ?? errorText(thrown)),
        { cause: thrown },
      );
    }
    return pipeline;
  }

  #module(shader: ShaderName): Promise<GPUShaderModule> {
    let m = this.#modules.get(shader);
    if (!m) {
      m = (async () => {
        const decoder = new TextDecoder();
        const [prelude, body] = await Promise.all(
          ["df32", shader].map(async (name) =>
            decoder.decode(await loadAsset(new URL(`${SHADER_ROOT}${name}.wgsl`, import.meta.url)))
          ),
        );
        this.check();
        const module = this.device.createShaderModule({
          label: shader,
          code: `${prelude}\n${body}`,
        });
        const info = await module.getCompilationInfo();
        const errors = info.messages.filter((msg) => msg.type === "error");
        if (errors.length > 0) {
          const e = errors[0];
          throw new BackendError(
            `shaders/${shader}.wgsl: compile error on ${this.description}: ` +
              `${oneLine(e.message)} (line ${e.lineNum} of df32.wgsl + ${shader}.wgsl)`,
          );
        }
        return module;
      })();
      this.#modules.set(shader, m);
      m.catch(() => this.#modules.delete(shader));
    }
    return m;
  }

  /** A tracked buffer (destroyed by {@link release} or {@link destroy}). */
  buffer(size: number, usage: number, label: string): GPUBuffer {
    this.check();
    if (size > this.limits.bufferSize) {
      throw new BackendError(
        `${label}: needs a ${size}-byte buffer, over the adapter's ${this.limits.bufferSize}`,
      );
    }
    const b = this.device.createBuffer({ size: Math.max(16, align(size, 16)), usage, label });
    this.#buffers.add(b);
    return b;
  }

  /** A tracked buffer holding `data` (usage gets COPY_DST added). */
  upload(data: ArrayBufferView, usage: number, label = "upload"): GPUBuffer {
    const b = this.buffer(data.byteLength, usage | GPUBufferUsage.COPY_DST, label);
    this.write(b, 0, data);
    return b;
  }

  /** Queues a write of `data` at `offset` (ordered before later submits). */
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    const whole = bytes.byteLength - (bytes.byteLength % 4);
    if (whole > 0) this.device.queue.writeBuffer(buffer, offset, bytes, 0, whole);
    if (whole < bytes.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.device.queue.writeBuffer(buffer, offset + whole, tail);
    }
  }

  /** Destroys buffers made by this context. */
  release(...buffers: (GPUBuffer | undefined)[]): void {
    for (const b of buffers) {
      if (b && this.#buffers.delete(b)) b.destroy();
    }
  }

  /** Dispatches `count` workgroups as a 2-D grid within the per-dimension limit. */
  dispatch(pass: GPUComputePassEncoder, count: number): void {
    if (count === 0) return;
    const x = Math.min(count, this.limits.workgroupsPerDimension);
    const y = Math.ceil(count / x);
    if (y > this.limits.workgroupsPerDimension) {
      throw new BackendError(`a dispatch of ${count} workgroups exceeds the adapter's limits`);
    }
    pass.dispatchWorkgroups(x, y);
  }

  /**
   * Encodes commands with `record` and submits them, mapping validation,
   * out-of-memory and internal errors to a {@link BackendError} naming `what`.
   */
  async submit(what: string, record: (encoder: GPUCommandEncoder) => void): Promise<void> {
    this.check();
    const device = this.device;
    device.pushErrorScope("internal");
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    let thrown: unknown;
    try {
      const encoder = device.createCommandEncoder({ label: what });
      record(encoder);
      device.queue.submit([encoder.finish()]);
    } catch (e) {
      thrown = e;
    }
    const errors = await Promise.race([
      Promise.all([device.popErrorScope(), device.popErrorScope(), device.popErrorScope()]),
      this.#lostPromise,
    ]);
    const error = errors.find((e) => e !== null);
    if (thrown instanceof BackendError) throw thrown;
    if (error || thrown) {
      throw new BackendError(
        `WebGPU ${what} failed on ${this.description}: ${
          oneLine(error?.message ?? errorText(thrown))
        }`,
        { cause: thrown },
      );
    }
  }

  /**
   * Copies `size` bytes of `source` from `offset` to a mappable buffer and
   * returns them once the GPU is done (or throws if the device is lost).
   */
  async read(source: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
    if (size === 0) return new ArrayBuffer(0);
    const staging = this.buffer(
      align(size, 4),
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      "readback",
    );
    try {
      await this.submit(
        "readback",
        (e) => e.copyBufferToBuffer(source, offset, staging, 0, align(size, 4)),
      );
      await Promise.race([staging.mapAsync(GPUMapMode.READ), this.#lostPromise]).catch((e) => {
        if (e instanceof BackendError) throw e;
        this.check();
        throw new BackendError(`WebGPU readback failed on ${this.description}: ${errorText(e)}`, {
          cause: e,
        });
      });
      return staging.getMappedRange(0, align(size, 4)).slice(0, size);
    } finally {
      this.release(staging);
    }
  }

  /** Destroys every buffer and the device. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const b of this.#buffers) b.destroy();
    this.#buffers.clear();
    this.device.destroy();
  }
}

/**
 * The default adapter, or `null` when WebGPU is missing or has none.
 *
 * @example
 * ```ts ignore
 * import { requestAdapter } from "./device.ts";
 * const adapter = await requestAdapter();
 * const description = adapter?.info.description ?? "no adapter";
 * ```
 */
export async function requestAdapter(): Promise<GPUAdapter | null> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) return null;
  try {
    return await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch {
    return null;
  }
}

/** Rounds `n` up to a multiple of `to`. */
function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, " ").trim();
}
