import { assert, assertEquals, assertRejects, assertRelClose } from "./assert.ts";
import { LoraError, SafetensorsError } from "../src/errors.ts";
import { loadLora, type LoraLayer, readLoraFile } from "../src/lora/lora_file.ts";
import { summarizePassThrough } from "../src/lora/pass_through.ts";
import { decodeFloats, type DType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";

const FIXTURES = "tests/fixtures";
const LORAS = [
  "microA_r8_te",
  "microB-locon-r8c4",
  "microC_r8_bf16",
  "microD_r16_fp32",
  "microE_dora_r4",
];

interface InputLayer {
  rank: number;
  alpha: number;
  out: number;
  in_flat: number;
  base: string;
  sv: number[];
}
const INPUTS: Record<string, { layers: Record<string, InputLayer> }> = JSON.parse(
  await Deno.readTextFile(`${FIXTURES}/cases/inputs.json`),
);
const MANIFEST = JSON.parse(await Deno.readTextFile(`${FIXTURES}/manifest.json`));

const TMP = await Deno.makeTempDir({ prefix: "lora_file_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

/** ‖scale · up · down‖_F, computed densely in float64. */
function deltaFrobenius(layer: LoraLayer): number {
  const { up, down, out, rank, inFlat, scale } = layer.factors;
  const b = decodeFloats(up.bytes, up.dtype, Float64Array);
  const a = decodeFloats(down.bytes, down.dtype, Float64Array);
  let sum = 0;
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inFlat; j++) {
      let v = 0;
      for (let k = 0; k < rank; k++) v += b[i * rank + k] * a[k * inFlat + j];
      sum += (scale * v) ** 2;
    }
  }
  return Math.sqrt(sum);
}

Deno.test("conformance LoRAs: every layer found, with rank, alpha, out, in′ and exact factors", async () => {
  for (const stem of LORAS) {
    const file = `${stem}.safetensors`;
    const lora = await readLoraFile(`${FIXTURES}/${file}`);
    const expected = INPUTS[file].layers;
    assertEquals(lora.name, stem);
    assertEquals(lora.folder, FIXTURES);
    assertEquals(lora.paths, [`${FIXTURES}/${file}`]);
    assertEquals(lora.layers.map((l) => l.name), Object.keys(expected).sort(), file);
    assertEquals(lora.passThrough, [], file);
    assertEquals(lora.passThroughSummary, { total: 0, byKind: {}, clashes: 0, unweighted: 0 });
    for (const layer of lora.layers) {
      const e = expected[layer.name];
      const { factors } = layer;
      const where = `${file} ${layer.name}`;
      assertEquals(
        [factors.rank, layer.alpha, factors.out, factors.inFlat],
        [e.rank, e.alpha, e.out, e.in_flat],
        where,
      );
      assertEquals(factors.scale, e.alpha / e.rank, where);
      assertEquals(factors.up.dtype, MANIFEST.loras[file].dtype, where);
      // ‖ΔW‖_F² = Σσ² over all singular values (computed independently in float64).
      const fro = Math.hypot(...e.sv);
      if (fro > 0) assertRelClose(deltaFrobenius(layer), fro, 1e-6, where);
      else assertEquals(deltaFrobenius(layer), 0, where);
    }
  }
});

Deno.test("conv layers (LoCon): down r×in×kh×kw, up out×r×1×1, in′ = in·kh·kw", async () => {
  const lora = await readLoraFile(`${FIXTURES}/microB-locon-r8c4.safetensors`);
  const conv3 = lora.layers.find((l) => l.name === "lora_unet_input_blocks_1_0_in_layers_2")!;
  assertEquals([conv3.inShape, conv3.upShape, conv3.factors.inFlat], [[5, 3, 3], [5, 4, 1, 1], 45]);
  assertEquals([conv3.alpha, conv3.factors.scale], [1, 0.25]);
  const kinds = { linear: 0, conv3: 0, conv1: 0 };
  for (const l of lora.layers) {
    if (l.inShape.length === 1) kinds.linear++;
    else if (l.inShape[1] === 3) kinds.conv3++;
    else kinds.conv1++;
  }
  assertEquals(kinds, MANIFEST.loras["microB-locon-r8c4.safetensors"].kinds);
});

Deno.test("up/down stay raw bytes, byte-identical to the file", async () => {
  const path = `${FIXTURES}/microC_r8_bf16.safetensors`;
  const lora = await readLoraFile(path);
  await using file = await SafetensorsFile.open(path);
  for (const layer of lora.layers.slice(0, 20)) {
    assertEquals(layer.factors.up.bytes, await file.readBytes(`${layer.name}.lora_up.weight`));
    assertEquals(layer.factors.down.bytes, await file.readBytes(`${layer.name}.lora_down.weight`));
    assertEquals(layer.tensors.map((t) => t.name), [
      `${layer.name}.alpha`,
      `${layer.name}.lora_down.weight`,
      `${layer.name}.lora_up.weight`,
    ]);
  }
  assertEquals(lora.metadata, file.metadata);
  assert(Object.keys(lora.metadata).length > 0);
});

Deno.test("DoRA layers carry their dora_scale", async () => {
  const file = "microE_dora_r4.safetensors";
  const lora = await readLoraFile(`${FIXTURES}/${file}`);
  const dora = lora.layers.filter((l) => l.doraScale).map((l) => l.name);
  assertEquals(dora, [...MANIFEST.loras[file].dora_layers].sort());
  const layer = lora.layers.find((l) => l.doraScale)!;
  assertEquals(layer.doraScale!.name, `${layer.name}.dora_scale`);
  assertEquals(layer.doraScale!.shape, [layer.factors.out, 1]);
  assert(layer.tensors.includes(layer.doraScale!));
});

// ---- a synthetic file with everything that is not a plain LoRA layer ----

function f32(name: string, shape: number[], values?: number[]): TensorSource {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = Float32Array.from(values ?? Array.from({ length: n }, (_, i) => (i % 7) - 3));
  return { name, dtype: "F32", shape, data: new Uint8Array(data.buffer) };
}

function scalar(name: string, dtype: DType, value: number): TensorSource {
  const data = dtype === "I32"
    ? new Uint8Array(Int32Array.of(value).buffer)
    : new Uint8Array(Float16Array.of(value).buffer);
  return { name, dtype, shape: [], data };
}

async function write(
  name: string,
  tensors: TensorSource[],
  metadata?: Record<string, string>,
): Promise<string> {
  const path = `${TMP}/${name}`;
  await writeSafetensors(path, tensors, { metadata });
  return path;
}

Deno.test("pass-through: Tucker LoHa and LoKr, IA3, diffs, Tucker LoCon, lone halves and the rest", async () => {
  const tensors = [
    // plain layer without alpha → alpha = rank
    f32("lora_unet_a.lora_down.weight", [2, 3]),
    f32("lora_unet_a.lora_up.weight", [4, 2]),
    f32("lora_unet_a.extra", [1]),
    // plain layer with an integer alpha
    f32("lora_unet_b.lora_down.weight", [3, 5]),
    f32("lora_unet_b.lora_up.weight", [2, 3]),
    scalar("lora_unet_b.alpha", "I32", 6),
    // Tucker LoHa (other LoHa and LoKr layers are resized: lycoris_resize_test.ts)
    f32("lora_unet_c.hada_t1", [2, 2, 3, 3]),
    f32("lora_unet_c.hada_t2", [2, 2, 3, 3]),
    f32("lora_unet_c.hada_w1_a", [4, 2]),
    f32("lora_unet_c.hada_w1_b", [2, 3]),
    f32("lora_unet_c.hada_w2_a", [4, 2]),
    f32("lora_unet_c.hada_w2_b", [2, 3]),
    scalar("lora_unet_c.alpha", "F16", 2),
    // Tucker LoKr
    f32("lora_unet_d.lokr_t2", [2, 2, 3, 3]),
    f32("lora_unet_d.lokr_w1", [2, 2]),
    f32("lora_unet_d.lokr_w2", [2, 3]),
    scalar("lora_unet_d.alpha", "F16", 1),
    // Tucker LoCon: never resized from its down/up alone
    f32("lora_unet_e.lora_down.weight", [2, 3, 1, 1]),
    f32("lora_unet_e.lora_mid.weight", [2, 2, 3, 3]),
    f32("lora_unet_e.lora_up.weight", [4, 2, 1, 1]),
    scalar("lora_unet_e.alpha", "F16", 1),
    // a down without its up
    f32("lora_unet_f.lora_down.weight", [2, 3]),
    scalar("lora_unet_f.alpha", "F16", 1),
    // IA3 and full diffs
    f32("lora_unet_g.weight", [4]),
    f32("lora_unet_g.on_input", [1]),
    f32("lora_unet_h.diff", [4, 3]),
    f32("lora_unet_h.diff_b", [4]),
    // something else entirely
    f32("emb_params", [2, 8]),
  ];
  const path = await write("mixed.safetensors", tensors);
  const lora = await readLoraFile(path);
  assertEquals(lora.metadata, {}); // no __metadata__: empty metadata
  assertEquals(lora.layers.map((l) => l.name), ["lora_unet_a", "lora_unet_b"]);
  const [a, b] = lora.layers;
  assertEquals([a.alpha, a.factors.rank, a.factors.scale], [2, 2, 1]);
  assertEquals([b.alpha, b.factors.rank, b.factors.scale], [6, 3, 2]);
  assertEquals(a.tensors.map((t) => t.name), [
    "lora_unet_a.lora_down.weight",
    "lora_unet_a.lora_up.weight",
  ]);

  const layerTensors = new Set([...a.tensors, ...b.tensors].map((t) => t.name));
  const expected = tensors.map((t) => t.name).filter((n) => !layerTensors.has(n)).sort();
  assertEquals(lora.passThrough.map((t) => t.name), expected);
  const emb = lora.passThrough.find((t) => t.name === "emb_params")!;
  assertEquals([emb.dtype, emb.shape], ["F32", [2, 8]]);
  assertEquals(emb.bytes, tensors.at(-1)!.data);
  assertEquals(lora.passThroughSummary, {
    total: 23,
    byKind: {
      "other": 2, // emb_params, lora_unet_a.extra
      "Tucker LoHa": 7,
      "Tucker LoKr": 4,
      "lora_mid (Tucker LoCon)": 4,
      "incomplete LoRA layer": 2,
      "IA3": 2,
      "full diff": 2,
    },
    clashes: 0,
    unweighted: 0,
  });
});

Deno.test("summarizePassThrough counts tensors per module kind", () => {
  const t = (name: string) => ({
    name,
    dtype: "F16" as const,
    shape: [1],
    bytes: new Uint8Array(2),
  });
  const s = summarizePassThrough([t("x.hada_w1_a"), t("x.alpha"), t("y.lora_up.weight"), t("z")], {
    clashes: 3,
  });
  assertEquals(s, {
    total: 4,
    byKind: { LoHa: 2, "incomplete LoRA layer": 1, other: 1 },
    clashes: 3,
    unweighted: 0,
  });
});

Deno.test("errors name the file (and layer)", async () => {
  const missing = await assertRejects(
    () => loadLora(`${TMP}/missing.safetensors`),
    SafetensorsError,
    { file: `${TMP}/missing.safetensors` },
  );
  assert(missing.message.endsWith("cannot open (no such file)"), missing.message);
  const text = `${TMP}/notes.safetensors`;
  await Deno.writeTextFile(text, "this is not a safetensors file at all");
  await assertRejects(() => loadLora(text), SafetensorsError, { file: text });

  // A file without any down/up pair is refused before its data is read.
  await assertRejects(
    () => loadLora("tests/fixtures/micro_sdxl_base.safetensors"),
    LoraError,
    /micro_sdxl_base\.safetensors: no LoRA, LoHa or LoKr layer .* among its 2515 tensors; other: 2515, is it a LoRA file\?$/,
  );
  const loha = await write("loha.safetensors", [
    f32("lora_unet_x.hada_t1", [2, 2, 3, 3]),
    f32("lora_unet_x.hada_w1_a", [4, 2]),
    f32("lora_unet_y.lora_up.weight", [4, 2]),
  ]);
  await assertRejects(
    () => loadLora(loha),
    LoraError,
    /loha\.safetensors: no LoRA, LoHa or LoKr layer .* among its 3 tensors; Tucker LoHa: 2, incomplete LoRA layer: 1, is it/,
  );
  const unchained = await write("unchained.safetensors", [
    f32("lora_unet_x.lora_down.weight", [2, 5]),
    f32("lora_unet_x.lora_up.weight", [4, 3]),
  ]);
  await assertRejects(
    () => loadLora(unchained),
    LoraError,
    /unchained\.safetensors: layer 'lora_unet_x': lora_up\.weight \[4, 3\] does not chain with lora_down\.weight \[2, 5\]/,
  );
  const wideUp = await write("wide_up.safetensors", [
    f32("lora_unet_x.lora_down.weight", [2, 5, 3, 3]),
    f32("lora_unet_x.lora_up.weight", [4, 2, 3, 3]),
  ]);
  await assertRejects(() => loadLora(wideUp), LoraError, { file: wideUp, key: "lora_unet_x" });
  const ints = await write("ints.safetensors", [
    { name: "lora_unet_x.lora_down.weight", dtype: "I8", shape: [2, 5], data: new Uint8Array(10) },
    f32("lora_unet_x.lora_up.weight", [4, 2]),
  ]);
  const e = await assertRejects(() => loadLora(ints), LoraError, {
    file: ints,
    key: "lora_unet_x",
  });
  assert(e.message.includes("dtype I8"), e.message);
  const badAlpha = await write("bad_alpha.safetensors", [
    f32("lora_unet_x.lora_down.weight", [2, 5]),
    f32("lora_unet_x.lora_up.weight", [4, 2]),
    f32("lora_unet_x.alpha", [2]),
  ]);
  await assertRejects(() => loadLora(badAlpha), SafetensorsError, {
    file: badAlpha,
    tensor: "lora_unet_x.alpha",
  });
});

Deno.test("a plain path with a colon that is not followed by a number is a path", async () => {
  const path = await write("odd:name.safetensors", [
    f32("lora_unet_x.lora_down.weight", [2, 5]),
    f32("lora_unet_x.lora_up.weight", [4, 2]),
  ]);
  const lora = await loadLora(path);
  assertEquals([lora.name, lora.entry, lora.layers.length], ["odd:name", path, 1]);
});
