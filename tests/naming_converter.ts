/**
 * A converter written for the tests, independent of the reader in
 * `src/namings/`: the diffusers names of SGM/LDM UNet keys derived the way
 * diffusers' own single-file conversion derives them, and LoRA files written
 * in every naming from one list of layers.
 *
 * The UNet rule follows `convert_ldm_unet_checkpoint` in
 * huggingface/diffusers@11307ce964724348c940e4461f187c884135f7f3,
 * src/diffusers/loaders/single_file_utils.py: input block `i` (≥ 1) is down
 * block `(i-1) // 3`, module `(i-1) % 3`; output block `i` is up block
 * `i // 3`, module `i % 3`; `.0` resnets, `.1` attentions, `op` the
 * downsampler, and an output block's `conv` (at `.1` or `.2`, wherever the
 * keys put it) the upsampler; resnet layers renamed as `renew_resnet_paths`
 * does.
 */

import { join } from "node:path";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";

const RESNET: Record<string, string> = {
  "in_layers.0": "norm1",
  "in_layers.2": "conv1",
  "out_layers.0": "norm2",
  "out_layers.3": "conv2",
  "emb_layers.1": "time_emb_proj",
  "skip_connection": "conv_shortcut",
};

const TOP: Record<string, string> = {
  "time_embed.0": "time_embedding.linear_1",
  "time_embed.2": "time_embedding.linear_2",
  "label_emb.0.0": "add_embedding.linear_1",
  "label_emb.0.2": "add_embedding.linear_2",
  "input_blocks.0.0": "conv_in",
  "out.0": "conv_norm_out",
  "out.2": "conv_out",
};

function resnet(rest: string): string {
  for (const [from, to] of Object.entries(RESNET)) {
    if (rest === from || rest.startsWith(from + ".")) return to + rest.slice(from.length);
  }
  throw new Error(`not a resnet module: ${rest}`);
}

/** The diffusers UNet module path of an SGM one (dotted, without `model.diffusion_model.`). */
export function diffusersUnetPath(sgm: string): string {
  for (const [from, to] of Object.entries(TOP)) {
    if (sgm === from || sgm.startsWith(from + ".")) return to + sgm.slice(from.length);
  }
  let m = /^input_blocks\.(\d+)\.(\d+)\.(.+)$/.exec(sgm);
  if (m) {
    const i = Number(m[1]), block = Math.floor((i - 1) / 3), layer = (i - 1) % 3;
    if (m[3].startsWith("op")) return `down_blocks.${block}.downsamplers.0.conv${m[3].slice(2)}`;
    return m[2] === "0"
      ? `down_blocks.${block}.resnets.${layer}.${resnet(m[3])}`
      : `down_blocks.${block}.attentions.${layer}.${m[3]}`;
  }
  m = /^output_blocks\.(\d+)\.(\d+)\.(.+)$/.exec(sgm);
  if (m) {
    const i = Number(m[1]), block = Math.floor(i / 3), layer = i % 3;
    if (m[3] === "conv" || m[3].startsWith("conv.")) {
      return `up_blocks.${block}.upsamplers.0.conv${m[3].slice(4)}`;
    }
    return m[2] === "0"
      ? `up_blocks.${block}.resnets.${layer}.${resnet(m[3])}`
      : `up_blocks.${block}.attentions.${layer}.${m[3]}`;
  }
  m = /^middle_block\.(\d)\.(.+)$/.exec(sgm);
  if (m) {
    if (m[1] === "1") return `mid_block.attentions.0.${m[2]}`;
    return `mid_block.resnets.${m[1] === "0" ? 0 : 1}.${resnet(m[2])}`;
  }
  throw new Error(`no diffusers name for ${sgm}`);
}

/** A module a test LoRA trains, named by part and path. */
export interface TestModule {
  /** UNet (SGM dotted path), or text encoder 1 / 2 (Hugging Face CLIP path, `text_model.…`). */
  readonly part: "unet" | "te1" | "te2";
  /** The dotted path. */
  readonly path: string;
}

/** One layer of a test LoRA, with its factors as f32. */
export interface TestLayer {
  /** The module. */
  readonly module: TestModule;
  /** Rank. */
  readonly rank: number;
  /** Alpha. */
  readonly alpha: number;
  /** Down factor shape `[r, in, …]` and values. */
  readonly downShape: readonly number[];
  /** Down values. */
  readonly down: Float32Array;
  /** Up factor shape `[out, r(, 1, 1)]`. */
  readonly upShape: readonly number[];
  /** Up values. */
  readonly up: Float32Array;
}

