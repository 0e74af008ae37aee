/**
 * Where the WebGPU norms path spends its time on a real GPU: reading every
 * paired base weight of the full-size synthetic SDXL base from the page
 * cache (4 MiB pieces), reading and handing them to `queue.writeBuffer`,
 * `writeBuffer` alone (4 MiB and 64 MiB pieces), then the Frobenius and
 * spectral passes and the decomposition as the backend runs them, and the
 * CPU backend's Frobenius pass for scale. Two rounds; prints one line per
 * step. Part of `bench/gpu_check.sh`.
 *
 * ```sh
 * deno run -A bench/gpu_upload_bench.ts
 * ```
 *
 * @module
 */
import type { BaseWeightRef } from "../src/linalg/backend.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { GpuContext, requestAdapter } from "../src/linalg/gpu/device.ts";
import { baseNormsOnGpu } from "../src/linalg/gpu/norms.ts";
import { decomposeOnGpu } from "../src/linalg/gpu/decompose.ts";
import { WeightReader } from "../src/linalg/gpu/weights.ts";
import { readLoraFile } from "../src/lora/lora_file.ts";
import { pairLayers } from "../src/lora/pairing.ts";
import { BaseCheckpoint } from "../src/base/checkpoint.ts";
import { ensureBenchFixtures } from "./fixtures.ts";

const { base, lora } = await ensureBenchFixtures({ scale: 1, log: (l) => console.error(l) });
const adapter = await requestAdapter();
if (!adapter) {
  console.error("gpu_upload_bench: no WebGPU adapter on this machine");
  Deno.exit(1);
}
await using ckpt = await BaseCheckpoint.open(base);
const model = await readLoraFile(lora);
const { paired } = pairLayers(model, ckpt);
const seen = new Map<string, BaseWeightRef>();
for (const p of paired) {
  const ref = ckpt.weightRef(p.base);
  seen.set(`${ref.offset}:${ref.rows}`, ref);
}
const refs = [...seen.values()];
const total = refs.reduce((n, r) => n + r.rows * r.cols * 2, 0);
const ms = (t: number) => `${(performance.now() - t).toFixed(0)} ms`;
await new Deno.Command("cat", { args: [base], stdout: "null" }).output();
const ctx = await GpuContext.create({ adapter });
const PIECE = 4 << 20;
for (let rep = 0; rep < 2; rep++) {
  // 1. reads alone
  let t = performance.now();
  const reader = new WeightReader();
  const staging = new Uint8Array(PIECE * 2);
  for (const r of refs) {
    const rowBytes = r.cols * 2, rows = Math.max(1, Math.floor(PIECE / rowBytes));
    for (let r0 = 0; r0 < r.rows; r0 += rows) {
      const n = Math.min(rows, r.rows - r0);
      reader.readRowsInto(r, r0, n, staging.subarray(0, n * rowBytes));
    }
  }
  console.log(`reads (4 MiB pieces, ${(total / 2 ** 30).toFixed(2)} GiB): ${ms(t)}`);
  // 2. reads + writeBuffer into a 512 MiB buffer, cycling
  const SIZE = 512 << 20;
  const buf = ctx.buffer(SIZE, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, "prof");
  t = performance.now();
  let at = 0;
  for (const r of refs) {
    const rowBytes = r.cols * 2, rows = Math.max(1, Math.floor(PIECE / rowBytes));
    for (let r0 = 0; r0 < r.rows; r0 += rows) {
      const n = Math.min(rows, r.rows - r0), bytes = n * rowBytes;
      const view = staging.subarray(0, bytes);
      reader.readRowsInto(r, r0, n, view);
      if (at + bytes > SIZE) at = 0;
      ctx.write(buf, at, view);
      at += (bytes + 3) & ~3;
    }
  }
  const t2 = performance.now();
  await ctx.device.queue.onSubmittedWorkDone();
  console.log(
    `reads + writeBuffer: ${(t2 - t).toFixed(0)} ms (+ ${ms(t2)} until the queue is done)`,
  );
  // 2b. writeBuffer alone from one staging buffer
  t = performance.now();
  for (let o = 0; o < total; o += PIECE) ctx.write(buf, o % SIZE, staging.subarray(0, PIECE));
  const t3 = performance.now();
  await ctx.device.queue.onSubmittedWorkDone();
  console.log(`writeBuffer alone, 4 MiB pieces: ${(t3 - t).toFixed(0)} ms (+ ${ms(t3)} queue)`);
  // 2c. writeBuffer 64 MiB pieces
  const big = new Uint8Array(64 << 20);
  t = performance.now();
  for (let o = 0; o < total; o += big.byteLength) {
    ctx.write(buf, (o % (SIZE - big.byteLength)) & ~3, big);
  }
  const t4 = performance.now();
  await ctx.device.queue.onSubmittedWorkDone();
  console.log(`writeBuffer alone, 64 MiB pieces: ${(t4 - t).toFixed(0)} ms (+ ${ms(t4)} queue)`);
  ctx.release(buf);
  await reader.close();
  // 3. norms
  t = performance.now();
  await baseNormsOnGpu(ctx, refs, { frobenius: true, spectral: false });
  console.log(`baseNormsOnGpu frobenius: ${ms(t)}`);
  t = performance.now();
  await baseNormsOnGpu(ctx, refs, { frobenius: false, spectral: true });
  console.log(`baseNormsOnGpu spectral: ${ms(t)}`);
  t = performance.now();
  await decomposeOnGpu(ctx, model.layers.map((l) => l.factors));
  console.log(`decomposeOnGpu: ${ms(t)}`);
}
await using cpu = await createCpuBackend({});
const t = performance.now();
await cpu.baseNorms(refs, { frobenius: true, spectral: false });
console.log(`cpu frobenius: ${ms(t)}`);
