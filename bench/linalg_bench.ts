/**
 * CPU backend benchmark on the synthetic SDXL base and rank-32 LoRA: decomposition of every
 * layer, Frobenius and spectral norms of every base weight (or q/k/v row block) the LoRA's
 * layers touch, rebuild, and optionally subspace scales. Prints a table.
 *
 * Usage: `deno run -A bench/linalg_bench.ts [--scale S] [--workers N] [--subspace]`
 * (scale 1 = full size: generates `.bench/` fixtures of 7.2 GB on first use).
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { BaseWeightRef, LowRankFactors } from "../src/linalg/backend.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import type { FloatDType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { sdxlLoraLayers } from "../src/testing/mod.ts";
import { ensureBenchFixtures } from "./fixtures.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    scale: { type: "string", default: "1" },
    workers: { type: "string" },
    subspace: { type: "boolean", default: false },
  },
});
const scale = Number(values.scale);
const workers = values.workers === undefined ? undefined : Number(values.workers);

const { base: basePath, lora: loraPath } = await ensureBenchFixtures({ scale, log: console.error });
// Created first, as the CLI does: the workers start while the inputs are read.
await using backend = await createCpuBackend({ workers });
await using lora = await SafetensorsFile.open(loraPath);
await using base = await SafetensorsFile.open(basePath);

// The LoRA's layers and, for each, the base weight (row block) it modifies.
const specs = sdxlLoraLayers({ scale });
const layers: LowRankFactors[] = [];
const bases: BaseWeightRef[] = [];
for (const spec of specs) {
  const up = lora.info(`${spec.name}.lora_up.weight`);
  const down = lora.info(`${spec.name}.lora_down.weight`);
  const rank = down.shape[0];
  const inFlat = down.shape.slice(1).reduce((a, b) => a * b, 1);
  const alpha = lora.has(`${spec.name}.alpha`) ? await lora.readScalar(`${spec.name}.alpha`) : rank;
  layers.push({
    up: { dtype: up.dtype as FloatDType, bytes: await lora.readBytes(up.name) },
    down: { dtype: down.dtype as FloatDType, bytes: await lora.readBytes(down.name) },
    out: up.shape[0],
    rank,
    inFlat,
    scale: alpha / rank,
  });
  const info = base.info(spec.base);
  const rows = spec.rows ?? [0, info.shape[0]];
  bases.push({
    path: basePath,
    dtype: info.dtype as FloatDType,
    offset: base.byteRange(spec.base, { rows }).offset,
    rows: rows[1] - rows[0],
    cols: info.shape.slice(1).reduce((a, b) => a * b, 1),
  });
}
const unique = [...new Map(bases.map((b) => [`${b.offset}:${b.rows}`, b])).values()];
const params = unique.reduce((s, b) => s + b.rows * b.cols, 0);
const gramMacs = layers.reduce((s, l) => s + (l.out + l.inFlat) * l.rank * l.rank / 2, 0);

const rows: [string, string, string, string][] = [];
async function time<T>(what: string, detail: (r: T, s: number) => string, run: () => Promise<T>) {
  const t0 = performance.now();
  const result = await run();
  const s = (performance.now() - t0) / 1000;
  rows.push([what, `${s.toFixed(2)} s`, detail(result, s), ""]);
  console.error(`${what}: ${s.toFixed(2)} s`);
  return result;
}

await time(
  `decompose ${layers.length} layers (first call)`,
  (_, s) => `${(layers.length / s).toFixed(0)} layers/s`,
  () => backend.decompose(layers),
);
const ds = await time(
  `decompose ${layers.length} layers`,
  (_, s) =>
    `${(layers.length / s).toFixed(0)} layers/s, Gram ${(gramMacs / s / 1e9).toFixed(2)} GMAC/s`,
  () => backend.decompose(layers),
);
await time(
  `rebuild ${layers.length} layers (half the ranks, F16)`,
  (_, s) => `${(layers.length / s).toFixed(0)} layers/s`,
  () =>
    backend.rebuild(layers.map((factors, i) => ({
      factors,
      decomposition: ds[i],
      keep: Array.from({ length: Math.ceil(ds[i].sigma.length / 2) }, (_, j) => j),
      rescale: 1,
      dtype: "F16",
    }))),
);
const frobenius = { frobenius: true, spectral: false };
const gparams = (_: unknown, s: number) => `${(params / s / 1e9).toFixed(2)} G params/s`;
await time(
  `Frobenius, ${unique.length} base weights (first read)`,
  gparams,
  () => backend.baseNorms(unique, frobenius),
);
await time(
  `Frobenius, ${unique.length} base weights (page cache)`,
  gparams,
  () => backend.baseNorms(unique, frobenius),
);
await time(
  `spectral, ${unique.length} base weights`,
  gparams,
  () => backend.baseNorms(unique, { frobenius: false, spectral: true }),
);
if (values.subspace) {
  await time(
    `subspace scales, ${layers.length} layers`,
    (_, s) => `${(layers.length / s).toFixed(0)} layers/s`,
    () =>
      backend.subspaceScales(
        layers.map((factors, i) => ({ weight: bases[i], factors, decomposition: ds[i] })),
      ),
  );
}

console.log(
  `\n${backend.description}; base ${basePath} (${(params / 1e9).toFixed(2)} G params mapped)`,
);
console.log(`| step | time | throughput |\n|---|---|---|`);
for (const [what, t, detail] of rows) console.log(`| ${what} | ${t} | ${detail} |`);
