/**
 * The K* cases end to end: kohya-ss/sd-scripts `networks/resize_lora.py` at
 * commit 48d368fa557731ad0488c07304dfeba8c07910eb, run on the micro LoRAs,
 * against resize-lora with the equivalent recipe keys (plan() and resize(),
 * CPU backend) and with the pasted kohya command line (CLI, CPU in process
 * and WebGPU in a child where an adapter exists). Every layer's rank and
 * alpha exactly, ‖ΔW‖_F within rounding, the data section to the byte, kohya's
 * ss_ metadata, every other input key kept. Without a base, as kohya runs, and
 * (recipe keys) with the micro base too.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals, assertRelClose } from "./assert.ts";
import { run as runQuiet } from "./hostile.ts";
import { plan, resize, type ResizeOptions } from "../src/resize.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { hasWebGpuAdapter, runDeno } from "./webgpu_child.ts";
import { caseDType, caseRecipe, FIXTURES, inputs, type KCase, kCases } from "./kohya_cases.ts";

const BASE = join(FIXTURES, "micro_sdxl_base.safetensors");
const backend = await createCpuBackend({ workers: 1 });

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-kohya-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** ‖(α/k)·up·down‖_F from the factors as stored. */
async function deltaFro(f: SafetensorsFile, layer: string): Promise<number> {
  const up = await f.readFloat64(`${layer}.lora_up.weight`);
  const down = await f.readFloat64(`${layer}.lora_down.weight`);
  const k = f.info(`${layer}.lora_down.weight`).shape[0];
  const alpha = await f.readScalar(`${layer}.alpha`);
  const out = up.length / k, inFlat = down.length / k;
  let sum = 0;
  const row = new Float64Array(inFlat);
  for (let i = 0; i < out; i++) {
    row.fill(0);
    for (let j = 0; j < k; j++) {
      for (let c = 0; c < inFlat; c++) row[c] += up[i * k + j] * down[j * inFlat + c];
    }
    for (const v of row) sum += v * v;
  }
  return Math.sqrt(sum) * alpha / k;
}

/** Checks a written file against a K case's output; `rescale` multiplies the expected ΔW. */
async function checkAgainstKohya(path: string, c: KCase, rescale = 1) {
  const [want] = c.outputs;
  await using f = await SafetensorsFile.open(path);
  await using input = await SafetensorsFile.open(join(FIXTURES, c.input_lora));
  const layers = f.names.filter((n) => n.endsWith(".alpha")).map((n) => n.slice(0, -6));
  assertEquals(layers.sort(), Object.keys(want.layers).sort(), `${c.id}: layer set`);
  const tol = want.dtypes[0] === "BF16" ? 8e-3 : 1e-3; // BF16 factors: 8 bits
  for (const [name, layer] of Object.entries(want.layers)) {
    const down = f.info(`${name}.lora_down.weight`), up = f.info(`${name}.lora_up.weight`);
    assertEquals([...down.shape], layer.down, `${name} down`);
    assertEquals([...up.shape], layer.up, `${name} up`);
    assertEquals(down.dtype, want.dtypes[0]);
    assertEquals(await f.readScalar(`${name}.alpha`), layer.alpha, `${name} alpha`);
    const fro = await deltaFro(f, name);
    if (layer.delta_fro < 1e-9) assert(fro < 1e-9, `${name}: zero layer stays zero`);
    else assertRelClose(fro, rescale * layer.delta_fro, tol, `${name} ‖ΔW‖`);
  }
  for (const [name, [dtype, shape]] of Object.entries(want.extra_tensors)) {
    assertEquals([f.info(name).dtype, [...f.info(name).shape]], [dtype, shape], name);
  }
  // Same tensors, shapes and dtypes: the same data section as kohya's file.
  assertEquals(f.size - f.dataStart, want.bytes - 8 - want.header_bytes, `${c.id}: data bytes`);
  for (const key of ["ss_training_comment", "ss_network_dim", "ss_network_alpha"]) {
    assertEquals(f.metadata[key], want.metadata[key], `${c.id} ${key}`);
  }
  for (const [key, value] of Object.entries(input.metadata)) {
    if (/^(ss_training_comment|ss_network_dim|ss_network_alpha|sshs_.*)$/.test(key)) continue;
    assertEquals(f.metadata[key], value, `${c.id}: metadata ${key} kept`);
  }
  const bytes = await Deno.readFile(path);
  const sha = createHash("sha256").update(bytes.subarray(f.dataStart)).digest("hex");
  assertEquals(f.metadata.sshs_model_hash, sha);
}

