/**
 * Chooses the compute backend for `-d auto|cpu|gpu`.
 *
 * - `cpu` never touches WebGPU.
 * - `gpu` insists on WebGPU (any adapter, software ones included, with a
 *   warning) and fails with a {@link BackendError} when there is none.
 * - `auto` decides per workload with {@link chooseAutoDevice}, from measured
 *   figures: the CPU unless the host has few cores, a real (non-fallback)
 *   adapter exists and the workload is one the GPU measured faster on. On a
 *   host with more cores it does not even ask for an adapter.
 *
 * Whichever adapter runs is announced (INFO: description, vendor,
 * architecture); a software fallback adapter gets a WARNING.
 *
 * @module
 */

import { BackendError } from "../errors.ts";
import { type LogFn, silent } from "../log.ts";
import { createAutoBackend, type Workload } from "./auto_backend.ts";
import type { Backend } from "./backend.ts";
import { createCpuBackend } from "./cpu/backend.ts";
import { createGpuBackend } from "./gpu/backend.ts";
import { requestAdapter } from "./gpu/device.ts";

/**
 * The `--device` choices.
 *
 * @example
 * ```ts
 * import { type DeviceChoice, selectBackend } from "./select_backend.ts";
 * const device: DeviceChoice = "cpu"; // never asks for a WebGPU adapter
 * await using backend = await selectBackend(device, { workers: 0 });
 * if (backend.name !== "cpu") throw new Error(backend.name);
 * ```
 */
export type DeviceChoice = "auto" | "cpu" | "gpu";

export type { Workload };

/** What {@link chooseAutoDevice} decides from. */
export interface AutoDeviceFacts {
  /** The WebGPU adapter, if any (only whether it is a software fallback matters). */
  readonly adapter?: { readonly isFallbackAdapter: boolean };
  /** CPU cores (the CPU backend runs one worker per core). */
  readonly cores: number;
  /** The work to place. */
  readonly workload: Workload;
  /** Bytes the work reads: base weights for norms and subspace scales, LoRA factors otherwise. */
  readonly bytes: number;
}

/** Where {@link chooseAutoDevice} puts a workload, and why (for the DEBUG log). */
export interface AutoDeviceDecision {
  /** `cpu` or `gpu`. */
  readonly device: "cpu" | "gpu";
  /** One short clause. */
  readonly reason: string;
}

/**
 * The most cores at which `auto` still considers the GPU. Spectral norms of
 * every SDXL weight cost the CPU backend about 13 core-seconds (5.9–6.8 s on
 * 2 cores, 1.0–1.3 s on 16); the GPU path took 2.7–3.7 s on an H200, bound
 * by the host's reads and uploads rather than by the GPU, so it wins only
 * below about 4–5 cores.
 */
export const AUTO_GPU_MAX_CORES = 4;

/** Below this many bytes of base weights the GPU's set-up costs more than it saves. */
export const AUTO_GPU_MIN_BYTES = 256 * 2 ** 20;

/**
 * Where `-d auto` runs one workload. The CPU, except for spectral norms and
 * subspace scales (passes over whole base weights) of at least
 * {@link AUTO_GPU_MIN_BYTES} on a host with at most {@link AUTO_GPU_MAX_CORES}
 * cores and a real adapter. Measured on an H200 with 16 cores (see
 * `bench/RESULTS.md`), the GPU was slower for every workload: decomposition
 * 0.8 s against 0.13 s, Frobenius norms 2.4 s against 0.25 s, spectral norms
 * 2.7 s against 1.0 s; rebuilds are small products of the factors, cheaper to
 * do than to upload. Subspace scales were not measured on a GPU: they read
 * every base weight like the spectral norms and are placed like them.
 *
 * @example
 * ```ts
 * import { chooseAutoDevice } from "./select_backend.ts";
 * const adapter = { isFallbackAdapter: false };
 * const big = 5 * 2 ** 30;
 * const few = chooseAutoDevice({ adapter, cores: 2, workload: "spectral", bytes: big });
 * const many = chooseAutoDevice({ adapter, cores: 16, workload: "spectral", bytes: big });
 * if (few.device !== "gpu" || many.device !== "cpu") throw new Error("unexpected choice");
 * ```
 */
export function chooseAutoDevice(facts: AutoDeviceFacts): AutoDeviceDecision {
  const { adapter, cores, workload, bytes } = facts;
  if (workload !== "spectral" && workload !== "subspace") {
    return { device: "cpu", reason: `${workload}: measured faster on the CPU` };
  }
  if (cores > AUTO_GPU_MAX_CORES) {
    return { device: "cpu", reason: `${workload}: ${cores} CPU cores beat the GPU` };
  }
  if (!adapter) return { device: "cpu", reason: `${workload}: no WebGPU adapter` };
  if (adapter.isFallbackAdapter) {
    return { device: "cpu", reason: `${workload}: the WebGPU adapter is a software fallback` };
  }
  if (bytes < AUTO_GPU_MIN_BYTES) {
    return { device: "cpu", reason: `${workload}: too little data for the GPU` };
  }
  return { device: "gpu", reason: `${workload}: ${cores} CPU cores, hardware adapter` };
}

