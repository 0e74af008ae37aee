/**
 * What a new user sees: the amount of -v output, numbers printed as the file names write them,
 * messages for mistyped options and recipe keys and for swapped arguments, and a demo that cleans
 * up after itself.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { BASE, LOCON, run as runCli, withDir } from "./hostile.ts";
import { runDeno } from "./webgpu_child.ts";

/** Runs the CLI in this process on the CPU, collecting what it prints. */
function run(args: string[]): ReturnType<typeof runCli> {
  return runCli([...args, "-d", "cpu", "--no_norms_cache"]);
}

async function listFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

Deno.test("-v prints a handful of lines: one summary stands for the base weights without a layer", async () => {
  await withDir(async (dir) => {
    const r = await run([BASE, LOCON, "-o", dir, "-v"]);
    assertEquals(r.code, 0, r.stderr.join("\n"));
    assert(r.stderr.length <= 6, r.stderr.join("\n"));
    const summary = r.stderr.filter((l) => l.includes("base weights have no LoRA layer"));
    assertEquals(summary.length, 1, r.stderr.join("\n"));
    // microB trains 88 of the micro base's 1058 mappable weights, none of the text encoders'.
    assert(summary[0].startsWith("INFO:root:970 of 1058 base weights have no LoRA layer"));
    assert(summary[0].includes("all of TE1, TE2, IN00, BASE; part of "), summary[0]);
    assert(!r.stderr.some((l) => l.includes("No LoRA layer found")), "per-weight lines at -v");
  });
});

Deno.test("-vv lists each base weight without a layer, by its kohya name", async () => {
  await withDir(async (dir) => {
    const r = await run([BASE, LOCON, "-o", dir, "-vv"]);
    assertEquals(r.code, 0, r.stderr.join("\n"));
    const lines = r.stderr.filter((l) => l.includes("No LoRA layer found in file for base layer"));
    assertEquals(lines.length, 970);
    for (const line of lines) {
      assert(line.startsWith("DEBUG:root:"), line);
      assert(/an expected LoRA key was: 'lora_(unet|te1|te2)_\w+'\)$/.test(line), line);
    }
    // The original quoted this weight's first registered alias, the short 'down_4'.
    const ff = "'model.diffusion_model.input_blocks.4.1.transformer_blocks.1.ff.net.2.weight'";
    const line = lines.find((l) => l.includes(ff));
    assert(line?.endsWith("'lora_unet_input_blocks_4_1_transformer_blocks_1_ff_net_2')"), line);
  });
});

Deno.test("thresholds print as the output file name writes them", async () => {
  await withDir(async (dir) => {
    // A size target computes the threshold: a float with every digit.
    const r = await run([BASE, LOCON, "-o", dir, "-r", "fro_ckpt=1,size=0.05"]);
    assertEquals(r.code, 0, r.stderr.join("\n"));
    const [file] = await listFiles(dir);
    const inName = file.match(/_th(-?[\d.]+)\.safetensors$/)![1];
    assertEquals(r.stdout.length, 1);
    assert(r.stdout[0].endsWith(`(threshold ${inName})`), `${r.stdout[0]} vs ${file}`);
    assert(/^-?\d+(\.\d{1,2})?$/.test(inName), inName);

    const dry = await run([BASE, LOCON, "-o", dir, "-r", "fro_ckpt=1,size=0.05", "--dry_run"]);
    assert(dry.stdout.join("\n").includes(`  threshold    ${inName}\n`), dry.stdout.join("\n"));
  });
});

Deno.test("an unknown option gets the nearest one, or balanced advice", async () => {
  const near = await run([BASE, LOCON, "--dryrun"]);
  assertEquals(near.code, 2);
  assertEquals(near.stderr, ["error: unknown option --dryrun: did you mean --dry_run?"]);
  const kebab = await run([BASE, LOCON, "--dry-rn"]);
  assertEquals(kebab.stderr, ["error: unknown option --dry-rn: did you mean --dry-run?"]);
  const far = await run([BASE, LOCON, "--frobnicate"]);
  assertEquals(far.code, 2);
  assertEquals(far.stderr, [
    "error: unknown option --frobnicate (see --help; a file name that starts with '-' goes after --)",
  ]);
});

Deno.test("a mistyped recipe key gets the nearest key", async () => {
  await withDir(async (dir) => {
    const r = await run([BASE, LOCON, "-o", dir, "-r", "fro_ckp=1,thr=-3"]);
    assertEquals(r.code, 1);
    assertEquals(r.stderr, [
      "error: Unknown key fro_ckp in recipe fro_ckp=1,thr=-3 (did you mean fro_ckpt?)",
    ]);
    assertEquals(await listFiles(dir), []);
  });
});

Deno.test("a LoRA and a checkpoint in each other's places: 'arguments swapped?', nothing done", async () => {
  await withDir(async (dir) => {
    const swapped = await run([LOCON, BASE, "-o", dir]);
    assertEquals(swapped.code, 2);
    assertEquals(swapped.stderr, [
      `error: arguments swapped? the first positional is the base checkpoint, then the LoRAs: ${LOCON} holds a LoRA and ${BASE} a full checkpoint`,
    ]);
    const twoBases = await run([BASE, BASE, "-o", dir]);
    assertEquals(twoBases.stderr, [
      `error: arguments swapped? the first positional is the base checkpoint, then the LoRAs: ${BASE} holds a full checkpoint, not a LoRA`,
    ]);
    // Two LoRAs are a run without a base, which the default recipe (fro_ckpt) needs.
    const twoLoras = await run([LOCON, LOCON, "-o", dir]);
    assertEquals(twoLoras.stderr, [
      "error: recipe fro_ckpt=1,thr=-3.5 (the default): fro_ckpt scores against the base model, and no base checkpoint is given",
    ]);
    assertEquals(await listFiles(dir), []);
  });
});

Deno.test("demo: without -o it removes its temporary files, and says so", async () => {
  await withDir(async (dir) => {
    // The demo picks its device ("auto"), which may ask for a WebGPU adapter: in a child, whose
    // main thread may touch WebGPU (webgpu_child.ts).
    const tmp = join(dir, "tmp");
    await Deno.mkdir(tmp);
    const r = await runDeno(["run", "-A", "cli.ts", "demo"], { TMPDIR: tmp });
    assertEquals(r.code, 0, r.stderr.join("\n"));
    assert(r.stdout.some((l) => l.includes("in a temporary folder, removed again")), r.stdout[2]);
    assertEquals(await listFiles(tmp), [], "the demo left files in the temporary folder");
    assert(r.stderr.length <= 6, r.stderr.join("\n"));
  });
});
