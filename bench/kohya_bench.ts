/**
 * resize-lora against kohya sd-scripts' own `networks/resize_lora.py`, side by side in one run
 * on the same files, CPU: a kohya-method resize (default `sv_fro=0.9`, new rank 32) of
 *
 * - the full-size rank-32 synthetic SDXL LoRA (228 MB), and
 * - a synthetic Flux LoRA at real widths (every double/single-block linear, rank 32, 306 MB).
 *
 * resize-lora runs on the whole file (wall time and peak RSS of the process). kohya needs tens
 * of minutes per file here, so it runs on a fixed subset: its `resize_lora_model` is timed one
 * layer at a time (bench/kohya_layer_timer.py) on the first `--subset` layers of each layer
 * shape, and each shape's mean time is multiplied by that shape's count in the whole file; the
 * table says so. kohya's whole process on the subset file (load, resize, hash, save) is timed
 * too.
 *
 * kohya's script is not part of this repository: `--kohya DIR` (or `$KOHYA_SD_SCRIPTS`) names an
 * sd-scripts checkout (its `networks/resize_lora.py` is run), with the stand-ins of
 * bench/kohya_standins/ first on PYTHONPATH (Debian's torch has no `safetensors` package).
 *
 * ```sh
 * deno run -A bench/kohya_bench.ts --kohya ~/sd-scripts [--subset 20] [--flux-subset 1]
 *   [--scale 1] [--flux-blocks 19,38] [--method sv_fro --param 0.9 --rank 32] [--python PATH]
 * ```
 *
 * `--scale 1/16 --flux-blocks 1,1 --subset 2 --flux-subset 0` checks the bench quickly (0: kohya is
 * not run on the Flux file). kohya's full SVD of a Flux layer (up to 21504 × 3072) is slow: 13
 * layers took over 10 minutes here without finishing, so the default Flux subset is one layer of
 * each of its 7 shapes.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensureBenchFixtures } from "./fixtures.ts";
import { measureProcess, type ProcessMeasure } from "./process_measure.ts";
import { BENCH_DIR } from "./fixtures.ts";
import { writeSyntheticFluxLora } from "../src/testing/mod.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    kohya: { type: "string" },
    python: { type: "string" },
    subset: { type: "string" },
    "flux-subset": { type: "string" },
    scale: { type: "string" },
    "flux-blocks": { type: "string" },
    method: { type: "string" },
    param: { type: "string" },
    rank: { type: "string" },
  },
});
const kohya = values.kohya ?? Deno.env.get("KOHYA_SD_SCRIPTS") ?? "";
if (!kohya) throw new Error("--kohya DIR (an sd-scripts folder with networks/resize_lora.py)");
const python = values.python ?? "/usr/bin/python3";
const subset = Number(values.subset ?? 20);
const fluxSubset = Number(values["flux-subset"] ?? 1);
// "1/16" as well as "0.0625".
const scale = (values.scale ?? "1").split("/").map(Number).reduce((a, b) => a / b);
const [doubleBlocks, singleBlocks] = (values["flux-blocks"] ?? "19,38").split(",").map(Number);
const method = values.method ?? "sv_fro";
const param = values.param ?? "0.9";
const rank = Number(values.rank ?? 32);
const recipe = method === "none" ? `rank=${rank}` : `${method}=${param},rank=${rank}`;

const here = new URL(".", import.meta.url).pathname;
const cli = join(here, "../cli.ts");
const pythonPath = `${join(here, "kohya_standins")}:${kohya}`;
const work = await Deno.makeTempDir({ prefix: "resize-lora-kohya-bench-" });

type Measure = ProcessMeasure;
const measure = measureProcess;

/** A layer's shape key: its down and up shapes. */
function shapeOf(f: SafetensorsFile, layer: string): string {
  const down = f.info(`${layer}.lora_down.weight`).shape.join("×");
  const up = f.info(`${layer}.lora_up.weight`).shape.join("×");
  return `${up} · ${down}`;
}

/**
 * Writes the first `perShape` layers of each shape of `lora` to `path`; returns each shape's
 * layer count in the whole file.
 */
async function writeSubset(
  lora: string,
  path: string,
  perShape: number,
): Promise<Map<string, number>> {
  await using f = await SafetensorsFile.open(lora);
  const layers = f.names.filter((n) => n.endsWith(".lora_down.weight"))
    .map((n) => n.slice(0, -".lora_down.weight".length)).sort();
  const counts = new Map<string, number>();
  const chosen: string[] = [];
  for (const layer of layers) {
    const shape = shapeOf(f, layer);
    const n = counts.get(shape) ?? 0;
    if (n < perShape) chosen.push(layer);
    counts.set(shape, n + 1);
  }
  const tensors = [];
  for (const layer of chosen) {
    for (const suffix of ["alpha", "lora_down.weight", "lora_up.weight"]) {
      const name = `${layer}.${suffix}`;
      if (!f.has(name)) continue;
      const info = f.info(name);
      tensors.push({
        name,
        dtype: info.dtype,
        shape: [...info.shape],
        data: await f.readBytes(name),
      });
    }
  }
  await writeSafetensors(path, tensors, { metadata: f.metadata });
  return counts;
}

