/**
 * What namings cost: the rank-32 bench LoRA in kohya naming and the same layers renamed to PEFT
 * (`unet.down_blocks.….lora_A.weight`, alphas kept as `.alpha` tensors so both files hold the same
 * LoRA), resized side by side on a warm norms cache, runs interleaved. The PEFT run adds naming
 * detection, the diffusers → SGM block mapping, and writing PEFT keys with the scale folded in;
 * the budget for that is 2 % of the warm run. Also times reading each file (where
 * detection happens) in process.
 *
 * ```sh
 * deno run -A bench/naming_bench.ts [--scale 0.25] [--device cpu|gpu] [--runs 7]
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensureBenchFixtures } from "./fixtures.ts";
import { readLoraFile } from "../src/lora/lora_file.ts";
import { namingById } from "../src/namings/detect.ts";
import { outputKeys } from "../src/namings/output_keys.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";
import { measureCli } from "./process_measure.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { scale: { type: "string" }, device: { type: "string" }, runs: { type: "string" } },
});
const scale = Number(values.scale ?? 1);
const device = values.device ?? "cpu";
const RUNS = Number(values.runs ?? 7);
const { base, lora } = await ensureBenchFixtures({ scale, log: (l) => console.error(l) });
const work = await Deno.makeTempDir({ prefix: "resize-lora-naming-bench-" });

/** The kohya LoRA's layers under PEFT keys (alpha as `<module>.alpha`), tensor bytes as stored. */
async function writePeftCopy(kohya: string, path: string): Promise<void> {
  const model = await readLoraFile(kohya);
  await using file = await SafetensorsFile.open(kohya);
  const tensors: TensorSource[] = [];
  const peft = namingById("peft");
  for (const layer of model.layers) {
    const keys = outputKeys(layer, { naming: "peft" })!;
    const alpha = peft.layerKeys(keys.down.slice(0, -peft.downSuffix.length)).alpha;
    const rename: [string, string][] = [
      [`${layer.name}.lora_down.weight`, keys.down],
      [`${layer.name}.lora_up.weight`, keys.up],
      [`${layer.name}.alpha`, alpha],
    ];
    for (const [from, to] of rename) {
      const { dtype, shape } = file.info(from);
      tensors.push({
        name: to,
        dtype,
        shape,
        data: async () => (await file.readTensors([from])).get(from)!,
      });
    }
  }
  await writeSafetensors(path, tensors, { metadata: { ...model.metadata } });
}

/** Wall seconds of one CLI run. */
async function measure(args: string[]): Promise<number> {
  return (await measureCli(args, { device, outputFolder: join(work, "out") })).seconds;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

const peftLora = join(work, "lora_peft.safetensors");
await writePeftCopy(lora, peftLora);
const cache = join(work, "norms");
const recipe = "fro_ckpt=1,thr=-3.5";
for (const path of [base, lora, peftLora]) {
  await new Deno.Command("cat", { args: [path], stdout: "null" }).output();
}
// Fill the norms cache; one untimed run of each file warms the rest.
for (const path of [lora, peftLora]) {
  await measure([base, path, "-r", recipe, "--norms_cache", cache]);
}

const times: Record<"kohya" | "peft", number[]> = { kohya: [], peft: [] };
for (let i = 0; i < RUNS; i++) {
  // Alternating which goes first spreads drift in the machine's load over both.
  const order = i % 2 === 0 ? (["kohya", "peft"] as const) : (["peft", "kohya"] as const);
  for (const naming of order) {
    const path = naming === "kohya" ? lora : peftLora;
    times[naming].push(await measure([base, path, "-r", recipe, "--norms_cache", cache]));
  }
}

const reads: Record<"kohya" | "peft", number[]> = { kohya: [], peft: [] };
for (let i = 0; i < 3 * RUNS; i++) {
  for (const naming of ["kohya", "peft"] as const) {
    const t0 = performance.now();
    await readLoraFile(naming === "kohya" ? lora : peftLora);
    reads[naming].push(performance.now() - t0);
  }
}

const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
const cpu = cpuinfo.match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
const [k, p] = [median(times.kohya), median(times.peft)];
console.log(
  `\nnamings, scale ${scale}, device ${device}, ${navigator.hardwareConcurrency} × ${cpu}\n`,
);
console.log(`| rank-32 LoRA | warm run, ${recipe} (median of ${RUNS}) | read the file (median) |`);
console.log("|---|---:|---:|");
console.log(`| kohya names | ${k.toFixed(2)} s | ${median(reads.kohya).toFixed(1)} ms |`);
console.log(`| PEFT names | ${p.toFixed(2)} s | ${median(reads.peft).toFixed(1)} ms |`);
console.log(`\nPEFT / kohya, warm run: ${(100 * (p / k - 1)).toFixed(1)} % (budget: < 2 %)`);
await Deno.remove(work, { recursive: true });
