/**
 * End-to-end benchmark of the CLI on the full-size synthetic SDXL base
 * (6.9 GB) and rank-32 LoRA (228 MB): wall time and peak RSS of whole
 * processes, for the scenarios issue 6 names, side by side in one run.
 *
 * ```sh
 * deno run -A bench/resize_bench.ts [--scale 0.25] [--device cpu|gpu]
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensureBenchFixtures } from "./fixtures.ts";
import { measureCli, type ProcessMeasure } from "./process_measure.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { scale: { type: "string" }, device: { type: "string" } },
});
const scale = Number(values.scale ?? 1);
const device = values.device ?? "cpu";
const { base, lora } = await ensureBenchFixtures({ scale, log: (l) => console.error(l) });
const work = await Deno.makeTempDir({ prefix: "resize-lora-bench-" });

type Measure = ProcessMeasure;

/** Runs the CLI (wall seconds, max RSS); fails loudly. */
const measure = (args: string[]) => measureCli(args, { device, outputFolder: join(work, "out") });

async function pageCache(path: string) {
  await new Deno.Command("cat", { args: [path], stdout: "null" }).output();
}

const cache = join(work, "norms");
const one = "fro_ckpt=1,thr=-3.5";
const three = "fro_ckpt=1,thr=-3.5:spn_lora=1,size=64:fro_ckpt=0.8,params=0.2,thr=-3";
await pageCache(base);
await pageCache(lora);
// Fill the norms cache (Frobenius and spectral) before the warm-cache runs.
await measure([base, lora, "-r", `${one}:spn_ckpt=1,thr=-2`, "--norms_cache", cache]);

const rows: [string, Measure, string, string][] = [];
/** Runs of each scenario; the one with the median wall time is reported (VM timings are noisy). */
const RUNS = 5;

const run = async (label: string, args: string[], original: string, target: string) => {
  const runs: Measure[] = [];
  for (let i = 0; i < RUNS; i++) runs.push(await measure(args));
  runs.sort((a, b) => a.seconds - b.seconds);
  rows.push([label, runs[RUNS >> 1], original, target]);
  console.error(`${label}: ${runs.map((m) => m.seconds.toFixed(2)).join(" s, ")} s`);
};
await run(
  "warm norms cache, default recipe",
  [base, lora, "-r", one, "--norms_cache", cache],
  "11.2 s / 1.17 GB",
  "≤ 1.2 s",
);
await run(
  "no norms cache (file in page cache)",
  [base, lora, "-r", one, "--no_norms_cache"],
  "14.5 s / 6.9 GB",
  "≤ 3 s",
);
await run(
  "spn_ckpt, no norms cache",
  [base, lora, "-r", "spn_ckpt=1,thr=-2", "--no_norms_cache"],
  "255 s",
  "≤ 30 s",
);
await run(
  "three recipes, warm norms cache",
  [base, lora, "-r", three, "--norms_cache", cache],
  "—",
  "≤ 1.3× one recipe",
);

const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
const model = cpuinfo.match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
console.log(
  `\nresize-lora end to end, scale ${scale}, device ${device}, ${navigator.hardwareConcurrency} × ${model}\n`,
);
console.log(
  `| scenario | wall (median of ${RUNS}) | peak RSS | original Python (2-core reference) | target |`,
);
console.log("|---|---:|---:|---|---|");
for (const [label, m, original, target] of rows) {
  console.log(
    `| ${label} | ${m.seconds.toFixed(2)} s | ${
      m.peakMiB.toFixed(0)
    } MiB | ${original} | ${target} |`,
  );
}
console.log(
  `\nthree recipes / one recipe (warm cache): ${
    (rows[3][1].seconds / rows[0][1].seconds).toFixed(2)
  }×`,
);
await Deno.remove(work, { recursive: true });
