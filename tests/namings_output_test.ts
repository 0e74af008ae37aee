/**
 * Output namings: one LoRA written in every naming by the tests' own converter
 * (naming_converter.ts, LoCon convs included) resizes to the ranks and ΔW of its kohya twin,
 * in its own naming by default and in kohya's with `naming: "kohya"`. Outputs are read back
 * here from their raw tensors under the keys the converter spells, not through the reader.
 * Outputs in the namings ComfyUI loads are checked against its key map as transcribed from
 * comfy/lora.py at comfyanonymous/ComfyUI@41444b5236c613ee5ff7d09aa620f94b702f30eb
 * (tests/comfy_key_map.ts).
 */

import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { comfyKeyMap, comfyModelKey } from "./comfy_key_map.ts";
import {
  keysIn,
  sdxlTestLayers,
  storesAlpha,
  TEST_NAMINGS,
  type TestLayer,
  type TestNaming,
  writeInNaming,
} from "./naming_converter.ts";
import { OutputError, UsageError } from "../src/errors.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { readLoraFile } from "../src/lora/lora_file.ts";
import type { OutputNaming } from "../src/namings/output_keys.ts";
import { resize } from "../src/resize.ts";
import { decodeFloats, type DType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { main } from "../cli.ts";

const BASE = "tests/fixtures/micro_sdxl_base.safetensors";
const TMP = await Deno.makeTempDir({ prefix: "namings_output_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

const base = await SafetensorsFile.open(BASE);
const LAYERS = sdxlTestLayers((key) => base.info(key).shape);
base.close();
const sdxlTensors = (JSON.parse(await Deno.readTextFile("tests/fixtures/sdxl_keys.json")) as {
  tensors: Record<string, { shape: number[] }>;
}).tensors;

const NAMES: readonly TestNaming[] = TEST_NAMINGS;
// Keeps every dimension of some layers, some of others, none of one.
const RECIPE = "fro_ckpt=1,thr=-0.3";
const backend = await createCpuBackend({ workers: 0 });
globalThis.addEventListener("unload", () => backend.close());

/** Resizes `lora` into `folder` (default: the LoRA's own); the output path and log lines. */
async function resized(
  lora: string,
  options: { folder?: string; naming?: OutputNaming; recipe?: string } = {},
): Promise<{ path: string; bytes: number; log: string[] }> {
  const log: string[] = [];
  const { outputs } = await resize({
    checkpoint: BASE,
    loras: [lora],
    recipes: options.recipe ?? RECIPE,
    outputFolder: options.folder,
    naming: options.naming,
    normsCache: false,
    backend,
    log: (level, line) => log.push(`${level} ${line}`),
    logLevel: "INFO",
  });
  return { path: outputs[0].path, bytes: outputs[0].bytes, log };
}

/** A layer of an output file read under the converter's keys: rank and ΔW (f64). */
interface ReadBack {
  readonly rank: number;
  readonly delta: Float64Array;
}

/**
 * Every module of `layers` found in `path` under `naming`'s keys: ΔW = α/r · up · down where the
 * naming stores alpha, up · down where it does not. Asserts no other tensor is in the file (so
 * none holds an alpha where the naming has none).
 */
async function readBack(
  path: string,
  naming: TestNaming,
  layers: readonly TestLayer[],
): Promise<Map<TestLayer, ReadBack>> {
  await using file = await SafetensorsFile.open(path);
  const values = async (key: string) => {
    const info = file.info(key);
    const bytes = (await file.readTensors([key])).get(key)!;
    return decodeFloats(bytes, info.dtype as DType & "F16", Float64Array);
  };
  const found = new Map<TestLayer, ReadBack>();
  const seen = new Set<string>();
  for (const layer of layers) {
    const keys = keysIn(naming, layer.module)!;
    if (!file.has(keys.down)) continue;
    const rank = file.info(keys.down).shape[0];
    const [out] = layer.upShape, inFlat = layer.down.length / layer.rank;
    assertEquals(file.info(keys.up).shape, [out, rank, ...layer.upShape.slice(2)], keys.up);
    const up = await values(keys.up), down = await values(keys.down);
    let scale = 1;
    if (storesAlpha(naming)) scale = (await values(keys.alpha!))[0] / rank;
    const delta = new Float64Array(out * inFlat);
    for (let i = 0; i < out; i++) {
      for (let k = 0; k < rank; k++) {
        const u = up[i * rank + k] * scale;
        for (let j = 0; j < inFlat; j++) delta[i * inFlat + j] += u * down[k * inFlat + j];
      }
    }
    found.set(layer, { rank, delta });
    for (const k of [keys.down, keys.up, keys.alpha]) if (k) seen.add(k);
  }
  assertEquals(file.tensors.map((t) => t.name).filter((n) => !seen.has(n)), [], path);
  return found;
}

/** Asserts two outputs have the same layers, ranks and ΔW within F16 rounding. */
function assertSameOutput(
  got: Map<TestLayer, ReadBack>,
  expected: Map<TestLayer, ReadBack>,
  what: string,
): void {
  assertEquals(got.size, expected.size, `${what}: layers written`);
  for (const [layer, e] of expected) {
    const g = got.get(layer);
    const name = `${what}: ${layer.module.path}`;
    assert(g, `${name} is written`);
    assertEquals(g.rank, e.rank, name);
    // Each output rounds its factors to F16 once (relative 2⁻¹¹ per element): the products differ
    // by a few 1e-4 of the layer's norm; a wrong scale or a lost dimension is ≥ 1e-2.
    let diff = 0, norm = 0;
    for (let i = 0; i < e.delta.length; i++) {
      diff += (g.delta[i] - e.delta[i]) ** 2;
      norm += e.delta[i] ** 2;
    }
    assert(Math.sqrt(diff / norm) < 3e-3, `${name}: ΔW differs by ${Math.sqrt(diff / norm)}`);
  }
}

const inputs = new Map<TestNaming, { path: string; written: TestLayer[] }>();
for (const naming of NAMES) {
  inputs.set(naming, await writeInNaming(join(TMP, naming), naming, LAYERS));
}
const twin = await resized(inputs.get("kohya")!.path, { folder: join(TMP, "out-kohya") });
const twinOutput = await readBack(twin.path, "kohya", LAYERS);

/** The twin's output layers among `layers`. */
function twinOf(layers: readonly TestLayer[]): Map<TestLayer, ReadBack> {
  return new Map(layers.filter((l) => twinOutput.has(l)).map((l) => [l, twinOutput.get(l)!]));
}

Deno.test("the kohya twin's output keeps some layers whole, cuts others and omits one", () => {
  assertEquals(twinOutput.size, LAYERS.length - 1);
  const ranks = [...twinOutput].map(([layer, { rank }]) => rank - layer.rank);
  assert(ranks.some((d) => d < 0) && ranks.some((d) => d === 0));
});

for (const naming of NAMES.slice(1)) {
  Deno.test(`a LoRA in ${naming} naming resizes in its own naming to the kohya twin's ranks and ΔW`, async () => {
    const { path, written } = inputs.get(naming)!;
    // Written beside the input, as by default: a PEFT output sits next to its input's config.
    const out = await resized(path);
    assertEquals((await Deno.stat(out.path)).size, out.bytes);
    const expected = twinOf(written);
    assertSameOutput(await readBack(out.path, naming, written), expected, naming);
    // Read back by resize-lora, the output is the same LoRA again: the adapter_config.json
    // beside a PEFT output (its input's) does not scale it twice.
    const again = await readLoraFile(out.path);
    assertEquals(again.warnings, []);
    assertEquals(again.layers.length, expected.size);
    if (!storesAlpha(naming)) {
      for (const l of again.layers) assertEquals(l.factors.scale, 1, l.key);
    }
  });

  Deno.test(`a LoRA in ${naming} naming resizes with naming kohya to the kohya twin's file`, async () => {
    const { path, written } = inputs.get(naming)!;
    const out = await resized(path, { folder: join(TMP, `to-kohya-${naming}`), naming: "kohya" });
    const expected = twinOf(written);
    assertSameOutput(await readBack(out.path, "kohya", written), expected, `${naming} → kohya`);
  });
}

for (const naming of ["peft", "diffusers", "comfyui"] as const) {
  Deno.test(`the kohya twin converts to ${naming} naming with the same ranks and ΔW`, async () => {
    const kohya = inputs.get("kohya")!.path;
    // kohya's rules set their own alphas: folded into the factors when written.
    for (const recipe of [RECIPE, "sv_fro=0.9"]) {
      const folder = join(TMP, `from-kohya-${naming}`);
      const got = await readBack(
        (await resized(kohya, { folder, naming, recipe })).path,
        naming,
        LAYERS,
      );
      const twin = await resized(kohya, { folder: join(folder, "kohya"), recipe });
      const expected = await readBack(twin.path, "kohya", LAYERS);
      assertEquals(got.size, expected.size, recipe);
      assertSameOutput(got, expected, `${naming} ${recipe}`);
    }
  });

  Deno.test(`a size target is met exactly in ${naming} naming`, async () => {
    const target = 0.004; // MiB
    const out = await resized(inputs.get("kohya")!.path, {
      folder: join(TMP, `size-${naming}`),
      naming,
      recipe: `fro_ckpt=1,size=${target}`,
    });
    const bytes = (await Deno.stat(out.path)).size;
    assertEquals(bytes, out.bytes);
    assert(bytes <= target * 2 ** 20 && bytes > 0.8 * target * 2 ** 20, `${bytes} bytes`);
  });
}

Deno.test("ComfyUI's key map names every layer of outputs in kohya, ComfyUI and the kohya-style namings", async () => {
  const map = comfyKeyMap(sdxlTensors);
  const check = async (path: string) => {
    const model = await readLoraFile(path);
    for (const layer of model.layers) {
      assertEquals(map.get(layer.key), comfyModelKey(layer.name), `${path}: ${layer.key}`);
    }
    return model.layers.length;
  };
  for (const naming of ["kohya-diffusers", "simpletuner", "comfyui", "diffusers-attn-procs"]) {
    const written = twinOf(inputs.get(naming as TestNaming)!.written).size;
    assertEquals(
      await check((await resized(inputs.get(naming as TestNaming)!.path)).path),
      written,
    );
  }
  for (const naming of ["kohya", "comfyui"] as const) {
    const folder = join(TMP, `comfy-${naming}`);
    for (const input of NAMES) {
      const out = await resized(inputs.get(input)!.path, { folder: join(folder, input), naming });
      assertEquals(
        await check(out.path),
        twinOf(inputs.get(input)!.written).size,
        `${input} → ${naming}`,
      );
    }
  }
});

Deno.test("a merge of files in different namings writes kohya names, of one naming that naming", async () => {
  const peft = inputs.get("peft")!.path, comfy = inputs.get("comfyui")!.path;
  const other = await writeInNaming(join(TMP, "peft-b"), "peft", LAYERS);
  const mixed = await resized(`${peft}:0.5,${comfy}:0.5`, { folder: join(TMP, "merge-mixed") });
  assertEquals((await readBack(mixed.path, "kohya", LAYERS)).size, twinOutput.size);
  const same = await resized(`${peft}:0.5,${other.path}:0.5`, { folder: join(TMP, "merge-peft") });
  const read = await readBack(same.path, "peft", LAYERS);
  // Two halves of one LoRA merge to it: the ranks and ΔW of the twin.
  assertSameOutput(read, twinOutput, "peft merge");
});

Deno.test("-v says which naming each LoRA was read in and written as", async () => {
  const { log } = await resized(inputs.get("peft")!.path, {
    folder: join(TMP, "log"),
    naming: "comfyui",
  });
  const lines = log.filter((l) => l.includes(": naming "));
  assertEquals(lines, [
    `INFO ${
      inputs.get("peft")!.path
    }: naming PEFT (lora_A / lora_B); written as ComfyUI (diffusion_model. / text_encoders.)`,
  ]);
});

Deno.test("an unknown naming is one usage error, from the library and from the command line", async () => {
  await assertRejects(
    () => resized(inputs.get("kohya")!.path, { naming: "foo" as OutputNaming }),
    UsageError,
    { key: "--naming" },
  );
  const stderr: string[] = [];
  const { error } = console;
  console.error = (...a: unknown[]) => stderr.push(a.join(" "));
  try {
    const code = await main([BASE, inputs.get("kohya")!.path, "--naming", "foo", "-d", "cpu"]);
    assertEquals(code, 2);
  } finally {
    console.error = error;
  }
  assertEquals(stderr.length, 1, stderr.join("\n"));
  assert(/^error: argument --naming: invalid choice: 'foo'/.test(stderr[0]), stderr[0]);
});

Deno.test("a DoRA magnitude per output row converts between kohya's [out, 1] and PEFT's [out]; others are one error", async () => {
  const dir = join(TMP, "dora");
  const layer = LAYERS[0]; // a linear attention projection
  const kohyaKeys = keysIn("kohya", layer.module)!;
  const out = layer.upShape[0], inFlat = layer.down.length / layer.rank;
  const magnitude = Float32Array.from({ length: out }, (_, i) => 1 + i / 8);
  const write = async (name: string, shape: number[], values: Float32Array) => {
    const path = join(dir, `${name}.safetensors`);
    await Deno.mkdir(dir, { recursive: true });
    const f32 = (v: Float32Array) => new Uint8Array(v.buffer.slice(0));
    await writeSafetensors(path, [
      {
        name: kohyaKeys.alpha!,
        dtype: "F32",
        shape: [],
        data: f32(new Float32Array([layer.alpha])),
      },
      { name: kohyaKeys.down, dtype: "F32", shape: [...layer.downShape], data: f32(layer.down) },
      { name: kohyaKeys.up, dtype: "F32", shape: [...layer.upShape], data: f32(layer.up) },
      {
        name: kohyaKeys.down.replace(".lora_down.weight", ".dora_scale"),
        dtype: "F32",
        shape,
        data: f32(values),
      },
    ]);
    return path;
  };
  const perRow = await write("rows", [out, 1], magnitude);
  const peftOut = await resized(perRow, { folder: join(dir, "peft"), naming: "peft" });
  const peftKeys = keysIn("peft", layer.module)!;
  const magnitudeKey = peftKeys.down.replace(".lora_A.weight", ".lora_magnitude_vector");
  {
    await using f = await SafetensorsFile.open(peftOut.path);
    assertEquals(f.info(magnitudeKey).shape, [out]);
    const bytes = (await f.readTensors([magnitudeKey])).get(magnitudeKey)!;
    const got = decodeFloats(bytes, f.info(magnitudeKey).dtype as "F16", Float64Array);
    for (let i = 0; i < out; i++) assertEquals(got[i], 1 + i / 8); // exact in F16
  }
  // And back: PEFT's [out] is kohya's [out, 1].
  const back = await resized(peftOut.path, { folder: join(dir, "back"), naming: "kohya" });
  {
    await using f = await SafetensorsFile.open(back.path);
    assertEquals(f.info(kohyaKeys.down.replace(".lora_down.weight", ".dora_scale")).shape, [
      out,
      1,
    ]);
  }
  await assertRejects(
    () => resized(perRow, { folder: join(dir, "diffusers"), naming: "diffusers" }),
    OutputError,
    /DoRA layer .* cannot be written in the diffusers naming/,
  );
  const perColumn = await write("columns", [1, inFlat], new Float32Array(inFlat).fill(1));
  await assertRejects(
    () => resized(perColumn, { folder: join(dir, "columns-peft"), naming: "peft" }),
    OutputError,
    /has a magnitude of shape \[1,\d+\], not one per output row/,
  );
});