/** The namings the converter writes, in the order the tests run them. */
export const TEST_NAMINGS = [
  "kohya",
  "kohya-diffusers",
  "simpletuner",
  "peft",
  "diffusers",
  "diffusers-attn-procs",
  "comfyui",
] as const;

/** One of {@link TEST_NAMINGS}. */
export type TestNaming = typeof TEST_NAMINGS[number];

const under = (s: string) => s.replaceAll(".", "_");
const TE_KOHYA = { te1: "lora_te1_", te2: "lora_te2_" } as const;
const TE_DOTTED = { te1: "text_encoder.", te2: "text_encoder_2." } as const;
const TE_COMFY = {
  te1: "text_encoders.clip_l.transformer.",
  te2: "text_encoders.clip_g.transformer.",
} as const;

/** The layer name and factor/alpha keys of a module in a naming (`undefined`: it has none there). */
export function keysIn(
  naming: TestNaming,
  m: TestModule,
  arch: "sdxl" | "sd15" = "sdxl",
): { down: string; up: string; alpha?: string } | undefined {
  const kohyaKeys = (name: string) => ({
    down: `${name}.lora_down.weight`,
    up: `${name}.lora_up.weight`,
    alpha: `${name}.alpha`,
  });
  const te = (prefixes: { te1: string; te2: string }, part: "te1" | "te2") =>
    arch === "sd15" && prefixes === TE_KOHYA ? "lora_te_" : prefixes[part];
  switch (naming) {
    case "kohya":
      return kohyaKeys(
        m.part === "unet" ? `lora_unet_${under(m.path)}` : te(TE_KOHYA, m.part) + under(m.path),
      );
    case "kohya-diffusers":
    case "simpletuner": {
      if (m.part !== "unet") return naming === "simpletuner" ? undefined : keysIn("kohya", m, arch);
      const prefix = naming === "simpletuner" ? "lycoris_" : "lora_unet_";
      return kohyaKeys(prefix + under(diffusersUnetPath(m.path)));
    }
    case "comfyui":
      return kohyaKeys(
        m.part === "unet" ? `diffusion_model.${m.path}` : TE_COMFY[m.part] + m.path,
      );
    case "peft":
    case "diffusers": {
      const module = m.part === "unet"
        ? `unet.${diffusersUnetPath(m.path)}`
        : TE_DOTTED[m.part] + m.path;
      return naming === "peft"
        ? { down: `${module}.lora_A.weight`, up: `${module}.lora_B.weight` }
        : { down: `${module}.lora.down.weight`, up: `${module}.lora.up.weight` };
    }
    case "diffusers-attn-procs": {
      const p = m.part === "unet"
        ? /^(.*)\.to_(q|k|v|out)(\.0)?$/.exec(diffusersUnetPath(m.path))
        : null;
      if (!p) return undefined;
      const name = `${p[1]}.processor.to_${p[2]}`;
      return { down: `${name}_lora.down.weight`, up: `${name}_lora.up.weight` };
    }
  }
}

/** Whether a naming stores alpha (the others get alpha/rank folded into the up factor). */
export function storesAlpha(naming: TestNaming): boolean {
  return !["peft", "diffusers", "diffusers-attn-procs"].includes(naming);
}

/**
 * Writes `layers` in a naming to `<dir>/lora.safetensors` (F32 factors); for
 * PEFT, alphas go to an `adapter_config.json` beside it (`lora_alpha` and
 * `alpha_pattern` / `rank_pattern` per module), for diffusers they are folded
 * into the up factors. Layers the naming cannot spell are left out. Returns
 * the file's path and the layers written.
 */
export async function writeInNaming(
  dir: string,
  naming: TestNaming,
  layers: readonly TestLayer[],
  arch: "sdxl" | "sd15" = "sdxl",
): Promise<{ path: string; written: TestLayer[] }> {
  await Deno.mkdir(dir, { recursive: true });
  const tensors: TensorSource[] = [];
  const written: TestLayer[] = [];
  const alphaPattern: Record<string, number> = {}, rankPattern: Record<string, number> = {};
  for (const layer of layers) {
    const keys = keysIn(naming, layer.module, arch);
    if (!keys) continue;
    written.push(layer);
    const f32 = (v: Float32Array) => encodeFloats(v, "F32");
    let up = layer.up;
    if (!storesAlpha(naming) && naming !== "peft") {
      up = up.map((x) => x * layer.alpha / layer.rank);
    }
    tensors.push({
      name: keys.down,
      dtype: "F32",
      shape: [...layer.downShape],
      data: f32(layer.down),
    });
    tensors.push({ name: keys.up, dtype: "F32", shape: [...layer.upShape], data: f32(up) });
    if (keys.alpha) {
      tensors.push({
        name: keys.alpha,
        dtype: "F32",
        shape: [],
        data: f32(new Float32Array([layer.alpha])),
      });
    }
    if (naming === "peft") {
      // PEFT matches patterns against the module path without the part prefix.
      const module = keys.down.slice(0, -".lora_A.weight".length).replace(
        /^(unet|text_encoder(_2)?)\./,
        "",
      );
      alphaPattern[escape(module)] = layer.alpha;
      rankPattern[escape(module)] = layer.rank;
    }
  }
  const path = join(dir, "lora.safetensors");
  await writeSafetensors(path, tensors);
  if (naming === "peft") {
    await Deno.writeTextFile(
      join(dir, "adapter_config.json"),
      JSON.stringify({
        r: 64,
        lora_alpha: 1,
        alpha_pattern: alphaPattern,
        rank_pattern: rankPattern,
      }),
    );
  }
  return { path, written };
}

