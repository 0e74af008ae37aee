/**
 * The synthetic SDXL generator: key set and shapes against the real SDXL 1.0
 * key list and the conformance micro base, determinism, LoRA layer sets and
 * shapes against the conformance LoRAs, and the decay of generated spectra.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { decodeFloats, numel, SafetensorsFile, type TensorSpec } from "../src/safetensors/mod.ts";
import {
  LOCON_GROUPS,
  LORA_GROUPS,
  sdxlBaseSpecs,
  sdxlLoraLayers,
  sdxlWidths,
  syntheticBaseTensor,
  syntheticMatrix,
  writeDemoFiles,
  writeSyntheticBase,
  writeSyntheticLora,
} from "../src/testing/mod.ts";
import { matrix, svd } from "./reference/matrix.ts";

const FIXTURES = "tests/fixtures";

const sdxlKeys = JSON.parse(await Deno.readTextFile(`${FIXTURES}/sdxl_keys.json`)) as {
  tensors: Record<string, { dtype: string; shape: number[] }>;
  summary: Record<string, { tensors: number; params: number }>;
};

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "synthetic_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function asRecord(
  specs: readonly TensorSpec[],
): Record<string, { dtype: string; shape: number[] }> {
  return Object.fromEntries(specs.map((s) => [s.name, { dtype: s.dtype, shape: [...s.shape] }]));
}

/** Singular values (descending) of a row-major m×n matrix, by the tests' reference SVD. */
function singularValues(w: ArrayLike<number>, m: number, n: number): number[] {
  return Array.from(svd(matrix(m, n, w)).s);
}

// ------------------------------------------------------------------ shapes

Deno.test("scale 1 reproduces the SDXL 1.0 base key set, dtypes and shapes exactly", () => {
  const specs = sdxlBaseSpecs();
  assertEquals(specs.length, 2515);
  assertEquals(asRecord(specs), sdxlKeys.tensors);
  const params = (prefix: string) =>
    specs.filter((s) => s.name.startsWith(prefix)).reduce((n, s) => n + numel(s.shape), 0);
  assertEquals(params("model.diffusion_model."), sdxlKeys.summary.unet.params);
  assertEquals(params("model.diffusion_model."), 2_567_463_684);
  assertEquals(params("conditioner.embedders.0."), sdxlKeys.summary.te1_clip_l.params);
  assertEquals(params("conditioner.embedders.1."), sdxlKeys.summary.te2_clip_g.params);
  assertEquals(params("first_stage_model."), sdxlKeys.summary.vae.params);
});

Deno.test("scale 1/64 reproduces the conformance micro base header", async () => {
  await using micro = await SafetensorsFile.open(`${FIXTURES}/micro_sdxl_base.safetensors`);
  assertEquals(asRecord(sdxlBaseSpecs({ scale: 1 / 64 })), asRecord(micro.tensors));
});

Deno.test("smaller scales divide every width by 64 and multiply by the head width", () => {
  // Every SDXL width is a multiple of 64; kernels, depths, 77 positions and
  // 3/4/8 image/latent channels are not, and stay.
  for (const [scale, h] of [[1 / 10, 6], [1 / 16, 4], [1 / 32, 2], [0.5, 32], [1 / 1000, 1]]) {
    assertEquals(sdxlWidths(scale).headWidth, h);
    const expected = Object.fromEntries(
      Object.entries(sdxlKeys.tensors).map(([k, v]) => [
        k,
        { dtype: v.dtype, shape: v.shape.map((d) => (d % 64 === 0 ? (d / 64) * h : d)) },
      ]),
    );
    assertEquals(asRecord(sdxlBaseSpecs({ scale })), expected, `scale ${scale}`);
  }
  const w = sdxlWidths(1 / 10);
  assertEquals(w.clipG.width / w.headWidth, 20); // CLIP-G keeps its 20 heads
  assertEquals(w.clipL.width / w.headWidth, 12);
  assertEquals(w.context, w.clipL.width + w.clipG.width);
  assertEquals(
    sdxlBaseSpecs({ scale: 1 / 10, dtype: "BF16" }).filter((s) => s.dtype !== "BF16").map((s) =>
      s.name
    ),
    [
      "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
    ],
  );
});

