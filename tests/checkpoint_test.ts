import { assert, assertEquals, assertRejects } from "./assert.ts";
import { MappingError, SafetensorsError } from "../src/errors.ts";
import { BaseCheckpoint, pythonRepr, pythonTuple } from "../src/base/checkpoint.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { type DType, dtypeSize } from "../src/safetensors/dtype.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";

const BASE = "tests/fixtures/micro_sdxl_base.safetensors";
const U = "model.diffusion_model.";
const TE1 = "conditioner.embedders.0.transformer.text_model.encoder.layers.";
const TE2 = "conditioner.embedders.1.model.transformer.resblocks.";
const IN_PROJ_5 = TE2 + "5.attn.in_proj_weight";

const TMP = await Deno.makeTempDir({ prefix: "checkpoint_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));
let files = 0;

/** Writes a checkpoint whose tensors hold 0, 1, 2, … in their dtype. */
async function writeCheckpoint(
  tensors: { name: string; dtype: DType; shape: number[] }[],
): Promise<string> {
  const path = `${TMP}/${++files}/base.safetensors`;
  await Deno.mkdir(`${TMP}/${files}`);
  await writeSafetensors(
    path,
    tensors.map((t) => {
      const n = t.shape.reduce((a, b) => a * b, 1);
      const data = t.dtype === "F32"
        ? new Uint8Array(Float32Array.from({ length: n }, (_, i) => i).buffer)
        : t.dtype === "F16"
        ? new Uint8Array(Float16Array.from({ length: n }, (_, i) => i).buffer)
        : new Uint8Array(n * dtypeSize(t.dtype));
      return { ...t, data };
    }),
  );
  return path;
}

Deno.test("alias precedence: a later base key overwrites a short alias (last in listing order wins)", async () => {
  await using ckpt = await BaseCheckpoint.open(BASE);
  // The micro base is single-dtype F16 (plus one I64 key that does not map), so
  // its listing order is name order; the expected keys are the last ones by name.
  const cases: [string, string][] = [
    ["down_4", U + "input_blocks.4.1.transformer_blocks.1.ff.net.2.weight"],
    ["down_4_in", U + "input_blocks.4.0.in_layers.2.weight"],
    ["mid_1", U + "middle_block.1.transformer_blocks.9.ff.net.2.weight"],
    ["up_0_skip", U + "output_blocks.0.0.skip_connection.weight"],
    ["up_2", U + "output_blocks.2.2.conv.weight"],
    ["text_model_encoder_5_self_attn", TE1 + "5.self_attn.v_proj.weight"],
    // TE1 and TE2 MLP aliases collide; CLIP-G keys come later.
    ["text_model_encoder_5_mlp", TE2 + "5.mlp.c_proj.weight"],
    ["text_model_encoder_5_attn", TE2 + "5.attn.out_proj.weight"],
  ];
  for (const [alias, key] of cases) {
    assertEquals(ckpt.lookup(alias)?.key, key, alias);
    assertEquals(ckpt.match(alias)?.kind, "short", alias);
  }
  // Standard and direct names stay unique.
  const proj = ckpt.lookup("lora_unet_input_blocks_4_1_proj_in");
  assertEquals(proj?.key, U + "input_blocks.4.1.proj_in.weight");
  assertEquals(ckpt.match("lora_unet_input_blocks_4_1_proj_in")?.kind, "standard");
  assert(ckpt.lookup("input_blocks_4_1_proj_in") === proj, "direct name → the same entry");
  assertEquals(ckpt.match("input_blocks_4_1_proj_in")?.kind, "direct");
});

Deno.test("listing order is the file's data order (dtype, then name), not name order", async () => {
  const skip = U + "input_blocks.4.0.skip_connection.weight";
  const proj = U + "input_blocks.4.1.proj_in.weight";
  // F32 is laid out before F16: proj_in comes first, skip_connection last.
  const path = await writeCheckpoint([
    { name: skip, dtype: "F16", shape: [4, 2, 1, 1] },
    { name: proj, dtype: "F32", shape: [4, 4] },
  ]);
  await using ckpt = await BaseCheckpoint.open(path);
  assertEquals(ckpt.file.tensors.map((t) => t.name), [proj, skip]);
  assertEquals(ckpt.lookup("down_4")?.key, skip);
  // proj_in registered `down_4` first; the dict keeps that position when
  // skip_connection overwrites it, so proj_in's first name is its standard one
  // and skip_connection's first name (in map order) is `down_4`.
  const byKey = new Map(ckpt.entries().map((e) => [e.key, e]));
  assertEquals(byKey.get(proj)?.firstAlias, "lora_unet_input_blocks_4_1_proj_in");
  assertEquals(byKey.get(skip)?.firstAlias, "down_4");
});

Deno.test("entries(): every mapped weight and q/k/v block, sorted by label, with Python labels", async () => {
  await using ckpt = await BaseCheckpoint.open(BASE);
  const entries = ckpt.entries();
  const labels = entries.map((e) => e.label);
  assertEquals(labels, [...labels].sort());
  // 32 CLIP-G blocks contribute three entries each; labels sort "(" before letters.
  const chunks = entries.filter((e) => e.chunk);
  assertEquals(chunks.length, 96);
  assertEquals(entries.indexOf(chunks[95]), 95);
  assertEquals(
    chunks[0].label,
    "('conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight', 0, 3)",
  );
  // No VAE key, no 1-D key.
  for (const e of entries) {
    assert(!e.key.startsWith("first_stage_model."), e.key);
    assert(e.shape.length >= 2, e.key);
  }
  const conv = entries.find((e) => e.key === U + "input_blocks.0.0.weight")!;
  assertEquals([conv.label, conv.rows, conv.cols, conv.shape], [conv.key, 5, 4 * 3 * 3, [
    5,
    4,
    3,
    3,
  ]]);
  assertEquals(conv.firstAlias, "lora_unet_input_blocks_0_0");
  assertEquals(ckpt.lookup("first_stage_model_encoder_conv_in"), undefined);
  assertEquals(ckpt.lookup(U + "input_blocks.4.1.norm.weight"), undefined);
});

Deno.test("TE2 in_proj chunks: q = rows [0, n), k = [n, 2n), v = [2n, 3n)", async () => {
  await using ckpt = await BaseCheckpoint.open(BASE);
  await using file = await SafetensorsFile.open(BASE);
  const info = file.info(IN_PROJ_5);
  assertEquals(info.shape, [60, 20]);
  const stem = "lora_te2_text_model_encoder_layers_5_self_attn";
  for (const [index, part] of ["q", "k", "v"].entries()) {
    const entry = ckpt.lookup(`${stem}_${part}_proj`)!;
    assertEquals(entry.key, IN_PROJ_5);
    assertEquals(entry.chunk, { index, count: 3 });
    assertEquals([entry.rows, entry.cols, entry.shape], [20, 20, [60, 20]]);
    assertEquals(entry.label, `('${IN_PROJ_5}', ${index}, 3)`);
    assertEquals(entry.firstAlias, `${stem}_${part}_proj`);
    const rows = await file.readFloat32(IN_PROJ_5, { rows: [20 * index, 20 * (index + 1)] });
    assertEquals(await ckpt.readWeight(entry), rows);
    // Offset by hand: data start + tensor begin + index · 20 rows · 20 cols · 2 bytes.
    assertEquals(ckpt.weightRef(entry), {
      path: BASE,
      dtype: "F16",
      offset: file.dataStart + info.dataOffsets[0] + index * 20 * 20 * 2,
      rows: 20,
      cols: 20,
    });
  }
  // Different blocks hold different rows.
  const q = await ckpt.readWeight(ckpt.lookup(`${stem}_q_proj`)!);
  const k = await ckpt.readWeight(ckpt.lookup(`${stem}_k_proj`)!);
  assert(q.some((x, i) => x !== k[i]));
});

Deno.test("readWeight of a conv weight: the whole tensor, flattened to out × in·kh·kw", async () => {
  await using ckpt = await BaseCheckpoint.open(BASE);
  await using file = await SafetensorsFile.open(BASE);
  const entry = ckpt.lookup("lora_unet_input_blocks_1_0_in_layers_2")!;
  const w = await ckpt.readWeight(entry);
  assertEquals(w.length, entry.rows * entry.cols);
  assertEquals(w, await file.readFloat32(entry.key));
  assertEquals(ckpt.weightRef(entry).offset, file.byteRange(entry.key).offset);
});

Deno.test("a fused projection whose rows do not split in 3 is an error when used", async () => {
  const key = TE2 + "0.attn.in_proj_weight";
  const path = await writeCheckpoint([
    { name: key, dtype: "F16", shape: [61, 4] },
    { name: U + "out.2.weight", dtype: "F16", shape: [4, 2, 3, 3] },
  ]);
  await using ckpt = await BaseCheckpoint.open(path);
  const q = ckpt.lookup("lora_te2_text_model_encoder_layers_0_self_attn_q_proj")!;
  const message = new RegExp(
    `base\\.safetensors: ${
      key.replaceAll(".", "\\.")
    } shape=\\(61, 4\\) is not divisible in 3 chunks`,
  );
  await assertRejects(() => ckpt.readWeight(q), MappingError, message);
  await assertRejects(() => ckpt.weightRef(q), MappingError, { file: path, tensor: key });
  // Other weights are unaffected.
  assertEquals((await ckpt.readWeight(ckpt.lookup("out_2")!)).length, 4 * 18);
});

Deno.test("a base weight that is not a float tensor cannot be read", async () => {
  const path = await writeCheckpoint([{ name: U + "out.2.weight", dtype: "I8", shape: [4, 2] }]);
  await using ckpt = await BaseCheckpoint.open(path);
  const entry = ckpt.lookup("lora_unet_out_2")!;
  await assertRejects(
    () => ckpt.weightRef(entry),
    SafetensorsError,
    /out\.2\.weight' has dtype I8/,
  );
  await assertRejects(() => ckpt.readWeight(entry), SafetensorsError, {
    file: path,
    tensor: U + "out.2.weight",
  });
});

Deno.test("open errors name the file", async () => {
  await assertRejects(
    () => BaseCheckpoint.open("tests/fixtures/no_such_base.safetensors"),
    SafetensorsError,
    { file: "tests/fixtures/no_such_base.safetensors" },
  );
  await assertRejects(
    () => BaseCheckpoint.open("tests/fixtures/manifest.json"),
    SafetensorsError,
    { file: "tests/fixtures/manifest.json" },
  );
});

Deno.test("Python text: tuples and string reprs", () => {
  assertEquals(pythonTuple([1280, 1280]), "(1280, 1280)");
  assertEquals(pythonTuple([768]), "(768,)");
  assertEquals(pythonTuple([]), "()");
  assertEquals(pythonRepr("a.weight"), "'a.weight'");
  assertEquals(pythonRepr("it's"), `"it's"`);
  assertEquals(pythonRepr(`'"`), `'\\'"'`);
  assertEquals(pythonRepr("a\\b\n"), "'a\\\\b\\n'");
});
