/**
 * kohya's rules without a base model, end to end (`resize()` with no checkpoint: every layer
 * paired by name alone, names unchanged), on a synthetic SD1.5 LoRA and a synthetic Flux LoRA
 * at real layer widths. Each layer's kept rank must equal kohya's rule (tests/kohya_reference.ts)
 * applied to σ computed here without the library: a dense ΔW and one-sided Jacobi for the SD1.5
 * layers; for the Flux layers, too big to form densely, the singular values of the r × r core
 * R_up·R_downᵀ of Householder QRs of the factors (ΔW = Q_up·(R_up·R_downᵀ)·Q_downᵀ has the
 * same σ). Flux key names as kohya-ss/sd-scripts writes them (networks/convert_flux_lora.py
 * lists them; networks/lora_flux.py makes them).
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { resize } from "../src/resize.ts";
import { main } from "../cli.ts";
import { RecipeError } from "../src/errors.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { decodeFloats, encodeFloats } from "../src/safetensors/dtype.ts";
import { parseRecipe } from "../src/recipe/recipe.ts";
import { kohyaRuleOf } from "../src/recipe/recipe.ts";
import { loadLora } from "../src/lora/lora_file.ts";
import { writeSyntheticFluxLora } from "../src/testing/mod.ts";
import { jacobiSingularValues } from "./jacobi_svd.ts";
import { matrix, qr, svd, transpose } from "./reference/matrix.ts";
import { kohyaReference } from "./kohya_reference.ts";
import { rng } from "./rng.ts";
import { kohyaLayerTensors } from "./lora_tensors.ts";

const backend = await createCpuBackend({ workers: 2 });
const FIXTURES = join(import.meta.dirname!, "fixtures");

/** The recipes checked: each kohya method with caps, a fixed rank, a rank above every layer's. */
const RECIPES = [
  "sv_fro=0.9,rank=64,conv_rank=4",
  "sv_ratio=6,rank=128",
  "sv_cumulative=0.8",
  "rank=24,conv_rank=4",
  "rank=200",
];

interface Sd15Layer {
  name: string;
  out: number;
  inShape: number[];
  rank: number;
  alpha?: number;
  zero?: boolean;
}

/** SD1.5 layers in kohya's names, at SD1.5's widths. */
const SD15: Sd15Layer[] = [
  {
    name: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    out: 320,
    inShape: [768],
    rank: 16,
    alpha: 8,
  },
  // A 3×3 LoCon layer.
  {
    name: "lora_unet_down_blocks_0_resnets_0_conv1",
    out: 320,
    inShape: [320, 3, 3],
    rank: 8,
    alpha: 4,
  },
  // Rank 8 on a layer with 4 outputs: the rank exceeds min(out, in′).
  { name: "lora_unet_conv_out", out: 4, inShape: [320, 3, 3], rank: 8, alpha: 1 },
  {
    name: "lora_unet_down_blocks_0_attentions_0_proj_in",
    out: 320,
    inShape: [320, 1, 1],
    rank: 16,
    alpha: 16,
  },
  // No alpha: kohya's scale 1, and the new alpha is the new rank.
  {
    name: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    out: 320,
    inShape: [320],
    rank: 16,
  },
  {
    name: "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_v",
    out: 320,
    inShape: [320],
    rank: 16,
    alpha: 8,
    zero: true,
  },
  {
    name: "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    out: 768,
    inShape: [768],
    rank: 8,
    alpha: 8,
  },
];

const f32 = (x: Float64Array) => decodeFloats(encodeFloats(x, "F32"), "F32", Float64Array);
const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Writes the SD1.5 LoRA; returns each layer's σ of ΔW, all min(out, in′) of them: by one-sided
 * Jacobi on the dense ΔW where it is narrow (conv_out), else from the factors' QRs.
 */