/** A K case's run, without a base (as kohya runs) unless `more` gives one. */
function options(c: KCase, dir: string, more: Partial<ResizeOptions> = {}): ResizeOptions {
  return {
    loras: [join(FIXTURES, c.input_lora)],
    recipes: caseRecipe(c.argv),
    outputFolder: dir,
    outputDtype: caseDType(c.argv),
    normsCache: false,
    backend,
    ...more,
  };
}

for (const [c, base] of kCases.flatMap((c) => [[c, undefined], [c, BASE]] as const)) {
  Deno.test(
    `${c.id}: recipe ${caseRecipe(c.argv)} reproduces kohya through plan() and resize() (${
      base ? "with" : "without"
    } a base)`,
    async () => {
      await withDir(async (dir) => {
        const planned = (await plan(options(c, dir, { checkpoint: base }))).outputs;
        const { outputs } = await resize(options(c, dir, { checkpoint: base }));
        assertEquals(outputs.length, 1);
        const [p, o] = [planned[0], outputs[0]];
        const ranks = Object.fromEntries(p.layers.map((l) => [l.name, l.kept]));
        const want = Object.fromEntries(
          Object.entries(c.outputs[0].layers).map(([n, l]) => [n, l.rank]),
        );
        assertEquals(ranks, want, "plan(): per-layer ranks");
        assertEquals([o.bytes, o.rankAfter], [p.bytes, p.rankAfter], "the dry run's size and rank");
        assertEquals((await Deno.stat(o.path)).size, o.bytes);
        await checkAgainstKohya(o.path, c);
      });
    },
  );
}

Deno.test("kohya keys with other recipes in one pass, and rescale: the same ranks and alphas, ΔW scaled", async () => {
  const [k01, k03] = [kCases[0], kCases[2]];
  assertEquals([k01.input_lora, k03.input_lora], [k01.input_lora, k01.input_lora]);
  await withDir(async (dir) => {
    const recipes = `${caseRecipe(k01.argv)}:fro_ckpt=1,thr=-3.5:${
      caseRecipe(k03.argv)
    },rescale=0.5`;
    const { outputs } = await resize(options(k01, dir, { recipes, checkpoint: BASE }));
    assertEquals(outputs.map((o) => o.path.split("/").pop()), [
      "microA_r8_te_svfro0.9_rank16.safetensors",
      "microA_r8_te_frockpt1_th-3.5.safetensors",
      "microA_r8_te_svratio8_rank8_scale0.5.safetensors",
    ]);
    await checkAgainstKohya(outputs[0].path, k01);
    await checkAgainstKohya(outputs[2].path, k03, 0.5);
    // The base-aware recipe keeps its own behaviour: zero layers dropped, its own metadata.
    await using f = await SafetensorsFile.open(outputs[1].path);
    assert(!f.has("lora_te1_text_model_encoder_layers_11_mlp_fc1.alpha"));
    assertEquals(JSON.parse(f.metadata.resize_params).threshold, -3.5);
  });
});

Deno.test("kohya keys on a batch and on a merge: a LoRA merged with itself keeps kohya's ranks and alphas", async () => {
  const [k01, , , k04] = kCases;
  const [a, c] = [join(FIXTURES, k01.input_lora), join(FIXTURES, k04.input_lora)];
  await withDir(async (dir) => {
    const { outputs } = await plan(options(k01, dir, { loras: [a, c, `${a}:0.5,${a}:0.5`] }));
    assertEquals(outputs.length, 3);
    const ranks = (i: number) => Object.fromEntries(outputs[i].layers.map((l) => [l.name, l.kept]));
    const want = Object.fromEntries(
      Object.entries(k01.outputs[0].layers).map(([n, l]) => [n, l.rank]),
    );
    assertEquals(ranks(0), want);
    assertEquals(ranks(2), want, "the merge: the same ΔW, the same ranks");
    // C under K01's rule: each layer by the rule, from its own σ.
    const cLayers = inputs[k04.input_lora].layers;
    for (const l of outputs[1].layers) {
      const n = Math.min(l.out, l.inShape.reduce((x, y) => x * y, 1));
      const sv = cLayers[l.name].sv;
      const total = sv.reduce((x, y) => x + y * y, 0);
      let i = 0;
      for (let cum = 0; i < sv.length && (cum += sv[i] ** 2) / total < 0.81; i++);
      const wantRank = sv.length === 0 || sv[0] === 0
        ? 1
        : Math.min(Math.max(1, Math.min(i + 1, n - 1)) + 1, 16);
      assertEquals(l.kept, wantRank, l.name);
    }
  });
});

