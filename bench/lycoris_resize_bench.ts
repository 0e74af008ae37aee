/**
 * LyCORIS conversion side by side with a LoRA, end to end through the CLI: a LoKr (factor 8), a
 * LoHa of rank 8 × 8, a LoHa of rank 16 × 16 and a rank-32 LoRA over the same layers (every
 * UNet attention and MLP linear of the synthetic SDXL base), each resized to the same size target
 * (`fro_ckpt=1,size=64` at full width; `--recipe` to change it) with a warm norms cache. Wall time
 * (median of `--runs` rounds, each round running every input once) and peak RSS of whole
 * processes, and each time over the LoRA's.
 *
 * ```sh
 * deno run -A bench/lycoris_resize_bench.ts [--scale 0.25] [--device cpu|gpu] [--runs 5] [--recipe R]
 * ```
 *
 * Full size needs `.bench/sdxl_base_full.safetensors` (6.9 GB; generated on first use).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensureLycorisBenchFixtures } from "./fixtures.ts";
import { measureCli, type ProcessMeasure } from "./process_measure.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    scale: { type: "string" },
    device: { type: "string" },
    runs: { type: "string" },
    recipe: { type: "string" },
  },
});
const scale = Number(values.scale ?? 1);
const device = values.device ?? "cpu";
const runs = Number(values.runs ?? 5);
// A size target: a full LoKr's exact LoRA is as large as ΔW, so a threshold alone would write
// gigabytes at full size (64 MiB at full width, the same share of the file at other widths).
const recipe = values.recipe ?? `fro_ckpt=1,size=${Math.max(2, 64 * scale * scale)}`;
const files = await ensureLycorisBenchFixtures({ scale, log: (l) => console.error(l) });
const work = await Deno.makeTempDir({ prefix: "resize-lora-lycoris-bench-" });
const cache = join(work, "norms");

type Measure = ProcessMeasure;

/** Runs the CLI (wall seconds, max RSS); fails loudly. */
const measure = (args: string[]) => measureCli(args, { device, outputFolder: join(work, "out") });

const cases: [string, string][] = [
  ["LoRA rank 32", files.lora],
  ["LoKr factor 8", files.lokr8],
  ["LoHa 8 × 8", files.loha8],
  ["LoHa 16 × 16", files.loha16],
];
// Page cache and norms cache warm before the timed runs.
for (const [, path] of cases) {
  await new Deno.Command("cat", { args: [path], stdout: "null" }).output();
}
await measure([files.base, files.lora, "-r", recipe, "--norms_cache", cache]);

// Rounds interleave the inputs (LoRA, LoKr, LoHa, LoHa, then again), so that the machine's
// speed drifting during the bench moves every input's runs alike.
const all: Measure[][] = cases.map(() => []);
for (let i = 0; i < runs; i++) {
  for (const [n, [, path]] of cases.entries()) {
    all[n].push(await measure([files.base, path, "-r", recipe, "--norms_cache", cache]));
  }
}
const rows: [string, Measure, number][] = [];
for (const [n, [label, path]] of cases.entries()) {
  const sorted = all[n].toSorted((a, b) => a.seconds - b.seconds);
  const bytes = (await Deno.stat(path)).size;
  // The median run's time; the highest peak RSS of all runs.
  const peakMiB = Math.max(...all[n].map((m) => m.peakMiB));
  rows.push([label, { ...sorted[sorted.length >> 1], peakMiB }, bytes]);
  console.error(`${label}: ${all[n].map((m) => m.seconds.toFixed(2)).join(" s, ")} s`);
}

const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
const model = cpuinfo.match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
console.log(
  `\nLyCORIS → LoRA resize, scale ${scale}, device ${device}, recipe ${recipe}, warm norms cache, ${navigator.hardwareConcurrency} × ${model}\n`,
);
console.log(`| input | file | wall (median of ${runs}) | × LoRA | peak RSS (highest run) |`);
console.log("|---|---:|---:|---:|---:|");
const lora = rows[0][1].seconds;
for (const [label, m, bytes] of rows) {
  console.log(
    `| ${label} | ${(bytes / 2 ** 20).toFixed(1)} MiB | ${m.seconds.toFixed(2)} s | ${
      (m.seconds / lora).toFixed(2)
    }× | ${m.peakMiB.toFixed(0)} MiB |`,
  );
}
await Deno.remove(work, { recursive: true });
