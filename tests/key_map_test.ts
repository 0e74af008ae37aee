import { assert, assertEquals } from "./assert.ts";
import { loraNamesForBaseKey } from "../src/base/key_map.ts";

/** Full-size SDXL 1.0 shapes (conformance `sdxl_keys.json`). */
const SDXL: Record<string, { dtype: string; shape: number[] }> = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/sdxl_keys.json", import.meta.url)),
).tensors;

const U = "model.diffusion_model.";
const TE1 = "conditioner.embedders.0.transformer.text_model.encoder.layers.";
const TE2 = "conditioner.embedders.1.model.transformer.resblocks.";

function names(key: string) {
  const entry = SDXL[key];
  assert(entry, `${key} is not an SDXL key`);
  return loraNamesForBaseKey(key, entry.shape);
}

/** One real key per naming rule: [key, standard, short alias, direct]. */
const UNET_CASES: [string, string, string | undefined, string][] = [
  ["input_blocks.0.0.weight", "lora_unet_input_blocks_0_0", "down_0", "input_blocks_0_0"],
  [
    "input_blocks.1.0.in_layers.2.weight",
    "lora_unet_input_blocks_1_0_in_layers_2",
    "down_1_in",
    "input_blocks_1_0_in_layers_2",
  ],
  [
    "input_blocks.1.0.out_layers.3.weight",
    "lora_unet_input_blocks_1_0_out_layers_3",
    "down_1_out",
    "input_blocks_1_0_out_layers_3",
  ],
  [
    "input_blocks.1.0.emb_layers.1.weight",
    "lora_unet_input_blocks_1_0_emb_layers_1",
    "down_1_emb",
    "input_blocks_1_0_emb_layers_1",
  ],
  ["input_blocks.3.0.op.weight", "lora_unet_input_blocks_3_0_op", "down_3", "input_blocks_3_0_op"],
  // Input blocks have no `_skip` suffix: only output blocks get one.
  [
    "input_blocks.4.0.skip_connection.weight",
    "lora_unet_input_blocks_4_0_skip_connection",
    "down_4",
    "input_blocks_4_0_skip_connection",
  ],
  [
    "input_blocks.4.1.proj_in.weight",
    "lora_unet_input_blocks_4_1_proj_in",
    "down_4",
    "input_blocks_4_1_proj_in",
  ],
  [
    "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
    "down_4",
    "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
  ],
  [
    "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
    "down_4",
    "input_blocks_4_1_transformer_blocks_0_attn2_to_k",
  ],
  [
    "input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.weight",
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0",
    "down_4",
    "input_blocks_4_1_transformer_blocks_0_attn1_to_out_0",
  ],
  [
    "input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight",
    "lora_unet_input_blocks_4_1_transformer_blocks_0_ff_net_0_proj",
    "down_4",
    "input_blocks_4_1_transformer_blocks_0_ff_net_0_proj",
  ],
  [
    "middle_block.0.in_layers.2.weight",
    "lora_unet_middle_block_0_in_layers_2",
    "mid_0_in",
    "middle_block_0_in_layers_2",
  ],
  [
    "middle_block.0.emb_layers.1.weight",
    "lora_unet_middle_block_0_emb_layers_1",
    "mid_0_emb",
    "middle_block_0_emb_layers_1",
  ],
  [
    "middle_block.1.proj_out.weight",
    "lora_unet_middle_block_1_proj_out",
    "mid_1",
    "middle_block_1_proj_out",
  ],
  [
    "output_blocks.0.0.skip_connection.weight",
    "lora_unet_output_blocks_0_0_skip_connection",
    "up_0_skip",
    "output_blocks_0_0_skip_connection",
  ],
  [
    "output_blocks.0.0.in_layers.2.weight",
    "lora_unet_output_blocks_0_0_in_layers_2",
    "up_0_in",
    "output_blocks_0_0_in_layers_2",
  ],
  [
    "output_blocks.2.2.conv.weight",
    "lora_unet_output_blocks_2_2_conv",
    "up_2",
    "output_blocks_2_2_conv",
  ],
  ["time_embed.0.weight", "lora_unet_time_embed_0", undefined, "time_embed_0"],
  ["label_emb.0.0.weight", "lora_unet_label_emb_0_0", undefined, "label_emb_0_0"],
  ["out.2.weight", "lora_unet_out_2", undefined, "out_2"],
];

Deno.test("UNet keys: standard kohya name, short alias, direct name, one key per rule", () => {
  for (const [path, standard, short, direct] of UNET_CASES) {
    const n = names(U + path);
    assert(n, path);
    assertEquals(n.standard, standard, path);
    assertEquals(n.short, short, path);
    assertEquals(n.direct, direct, path);
    assertEquals(n.all, [standard, short, direct].filter((x) => x !== undefined), path);
    assertEquals(n.chunks, undefined, path);
  }
});