Deno.test("ranks beyond a layer's dimensions are zero directions: kohya's rank and alpha, ΔW unchanged", async () => {
  const c = kCases[0]; // LoRA A: rank 8, alpha 4, widths 5 to 80
  const layers = inputs[c.input_lora].layers;
  await withDir(async (dir) => {
    // rank=12 fixed: above the stored 8 where the layer is wide enough. sv_cumulative=1: the
    // criterion needs every dimension, kohya keeps one more.
    const recipes = "rank=12:sv_cumulative=1";
    const { outputs } = await resize(options(c, dir, { recipes, outputDtype: "F32" }));
    for (
      const [o, rankOf] of [
        [outputs[0], (n: number) => Math.min(12, n)],
        [outputs[1], (n: number) => Math.min(9, n)],
      ] as const
    ) {
      await using f = await SafetensorsFile.open(o.path);
      let padded = 0;
      for (const [name, layer] of Object.entries(layers)) {
        const n = Math.min(layer.out, layer.in_flat);
        const zero = layer.sv.length === 0 || layer.sv[0] === 0;
        const want = zero ? 1 : rankOf(n);
        assertEquals(f.info(`${name}.lora_down.weight`).shape[0], want, `${o.recipe} ${name}`);
        assertEquals(await f.readScalar(`${name}.alpha`), (layer.alpha / layer.rank) * want, name);
        if (zero) continue;
        // Every direction the layer has is kept: ΔW as it was, up to float32 rounding.
        assertRelClose(await deltaFro(f, name), Math.hypot(...layer.sv), 1e-5, name);
        if (want > layer.sv.length) padded++;
      }
      assert(padded > 100, `${o.recipe}: ${padded} layers padded`);
    }
  });
});

Deno.test("a rank cap on a score recipe: no layer above it, in threshold and size mode", async () => {
  await withDir(async (dir) => {
    const [c] = kCases;
    const recipes = "spn_lora=1,thr=-1.5:spn_lora=1,thr=-1.5,rank=3:spn_lora=1,size=0.5,rank=2";
    const { outputs } = await plan(options(c, dir, { recipes }));
    const [free, capped, sized] = outputs;
    assert(free.layers.some((l) => l.kept > 3), "the uncapped recipe keeps more than 3 somewhere");
    capped.layers.forEach((l, i) => {
      assertEquals(l.kept, Math.min(3, free.layers[i].kept), l.name);
      assertEquals(l.keep, free.layers[i].keep.slice(0, l.kept), l.name);
    });
    assert(sized.layers.every((l) => l.kept <= 2));
    assert(sized.bytes <= 0.5 * 2 ** 20);
  });
});

Deno.test("--save_to: one output at the given path; an input path or several outputs are refused", async () => {
  await withDir(async (dir) => {
    const [c] = kCases;
    const saveTo = join(dir, "exact name.safetensors");
    const { outputs } = await resize(
      options(c, dir, { outputPath: saveTo, outputFolder: undefined }),
    );
    assertEquals(outputs[0].path, saveTo);
    await checkAgainstKohya(saveTo, c);
    const lora = join(FIXTURES, c.input_lora);
    const before = await Deno.readFile(lora);
    const quiet = await runQuiet([BASE, lora, "-r", "rank=4", "--save_to", lora]);
    assertEquals(quiet.code, 1);
    assertEquals(quiet.stderr.filter((l) => l.startsWith("error")), [
      `error: ${lora}: the output of ${lora} with recipe rank=4 would overwrite the input ${lora}`,
    ]);
    assertEquals(await Deno.readFile(lora), before);
    const two = await runQuiet([BASE, lora, "-r", "rank=4:rank=2", "--save_to", saveTo]);
    assertEquals(two.code, 1);
    assertEquals(two.stderr.filter((l) => l.startsWith("error")), [
      `error: ${saveTo}: one output file is given, but the run makes 2 (1 LoRAs × 2 recipes)`,
    ]);
  });
});