function escape(module: string): string {
  return module.replaceAll(".", "\\.");
}

/** A seeded uniform generator (mulberry32) for test factors. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A layer for a module of base shape `[out, in(, k, k)]`: random factors of
 * rank `rank`, conv layers as LoCon (`down [r, in, k, k]`, `up [out, r, 1, 1]`).
 */
export function testLayer(
  module: TestModule,
  baseShape: readonly number[],
  rank: number,
  alpha: number,
  next: () => number,
): TestLayer {
  const [out, ...rest] = baseShape;
  const inFlat = rest.reduce((a, b) => a * b, 1);
  const conv = rest.length > 1;
  const values = (n: number) => Float32Array.from({ length: n }, () => 2 * next() - 1);
  return {
    module,
    rank,
    alpha,
    downShape: [rank, ...rest],
    down: values(rank * inFlat),
    upShape: conv ? [out, rank, 1, 1] : [out, rank],
    up: values(out * rank),
  };
}

/** The layers of the test LoRA: attention, projections, feed-forward, resnet linears, LoCon convs, embeddings, both encoders. */
export function sdxlTestLayers(
  baseShape: (key: string) => readonly number[],
): TestLayer[] {
  const next = rng(17);
  const layers: TestLayer[] = [];
  const unet = (path: string, rank: number, alpha: number) =>
    layers.push(
      testLayer(
        { part: "unet", path },
        baseShape(`model.diffusion_model.${path}.weight`),
        rank,
        alpha,
        next,
      ),
    );
  unet("input_blocks.4.1.transformer_blocks.0.attn1.to_q", 4, 2);
  unet("input_blocks.4.1.transformer_blocks.0.attn2.to_k", 3, 3);
  unet("input_blocks.7.1.transformer_blocks.1.attn1.to_out.0", 4, 1);
  unet("input_blocks.5.1.proj_in", 2, 1);
  unet("middle_block.1.proj_out", 4, 4);
  unet("middle_block.1.transformer_blocks.3.ff.net.0.proj", 4, 2);
  unet("output_blocks.2.1.transformer_blocks.1.attn2.to_v", 2, 0.5);
  unet("output_blocks.4.1.transformer_blocks.0.ff.net.2", 3, 1.5);
  unet("input_blocks.1.0.emb_layers.1", 2, 2);
  unet("output_blocks.3.0.skip_connection", 3, 3);
  unet("input_blocks.0.0", 2, 1); // conv_in, LoCon
  unet("input_blocks.3.0.op", 3, 1); // downsampler, LoCon
  unet("input_blocks.4.0.in_layers.2", 4, 2); // resnet conv1, LoCon
  unet("middle_block.2.out_layers.3", 2, 2); // mid resnet conv2, LoCon
  unet("output_blocks.5.2.conv", 3, 1.5); // upsampler, LoCon
  unet("out.2", 2, 1); // conv_out, LoCon
  unet("time_embed.0", 2, 1);
  unet("label_emb.0.0", 3, 1);
  const te = (part: "te1" | "te2", path: string, shape: number[], rank: number, alpha: number) =>
    layers.push(testLayer({ part, path }, shape, rank, alpha, next));
  te("te1", "text_model.encoder.layers.3.self_attn.q_proj", [12, 12], 2, 1);
  te("te1", "text_model.encoder.layers.5.mlp.fc1", [48, 12], 3, 3);
  te("te2", "text_model.encoder.layers.2.self_attn.q_proj", [20, 20], 2, 2); // a q block of in_proj
  te("te2", "text_model.encoder.layers.4.mlp.fc1", [80, 20], 4, 1);
  te("te2", "text_model.encoder.layers.1.self_attn.out_proj", [20, 20], 2, 1);
  return layers;
}