interface Row {
  readonly what: string;
  readonly ours: Measure;
  /** kohya's estimate and its subset run; none with a subset of 0 (a quick check of ours). */
  readonly kohya?: { seconds: number; subset: Measure; subsetLayers: number; layers: number };
}

async function compare(what: string, lora: string, perShape: number): Promise<Row> {
  console.error(`${what}: resize-lora on the whole file`);
  await new Deno.Command("cat", { args: [lora], stdout: "null" }).output(); // page cache
  const ours = await measure([
    Deno.execPath(),
    "run",
    "-A",
    cli,
    lora,
    "-r",
    recipe,
    "-t",
    "32",
    "-d",
    "cpu",
    "-o",
    join(work, "ours"),
  ]);
  if (perShape === 0) return { what, ours };
  const sub = join(work, `${what.replace(/\W+/g, "_")}_subset.safetensors`);
  const counts = await writeSubset(lora, sub, perShape);
  const env = { PYTHONPATH: pythonPath };
  const methodArgs = method === "none" ? ["none", "0"] : [method, param];
  console.error(`${what}: kohya, ${perShape} layers per shape, one at a time`);
  const timed = await measure(
    [python, join(here, "kohya_layer_timer.py"), sub, String(rank), ...methodArgs],
    env,
  );
  const times: Record<string, number> = JSON.parse(timed.stdout);
  await using f = await SafetensorsFile.open(sub);
  const byShape = new Map<string, number[]>();
  for (const [layer, t] of Object.entries(times)) {
    const shape = shapeOf(f, layer);
    byShape.set(shape, [...(byShape.get(shape) ?? []), t]);
  }
  let kohyaSeconds = 0;
  for (const [shape, count] of counts) {
    const t = byShape.get(shape)!;
    kohyaSeconds += count * t.reduce((a, b) => a + b, 0) / t.length;
  }
  console.error(`${what}: kohya's whole script on the subset file`);
  const kohyaSubset = await measure([
    python,
    join(kohya, "networks/resize_lora.py"),
    "--model",
    sub,
    "--save_to",
    join(work, "kohya_out.safetensors"),
    "--new_rank",
    String(rank),
    ...(method === "none" ? [] : ["--dynamic_method", method, "--dynamic_param", param]),
    "--device",
    "cpu",
  ], env);
  const layers = [...counts.values()].reduce((a, b) => a + b, 0);
  const subsetLayers = Object.keys(times).length;
  return {
    what,
    ours,
    kohya: { seconds: kohyaSeconds, subset: kohyaSubset, subsetLayers, layers },
  };
}

const { lora: sdxl } = await ensureBenchFixtures({ scale, log: (l) => console.error(l) });
const flux = join(BENCH_DIR, `flux_r${rank}_${doubleBlocks}x${singleBlocks}.safetensors`);
if (!await Deno.stat(flux).then(() => true, () => false)) {
  console.error(`writing ${flux}`);
  await writeSyntheticFluxLora(flux, { rank, doubleBlocks, singleBlocks });
}
const rows = [
  await compare(`SDXL rank 32 (scale ${values.scale ?? "1"})`, sdxl, subset),
  await compare(`Flux rank ${rank} (${doubleBlocks}+${singleBlocks} blocks)`, flux, fluxSubset),
];
await Deno.remove(work, { recursive: true });

const mib = async (path: string) => ((await Deno.stat(path)).size / 2 ** 20).toFixed(0);
console.log(
  `Recipe \`${recipe}\` (kohya: --new_rank ${rank}${
    method === "none" ? "" : ` --dynamic_method ${method} --dynamic_param ${param}`
  }), float32 output, CPU, one run.\n`,
);
console.log(
  "| LoRA | MiB | resize-lora wall | resize-lora peak RSS | kohya (estimated, whole file) | ratio | kohya on its subset (whole script) |",
);
console.log("|---|---:|---:|---:|---:|---:|---|");
for (const [i, r] of rows.entries()) {
  const k = r.kohya;
  const kohyaCells = k
    ? [
      `${k.seconds.toFixed(1)} s`,
      `${(k.seconds / r.ours.seconds).toFixed(0)}×`,
      `${k.subsetLayers} of ${k.layers} layers: ${k.subset.seconds.toFixed(1)} s, ${
        k.subset.peakMiB.toFixed(0)
      } MiB`,
    ]
    : ["not run", "–", "–"];
  const ours = [`${r.ours.seconds.toFixed(2)} s`, `${r.ours.peakMiB.toFixed(0)} MiB`];
  const cells = [r.what, await mib(i === 0 ? sdxl : flux), ...ours, ...kohyaCells];
  console.log(`| ${cells.join(" | ")} |`);
}
console.log(
  `\nkohya's whole-file time is estimated: its resize_lora_model timed one layer at a time on the first ${subset} (SDXL) / ${fluxSubset} (Flux) layers of each layer shape, each shape's mean times its count in the file (load, hashing and save not included). python: ${python}, torch threads: torch's default.`,
);
