/**
 * Chooses the compute backend for `-d auto|cpu|gpu`: `auto` uses WebGPU only
 * on a real (non-fallback) adapter that passes the GPU backend's self-test,
 * else the CPU backend (a software adapter such as llvmpipe is slower than
 * the CPU backend's WASM kernels on the same cores); `gpu` insists on WebGPU (any
 * adapter, software ones included) and fails with a {@link BackendError}
 * when there is none; `cpu` never touches WebGPU.
 *
 * @module
 */

import { BackendError } from "../errors.ts";
import { type LogFn, silent } from "../log.ts";
import type { Backend } from "./backend.ts";
import { createCpuBackend } from "./cpu/backend.ts";
import { createGpuBackend } from "./gpu/backend.ts";
import { requestAdapter } from "./gpu/device.ts";

/** The `--device` choices. */
export type DeviceChoice = "auto" | "cpu" | "gpu";

/** Options for {@link selectBackend}. */
export interface SelectBackendOptions {
  /** Receives DEBUG lines saying which adapter was found and why a backend was chosen. */
  readonly log?: LogFn;
  /** CPU worker threads (CPU backend only; default: one per core). */
  readonly workers?: number;
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
  const adapter = await requestAdapter();
  if (!adapter) {
    if (device === "gpu") throw new BackendError("--device gpu: no WebGPU adapter is available");
    log("DEBUG", "device: cpu (auto: no WebGPU adapter)");
    return cpu();
  }
  const info = adapter.info;
  log(
    "DEBUG",
    `WebGPU adapter: ${info.description || info.device || "unnamed"}; vendor ${
      info.vendor || "unknown"
    }; architecture ${info.architecture || "unknown"}; fallback ${info.isFallbackAdapter}; ` +
      `features ${[...adapter.features].sort().join(", ") || "none"}`,
  );
  if (device === "auto" && info.isFallbackAdapter) {
    log("DEBUG", "device: cpu (auto: the only WebGPU adapter is a software fallback)");
    return cpu();
  }
  try {
    const backend = await createGpuBackend({ adapter, log });
    log("DEBUG", `device: webgpu (${device === "gpu" ? "as asked" : "auto: hardware adapter"})`);
    return backend;
  } catch (e) {
    if (device === "gpu" || !(e instanceof BackendError)) throw e;
    log("DEBUG", `device: cpu (auto: ${e.message})`);
    return cpu();
  }
}
