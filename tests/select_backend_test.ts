/**
 * `-d auto`: the per-workload device rule against the figures it was drawn from (bench/RESULTS.md),
 * and the backend that routes each call as the rule says.
 */
import { assert, assertEquals } from "./assert.ts";
import type { LogLevel } from "../src/log.ts";
import {
  adapterText,
  announceAdapter,
  AUTO_GPU_MAX_CORES,
  AUTO_GPU_MIN_BYTES,
  autoMayUseGpu,
  chooseAutoDevice,
  type Workload,
} from "../src/linalg/select_backend.ts";
import { createAutoBackend } from "../src/linalg/auto_backend.ts";
import type { Backend, BaseWeightRef, NormRequest } from "../src/linalg/backend.ts";

const REAL = { isFallbackAdapter: false };
const SOFTWARE = { isFallbackAdapter: true };
/** The F16 weights of a full-size SDXL base that the spectral norms read (5.44 GiB). */
const FULL_SIZE = 5.44 * 2 ** 30;
const WORKLOADS: Workload[] = ["decompose", "rebuild", "frobenius", "spectral", "subspace"];

Deno.test("auto: on the measured H200 host (16 cores) every workload runs on the CPU", () => {
  // There the GPU took 0.8 s against 0.13 s to decompose, 2.4 s against 0.25 s for Frobenius
  // norms and 2.7 s against 1.0 s for spectral norms.
  for (const workload of WORKLOADS) {
    const d = chooseAutoDevice({ adapter: REAL, cores: 16, workload, bytes: FULL_SIZE });
    assertEquals(d.device, "cpu", `${workload}: ${d.reason}`);
  }
  assert(!autoMayUseGpu(16));
});

Deno.test("auto: with few cores, whole-weight passes go to a real GPU, the rest stays on the CPU", () => {
  // Spectral norms cost the CPU about 13 core-seconds (5.9–6.8 s on 2 cores): more than the
  // GPU's 2.7–3.7 s below about 5 cores.
  for (let cores = 1; cores <= AUTO_GPU_MAX_CORES; cores++) {
    assert(autoMayUseGpu(cores));
    for (const workload of WORKLOADS) {
      const d = chooseAutoDevice({ adapter: REAL, cores, workload, bytes: FULL_SIZE });
      const gpu = workload === "spectral" || workload === "subspace";
      assertEquals(d.device, gpu ? "gpu" : "cpu", `${cores} cores, ${workload}: ${d.reason}`);
    }
  }
  const fifth = chooseAutoDevice({
    adapter: REAL,
    cores: AUTO_GPU_MAX_CORES + 1,
    workload: "spectral",
    bytes: FULL_SIZE,
  });
  assertEquals(fifth.device, "cpu");
});

Deno.test("auto: never a software adapter, no adapter, or a workload too small for the GPU", () => {
  const at = (adapter: typeof REAL | undefined, bytes: number) =>
    chooseAutoDevice({ adapter, cores: 2, workload: "spectral", bytes }).device;
  assertEquals(at(SOFTWARE, FULL_SIZE), "cpu");
  assertEquals(at(undefined, FULL_SIZE), "cpu");
  assertEquals(at(REAL, AUTO_GPU_MIN_BYTES - 1), "cpu");
  assertEquals(at(REAL, AUTO_GPU_MIN_BYTES), "gpu");
});

Deno.test("adapterText names the adapter as the logs announce it", () => {
  assertEquals(
    adapterText({ description: "llvmpipe (LLVM 15.0.7, 256 bits)", vendor: "", architecture: "" }),
    "llvmpipe (LLVM 15.0.7, 256 bits) (vendor unknown, architecture unknown)",
  );
  assertEquals(
    adapterText({ description: "", device: "H200", vendor: "nvidia", architecture: "hopper" }),
    "H200 (vendor nvidia, architecture hopper)",
  );
});

Deno.test("the adapter that runs is announced; a software fallback draws a warning", () => {
  const adapter = (info: Partial<GPUAdapterInfo>) =>
    ({ info: { vendor: "", architecture: "", description: "", ...info } }) as GPUAdapter;
  const lines: [LogLevel, string][] = [];
  const log = (level: LogLevel, message: string) => lines.push([level, message]);
  announceAdapter(
    adapter({ description: "NVIDIA H200", vendor: "nvidia", isFallbackAdapter: false }),
    log,
  );
  announceAdapter(
    adapter({ description: "llvmpipe (LLVM 15.0.7, 256 bits)", isFallbackAdapter: true }),
    log,
  );
  assertEquals(lines, [
    ["INFO", "WebGPU runs on NVIDIA H200 (vendor nvidia, architecture unknown)"],
    [
      "WARNING",
      "WebGPU runs on llvmpipe (LLVM 15.0.7, 256 bits) (vendor unknown, architecture unknown), a software fallback adapter: expect it to be far slower than -d cpu",
    ],
  ]);
});

/** A backend that records which calls reached it. */
function recorder(name: string, calls: string[]): Backend {
  const record = <T>(what: string, result: T) => {
    calls.push(`${name} ${what}`);
    return Promise.resolve(result);
  };
  return {
    name,
    description: name,
    decompose: (layers) => record("decompose", layers.map(() => ({}) as never)),
    rebuild: (requests) => record("rebuild", requests.map(() => ({}) as never)),
    baseNorms: (weights: readonly BaseWeightRef[], which: NormRequest) =>
      record(which.spectral ? "spectral" : "frobenius", weights.map(() => ({}))),
    subspaceScales: (requests) => record("subspace", requests.map(() => new Float64Array())),
    spectra: (matrices) => record("spectra", matrices.map(() => ({}) as never)),
    singularPairs: (requests) => record("singularPairs", requests.map(() => ({}) as never)),
    close: () => record("close", undefined),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

Deno.test("the auto backend runs each call where the rule places it, opens the GPU once, closes both", async () => {
  const calls: string[] = [];
  const placed: [string, number][] = [];
  let opened = 0;
  const backend = createAutoBackend({
    cpu: recorder("cpu", calls),
    place: (workload, bytes) => {
      placed.push([workload, bytes]);
      return workload === "spectral" ? "gpu" : "cpu";
    },
    openGpu: () => {
      opened++;
      return Promise.resolve(recorder("gpu", calls));
    },
  });
  const weight: BaseWeightRef = { path: "x", dtype: "F16", offset: 0, rows: 3, cols: 5 };
  await backend.baseNorms([weight, weight], { frobenius: true, spectral: false });
  await backend.baseNorms([weight], { frobenius: true, spectral: true });
  await backend.baseNorms([weight], { frobenius: false, spectral: true });
  await backend.close();
  assertEquals(calls, ["cpu frobenius", "gpu spectral", "gpu spectral", "cpu close", "gpu close"]);
  // Bytes of the base weights read: rows × cols × 2 for F16.
  assertEquals(placed, [["frobenius", 60], ["spectral", 30], ["spectral", 30]]);
  assertEquals(opened, 1);
});

Deno.test("the auto backend falls back to the CPU when the GPU backend cannot be opened", async () => {
  const calls: string[] = [];
  const backend = createAutoBackend({
    cpu: recorder("cpu", calls),
    place: () => "gpu",
    openGpu: () => Promise.resolve(undefined),
  });
  await backend.decompose([]);
  await backend.close();
  assertEquals(calls, ["cpu decompose", "cpu close"]);
});