Deno.test("TE1 keys: lora_te1_ name and text_model_encoder_N_x alias, no direct name", () => {
  const cases: [string, string, string][] = [
    [
      "3.self_attn.k_proj.weight",
      "lora_te1_text_model_encoder_layers_3_self_attn_k_proj",
      "text_model_encoder_3_self_attn",
    ],
    [
      "3.self_attn.out_proj.weight",
      "lora_te1_text_model_encoder_layers_3_self_attn_out_proj",
      "text_model_encoder_3_self_attn",
    ],
    [
      "3.mlp.fc1.weight",
      "lora_te1_text_model_encoder_layers_3_mlp_fc1",
      "text_model_encoder_3_mlp",
    ],
    [
      "11.mlp.fc2.weight",
      "lora_te1_text_model_encoder_layers_11_mlp_fc2",
      "text_model_encoder_11_mlp",
    ],
  ];
  for (const [path, standard, short] of cases) {
    const n = names(TE1 + path);
    assertEquals(n, { standard, short, direct: undefined, all: [standard, short] }, path);
  }
});

Deno.test("TE2 keys: OpenCLIP names → kohya's Hugging Face names", () => {
  const cases: [string, string, string][] = [
    [
      "5.attn.out_proj.weight",
      "lora_te2_text_model_encoder_layers_5_self_attn_out_proj",
      "text_model_encoder_5_attn",
    ],
    [
      "5.mlp.c_fc.weight",
      "lora_te2_text_model_encoder_layers_5_mlp_fc1",
      "text_model_encoder_5_mlp",
    ],
    [
      "31.mlp.c_proj.weight",
      "lora_te2_text_model_encoder_layers_31_mlp_fc2",
      "text_model_encoder_31_mlp",
    ],
  ];
  for (const [path, standard, short] of cases) {
    const n = names(TE2 + path);
    assertEquals(n, { standard, short, direct: undefined, all: [standard, short] }, path);
  }
});

Deno.test("TE2 fused in_proj_weight splits into q, k, v (chunks 0, 1, 2), with no alias", () => {
  const n = names(TE2 + "5.attn.in_proj_weight");
  const stem = "lora_te2_text_model_encoder_layers_5_self_attn";
  const parts = [`${stem}_q_proj`, `${stem}_k_proj`, `${stem}_v_proj`];
  assertEquals(n, { chunks: parts, all: parts });
  assertEquals(SDXL[TE2 + "5.attn.in_proj_weight"].shape, [3840, 1280]);
});

Deno.test("keys that take no part in mapping", () => {
  const unmapped = [
    // VAE, even a 4-D conv weight
    "first_stage_model.encoder.conv_in.weight",
    "first_stage_model.decoder.conv_out.weight",
    // 1-D: norms and biases
    U + "input_blocks.1.0.in_layers.0.weight",
    U + "input_blocks.4.1.norm.weight",
    U + "input_blocks.4.1.proj_in.bias",
    TE1 + "0.layer_norm1.weight",
    TE2 + "0.ln_1.weight",
    TE2 + "0.attn.in_proj_bias",
    "conditioner.embedders.1.model.ln_final.weight",
    // 2-D but outside the encoder layers, or not ending in "weight"
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
    "conditioner.embedders.1.model.token_embedding.weight",
    "conditioner.embedders.1.model.text_projection",
    "conditioner.embedders.1.model.positional_embedding",
    // 0-D
    "conditioner.embedders.1.model.logit_scale",
  ];
  for (const key of unmapped) assertEquals(names(key), undefined, key);
  // The dimension rule is about the shape given, not the key.
  assertEquals(loraNamesForBaseKey(U + "input_blocks.4.1.proj_in.weight", [640]), undefined);
});

Deno.test("every SDXL UNet, CLIP-L and CLIP-G weight matrix has a standard name", () => {
  let split = 0;
  for (const [key, { shape }] of Object.entries(SDXL)) {
    const n = loraNamesForBaseKey(key, shape);
    const isMatrix = shape.length >= 2 && key.endsWith("weight") &&
      [U, TE1, TE2].some((p) => key.startsWith(p));
    assertEquals(n !== undefined, isMatrix, key);
    if (!n) continue;
    if (n.chunks) split++;
    assert(n.standard !== undefined || n.chunks?.length === 3, key);
    for (const name of n.all) assert(!name.includes("."), `${key}: ${name}`);
  }
  assertEquals(split, 32); // one fused in_proj_weight per CLIP-G block
});