async function writeSd15(path: string): Promise<Map<string, number[]>> {
  const next = rng(2026);
  const tensors = [];
  const dense = new Map<string, number[]>();
  for (const l of SD15) {
    const inFlat = product(l.inShape);
    // A decaying spectrum: column j of up scaled by 0.7^j.
    const up = f32(
      Float64Array.from(
        { length: l.out * l.rank },
        (_, i) => l.zero ? 0 : next() * 0.7 ** (i % l.rank),
      ),
    );
    const down = f32(Float64Array.from({ length: l.rank * inFlat }, next));
    if (l.out <= 8) {
      const scale = (l.alpha ?? l.rank) / l.rank;
      const dw = new Float64Array(l.out * inFlat);
      for (let i = 0; i < l.out; i++) {
        for (let k = 0; k < l.rank; k++) {
          const u = scale * up[i * l.rank + k];
          for (let j = 0; j < inFlat; j++) dw[i * inFlat + j] += u * down[k * inFlat + j];
        }
      }
      dense.set(l.name, [...jacobiSingularValues(dw, l.out, inFlat)]);
    }
    tensors.push(...kohyaLayerTensors(l.name, { ...l, up, down }));
  }
  await writeSafetensors(path, tensors);
  await using f = await SafetensorsFile.open(path);
  const sigma = new Map<string, number[]>();
  for (const l of SD15) sigma.set(l.name, dense.get(l.name) ?? await factorSigma(f, l.name));
  return sigma;
}

/** σ of scale·up·down from the factors as stored, through QRs of both (no ΔW formed). */
async function factorSigma(f: SafetensorsFile, layer: string): Promise<number[]> {
  const upInfo = f.info(`${layer}.lora_up.weight`), downInfo = f.info(`${layer}.lora_down.weight`);
  const [out, r] = upInfo.shape, inFlat = product(downInfo.shape.slice(1));
  const alpha = f.has(`${layer}.alpha`) ? await f.readScalar(`${layer}.alpha`) : r;
  const up = matrix(out, r, await f.readFloat64(`${layer}.lora_up.weight`));
  const downT = transpose(matrix(r, inFlat, await f.readFloat64(`${layer}.lora_down.weight`)));
  const [ru, rd] = [qr(up).r, qr(downT).r]; // r × r each
  const core = matrix(r, r);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let sum = 0;
      for (let k = 0; k < r; k++) sum += ru.data[i * r + k] * rd.data[j * r + k];
      core.data[i * r + j] = (alpha / r) * sum;
    }
  }
  return [...svd(core).s, ...new Array(Math.min(out, inFlat) - r).fill(0)];
}

/**
 * Resizes `lora` without a base with every recipe and checks each output against kohya's rule
 * on `sigma`: the kept rank and alpha of every layer, in the summary and in the file, the
 * layer names as they were.
 */
async function checkAgainstRule(
  lora: string,
  dir: string,
  sigma: ReadonlyMap<string, readonly number[]>,
): Promise<void> {
  await using input = await SafetensorsFile.open(lora);
  // Layers are known by canonical names (kohya's SDXL block names for SD1.5) and written under
  // their own.
  const canonical = new Map((await loadLora(lora)).layers.map((l) => [l.key, l.name]));
  const { outputs } = await resize({
    loras: [lora],
    recipes: RECIPES.join(":"),
    outputFolder: dir,
    outputDtype: "F32",
    backend,
  });
  assertEquals(outputs.length, RECIPES.length);
  for (const [r, o] of outputs.entries()) {
    const rule = kohyaRuleOf(parseRecipe(RECIPES[r]))!;
    const resized = [...sigma.keys()].map((k) => canonical.get(k)!);
    assertEquals(o.layers.map((l) => l.name).sort(), resized.sort(), "every layer");
    await using f = await SafetensorsFile.open(o.path);
    assertEquals(f.names.slice().sort(), names(input).sort(), `${o.recipe}: names unchanged`);
    const keyOf = new Map([...canonical].map(([key, name]) => [name, key]));
    for (const l of o.layers) {
      const conv = l.inShape.length === 3;
      const scale = l.alpha / l.rank;
      const key = keyOf.get(l.name)!;
      const want = kohyaReference([...sigma.get(key)!], scale, conv, rule);
      assertEquals(l.kept, want, `${o.recipe}: ${l.name}`);
      assertEquals(f.info(`${key}.lora_down.weight`).shape[0], want, `${o.recipe}: ${key}`);
      assertEquals(await f.readScalar(`${key}.alpha`), scale * want, `${key} alpha`);
    }
  }
}

/** The input's tensor names, with the alpha kohya writes for a layer that had none. */
function names(input: SafetensorsFile): string[] {
  const layers = input.names.filter((n) => n.endsWith(".lora_down.weight"))
    .map((n) => n.slice(0, -".lora_down.weight".length));
  return [
    ...input.names,
    ...layers.filter((l) => !input.has(`${l}.alpha`)).map((l) => `${l}.alpha`),
  ];
}

