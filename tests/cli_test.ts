/**
 * The command line end to end: exit codes, one-line errors for every bad
 * input (nothing left behind), help/version, globs, summaries.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { BASE, LOCON, run, withDir } from "./hostile.ts";
import { runDeno } from "./webgpu_child.ts";
import { VERSION } from "../src/version.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import denoJson from "../deno.json" with { type: "json" };

async function listFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) names.push(e.name);
  } catch { /* missing */ }
  return names.sort();
}

/** Asserts a failed run: the exit code, exactly one `error: …` line matching, no output file. */
async function assertFails(
  args: string[],
  code: number,
  pattern: RegExp,
  outDir: string,
): Promise<void> {
  const before = await listFiles(outDir);
  const r = await run([...args, "--no_norms_cache", "-d", "cpu"]);
  assertEquals(r.code, code, r.stderr.join("\n"));
  const errors = r.stderr.filter((l) => l.startsWith("error: "));
  assertEquals(errors.length, 1, r.stderr.join("\n"));
  assert(!errors[0].includes("\n"), "error must be one line");
  assert(pattern.test(errors[0]), `${errors[0]} !~ ${pattern}`);
  assertEquals(await listFiles(outDir), before, "nothing may be left behind");
}

Deno.test("--version and --help", async () => {
  assertEquals(VERSION, denoJson.version);
  const v = await run(["--version"]);
  assertEquals([v.code, v.stdout], [0, [`resize-lora ${VERSION}`]]);
  const h = await run(["--help"]);
  assertEquals(h.code, 0);
  assert(h.stdout[0].includes("default: fro_ckpt=1,thr=-3.5"));
});