/**
 * Whether `-d auto` could place any workload on the GPU on a host with
 * `cores` cores (else it does not ask for an adapter at all).
 *
 * @example
 * ```ts
 * import { autoMayUseGpu } from "./select_backend.ts";
 * if (autoMayUseGpu(16) || !autoMayUseGpu(2)) throw new Error("unexpected");
 * ```
 */
export function autoMayUseGpu(cores: number): boolean {
  return cores <= AUTO_GPU_MAX_CORES;
}

/** Options for {@link selectBackend}. */
/**
 * Options of {@link selectBackend}.
 *
 * @example
 * ```ts
 * import { type SelectBackendOptions, selectBackend } from "./select_backend.ts";
 * const lines: string[] = [];
 * // On 16 cores `auto` keeps every workload on the CPU without asking for an adapter.
 * const options: SelectBackendOptions = { cores: 16, workers: 0, log: (_, l) => lines.push(l) };
 * await using backend = await selectBackend("auto", options);
 * if (backend.name !== "cpu") throw new Error(backend.name);
 * if (!lines.some((l) => l.startsWith("device: cpu (auto: 16 CPU cores"))) throw new Error(`${lines}`);
 * ```
 */
export interface SelectBackendOptions {
  /** Receives the adapter announcement (INFO), a fallback warning, and the choices (DEBUG). */
  readonly log?: LogFn;
  /** CPU worker threads (CPU backend only; default: one per core). */
  readonly workers?: number;
  /** Cores `auto` decides for (default: `navigator.hardwareConcurrency`). */
  readonly cores?: number;
}

/**
 * The adapter as logs name it: description (or device), vendor, architecture.
 *
 * @example
 * ```ts
 * import { adapterText } from "./select_backend.ts";
 * const text = adapterText({ description: "NVIDIA H200", vendor: "nvidia", architecture: "" });
 * if (text !== "NVIDIA H200 (vendor nvidia, architecture unknown)") throw new Error(text);
 * ```
 */
export function adapterText(
  info: Pick<GPUAdapterInfo, "description" | "vendor" | "architecture"> & { device?: string },
): string {
  return `${info.description || info.device || "unnamed adapter"} (vendor ${
    info.vendor || "unknown"
  }, architecture ${info.architecture || "unknown"})`;
}

/** Announces the adapter a GPU backend runs on; warns when it is a software fallback. */
export function announceAdapter(adapter: GPUAdapter, log: LogFn): void {
  const text = adapterText(adapter.info);
  if (adapter.info.isFallbackAdapter) {
    log(
      "WARNING",
      `WebGPU runs on ${text}, a software fallback adapter: expect it to be far slower than -d cpu`,
    );
  } else log("INFO", `WebGPU runs on ${text}`);
}

/**
 * Opens the backend for a `--device` choice.
 *
 * @example
 * ```ts
 * import { selectBackend } from "./select_backend.ts";
 * await using backend = await selectBackend("cpu", { workers: 0 });
 * if (backend.name !== "cpu") throw new Error(backend.name);
 * ```
 */
export async function selectBackend(
  device: DeviceChoice,
  options: SelectBackendOptions = {},
): Promise<Backend> {
  const log = options.log ?? silent;
  const cpu = () => createCpuBackend({ workers: options.workers });
  if (device === "cpu") {
    log("DEBUG", "device: cpu (as asked)");
    return cpu();
  }
  if (device !== "auto" && device !== "gpu") {
    throw new BackendError(`--device: expected auto, cpu or gpu, got '${device}'`);
  }
  const cores = options.cores ?? navigator.hardwareConcurrency ?? 1;
  if (device === "auto" && !autoMayUseGpu(cores)) {
    log("DEBUG", `device: cpu (auto: ${cores} CPU cores beat the GPU on every workload)`);
    return cpu();
  }
  const adapter = await requestAdapter();
  if (!adapter) {
    if (device === "gpu") throw new BackendError("--device gpu: no WebGPU adapter is available");
    log("DEBUG", "device: cpu (auto: no WebGPU adapter)");
    return cpu();
  }
  log(
    "DEBUG",
    `WebGPU adapter: ${adapterText(adapter.info)}; fallback ${adapter.info.isFallbackAdapter}; ` +
      `features ${[...adapter.features].sort().join(", ") || "none"}`,
  );
  if (device === "gpu") {
    announceAdapter(adapter, log);
    return await createGpuBackend({ adapter, log });
  }
  if (adapter.info.isFallbackAdapter) {
    log("DEBUG", "device: cpu (auto: the only WebGPU adapter is a software fallback)");
    return cpu();
  }
  return createAutoBackend({
    cpu: await cpu(),
    place: (workload, bytes) => {
      const choice = chooseAutoDevice({ adapter: adapter.info, cores, workload, bytes });
      log("DEBUG", `device: ${choice.device} (auto: ${choice.reason})`);
      return choice.device;
    },
    openGpu: () =>
      createGpuBackend({ adapter, log }).then((gpu) => {
        announceAdapter(adapter, log);
        return gpu;
      }, (e) => {
        if (!(e instanceof BackendError)) throw e;
        log("DEBUG", `device: cpu (auto: ${e.message})`);
        return undefined;
      }),
  });
}