Deno.test("an SD1.5 LoRA at real widths resizes without a base, each layer by kohya's rule on a dense SVD", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-basefree-" });
  try {
    const lora = join(dir, "sd15.safetensors");
    const sigma = await writeSd15(lora);
    // The cases the layers stand for, checked on the reference σ itself.
    assert(sigma.get("lora_unet_conv_out")!.length < 8, "conv_out: rank above min(out, in′)");
    assertEquals(
      sigma.get("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_v")![0],
      0,
    );
    await checkAgainstRule(lora, join(dir, "out"), sigma);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Flux layers at real widths (rank 128) resize without a base, each layer by kohya's rule on a dense SVD", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-basefree-" });
  try {
    const lora = join(dir, "flux.safetensors");
    const layers = [
      "lora_unet_double_blocks_0_img_attn_qkv", // 9216 × 3072
      "lora_unet_double_blocks_0_txt_mod_lin", // 18432 × 3072
      "lora_unet_single_blocks_0_linear1", // 21504 × 3072
      "lora_unet_single_blocks_0_linear2", // 3072 × 15360
      "lora_unet_single_blocks_1_modulation_lin", // all zero
      "lora_unet_double_blocks_1_img_attn_proj", // no alpha
    ];
    await writeSyntheticFluxLora(lora, {
      rank: 128,
      alpha: 64,
      dtype: "BF16",
      only: (name) => layers.includes(name),
      zeroLayers: [layers[4]],
      withoutAlpha: [layers[5]],
    });
    await using f = await SafetensorsFile.open(lora);
    const sigma = new Map<string, number[]>();
    for (const layer of layers) sigma.set(layer, await factorSigma(f, layer));
    assertEquals(sigma.get(layers[4])![0], 0);
    assert(!f.has(`${layers[5]}.alpha`));
    await checkAgainstRule(lora, join(dir, "out"), sigma);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a base-aware key without a base is a one-line error naming the key; nothing is written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-basefree-" });
  try {
    const lora = join(dir, "sd15.safetensors");
    await writeSd15(lora);
    for (const key of ["fro_ckpt", "spn_ckpt", "subspace"]) {
      const recipes = `sv_fro=0.9:spn_lora=0.5,${key}=0.5,thr=-1`;
      const error = await resize({
        loras: [lora],
        recipes,
        outputFolder: join(dir, "out"),
        backend,
      })
        .then(() => undefined, (e) => e);
      assert(error instanceof RecipeError, String(error));
      assertEquals(error.key, key);
      assert(!error.message.includes("\n") && error.message.includes(key), error.message);
    }
    await assertMissing(join(dir, "out"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function assertMissing(path: string): Promise<void> {
  const exists = await Deno.stat(path).then(() => true, () => false);
  assert(!exists, `${path} was written`);
}

Deno.test("bad kohya values and a base-aware key without a base: one line, non-zero exit, nothing written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-basefree-" });
  const lora = join(FIXTURES, "microA_r8_te.safetensors");
  const out = join(dir, "out");
  const save = join(out, "k.safetensors");
  const cases: [string[], number, RegExp][] = [
    [["--model", lora, "--save_to", save, "--dynamic_method", "foo"], 2, /--dynamic_method.*'foo'/],
    [["--model", lora, "--save_to", save, "--dynamic_param", "0.5"], 2, /needs --dynamic_method/],
    [[lora, "-o", out, "-r", "sv_ratio=0"], 1, /sv_ratio/],
    [[lora, "-o", out, "-r", "rank=0"], 1, /rank/],
    [[lora, "-o", out, "-r", "sv_fro=1.5"], 1, /sv_fro/],
    [[lora, "-o", out, "-r", "sv_fro=0.9:fro_ckpt=1,thr=-2"], 1, /fro_ckpt .*no base checkpoint/],
    [[lora, "-o", out], 1, /\(the default\): fro_ckpt/],
  ];
  const { error, log } = console;
  try {
    for (const [args, code, message] of cases) {
      const errors: string[] = [];
      console.error = (...a: unknown[]) => errors.push(a.join(" "));
      console.log = () => {};
      // kohya's spelling takes --device, resize-lora's -d.
      const device = args[0] === "--model" ? ["--device", "cpu"] : ["-d", "cpu"];
      const status = await main([...args, ...device]);
      console.error = error;
      console.log = log;
      assertEquals(status, code, args.join(" "));
      const lines = errors.filter((l) => l.startsWith("error:"));
      assertEquals(lines.length, 1, errors.join("\n"));
      assert(message.test(lines[0]), lines[0]);
      await assertMissing(out);
    }
  } finally {
    console.error = error;
    console.log = log;
    await Deno.remove(dir, { recursive: true });
  }
});
