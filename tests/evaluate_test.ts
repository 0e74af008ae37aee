/**
 * `resize-lora evaluate`: its three files equal standalone runs of the recipes it reports,
 * byte for byte; the recipes are the three steps' (step 1's size and step 2's threshold carried
 * exactly); the comparison it prints is the one the standalone outputs give.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { main } from "../cli.ts";
import { evaluate } from "../src/report/evaluate.ts";
import { resize } from "../src/resize.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { parseRecipe } from "../src/recipe/recipe.ts";
import { kohyaRuleOf } from "../src/recipe/recipe.ts";

const FIXTURES = join(import.meta.dirname!, "fixtures");
const BASE = join(FIXTURES, "micro_sdxl_base.safetensors");
const LORA = join(FIXTURES, "microA_r8_te.safetensors");
const backend = await createCpuBackend({ workers: 1 });

Deno.test("evaluate's three files equal standalone runs of the recipes it reports, byte for byte", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-evaluate-" });
  try {
    const { evaluation, outputs } = await evaluate({
      checkpoint: BASE,
      lora: LORA,
      outputFolder: join(dir, "evaluate"),
      backend,
      normsCache: false,
    });
    const [one, two, three] = evaluation.steps;
    assertEquals(one.recipe, "spn_ckpt=1,thr=-1.2");
    // Step 2: step 1's whole-file size, exactly; step 3: kohya's ratio at step 2's threshold.
    assertEquals(parseRecipe(two.recipe).sizeMiB! * 2 ** 20, one.bytes);
    assert(two.bytes <= one.bytes);
    const rule = kohyaRuleOf(parseRecipe(three.recipe))!;
    assertEquals(rule.method, "sv_ratio");
    assertEquals(rule.param, 10 ** -two.threshold!);
    assertEquals(rule.rank, 8, "the LoRA's own rank");

    for (const step of evaluation.steps) {
      const { outputs: [alone] } = await resize({
        checkpoint: BASE,
        loras: [LORA],
        recipes: step.recipe,
        outputFolder: join(dir, `alone${step.step}`),
        backend,
        normsCache: false,
      });
      assertEquals(alone.path.split("/").pop(), step.file.split("/").pop());
      assertEquals(await Deno.readFile(step.file), await Deno.readFile(alone.path), step.recipe);
      assertEquals((await Deno.stat(step.file)).size, step.bytes);
    }

    // The comparison, from the outputs' own layers.
    const [, o2, o3] = outputs;
    const r2 = new Map(o2.layers.map((l) => [l.name, l.kept]));
    const r3 = new Map(o3.layers.map((l) => [l.name, l.kept]));
    const names = new Set([...r2.keys(), ...r3.keys()]);
    const diffs = [...names].map((n) => Math.abs((r2.get(n) ?? 0) - (r3.get(n) ?? 0)));
    assertEquals(evaluation.agreement.layers, names.size);
    assertEquals(evaluation.agreement.equalRank, diffs.filter((d) => d === 0).length);
    assertEquals(evaluation.agreement.largestDifference, Math.max(...diffs));
    for (const [i, step] of evaluation.steps.entries()) {
      assertEquals(step.blocks.reduce((n, b) => n + b.rank, 0), outputs[i].rankAfter);
      // Relative to the base: the dropped σ² over every layer's ‖W‖², from the summaries.
      let dropped = 0, base = 0;
      for (const l of outputs[i].layers) {
        l.sigma.forEach((s, j) => dropped += l.keep.includes(j) ? 0 : s * s);
        base += l.baseFrobenius! ** 2;
      }
      const want = Math.sqrt(dropped / base);
      assert(Math.abs(step.baseRelativeError! - want) <= 1e-12 * want, `step ${step.step}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate --json prints the steps with recipe, file and bytes; --report writes the report", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-evaluate-" });
  const printed: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => printed.push(a.join(" "));
  console.error = () => {};
  try {
    const report = join(dir, "report.html");
    const args = ["evaluate", BASE, LORA, "-o", dir, "--json", "--report", report];
    const code = await main([...args, "-d", "cpu", "--no_norms_cache"]);
    console.log = log;
    assertEquals(code, 0);
    const json = JSON.parse(printed.join("\n"));
    assertEquals(json.steps.length, 3);
    for (const step of json.steps) {
      assertEquals(typeof step.recipe, "string");
      assertEquals((await Deno.stat(step.file)).size, step.bytes);
    }
    const html = await Deno.readTextFile(report);
    for (const step of json.steps) assert(html.includes(step.recipe), step.recipe);
    assertEquals(await main(["evaluate", LORA]), 2, "a checkpoint and a LoRA are required");
  } finally {
    console.log = log;
    console.error = error;
    await Deno.remove(dir, { recursive: true });
  }
});