// ------------------------------------------------------------------ base values

Deno.test("base files are deterministic in the seed, and each tensor only in (seed, name)", async () => {
  await withTempDir(async (dir) => {
    const a = join(dir, "a.safetensors"),
      b = join(dir, "b.safetensors"),
      c = join(dir, "c.safetensors");
    await writeSyntheticBase(a, { scale: 1 / 64, seed: 5 });
    await writeSyntheticBase(b, { scale: 1 / 64, seed: 5 });
    await writeSyntheticBase(c, { scale: 1 / 64, seed: 6 });
    const [ba, bb, bc] = await Promise.all([a, b, c].map((p) => Deno.readFile(p)));
    assertEquals(ba, bb);
    assert(ba.length === bc.length && !ba.every((x, i) => x === bc[i]), "seed 6 gives other bytes");
    await using f = await SafetensorsFile.open(a);
    const spec = f.info("model.diffusion_model.middle_block.1.proj_in.weight");
    assertEquals(await f.readBytes(spec.name), syntheticBaseTensor(spec, { seed: 5 }));
    const meta = JSON.parse(f.metadata["resize_lora.synthetic"]);
    assertEquals([meta.kind, meta.seed, meta.scale], ["base", 5, 1 / 64]);
  });
});

Deno.test("base values: position_ids 0..76, logit_scale ln 100, norms ≈ 1, biases ≈ 0, weights finite", () => {
  const ids = syntheticBaseTensor({
    name: "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
    dtype: "I64",
    shape: [1, 77],
  });
  assertEquals([...new BigInt64Array(ids.buffer)], Array.from({ length: 77 }, (_, i) => BigInt(i)));
  const logit = syntheticBaseTensor({
    name: "conditioner.embedders.1.model.logit_scale",
    dtype: "F16",
    shape: [],
  });
  assertEquals(decodeFloats(logit, "F16", Float64Array)[0], 4.60546875); // ln 100 = 4.6052 in F16
  const norm = decodeFloats(
    syntheticBaseTensor({ name: "x.norm1.weight", dtype: "F32", shape: [500] }),
    "F32",
    Float64Array,
  );
  assert(norm.every((x) => x > 0.89 && x < 1.11));
  const bias = decodeFloats(
    syntheticBaseTensor({ name: "x.bias", dtype: "BF16", shape: [500] }),
    "BF16",
    Float64Array,
  );
  assert(bias.every((x) => Math.abs(x) <= 0.02) && bias.some((x) => x !== 0));
  const conv = decodeFloats(
    syntheticBaseTensor({ name: "c.weight", dtype: "F16", shape: [3, 128, 3, 3] }),
    "F16",
    Float64Array,
  );
  assert(conv.every(Number.isFinite) && new Set(conv).size > 1000);
});

Deno.test("base weights have decaying spectra: a few spikes far above the noise bulk", () => {
  const [m, n] = [96, 64];
  const sv = singularValues(syntheticMatrix(m, n, { seed: 11 }), m, n);
  const median = sv[n / 2];
  assert(sv[0] > 8 * median, `σ₁ ${sv[0]} vs median ${median}`);
  assert(sv[0] > sv[1] && sv[1] > sv[2] && sv[2] > sv[3], "the spikes are ordered");
  const edge = (Math.sqrt(m) + Math.sqrt(n)) / Math.sqrt(n); // noise bulk edge for std 1/√n
  assert(sv[3] > edge && sv[5] < 1.2 * edge, `σ₄ ${sv[3]}, σ₆ ${sv[5]}, edge ${edge}`);
  // A real layer at 1/16 scale: a 3×3 conv flattened to out × in·9, F16 as written.
  const spec = {
    name: "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
    dtype: "F16",
    shape: [20, 20, 3, 3],
  } as const;
  const conv = decodeFloats(syntheticBaseTensor(spec), "F16", Float64Array);
  const transposed = Array.from(
    { length: 180 * 20 },
    (_, i) => conv[(i % 20) * 180 + Math.floor(i / 20)],
  );
  const csv = singularValues(transposed, 180, 20); // σ of Wᵀ = σ of W
  assert(csv[0] > 3 * csv[10], `conv: σ₁ ${csv[0]} vs σ₁₁ ${csv[10]}`);
});