Deno.test("usage errors exit 2", async () => {
  for (
    const args of [
      [],
      [BASE],
      [BASE, LOCON, "-t", "8"],
      [BASE, LOCON, "-d", "tpu"],
      [BASE, LOCON, "--frobnicate"],
      [BASE, LOCON, "--size_accounting", "weights"],
    ]
  ) {
    const r = await run(args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr.join("\n")}`);
    assertEquals(r.stderr.filter((l) => l.startsWith("error: ")).length, 1);
  }
});

Deno.test("a run writes one file per recipe and prints a summary", async () => {
  await withDir(async (dir) => {
    const out = join(dir, "new", "folder"); // created when missing
    const r = await run([
      BASE,
      LOCON,
      "-o",
      out,
      "-r",
      "fro_ckpt=1,thr=-3.5:spn_lora=1,thr=-1",
      "--no-norms-cache", // kebab twin
      "-d",
      "cpu",
    ]);
    assertEquals(r.code, 0, r.stderr.join("\n"));
    assertEquals(await listFiles(out), [
      "microB-locon-r8c4_frockpt1_th-3.5.safetensors",
      "microB-locon-r8c4_spnlora1_th-1.safetensors",
    ]);
    assertEquals(r.stdout.length, 2);
    assert(
      /wrote .*frockpt1_th-3\.5\.safetensors: .* bytes\), usable rank \d+ → \d+, relative error/
        .test(
          r.stdout[0],
        ),
    );
  });
});

Deno.test("globs are expanded by the tool", async () => {
  await withDir(async (dir) => {
    await Deno.copyFile(LOCON, join(dir, "a.safetensors"));
    await Deno.copyFile(LOCON, join(dir, "b.safetensors"));
    const out = join(dir, "out");
    const r = await run([
      BASE,
      join(dir, "*.safetensors"),
      "-o",
      out,
      "--no_norms_cache",
      "-d",
      "cpu",
    ]);
    assertEquals(r.code, 0, r.stderr.join("\n"));
    assertEquals(await listFiles(out), [
      "a_frockpt1_th-3.5.safetensors",
      "b_frockpt1_th-3.5.safetensors",
    ]);
    await assertFails([BASE, join(dir, "*.nothing")], 2, /no file matches/, out);
  });
});

Deno.test("bad inputs: one-line errors, exit 1, nothing written", async () => {
  await withDir(async (dir) => {
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const missing = join(dir, "missing.safetensors");
    await assertFails([BASE, missing, "-o", out], 1, /missing\.safetensors.*no such file/, out);
    await assertFails([missing, LOCON, "-o", out], 1, /missing\.safetensors.*no such file/, out);
    const text = join(dir, "notes.safetensors");
    await Deno.writeTextFile(text, "this is not a safetensors file at all");
    await assertFails(
      [BASE, text, "-o", out],
      1,
      /notes\.safetensors: not a safetensors file/,
      out,
    );
    await assertFails([BASE, dir, "-o", out], 1, new RegExp(dir.replaceAll("/", "\\/")), out);

    // An SD1.5 LoRA (diffusers-style kohya names) against the SDXL base.
    const sd15 = join(dir, "sd15.safetensors");
    const f = (n: number) => encodeFloats(new Array(n).fill(0.01), "F16");
    await writeSafetensors(sd15, [
      {
        name: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        dtype: "F16",
        shape: [4, 320],
        data: f(1280),
      },
      {
        name: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
        dtype: "F16",
        shape: [320, 4],
        data: f(1280),
      },
      {
        name: "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        dtype: "F16",
        shape: [4, 768],
        data: f(3072),
      },
      {
        name: "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
        dtype: "F16",
        shape: [3072, 4],
        data: f(12288),
      },
    ]);
    await assertFails(
      [BASE, sd15, "-o", out],
      1,
      /sd15\.safetensors is a LoRA for SD1\.5 .*but the base checkpoint .* is SDXL/,
      out,
    );

    // Recipe errors, before any file is opened.
    for (
      const [recipe, message] of [
        ["foo=1,thr=-1", /Unknown key foo in recipe foo=1,thr=-1/],
        ["fro_ckpt=x,thr=-1", /Could not parse fro_ckpt=x in recipe/],
        ["fro_ckpt=1,thr=", /Empty value not accepted for key thr in recipe/],
        ["fro_ckpt=1", /Either 'size' or 'thr' must be specified/],
        ["thr=-1", /At least one score type must be specified/],
        ["fro_ckpt=1,thr=-1,rescale=0", /rescale/],
      ] as const
    ) {
      await assertFails([BASE, missing, "-o", out, "-r", recipe], 1, message, out);
    }

    // A size target smaller than the file without any layer.
    await assertFails(
      [BASE, LOCON, "-o", out, "-r", "fro_ckpt=1,size=0.001"],
      1,
      /size=0\.001/,
      out,
    );

    // An output folder that cannot be created (a file is in the way).
    const blocker = join(dir, "blocker");
    await Deno.writeTextFile(blocker, "");
    await assertFails([BASE, LOCON, "-o", join(blocker, "sub")], 1, /blocker/, out);

    // An output that would replace an input.
    const victim = join(dir, "x_frockpt1_th-3.5.safetensors");
    await Deno.copyFile(LOCON, victim);
    await Deno.copyFile(LOCON, join(dir, "x.safetensors"));
    const before = await Deno.readFile(victim);
    await assertFails(
      [BASE, join(dir, "x.safetensors"), victim, "-o", dir],
      1,
      /would overwrite the input/,
      dir,
    );
    assertEquals(await Deno.readFile(victim), before);
  });
});

Deno.test("demo: writes a synthetic base and LoRA, resizes it, and says what it did", async () => {
  await withDir(async (dir) => {
    // The demo picks its device ("auto"), which asks for a WebGPU adapter: in a child, whose
    // main thread may touch WebGPU (webgpu_child.ts).
    const r = await runDeno(["run", "-A", "cli.ts", "demo", "-o", dir]);
    assertEquals(r.code, 0, r.stderr.join("\n"));
    assert(r.stderr.some((l) => l.startsWith("INFO:root:Mapped 986 LoRA layers")), "runs as -v");
    assert(r.stdout.some((l) => l.startsWith("demo: wrote a synthetic SDXL-shaped base")));
    assert(r.stdout.some((l) => l.includes(`(the files stay in ${dir})`)), r.stdout.join("\n"));
    assertEquals(await listFiles(join(dir, "out")), ["demo_lora_r16_frockpt1_th-3.5.safetensors"]);
  });
});

Deno.test("bad input in other namings: one line, exit 1, nothing written", async () => {
  await withDir(async (dir) => {
    const out = join(dir, "out");
    const f32 = (n: number) => encodeFloats(new Array(n).fill(0.01), "F32");
    const pair = (down: string, up: string, dtype: "F32" | "F8_E4M3" = "F32") => [
      {
        name: down,
        dtype,
        shape: [2, 10],
        data: dtype === "F32" ? f32(20) : new Uint8Array(20).fill(0x38),
      },
      { name: up, dtype: "F32" as const, shape: [10, 2], data: f32(20) },
    ];
    const peft = "unet.down_blocks.1.attentions.0.proj_in";
    // PEFT with an adapter_config.json that is not JSON.
    await Deno.mkdir(join(dir, "peft"));
    const config = join(dir, "peft", "lora.safetensors");
    await writeSafetensors(config, pair(`${peft}.lora_A.weight`, `${peft}.lora_B.weight`));
    await Deno.writeTextFile(join(dir, "peft", "adapter_config.json"), "lora_alpha: 8");
    await assertFails([BASE, config, "-o", out], 1, /adapter_config\.json: not valid JSON/, out);
    // Two layers (kohya and PEFT names) that modify the same weight.
    const kohya = "lora_unet_input_blocks_4_1_proj_in";
    const both = join(dir, "both.safetensors");
    await writeSafetensors(both, [
      ...pair(`${kohya}.lora_down.weight`, `${kohya}.lora_up.weight`),
      ...pair(`${peft}.lora_A.weight`, `${peft}.lora_B.weight`),
    ]);
    await assertFails(
      [BASE, both, "-o", out],
      1,
      /layers '.*' \(kohya\) and '.*' \(peft\) both modify/,
      out,
    );
    // An fp8 LoRA factor.
    const fp8 = join(dir, "fp8.safetensors");
    await writeSafetensors(
      fp8,
      pair(`${kohya}.lora_down.weight`, `${kohya}.lora_up.weight`, "F8_E4M3"),
    );
    await assertFails(
      [BASE, fp8, "-o", out],
      1,
      /has dtype F8_E4M3, expected F16, BF16, F32 or F64/,
      out,
    );
    // PEFT without alphas or adapter_config.json: scale 1, said once.
    await Deno.remove(join(dir, "peft", "adapter_config.json"));
    const r = await run([BASE, config, "-o", out, "--dry_run", "--no_norms_cache", "-d", "cpu"]);
    assertEquals(r.code, 0, r.stderr.join("\n"));
    const said = r.stderr.filter((l) => l.includes("PEFT layers have no alpha"));
    assertEquals(said.length, 1, r.stderr.join("\n"));
    assert(said[0].includes("no adapter_config.json is beside the file"), said[0]);
  });
});

Deno.test("running the CLI on a fresh machine downloads nothing: npm packages load only with a report", async () => {
  // A fresh Deno cache: every module the CLI's graph names would be fetched and logged here.
  const cache = await Deno.makeTempDir({ prefix: "resize-lora-fresh-cache-" });
  try {
    const r = await runDeno(["run", "-A", "cli.ts", "--version"], { DENO_DIR: cache });
    assertEquals(r.code, 0, r.stderr.join("\n"));
    assertEquals(r.stdout, [`resize-lora ${VERSION}`]);
    assertEquals(r.stderr.filter((l) => l.startsWith("Download")), []);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
