/**
 * Base checkpoints in every form: a diffusers folder gives the norms of the
 * SGM file of the same weights; 8-bit float weights decode exactly (every bit
 * pattern) in TypeScript, in the WASM kernels and for the GPU upload, and give
 * the norms of their f64 values; SD1.5 bases score SD1.5 LoRAs against norms
 * recomputed here; the norms cache fingerprints a folder by content.
 */

import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertRelClose } from "./assert.ts";
import {
  diffusersUnetPath,
  rng,
  type TestLayer,
  testLayer,
  writeInNaming,
} from "./naming_converter.ts";
import { MappingError, SafetensorsError } from "../src/errors.ts";
import { BaseCheckpoint } from "../src/base/checkpoint.ts";
import { loraNamesForBaseKey } from "../src/base/key_map.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { WeightReader } from "../src/linalg/gpu/weights.ts";
import { DTYPE_CODES, Kernels } from "../src/linalg/wasm/kernels.ts";
import { loadLora } from "../src/lora/lora_file.ts";
import { pairLayers } from "../src/lora/pairing.ts";
import { NormsCache } from "../src/norms_cache.ts";
import { parseRecipe } from "../src/recipe/recipe.ts";
import { scoreLayer } from "../src/recipe/score.ts";
import { plan } from "../src/resize.ts";
import { decodeFloats, type Fp8DType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";
import { sd15BaseSpecs, writeSyntheticSd15Base } from "../src/testing/synthetic_sd15.ts";

const BASE = "tests/fixtures/micro_sdxl_base.safetensors";
const TMP = await Deno.makeTempDir({ prefix: "base_forms_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

/**
 * σ_max of a rows × cols matrix in f64, by power iteration on the smaller
 * Gram matrix (WWᵀ or WᵀW) until the Rayleigh quotient settles.
 */
function spectralNorm(values: Float64Array, rows: number, cols: number): number {
  const n = Math.min(rows, cols);
  const g = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      if (rows <= cols) {
        for (let c = 0; c < cols; c++) s += values[i * cols + c] * values[j * cols + c];
      } else for (let r = 0; r < rows; r++) s += values[r * cols + i] * values[r * cols + j];
      g[i * n + j] = s;
    }
  }
  let v = Float64Array.from({ length: n }, (_, i) => 1 + i / n);
  let lambda = 0;
  for (let it = 0; it < 20000; it++) {
    const w = new Float64Array(n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) w[i] += g[i * n + j] * v[j];
    const norm = Math.hypot(...w);
    const next = w.reduce((s, x, i) => s + x * v[i], 0);
    v = w.map((x) => x / norm);
    if (Math.abs(next - lambda) <= 1e-15 * next) break;
    lambda = next;
  }
  return Math.sqrt(lambda);
}

// ------------------------------------------------------------------ diffusers folder

const UNET = "model.diffusion_model.";
const TE1 = "conditioner.embedders.0.transformer.";
const TE2 = "conditioner.embedders.1.model.transformer.resblocks.";
const OPEN_CLIP: Record<string, string> = {
  "attn.out_proj": "self_attn.out_proj",
  "mlp.c_fc": "mlp.fc1",
  "mlp.c_proj": "mlp.fc2",
};

/**
 * Writes the micro SGM base as a diffusers folder: the UNet in two shards
 * behind an index, CLIP-L as `text_encoder/model.safetensors`, CLIP-G in
 * Hugging Face names (fused q/k/v split into rows) as the fp16 variant.
 */
async function writeDiffusersFolder(dir: string): Promise<void> {
  await using sgm = await SafetensorsFile.open(BASE);
  const bytes = await sgm.readTensors(sgm.tensors.map((t) => t.name));
  const unet: TensorSource[] = [], te1: TensorSource[] = [], te2: TensorSource[] = [];
  for (const t of sgm.tensors) {
    const data = bytes.get(t.name)!;
    const tensor = (name: string, shape = t.shape, d = data) => ({
      name,
      dtype: t.dtype,
      shape: [...shape],
      data: d,
    });
    if (t.name.startsWith(UNET)) unet.push(tensor(diffusersUnetPath(t.name.slice(UNET.length))));
    else if (t.name.startsWith(TE1)) te1.push(tensor(t.name.slice(TE1.length)));
    else if (t.name.startsWith(TE2)) {
      const [, layer, module, suffix] =
        /^(\d+)\.(.+)\.(weight|bias|in_proj_weight)$/.exec(t.name.slice(TE2.length)) ?? [];
      const hf = `text_model.encoder.layers.${layer}.`;
      if (suffix === "in_proj_weight") {
        const rows = t.shape[0] / 3, rowBytes = data.length / t.shape[0];
        ["q", "k", "v"].forEach((p, i) =>
          te2.push(
            tensor(
              `${hf}self_attn.${p}_proj.weight`,
              [rows, t.shape[1]],
              data.subarray(i * rows * rowBytes, (i + 1) * rows * rowBytes),
            ),
          )
        );
      } else if (module in OPEN_CLIP) te2.push(tensor(`${hf}${OPEN_CLIP[module]}.${suffix}`));
    }
  }
  for (const sub of ["unet", "text_encoder", "text_encoder_2"]) {
    await Deno.mkdir(join(dir, sub), { recursive: true });
  }
  const half = Math.floor(unet.length / 2);
  const shards = [unet.slice(0, half), unet.slice(half)];
  const weightMap: Record<string, string> = {};
  for (const [i, shard] of shards.entries()) {
    const file = `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`;
    await writeSafetensors(join(dir, "unet", file), shard);
    for (const t of shard) weightMap[t.name] = file;
  }
  await Deno.writeTextFile(
    join(dir, "unet", "diffusion_pytorch_model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  await writeSafetensors(join(dir, "text_encoder", "model.safetensors"), te1);
  await writeSafetensors(join(dir, "text_encoder_2", "model.fp16.safetensors"), te2);
}

const FOLDER = join(TMP, "sdxl-diffusers");
await writeDiffusersFolder(FOLDER);

Deno.test("a diffusers folder gives the norms of the SGM file of the same weights, entry by entry", async () => {
  await using sgm = await BaseCheckpoint.open(BASE);
  await using folder = await BaseCheckpoint.open(FOLDER);
  assertEquals([sgm.architecture, folder.architecture], ["sdxl", "sdxl"]);
  assertEquals(folder.files.length, 4);
  // Every standard (and q/k/v) name of the SGM file, resolved in both.
  const names = sgm.file.tensors.flatMap((t) => {
    const n = loraNamesForBaseKey(t.name, t.shape);
    return n?.chunks ?? (n?.standard ? [n.standard] : []);
  });
  const pairs = names.map((n) => [sgm.lookup(n)!, folder.lookup(n)] as const);
  assertEquals(pairs.filter(([, f]) => f === undefined).map(([s]) => s.label), []);
  assertEquals(pairs.length, 794 + 12 * 6 + 32 * 6);
  const backend = await createCpuBackend({ workers: 0 });
  try {
    const which = { frobenius: true, spectral: true };
    const a = await backend.baseNorms(pairs.map(([s]) => sgm.weightRef(s)), which);
    const b = await backend.baseNorms(pairs.map(([, f]) => folder.weightRef(f!)), which);
    pairs.forEach(([s, f], i) => {
      assertEquals([f!.rows, f!.cols], [s.rows, s.cols], s.label);
      assertEquals(b[i].frobenius, a[i].frobenius, s.label);
      assertRelClose(b[i].spectral!, a[i].spectral!, 1e-12, s.label);
    });
  } finally {
    await backend.close();
  }
});

Deno.test("a plan against a diffusers folder scores like the plan against the SGM file", async () => {
  const next = rng(5);
  const layers: TestLayer[] = [
    testLayer({ part: "unet", path: "input_blocks.4.1.proj_in" }, [10, 10], 4, 2, next),
    testLayer({ part: "unet", path: "output_blocks.5.2.conv" }, [10, 10, 3, 3], 3, 3, next),
    testLayer(
      { part: "te2", path: "text_model.encoder.layers.2.self_attn.k_proj" },
      [20, 20],
      4,
      4,
      next,
    ),
    testLayer({ part: "te1", path: "text_model.encoder.layers.1.mlp.fc2" }, [12, 48], 2, 1, next),
  ];
  const { path } = await writeInNaming(join(TMP, "plan_lora"), "peft", layers);
  const scores = async (checkpoint: string) => {
    const [out] = (await plan({
      checkpoint,
      loras: [path],
      recipes: "spn_ckpt=1,fro_ckpt=0.5,thr=-1",
      normsCache: false,
      device: "cpu",
    })).outputs;
    return out.layers.map((l) => [l.name, l.kept, [...l.scores]]);
  };
  const sgm = await scores(BASE);
  assertEquals(sgm.length, 4);
  const folder = await scores(FOLDER);
  assertEquals(folder.map(([n, k]) => [n, k]), sgm.map(([n, k]) => [n, k]));
  folder.forEach(([, , s], i) =>
    (s as number[]).forEach((x, j) => assertRelClose(x, (sgm[i][2] as number[])[j], 1e-12))
  );
});

Deno.test("the norms cache fingerprints a diffusers folder by its files' content, not its path", async () => {
  const copy = join(TMP, "elsewhere", "same-model");
  await Deno.mkdir(join(TMP, "elsewhere"), { recursive: true });
  await Deno.rename(FOLDER, copy).then(() => Deno.mkdir(FOLDER));
  try {
    await writeDiffusersFolder(FOLDER);
    const cacheDir = join(TMP, "cache");
    const a = await NormsCache.open(FOLDER, { location: cacheDir });
    const b = await NormsCache.open(copy, { location: cacheDir });
    assertEquals(a.fingerprint, b.fingerprint);
    assertEquals(a.file, b.file);
    // One changed byte in one shard changes it.
    const shard = join(copy, "unet", "diffusion_pytorch_model-00002-of-00002.safetensors");
    const bytes = await Deno.readFile(shard);
    bytes[bytes.length - 1] ^= 1;
    await Deno.writeFile(shard, bytes);
    const c = await NormsCache.open(copy, { location: cacheDir });
    assert(c.fingerprint !== a.fingerprint);
  } finally {
    await Deno.remove(copy, { recursive: true });
  }
});

Deno.test("a folder that is not a diffusers model, or a bad shard index, is one error naming it", async () => {
  const empty = join(TMP, "not_a_model");
  await Deno.mkdir(empty);
  await assertRejects(
    () => BaseCheckpoint.open(empty),
    SafetensorsError,
    /not_a_model: a folder given as the base must be a diffusers model/,
  );
  const bad = join(TMP, "bad_index");
  await Deno.mkdir(join(bad, "unet"), { recursive: true });
  await Deno.writeTextFile(
    join(bad, "unet", "diffusion_pytorch_model.safetensors.index.json"),
    "{",
  );
  await assertRejects(
    () => BaseCheckpoint.open(bad),
    SafetensorsError,
    /diffusion_pytorch_model\.safetensors\.index\.json: not valid JSON/,
  );
});

// ------------------------------------------------------------------ 8-bit floats

/**
 * The value of every byte, derived here from the formats' definitions: E5M2
 * is an IEEE half's top byte (decoded by Float16Array); E4M3 ("fn") has bias
 * 7, subnormals m·2⁻⁹, no infinities and NaN only at S.1111.111.
 */
function reference(dtype: Fp8DType): Float64Array {
  if (dtype === "F8_E5M2") {
    return Float64Array.from(
      new Float16Array(Uint16Array.from({ length: 256 }, (_, b) => b << 8).buffer),
    );
  }
  return Float64Array.from({ length: 256 }, (_, b) => {
    const bits = b.toString(2).padStart(8, "0");
    const sign = bits[0] === "1" ? -1 : 1,
      e = parseInt(bits.slice(1, 5), 2),
      m = parseInt(bits.slice(5), 2);
    if (e === 15 && m === 7) return NaN;
    return sign * (e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
  });
}

const ALL_BYTES = Uint8Array.from({ length: 256 }, (_, b) => b);

Deno.test("every 8-bit float pattern decodes to its exact value (TypeScript)", () => {
  for (const dtype of ["F8_E4M3", "F8_E5M2"] as const) {
    assertEquals([...decodeFloats(ALL_BYTES, dtype, Float64Array)], [...reference(dtype)], dtype);
  }
  const e4m3 = reference("F8_E4M3");
  // Anchors of the format: ±448 largest, 2⁻⁶ smallest normal, 2⁻⁹ smallest subnormal, 1.0 = 0x38.
  assertEquals([e4m3[0x7e], e4m3[0xfe], e4m3[0x08], e4m3[0x01], e4m3[0x38]], [
    448,
    -448,
    2 ** -6,
    2 ** -9,
    1,
  ]);
  assertEquals([...e4m3].filter(Number.isNaN).length, 2);
  const e5m2 = reference("F8_E5M2");
  assertEquals([e5m2[0x7b], e5m2[0x7c], e5m2[0xfc], e5m2[0x01]], [
    57344,
    Infinity,
    -Infinity,
    2 ** -16,
  ]);
  assertEquals([...e5m2].filter(Number.isNaN).length, 6);
});

Deno.test("every 8-bit float pattern decodes to its exact value (WASM kernels)", async () => {
  const k = await Kernels.load();
  for (const dtype of ["F8_E4M3", "F8_E5M2"] as const) {
    k.reset();
    const src = k.alloc(256), dst = k.alloc(256 * 4);
    k.u8(src, 256).set(ALL_BYTES);
    k.exports.decodeF32(src, dst, 256, DTYPE_CODES[dtype]);
    const got = Float64Array.from(k.f32(dst, 256));
    assertEquals([...got], [...reference(dtype)], dtype);
    // Σx² over the finite values, exact in f64 (each square has a short mantissa).
    const finite = ALL_BYTES.filter((b) => Number.isFinite(reference(dtype)[b]));
    k.u8(src, finite.length).set(finite);
    const expected = finite.reduce((s, b) => s + reference(dtype)[b] ** 2, 0);
    assertEquals(k.exports.sumSquares(src, finite.length, DTYPE_CODES[dtype]), expected, dtype);
  }
});

/** Writes one weight of raw bytes of a dtype. */
async function writeWeight(
  name: string,
  dtype: Fp8DType,
  shape: number[],
  bytes: Uint8Array,
): Promise<string> {
  const path = join(TMP, name);
  await writeSafetensors(path, [{
    name: "model.diffusion_model.out.2.weight",
    dtype,
    shape,
    data: bytes,
  }]);
  return path;
}

Deno.test("the GPU upload widens every 8-bit float pattern to the F16 of its value", async () => {
  for (const dtype of ["F8_E4M3", "F8_E5M2"] as const) {
    const path = await writeWeight(`gpu_${dtype}.safetensors`, dtype, [16, 16], ALL_BYTES);
    await using ckpt = await BaseCheckpoint.open(path);
    const reader = new WeightReader();
    try {
      const { dtype: got, bytes } = reader.read(ckpt.weightRef(ckpt.lookup("lora_unet_out_2")!));
      assertEquals(got, "F16");
      const halves = Float64Array.from(new Float16Array(bytes.buffer, bytes.byteOffset, 256));
      assertEquals([...halves], [...reference(dtype)], dtype);
    } finally {
      reader.close();
    }
  }
});

Deno.test("an fp8 base weight gives the norms of its exactly decoded f64 values", async () => {
  const next = rng(11);
  const backend = await createCpuBackend({ workers: 0 });
  try {
    for (const dtype of ["F8_E4M3", "F8_E5M2"] as const) {
      const ref = reference(dtype);
      const finite = ALL_BYTES.filter((b) => Number.isFinite(ref[b]));
      // 24 × 40 weight of random finite patterns (every finite pattern at least once).
      const bytes = Uint8Array.from(
        { length: 24 * 40 },
        (_, i) => i < finite.length ? finite[i] : finite[Math.floor(next() * finite.length)],
      );
      const path = await writeWeight(`norms_${dtype}.safetensors`, dtype, [24, 40], bytes);
      await using ckpt = await BaseCheckpoint.open(path);
      const [norms] = await backend.baseNorms([ckpt.weightRef(ckpt.lookup("lora_unet_out_2")!)], {
        frobenius: true,
        spectral: true,
      });
      const values = Float64Array.from(bytes, (b) => ref[b]);
      const frobenius = Math.sqrt(values.reduce((s, x) => s + x * x, 0));
      assertRelClose(norms.frobenius!, frobenius, 1e-15, dtype);
      assertRelClose(norms.spectral!, spectralNorm(values, 24, 40), 1e-5, dtype);
    }
  } finally {
    await backend.close();
  }
});

// ------------------------------------------------------------------ SD1.5

const SD15 = join(TMP, "sd15_base.safetensors");
await writeSyntheticSd15Base(SD15, { scale: 1 / 16, seed: 3 });
const SD15_SPECS = new Map(sd15BaseSpecs({ scale: 1 / 16 }).map((s) => [s.name, s]));

/** Norms of an SD1.5 base weight recomputed here in f64 (Frobenius; σ_max by dense SVD). */
async function sd15Norms(key: string): Promise<{ frobenius: number; spectral: number }> {
  await using f = await SafetensorsFile.open(SD15);
  const t = f.info(key);
  const values = decodeFloats(
    (await f.readTensors([key])).get(key)!,
    t.dtype as "F16",
    Float64Array,
  );
  const cols = values.length / t.shape[0];
  return {
    frobenius: Math.sqrt(values.reduce((s, x) => s + x * x, 0)),
    spectral: spectralNorm(values, t.shape[0], cols),
  };
}

Deno.test("SD1.5: every base-aware score of a kohya SD1.5 LoRA matches norms recomputed in f64", async () => {
  const next = rng(23);
  const modules: [TestLayer["module"], string][] = [
    [
      { part: "unet", path: "input_blocks.1.1.transformer_blocks.0.attn2.to_k" },
      "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    ],
    [{ part: "unet", path: "input_blocks.1.1.proj_in" }, "input_blocks.1.1.proj_in"], // a 1×1 conv in SD1.5
    [{ part: "unet", path: "output_blocks.2.1.conv" }, "output_blocks.2.1.conv"], // up level 0's upsampler
    [{ part: "unet", path: "input_blocks.10.0.in_layers.2" }, "input_blocks.10.0.in_layers.2"],
    [
      { part: "unet", path: "middle_block.1.transformer_blocks.0.ff.net.2" },
      "middle_block.1.transformer_blocks.0.ff.net.2",
    ],
    [{ part: "te1", path: "text_model.encoder.layers.7.self_attn.v_proj" }, ""],
  ];
  const layers = modules.map(([module, path]) => {
    const key = module.part === "unet"
      ? `${UNET}${path}.weight`
      : `cond_stage_model.transformer.${module.path}.weight`;
    const shape = SD15_SPECS.get(key)!.shape;
    // A LoRA on a 1×1 conv is written as linear, as kohya writes attention projections.
    const linearShape = shape.length === 4 && shape[2] === 1 ? shape.slice(0, 2) : shape;
    return testLayer(module, linearShape, 3, 1.5, next);
  });
  const { path } = await writeInNaming(join(TMP, "sd15_lora"), "kohya-diffusers", layers, "sd15");
  const model = await loadLora(path);
  assertEquals(model.architecture?.architecture, "sd15");
  const recipe = "spn_ckpt=1,fro_ckpt=1,thr=-1";
  const [out] = (await plan({
    checkpoint: SD15,
    loras: [path],
    recipes: recipe,
    normsCache: false,
    device: "cpu",
  })).outputs;
  assertEquals(out.layers.length, layers.length);
  for (const l of out.layers) {
    const key = l.base!; // a run with a base: every resized layer has its weight
    const expected = await sd15Norms(key);
    assertRelClose(l.baseFrobenius!, expected.frobenius, 1e-12, key);
    assertRelClose(l.baseSpectral!, expected.spectral, 1e-5, key);
    const scores = scoreLayer(parseRecipe(recipe), {
      sigma: l.sigma,
      out: l.out,
      inFlat: l.inShape.reduce((a, b) => a * b, 1),
      froCkpt: expected.frobenius,
      spnCkpt: expected.spectral,
    });
    scores.forEach((s, i) => assertRelClose(l.scores[i], s, 1e-5, `${key}[${i}]`));
  }
});

Deno.test("a LoRA for SDXL given an SD1.5 checkpoint is one line naming both", async () => {
  const { path } = await writeInNaming(join(TMP, "sdxl_lora_on_sd15"), "kohya", [
    testLayer({ part: "te2", path: "text_model.encoder.layers.0.mlp.fc1" }, [80, 20], 2, 1, rng(1)),
  ]);
  await using ckpt = await BaseCheckpoint.open(SD15);
  assertEquals(ckpt.architecture, "sd15");
  const e = await assertRejects(
    async () => pairLayers(await loadLora(path), ckpt),
    MappingError,
    /sdxl_lora_on_sd15\/lora\.safetensors is a LoRA for SDXL \('lora_te2_.*' \(a second text encoder \(OpenCLIP-G\)\)\) but the base checkpoint .*sd15_base\.safetensors is SD1\.5$/,
  );
  assert(!e.message.includes("\n"));
});

Deno.test("SD1.5: text-encoder layers pair under lora_te_ and lora_te1_ names alike", async () => {
  await using ckpt = await BaseCheckpoint.open(SD15);
  const te = ckpt.lookup("lora_te_text_model_encoder_layers_3_mlp_fc1");
  assert(te);
  assertEquals(te.key, "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight");
  assert(ckpt.lookup("lora_te1_text_model_encoder_layers_3_mlp_fc1") === te);
});
