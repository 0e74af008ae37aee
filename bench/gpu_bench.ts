/**
 * CPU and WebGPU backends side by side on the same synthetic SDXL base and
 * rank-32 LoRA: decompose every layer, Frobenius norms and spectral norms
 * of every paired base weight. Prints wall time per step for each backend,
 * the CPU/GPU ratio, and how far the GPU results are from the CPU ones.
 *
 * ```sh
 * deno run -A bench/gpu_bench.ts                 # full size (generates ~7.2 GB under .bench/)
 * deno run -A bench/gpu_bench.ts --scale 0.0625  # widths / 16
 * deno run -A bench/gpu_bench.ts --json out.json # also write the figures as JSON
 * ```
 *
 * On a software adapter (llvmpipe, lavapipe) the GPU column is expected to
 * be slower than the CPU one; the figures that matter come from a real GPU.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { Backend, BaseWeightRef, LowRankFactors } from "../src/linalg/backend.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { createGpuBackend } from "../src/linalg/gpu/backend.ts";
import { requestAdapter } from "../src/linalg/gpu/device.ts";
import { readLoraFile } from "../src/lora/lora_file.ts";
import { pairLayers } from "../src/lora/pairing.ts";
import { BaseCheckpoint } from "../src/base/checkpoint.ts";
import { ensureBenchFixtures } from "./fixtures.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    scale: { type: "string", default: "1" },
    workers: { type: "string" },
    json: { type: "string" },
  },
});
const scale = Number(args.scale);
if (!(scale > 0 && scale <= 1)) {
  throw new Error(`--scale: expected a number in (0, 1], got ${args.scale}`);
}

const adapter = await requestAdapter();
if (!adapter) {
  console.error("gpu_bench: no WebGPU adapter on this machine");
  Deno.exit(1);
}
const { base, lora } = await ensureBenchFixtures({ scale, log: (l) => console.error(l) });
await using ckpt = await BaseCheckpoint.open(base);
const model = await readLoraFile(lora);
const { paired } = pairLayers(model, ckpt);
const layers: LowRankFactors[] = paired.map((p) => p.layer.factors);
// One norm per base weight (several layers can share one).
const seen = new Map<string, BaseWeightRef>();
for (const p of paired) {
  const ref = ckpt.weightRef(p.base);
  seen.set(`${ref.offset}:${ref.rows}`, ref);
}
const refs = [...seen.values()];
const weightBytes = refs.reduce((n, r) => n + r.rows * r.cols * (r.dtype === "F32" ? 4 : 2), 0);

interface Figures {
  decompose: number;
  frobenius: number;
  spectral: number;
  sigma: Float64Array[];
  fro: number[];
  spn: number[];
}

async function run(backend: Backend): Promise<Figures> {
  const time = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
    const t0 = performance.now();
    const r = await f();
    return [r, (performance.now() - t0) / 1000];
  };
  const [d, decompose] = await time(() => backend.decompose(layers));
  const [f, frobenius] = await time(() =>
    backend.baseNorms(refs, { frobenius: true, spectral: false })
  );
  const [s, spectral] = await time(() =>
    backend.baseNorms(refs, { frobenius: false, spectral: true })
  );
  return {
    decompose,
    frobenius,
    spectral,
    sigma: d.map((x) => x.sigma),
    fro: f.map((x) => x.frobenius!),
    spn: s.map((x) => x.spectral!),
  };
}

const workers = args.workers === undefined ? undefined : Number(args.workers);
const cpuBackend = await createCpuBackend({ workers });
const cpuFigures = await run(cpuBackend);
await cpuBackend.close();
const gpuBackend = await createGpuBackend({ adapter });
const gpuFigures = await run(gpuBackend);
await gpuBackend.close();

/** Largest relative difference, over values ≥ 1e-3 of their group's largest. */
function worst(a: number[][], b: number[][]): number {
  let w = 0;
  a.forEach((xs, i) => {
    const top = Math.max(...b[i], 0);
    xs.forEach((x, j) => {
      if (b[i][j] >= 1e-3 * top && b[i][j] > 0) w = Math.max(w, Math.abs(x - b[i][j]) / b[i][j]);
    });
  });
  return w;
}
const deviation = {
  decompose: worst(gpuFigures.sigma.map((s) => [...s]), cpuFigures.sigma.map((s) => [...s])),
  frobenius: worst(gpuFigures.fro.map((x) => [x]), cpuFigures.fro.map((x) => [x])),
  spectral: worst(gpuFigures.spn.map((x) => [x]), cpuFigures.spn.map((x) => [x])),
};

const rows = [
  ["step", "CPU s", "GPU s", "CPU/GPU", "max rel. diff"],
  ...(["decompose", "frobenius", "spectral"] as const).map((k) => [
    k === "decompose" ? `decompose ${layers.length} layers` : `${k} ${refs.length} weights`,
    cpuFigures[k].toFixed(3),
    gpuFigures[k].toFixed(3),
    (cpuFigures[k] / gpuFigures[k]).toFixed(2),
    deviation[k].toExponential(1),
  ]),
];
const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
console.log(
  `gpu_bench: scale ${scale}, ${layers.length} layers, ${refs.length} base weights ` +
    `(${(weightBytes / 2 ** 20).toFixed(0)} MiB); ${cpuBackend.description}; ` +
    `${gpuBackend.description}`,
);
for (const r of rows) {
  console.log(r.map((x, c) => c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c])).join("  "));
}
if (args.json) {
  await Deno.writeTextFile(
    args.json,
    JSON.stringify(
      {
        scale,
        layers: layers.length,
        weights: refs.length,
        weightBytes,
        cpu: cpuBackend.description,
        gpu: gpuBackend.description,
        seconds: Object.fromEntries(
          (["decompose", "frobenius", "spectral"] as const).map((k) => [k, {
            cpu: cpuFigures[k],
            gpu: gpuFigures[k],
          }]),
        ),
        maxRelativeDifference: deviation,
      },
      null,
      2,
    ) + "\n",
  );
}