Deno.test("the pasted command's --verbose prints kohya's per-layer lines and the mean retention", async () => {
  const c = kCases[4]; // K05: sv_fro 0.8 on the LoCon, conv cap 3
  await withDir(async (dir) => {
    const args = c.argv.map((a) => a.replaceAll("$DATA/", FIXTURES).replaceAll("$OUT", dir));
    const { code, stdout } = await runQuiet([...args, "--verbose", "--checkpoint", BASE]);
    assertEquals(code, 0);
    const layers = inputs[c.input_lora].layers;
    const names = Object.keys(layers).sort((
      a,
      b,
    ) => (`${a}.lora_down` < `${b}.lora_down` ? -1 : 1));
    const lines = stdout.slice(stdout.indexOf("") + 1);
    assertEquals(lines.length, names.length + 1);
    const fro: number[] = [];
    names.forEach((name, i) => {
      const want = c.outputs[0].layers[name], sv = layers[name].sv;
      // kohya's statistics, from the input σ: shares of ΣS and ‖S‖ kept, S₀ / S[k−1].
      const share = sum(sv.slice(0, want.rank)) / sum(sv);
      fro.push(Math.hypot(...sv.slice(0, want.rank)) / Math.hypot(...sv));
      const m = lines[i].match(
        /^(\S+) +\| sum\(S\) retained: ([\d.]+)%, fro retained: ([\d.]+)%, max\(S\) ratio: ([\d.]+), dynamic \| dim: (\d+), alpha: ([\d.]+)$/,
      );
      assert(m, lines[i]);
      assertEquals(m[1], name);
      assert(Math.abs(Number(m[2]) - 100 * share) <= 0.051, `${name}: ${m[2]}`);
      assert(
        Math.abs(Number(m[4]) - sv[0] / sv[want.rank - 1]) <= 0.051 * (sv[0] / sv[want.rank - 1]),
      );
      assertEquals([Number(m[5]), Number(m[6])], [want.rank, want.alpha]);
    });
    const mean = sum(fro) / fro.length;
    const std = Math.sqrt(fro.reduce((a, b) => a + (b - mean) ** 2, 0) / fro.length);
    const summary = lines.at(-1)!.match(
      /^Average Frobenius norm retention: ([\d.]+)% \| std: ([\d.]+)$/,
    );
    assert(summary, lines.at(-1));
    assert(
      Math.abs(Number(summary[1]) - 100 * mean) <= 0.006 &&
        Math.abs(Number(summary[2]) - std) <= 6e-4,
    );
  });
});

function sum(v: readonly number[]): number {
  return v.reduce((a, b) => a + b, 0);
}

// The pasted kohya command line, on both backends. WebGPU is asked for in children only
// (tests/webgpu_child.ts).
const adapter = await hasWebGpuAdapter();
for (const [c, device] of kCases.flatMap((c) => [[c, "cpu"], [c, "gpu"]] as const)) {
  Deno.test(
    {
      name: `${c.id}: the pasted kohya command line (${device})`,
      ignore: device === "gpu" && !adapter,
    },
    async () => {
      await withDir(async (dir) => {
        const args = c.argv.map((a) => a.replaceAll("$DATA/", FIXTURES).replaceAll("$OUT", dir))
          .map((a) => a === "cpu" ? device : a);
        const { code, stderr } = device === "gpu"
          ? await runDeno(["run", "-A", "cli.ts", ...args])
          : await runQuiet(args);
        assertEquals(code, 0, stderr.join("\n"));
        await checkAgainstKohya(join(dir, c.outputs[0].file), c);
      });
    },
  );
  Deno.test(
    {
      name: `${c.id}: recipe ${caseRecipe(c.argv)} on the command line, without a base (${device})`,
      ignore: device === "gpu" && !adapter,
    },
    async () => {
      await withDir(async (dir) => {
        const t = { F32: "32", F16: "16", BF16: "bf16" }[caseDType(c.argv)];
        const out = join(dir, c.outputs[0].file);
        const args = [join(FIXTURES, c.input_lora), "-r", caseRecipe(c.argv), "-t", t];
        args.push("--save_to", out, "-d", device, "--no_norms_cache");
        const { code, stderr } = device === "gpu"
          ? await runDeno(["run", "-A", "cli.ts", ...args])
          : await runQuiet(args);
        assertEquals(code, 0, stderr.join("\n"));
        await checkAgainstKohya(out, c);
      });
    },
  );
}
