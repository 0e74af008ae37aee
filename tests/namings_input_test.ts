/**
 * Reading LoRA files in every naming: what is refused (one line each), what
 * PEFT's alphas come from, and what passes through.
 */

import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertRelClose } from "./assert.ts";
import { LoraError } from "../src/errors.ts";
import { readLoraFile } from "../src/lora/lora_file.ts";
import { loraArchitecture } from "../src/namings/mod.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";

const TMP = await Deno.makeTempDir({ prefix: "namings_input_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

// ------------------------------------------------------------------ bad input, one line each

async function writeTensors(
  name: string,
  specs: [string, "F32" | "F8_E4M3" | "I8", number[]][],
): Promise<string> {
  const dir = join(TMP, name);
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, "lora.safetensors");
  await writeSafetensors(
    path,
    specs.map(([n, dtype, shape]) => ({
      name: n,
      dtype,
      shape,
      // Scalars (alphas) hold 1.0; factors hold bytes of ones (only their shapes matter here).
      data: shape.length === 0
        ? new Uint8Array(new Float32Array([1]).buffer)
        : new Uint8Array(shape.reduce((a, b) => a * b, 1) * (dtype === "F32" ? 4 : 1)).fill(1),
    })),
  );
  return path;
}

Deno.test("two layers of one file that modify the same weight are one error naming both keys", async () => {
  const path = await writeTensors("duplicate", [
    ["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "F32", [2, 10]],
    ["lora_unet_input_blocks_4_1_proj_in.lora_up.weight", "F32", [10, 2]],
    ["unet.down_blocks.1.attentions.0.proj_in.lora_A.weight", "F32", [2, 10]],
    ["unet.down_blocks.1.attentions.0.proj_in.lora_B.weight", "F32", [10, 2]],
  ]);
  await assertRejects(
    () => readLoraFile(path),
    LoraError,
    /^.*duplicate\/lora\.safetensors: layers 'lora_unet_input_blocks_4_1_proj_in' \(kohya\) and 'unet\.down_blocks\.1\.attentions\.0\.proj_in' \(peft\) both modify 'lora_unet_input_blocks_4_1_proj_in'$/,
  );
  await assertRejects(() => readLoraFile(path), LoraError, {
    file: path,
    key: "unet.down_blocks.1.attentions.0.proj_in",
  });
});

Deno.test("an adapter_config.json that is not JSON is one error naming it", async () => {
  const path = await writeTensors("bad_config", [
    ["unet.mid_block.attentions.0.proj_in.lora_A.weight", "F32", [2, 20]],
    ["unet.mid_block.attentions.0.proj_in.lora_B.weight", "F32", [20, 2]],
  ]);
  await Deno.writeTextFile(join(TMP, "bad_config", "adapter_config.json"), "{ r: 8,");
  const e = await assertRejects(
    () => readLoraFile(path),
    LoraError,
    /bad_config\/adapter_config\.json: not valid JSON/,
  );
  assert(!e.message.includes("\n"));
  await assertRejects(() => readLoraFile(path), LoraError, {
    file: join(TMP, "bad_config", "adapter_config.json"),
  });
});

Deno.test("a PEFT file without alphas or config reads with scale 1 and one warning", async () => {
  const path = await writeTensors("no_config", [
    ["unet.mid_block.attentions.0.proj_in.lora_A.weight", "F32", [2, 20]],
    ["unet.mid_block.attentions.0.proj_in.lora_B.weight", "F32", [20, 2]],
    ["unet.mid_block.attentions.0.proj_out.lora_A.weight", "F32", [4, 20]],
    ["unet.mid_block.attentions.0.proj_out.lora_B.weight", "F32", [20, 4]],
  ]);
  const model = await readLoraFile(path);
  assertEquals(model.layers.map((l) => [l.name, l.factors.scale]), [
    ["lora_unet_middle_block_1_proj_in", 1],
    ["lora_unet_middle_block_1_proj_out", 1],
  ]);
  assertEquals(model.warnings.length, 1);
  assert(
    /2 PEFT layers have no alpha and no adapter_config\.json is beside the file/.test(
      model.warnings[0],
    ),
  );
});

Deno.test("PEFT alphas: an .alpha tensor wins, then alpha_pattern, then lora_alpha; rank_pattern and use_rslora set the scale", async () => {
  const path = await writeTensors("config", [
    ["base_model.model.down_blocks.1.attentions.0.proj_in.lora_A.weight", "F32", [2, 10]],
    ["base_model.model.down_blocks.1.attentions.0.proj_in.lora_B.weight", "F32", [10, 2]],
    ["base_model.model.down_blocks.1.attentions.0.proj_out.lora_A.weight", "F32", [4, 10]],
    ["base_model.model.down_blocks.1.attentions.0.proj_out.lora_B.weight", "F32", [10, 4]],
    ["base_model.model.down_blocks.1.attentions.1.proj_in.lora_A.weight", "F32", [4, 10]],
    ["base_model.model.down_blocks.1.attentions.1.proj_in.lora_B.weight", "F32", [10, 4]],
    ["base_model.model.down_blocks.1.attentions.1.proj_in.alpha", "F32", []],
  ]);
  await Deno.writeTextFile(
    join(TMP, "config", "adapter_config.json"),
    JSON.stringify({
      r: 4,
      lora_alpha: 8,
      alpha_pattern: { "attentions.0.proj_in": 6 },
      rank_pattern: { "attentions\\.0\\.proj_in": 2 },
    }),
  );
  const scales = (await readLoraFile(path)).layers.map((l) => [l.name, l.factors.scale]);
  assertEquals(scales, [
    ["lora_unet_input_blocks_4_1_proj_in", 6 / 2], // alpha_pattern / rank_pattern
    ["lora_unet_input_blocks_4_1_proj_out", 8 / 4], // lora_alpha / r
    ["lora_unet_input_blocks_5_1_proj_in", 1 / 4], // the stored alpha (1.0 as F32 ones) / rank
  ]);
  await Deno.writeTextFile(
    join(TMP, "config", "adapter_config.json"),
    JSON.stringify({ r: 4, lora_alpha: 8, use_rslora: true }),
  );
  const rs = (await readLoraFile(path)).layers[1].factors.scale;
  assertRelClose(rs, 8 / Math.sqrt(4), 1e-15);
});

Deno.test("an unsupported dtype in a LoRA factor is one error naming the layer and the tensor", async () => {
  for (const dtype of ["F8_E4M3", "I8"] as const) {
    const path = await writeTensors(`dtype_${dtype}`, [
      ["unet.mid_block.attentions.0.proj_in.lora_A.weight", dtype, [2, 20]],
      ["unet.mid_block.attentions.0.proj_in.lora_B.weight", "F32", [20, 2]],
    ]);
    await assertRejects(
      () => readLoraFile(path),
      LoraError,
      new RegExp(
        `^.*lora\\.safetensors: layer 'unet\\.mid_block\\.attentions\\.0\\.proj_in': tensor 'unet\\.mid_block\\.attentions\\.0\\.proj_in\\.lora_A\\.weight' has dtype ${dtype}, expected F16, BF16, F32 or F64$`,
      ),
    );
  }
});

Deno.test("a tensor that belongs to no layer in any naming passes through", async () => {
  const path = await writeTensors("orphans", [
    ["unet.mid_block.attentions.0.proj_in.lora_A.weight", "F32", [2, 20]],
    ["unet.mid_block.attentions.0.proj_in.lora_B.weight", "F32", [20, 2]],
    ["transformer.single_blocks.0.linear1.lora_A.weight", "F32", [2, 4]],
    ["transformer.single_blocks.0.linear1.lora_B.weight", "F32", [4, 2]],
    ["unet.mid_block.attentions.0.proj_out.lora_A.weight", "F32", [2, 20]],
  ]);
  const model = await readLoraFile(path);
  assertEquals(model.layers.map((l) => l.key), ["unet.mid_block.attentions.0.proj_in"]);
  assertEquals(model.passThrough.map((t) => t.name), [
    "transformer.single_blocks.0.linear1.lora_A.weight",
    "transformer.single_blocks.0.linear1.lora_B.weight",
    "unet.mid_block.attentions.0.proj_out.lora_A.weight",
  ]);
});

Deno.test("a LoRA's architecture: cross-attention width first, then names only one architecture has, else none", () => {
  const t = (name: string, shape: number[] = [4, 8]) => ({ name, shape });
  const sd15Name = t("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight");
  const sdxlName = t("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight");
  const kv = (width: number) =>
    t("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight", [4, width]);
  assertEquals(loraArchitecture([sd15Name])?.architecture, "sd15");
  assertEquals(loraArchitecture([sdxlName])?.architecture, "sdxl");
  assertEquals(loraArchitecture([sd15Name, sdxlName]), undefined); // they disagree: no claim
  assertEquals(loraArchitecture([sd15Name, sdxlName, kv(2048)])?.architecture, "sdxl");
  assertEquals(
    loraArchitecture([kv(768)])?.evidence,
    `'${kv(768).name}' (cross-attention input 768)`,
  );
  assertEquals(loraArchitecture([kv(1024)]), undefined); // SD2's width: neither
  assertEquals(
    loraArchitecture([t("lora_unet_input_blocks_4_1_proj_in.lora_down.weight")]),
    undefined,
  );
});
