import { assert, assertEquals, assertRejects } from "./assert.ts";
import { MappingError } from "../src/errors.ts";
import { loadLora, readLoraFile } from "../src/lora/lora_file.ts";
import { pairLayers, unmatchedBaseMessage } from "../src/lora/pairing.ts";
import { BaseCheckpoint } from "../src/base/checkpoint.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";

const FIXTURES = "tests/fixtures";
const BASE = `${FIXTURES}/micro_sdxl_base.safetensors`;
const U = "model.diffusion_model.";
const LORAS = [
  "microA_r8_te.safetensors",
  "microB-locon-r8c4.safetensors",
  "microC_r8_bf16.safetensors",
  "microD_r16_fp32.safetensors",
  "microE_dora_r4.safetensors",
];
const INPUTS: Record<string, { layers: Record<string, { base: string }> }> = JSON.parse(
  await Deno.readTextFile(`${FIXTURES}/cases/inputs.json`),
);
const M01 = JSON.parse(await Deno.readTextFile(`${FIXTURES}/cases/M01_default_vv.json`));

const ckpt = await BaseCheckpoint.open(BASE);
globalThis.addEventListener("unload", () => ckpt.close());

const TMP = await Deno.makeTempDir({ prefix: "pairing_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

Deno.test("every layer of the five conformance LoRAs pairs with the base weight inputs.json names", async () => {
  for (const file of LORAS) {
    const lora = await readLoraFile(`${FIXTURES}/${file}`);
    const { paired, unmapped, unmatchedBase } = pairLayers(lora, ckpt);
    assertEquals(unmapped, [], file);
    assertEquals(paired.map((p) => p.layer), lora.layers, file);
    for (const { layer, base, matchedBy } of paired) {
      // inputs.json: "key" or "key#c" with c = 0 (q), 1 (k), 2 (v).
      const [key, chunk] = INPUTS[file].layers[layer.name].base.split("#");
      assertEquals(base.key, key, layer.name);
      assertEquals(base.chunk?.index, chunk === undefined ? undefined : Number(chunk), layer.name);
      assertEquals(matchedBy, chunk === undefined ? "standard" : "chunk", layer.name);
      assertEquals(base.rows, layer.factors.out, layer.name);
      assertEquals(base.cols, layer.factors.inFlat, layer.name);
    }
    assertEquals(unmatchedBase.length + paired.length, ckpt.entries().length, file);
  }
});

Deno.test("unmatched base weights: count and log lines as the original printed them (M01)", async () => {
  const lora = await readLoraFile(`${FIXTURES}/microA_r8_te.safetensors`);
  const { unmatchedBase } = pairLayers(lora, ckpt);
  const dropped = M01.log_dropped["No LoRA layer found in file for base layer"];
  assertEquals(unmatchedBase.length, dropped.count);
  assertEquals(
    unmatchedBase.slice(0, 3).map((e) => `INFO:root:${unmatchedBaseMessage(e)}`),
    dropped.examples,
  );
});

// ---- synthetic LoRAs against the micro base ----

function f32(name: string, shape: number[]): TensorSource {
  const n = shape.reduce((a, b) => a * b, 1);
  return { name, dtype: "F32", shape, data: new Uint8Array(n * 4) };
}

/** A layer with down r×inShape and up out×r(×1×1). */
function layer(name: string, out: number, inShape: number[], r = 2): TensorSource[] {
  const ones = inShape.length > 1 ? [1, 1] : [];
  return [
    f32(`${name}.lora_down.weight`, [r, ...inShape]),
    f32(`${name}.lora_up.weight`, [out, r, ...ones]),
  ];
}

async function write(name: string, tensors: TensorSource[]): Promise<string> {
  const path = `${TMP}/${name}`;
  await writeSafetensors(path, tensors);
  return path;
}

Deno.test("short aliases, direct names, 1×1 conv vs linear, and unmapped layers", async () => {
  const path = await write("aliases.safetensors", [
    ...layer("down_4", 10, [40]), // the last input_blocks.4 weight: transformer_blocks.1.ff.net.2
    ...layer("middle_block_1_proj_out", 20, [20]),
    ...layer("lora_unet_input_blocks_4_0_skip_connection", 10, [5]), // linear for a 1×1 conv
    ...layer("lora_unet_out_2", 4, [5, 3, 3]),
    ...layer("lora_unet_no_such_block_0_proj_in", 10, [10]), // no base weight in any naming
  ]);
  const { paired, unmapped, unmatchedBase } = pairLayers(await readLoraFile(path), ckpt);
  assertEquals(
    paired.map((p) => [p.layer.name, p.base.key, p.matchedBy]),
    [
      ["down_4", U + "input_blocks.4.1.transformer_blocks.1.ff.net.2.weight", "short"],
      [
        "lora_unet_input_blocks_4_0_skip_connection",
        U + "input_blocks.4.0.skip_connection.weight",
        "standard",
      ],
      ["lora_unet_out_2", U + "out.2.weight", "standard"],
      ["middle_block_1_proj_out", U + "middle_block.1.proj_out.weight", "direct"],
    ],
  );
  assertEquals(unmapped.map((l) => l.name), ["lora_unet_no_such_block_0_proj_in"]);
  assertEquals(unmatchedBase.length, ckpt.entries().length - 4);
  assert(!unmatchedBase.some((e) => e.key === U + "out.2.weight"));
});

Deno.test("a layer whose shape disagrees with its base weight is an error naming both shapes", async () => {
  const conv = await write("bad_conv.safetensors", layer("lora_unet_out_2", 4, [5, 1, 1]));
  await assertRejects(
    () => loadLora(conv).then((l) => pairLayers(l, ckpt)),
    MappingError,
    /bad_conv\.safetensors: layer 'lora_unet_out_2' has shape \[4, 5, 1, 1\] .*but its base weight 'model\.diffusion_model\.out\.2\.weight' in .*micro_sdxl_base\.safetensors has shape \[4, 5, 3, 3\]/,
  );
  const out = await write(
    "bad_out.safetensors",
    layer("lora_unet_middle_block_1_proj_out", 21, [20]),
  );
  const e = await assertRejects(
    () => loadLora(out).then((l) => pairLayers(l, ckpt)),
    MappingError,
    {
      file: out,
      key: "lora_unet_middle_block_1_proj_out",
      tensor: "model.diffusion_model.middle_block.1.proj_out.weight",
    },
  );
  assert(/has shape \[21, 20\] .*has shape \[20, 20\]/.test(e.message), e.message);
  // A q/k/v block has a third of the fused rows.
  const q = "lora_te2_text_model_encoder_layers_3_self_attn_q_proj";
  const ok = await write("q_ok.safetensors", layer(q, 20, [20]));
  assertEquals(pairLayers(await loadLora(ok), ckpt).paired[0].base.rows, 20);
  const fused = await write("q_fused.safetensors", layer(q, 60, [20]));
  await assertRejects(
    () => loadLora(fused).then((l) => pairLayers(l, ckpt)),
    MappingError,
    /q_fused\.safetensors: layer '.*_q_proj' has shape \[60, 20\] .*rows of \('conditioner\.embedders\.1\.model\.transformer\.resblocks\.3\.attn\.in_proj_weight', 0, 3\) \(a \(60, 20\) weight\) .*has shape \[20, 20\]/,
  );
});

Deno.test("a LoRA of which no layer matches is an error", async () => {
  const path = await write(
    "nothing.safetensors",
    layer("lora_unet_no_such_block_proj_in", 10, [10]),
  );
  await assertRejects(() => loadLora(path).then((l) => pairLayers(l, ckpt)), MappingError, {
    file: path,
  });
  await assertRejects(
    () => loadLora(path).then((l) => pairLayers(l, ckpt)),
    MappingError,
    /^no layer of .*nothing\.safetensors matches the base checkpoint .*micro_sdxl_base\.safetensors \(is it an SDXL LoRA\?\)$/,
  );
});

Deno.test("a LoRA for SD1.5 given an SDXL checkpoint is one line naming both and why", async () => {
  // Attention in the first down level exists in SD1.5 only.
  const path = await write(
    "sd15.safetensors",
    layer("lora_unet_down_blocks_0_attentions_0_proj_in", 10, [10]),
  );
  await assertRejects(() => loadLora(path).then((l) => pairLayers(l, ckpt)), MappingError, {
    file: path,
  });
  await assertRejects(
    () => loadLora(path).then((l) => pairLayers(l, ckpt)),
    MappingError,
    /^.*sd15\.safetensors is a LoRA for SD1\.5 \('lora_unet_down_blocks_0_attentions_0_proj_in\.lora_down\.weight' \(attention in the first UNet level\)\) but the base checkpoint .*micro_sdxl_base\.safetensors is SDXL$/,
  );
});

Deno.test("an uneven fused projection fails at pairing, naming the checkpoint", async () => {
  const key = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight";
  const basePath = `${TMP}/uneven_base.safetensors`;
  await writeSafetensors(basePath, [f32(key, [61, 20])]);
  await using uneven = await BaseCheckpoint.open(basePath);
  const lora = await write(
    "q.safetensors",
    layer("lora_te2_text_model_encoder_layers_0_self_attn_v_proj", 20, [20]),
  );
  const e = await assertRejects(
    () => loadLora(lora).then((l) => pairLayers(l, uneven)),
    MappingError,
    { file: basePath, tensor: key },
  );
  assert(e.message.endsWith("shape=(61, 20) is not divisible in 3 chunks"), e.message);
});
