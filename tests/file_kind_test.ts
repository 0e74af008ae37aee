/**
 * Telling a LoRA from a checkpoint by tensor names: the naming schemes of kohya, PEFT/diffusers and
 * LyCORIS adapters against SGM single-file and diffusers checkpoints, and the fixtures' files.
 */
import { assertEquals } from "./assert.ts";
import { argumentOrderProblem, classifySafetensors, fileKind } from "../src/file_kind.ts";

const FIXTURES = "tests/fixtures";

Deno.test("classifySafetensors: adapters of every naming scheme are LoRAs", () => {
  const adapters: string[][] = [
    // kohya LoRA / LoCon
    [
      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
      "x.lora_up.weight",
      "x.alpha",
    ],
    // PEFT / diffusers
    [
      "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight",
      "unet.down_blocks.1.attentions.0.proj_in.lora_B.weight",
    ],
    // LyCORIS LoHa and LoKr, DoRA
    ["lora_unet_x.hada_w1_a", "lora_unet_x.hada_w1_b", "lora_unet_x.alpha"],
    ["lora_unet_x.lokr_w1", "lora_unet_x.lokr_w2_a", "lora_unet_x.lokr_w2_b"],
    ["lora_unet_x.lora_down.weight", "lora_unet_x.lora_up.weight", "lora_unet_x.dora_scale"],
  ];
  for (const names of adapters) assertEquals(classifySafetensors(names), "lora", names[0]);
});

Deno.test("classifySafetensors: SGM and diffusers checkpoints are checkpoints", () => {
  const models: string[][] = [
    [
      "model.diffusion_model.input_blocks.0.0.weight",
      "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
      "first_stage_model.decoder.conv_in.weight",
    ],
    ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"],
    ["down_blocks.0.resnets.0.conv1.weight", "mid_block.attentions.0.proj_in.weight"],
    ["conv_in.weight", "time_embedding.linear_1.weight", "up_blocks.0.upsamplers.0.conv.weight"],
  ];
  for (const names of models) assertEquals(classifySafetensors(names), "checkpoint", names[0]);
});

Deno.test("classifySafetensors: nothing recognisable, or a tie, is unknown", () => {
  assertEquals(classifySafetensors([]), "unknown");
  assertEquals(classifySafetensors(["encoder.layer.0.weight", "pooler.dense.bias"]), "unknown");
  assertEquals(
    classifySafetensors(["model.diffusion_model.out.2.weight", "lora_unet_out_2.lora_up.weight"]),
    "unknown",
  );
  // A LoRA's text-encoder weight named like a checkpoint's is still a LoRA tensor.
  assertEquals(
    classifySafetensors(["conditioner.embedders.0.x.lora_A.weight", "model.diffusion_model.y"]),
    "unknown",
  );
});

Deno.test("fileKind and argumentOrderProblem on the fixtures", async () => {
  const base = `${FIXTURES}/micro_sdxl_base.safetensors`;
  const lora = `${FIXTURES}/microB-locon-r8c4.safetensors`;
  assertEquals(await fileKind(base), "checkpoint");
  for (const f of ["microA_r8_te", "microB-locon-r8c4", "microC_r8_bf16", "microE_dora_r4"]) {
    assertEquals(await fileKind(`${FIXTURES}/${f}.safetensors`), "lora", f);
  }
  assertEquals(await fileKind(`${FIXTURES}/missing.safetensors`), "unknown");
  assertEquals(await argumentOrderProblem(base, [lora]), undefined);
  assertEquals(
    await argumentOrderProblem(lora, [base]),
    `arguments swapped? the first positional is the base checkpoint, then the LoRAs: ${lora} holds a LoRA and ${base} a full checkpoint`,
  );
  // A file it cannot read is left to the run to report.
  assertEquals(await argumentOrderProblem("missing.safetensors", [lora]), undefined);
});

Deno.test("fileKind leaves a header over 16 MiB, a FIFO and a folder unread and unclassified", async () => {
  const dir = await Deno.makeTempDir({ prefix: "file_kind_test_" });
  try {
    // Declares a 1 GiB header and holds none of it: reading it would fail, classifying it cost.
    const path = `${dir}/huge.safetensors`;
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, 2n ** 30n, true);
    await Deno.writeFile(path, bytes);
    assertEquals(await fileKind(path), "unknown");
    await Deno.writeFile(`${dir}/short.safetensors`, new Uint8Array(3));
    assertEquals(await fileKind(`${dir}/short.safetensors`), "unknown");
    // A FIFO is not opened (that would wait for a writer), nor a folder.
    await new Deno.Command("mkfifo", { args: [`${dir}/fifo.safetensors`] }).output();
    assertEquals(await fileKind(`${dir}/fifo.safetensors`), "unknown");
    assertEquals(await fileKind(dir), "unknown");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