Deno.test("CLIP-G in_proj_weight: the q, k and v row blocks differ in strength", () => {
  const d = 40;
  const bytes = syntheticBaseTensor({
    name: "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight",
    dtype: "F32",
    shape: [3 * d, d],
  });
  const w = decodeFloats(bytes, "F32", Float64Array);
  const fro = [0, 1, 2].map((b) => Math.hypot(...w.subarray(b * d * d, (b + 1) * d * d)));
  assert(fro[0] > 1.2 * fro[1] && fro[1] > 1.2 * fro[2], `q, k, v norms ${fro}`);
});

// ------------------------------------------------------------------ LoRA

Deno.test("the default LoRA layers are exactly the 986 layers of conformance LoRA A", async () => {
  await using a = await SafetensorsFile.open(`${FIXTURES}/microA_r8_te.safetensors`);
  const names = [...new Set(a.names.map((n) => n.slice(0, n.indexOf("."))))].sort();
  assertEquals(names.length, 986);
  assertEquals(sdxlLoraLayers().map((l) => l.name), names);
  assertEquals(sdxlLoraLayers({ scale: 1 / 64, include: LORA_GROUPS }).map((l) => l.name), names);
  assertEquals(sdxlLoraLayers({ include: ["te2_attn"] }).length, 32 * 4);
  assertEquals(sdxlLoraLayers({ include: ["te1_mlp"] }).length, 12 * 2);
});

Deno.test("a synthetic LoCon at 1/64 has the tensors and shapes of conformance LoCon B", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "locon.safetensors");
    await writeSyntheticLora(path, {
      scale: 1 / 64,
      include: LOCON_GROUPS,
      rank: 8,
      alpha: 4,
      convRank: 4,
      convAlpha: 1,
    });
    await using ours = await SafetensorsFile.open(path);
    await using b = await SafetensorsFile.open(`${FIXTURES}/microB-locon-r8c4.safetensors`);
    assertEquals(asRecord(ours.tensors), asRecord(b.tensors));
    const alphas = new Set<number>();
    for (const t of ours.tensors) {
      if (t.name.endsWith(".alpha")) alphas.add(await ours.readScalar(t.name));
    }
    assertEquals([...alphas].sort(), [1, 4]);
    assertEquals(JSON.parse(ours.metadata.ss_network_args), { conv_dim: "4", conv_alpha: "1" });
  });
});

Deno.test("LoRA factors chain with their base weights; alpha, zero layers and metadata as kohya writes them", async () => {
  await withTempDir(async (dir) => {
    const basePath = join(dir, "base.safetensors"), loraPath = join(dir, "lora_r6.safetensors");
    await writeSyntheticBase(basePath, { scale: 1 / 32 });
    const include = [...LORA_GROUPS, ...LOCON_GROUPS];
    await writeSyntheticLora(loraPath, {
      scale: 1 / 32,
      rank: 6,
      alpha: 3,
      convRank: 2,
      convAlpha: 1,
      include,
    });
    await using base = await SafetensorsFile.open(basePath);
    await using lora = await SafetensorsFile.open(loraPath);
    const layers = sdxlLoraLayers({ scale: 1 / 32, include });
    assertEquals(lora.tensors.length, 3 * layers.length);
    for (const l of layers) {
      const w = base.info(l.base).shape;
      const down = lora.info(`${l.name}.lora_down.weight`).shape;
      const up = lora.info(`${l.name}.lora_up.weight`).shape;
      const r = w.length === 4 && w[2] === 3 ? 2 : 6;
      const rows = l.name.startsWith("lora_te2") && /_[qkv]_proj$/.test(l.name) ? w[0] / 3 : w[0];
      assertEquals(down, [r, ...w.slice(1)], l.name);
      assertEquals(up, w.length === 4 ? [rows, r, 1, 1] : [rows, r], l.name);
      assertEquals(lora.info(`${l.name}.alpha`).shape, []);
      assertEquals(await lora.readScalar(`${l.name}.alpha`), r === 6 ? 3 : 1);
      const upValues = await lora.readFloat32(`${l.name}.lora_up.weight`);
      const downValues = await lora.readFloat32(`${l.name}.lora_down.weight`);
      const zero = l.name.startsWith("lora_te1_text_model_encoder_layers_11_");
      assertEquals(upValues.every((x) => x === 0), zero, `${l.name} up all zero`);
      assert(downValues.some((x) => x !== 0), `${l.name} down is trained`);
    }
    const meta = lora.metadata;
    assertEquals(meta.ss_network_dim, "6");
    assertEquals(meta.ss_network_alpha, "3.0");
    assertEquals(meta.ss_network_module, "networks.lora");
    assertEquals(meta.ss_base_model_version, "sdxl_base_v1-0");
    assertEquals(meta.ss_output_name, "lora_r6");
    const tags = JSON.parse(meta.ss_tag_frequency)["10_subject"];
    assert(Object.keys(tags).some((t) => /[^ -~]/.test(t)), "a non-ASCII tag");
  });
});

Deno.test("LoRA deltas have decaying spectra, and files are deterministic in the seed and dtype", async () => {
  await withTempDir(async (dir) => {
    const p = (name: string) => join(dir, name);
    const opts = { scale: 1 / 32, rank: 16, alpha: 4, include: ["te1_mlp", "unet_proj"] } as const;
    await Deno.mkdir(p("again"));
    await writeSyntheticLora(p("a.safetensors"), { ...opts, seed: 3 });
    await writeSyntheticLora(p("again/a.safetensors"), { ...opts, seed: 3 });
    await writeSyntheticLora(p("b.safetensors"), { ...opts, seed: 4 });
    await writeSyntheticLora(p("bf16.safetensors"), { ...opts, seed: 3, dtype: "BF16" });
    await writeSyntheticLora(p("f32.safetensors"), { ...opts, seed: 3, dtype: "F32" });
    const [a, again, b] = await Promise.all(
      ["a", "again/a", "b"].map((n) => Deno.readFile(p(`${n}.safetensors`))),
    );
    assertEquals(a, again);
    assert(a.length === b.length && !a.every((x, i) => x === b[i]), "seed 4 gives other bytes");
    for (const [file, dtype] of [["bf16", "BF16"], ["f32", "F32"]]) {
      await using f = await SafetensorsFile.open(p(`${file}.safetensors`));
      assertEquals([...new Set(f.tensors.map((t) => t.dtype))], [dtype]);
    }
    await using f = await SafetensorsFile.open(p("f32.safetensors"));
    const name = "lora_unet_middle_block_1_proj_in";
    const down = await f.readFloat64(`${name}.lora_down.weight`);
    const up = await f.readFloat64(`${name}.lora_up.weight`);
    const [out, r] = f.info(`${name}.lora_up.weight`).shape;
    const inp = f.info(`${name}.lora_down.weight`).shape[1];
    const delta = new Float64Array(out * inp); // α/r · up · down
    for (let i = 0; i < out; i++) {
      for (let k = 0; k < r; k++) {
        for (let j = 0; j < inp; j++) {
          delta[i * inp + j] += (4 / 16) * up[i * r + k] * down[k * inp + j];
        }
      }
    }
    const sv = singularValues(delta, out, inp);
    assert(sv[0] > 10 * sv[r - 1] && sv[r - 1] > 0, `σ₁ ${sv[0]}, σ_r ${sv[r - 1]}`);
    assert(sv[r] < 1e-6 * sv[0], "rank at most r");
  });
});

Deno.test("demo files: a small base and LoRA that open", async () => {
  await withTempDir(async (dir) => {
    const { base, lora } = await writeDemoFiles(join(dir, "demo"), { scale: 1 / 64, rank: 4 });
    await using b = await SafetensorsFile.open(base);
    await using l = await SafetensorsFile.open(lora);
    assertEquals(b.tensors.length, 2515);
    assertEquals(l.tensors.length, 3 * 986);
    assertEquals(l.metadata.ss_network_dim, "4");
  });
});
