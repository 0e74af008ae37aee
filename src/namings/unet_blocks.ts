/**
 * The UNet's two spellings of one module: the SGM/LDM path of single-file
 * checkpoints (`input_blocks.4.1.proj_in`) and the diffusers path
 * (`down_blocks.1.attentions.0.proj_in`), both with dots written as
 * underscores, as LoRA layer names write them.
 *
 * The correspondence follows from the block layout: each down level has two
 * resnets (and two attentions where the level has attention) and, except the
 * last level, a downsampler; each up level has three of each and, except the
 * last, an upsampler. SGM numbers the blocks in one flat list per direction,
 * so down level `i`'s module `j` is `input_blocks.(3i+j+1)` and up level
 * `i`'s is `output_blocks.(3i+j)`. Inside a block, `.0` is the resnet and `.1`
 * the attention; an up level's upsampler comes after both (`.2`), or after
 * the resnet alone (`.1`) in a level without attention — the one place where
 * SDXL and SD1.5 differ for the same diffusers name (`up_blocks.0`).
 *
 * @module
 */

/** The model families resize-lora knows the layout of. */
export type Architecture = "sdxl" | "sd15";

/** Every {@link Architecture}, in a fixed order. */
export const ARCHITECTURES: readonly Architecture[] = ["sdxl", "sd15"];

/** How people name an architecture. */
export const ARCHITECTURE_LABELS: Readonly<Record<Architecture, string>> = {
  sdxl: "SDXL",
  sd15: "SD1.5",
};

/** Which down levels have attention (the up levels mirror them). */
const ATTENTION: Readonly<Record<Architecture, readonly boolean[]>> = {
  sdxl: [false, true, true],
  sd15: [true, true, true, false],
};

/** Resnet module names: SGM → diffusers. */
const RESNET: readonly (readonly [string, string])[] = [
  ["in_layers_0", "norm1"],
  ["in_layers_2", "conv1"],
  ["emb_layers_1", "time_emb_proj"],
  ["out_layers_0", "norm2"],
  ["out_layers_3", "conv2"],
  ["skip_connection", "conv_shortcut"],
];

type Kind = "resnet" | "attention" | "exact";

interface Block {
  readonly sgm: string;
  readonly diffusers: string;
  readonly kind: Kind;
}

function layout(arch: Architecture): Block[] {
  const attention = ATTENTION[arch];
  const levels = attention.length;
  const blocks: Block[] = [
    { sgm: "input_blocks_0_0", diffusers: "conv_in", kind: "exact" },
    { sgm: "time_embed_0", diffusers: "time_embedding_linear_1", kind: "exact" },
    { sgm: "time_embed_2", diffusers: "time_embedding_linear_2", kind: "exact" },
    { sgm: "out_0", diffusers: "conv_norm_out", kind: "exact" },
    { sgm: "out_2", diffusers: "conv_out", kind: "exact" },
    { sgm: "middle_block_0", diffusers: "mid_block_resnets_0", kind: "resnet" },
    { sgm: "middle_block_1", diffusers: "mid_block_attentions_0", kind: "attention" },
    { sgm: "middle_block_2", diffusers: "mid_block_resnets_1", kind: "resnet" },
  ];
  if (arch === "sdxl") {
    blocks.push(
      { sgm: "label_emb_0_0", diffusers: "add_embedding_linear_1", kind: "exact" },
      { sgm: "label_emb_0_2", diffusers: "add_embedding_linear_2", kind: "exact" },
    );
  }
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j < 2; j++) {
      const n = 3 * i + j + 1;
      blocks.push({
        sgm: `input_blocks_${n}_0`,
        diffusers: `down_blocks_${i}_resnets_${j}`,
        kind: "resnet",
      });
      if (attention[i]) {
        blocks.push({
          sgm: `input_blocks_${n}_1`,
          diffusers: `down_blocks_${i}_attentions_${j}`,
          kind: "attention",
        });
      }
    }
    if (i < levels - 1) {
      blocks.push({
        sgm: `input_blocks_${3 * i + 3}_0_op`,
        diffusers: `down_blocks_${i}_downsamplers_0_conv`,
        kind: "exact",
      });
    }
  }
  for (let i = 0; i < levels; i++) {
    const hasAttention = attention[levels - 1 - i];
    for (let j = 0; j < 3; j++) {
      const n = 3 * i + j;
      blocks.push({
        sgm: `output_blocks_${n}_0`,
        diffusers: `up_blocks_${i}_resnets_${j}`,
        kind: "resnet",
      });
      if (hasAttention) {
        blocks.push({
          sgm: `output_blocks_${n}_1`,
          diffusers: `up_blocks_${i}_attentions_${j}`,
          kind: "attention",
        });
      }
    }
    if (i < levels - 1) {
      blocks.push({
        sgm: `output_blocks_${3 * i + 2}_${hasAttention ? 2 : 1}_conv`,
        diffusers: `up_blocks_${i}_upsamplers_0_conv`,
        kind: "exact",
      });
    }
  }
  return blocks;
}

/** Blocks by architecture and spelling, keyed by their path prefix (2 to 6 words). */
const INDEX = new Map<string, Map<string, Block>>();
for (const arch of ["sdxl", "sd15"] as const) {
  for (const spelling of ["sgm", "diffusers"] as const) {
    INDEX.set(`${arch} ${spelling}`, new Map(layout(arch).map((b) => [b[spelling], b])));
  }
}

/** The block whose prefix starts the path (the longest such). */
function blockOf(path: string, blocks: ReadonlyMap<string, Block>): Block | undefined {
  const words = path.split("_");
  for (let n = Math.min(6, words.length); n >= 2; n--) {
    const block = blocks.get(words.slice(0, n).join("_"));
    if (block) return block;
  }
  return undefined;
}

function convert(
  path: string,
  arch: Architecture,
  from: "sgm" | "diffusers",
  to: "sgm" | "diffusers",
): string | undefined {
  const block = blockOf(path, INDEX.get(`${arch} ${from}`)!);
  if (!block) return undefined;
  if (path === block[from]) return block.kind === "resnet" ? undefined : block[to];
  if (block.kind === "exact") return undefined;
  const inner = path.slice(block[from].length + 1);
  if (block.kind === "attention") return `${block[to]}_${inner}`;
  const pair = RESNET.find((p) => p[from === "sgm" ? 0 : 1] === inner);
  return pair ? `${block[to]}_${pair[to === "sgm" ? 0 : 1]}` : undefined;
}

/**
 * The SGM path of a UNet module given by its diffusers path (both underscored,
 * without `lora_unet_`), or `undefined` when the path names no module of the
 * architecture's UNet.
 *
 * @example
 * ```ts
 * import { sgmFromDiffusers } from "./unet_blocks.ts";
 * const sgm = sgmFromDiffusers("down_blocks_1_attentions_0_proj_in", "sdxl");
 * if (sgm !== "input_blocks_4_1_proj_in") throw new Error(sgm);
 * if (sgmFromDiffusers("up_blocks_0_upsamplers_0_conv", "sd15") !== "output_blocks_2_1_conv") {
 *   throw new Error("SD1.5's first up level has no attention");
 * }
 * ```
 */
export function sgmFromDiffusers(path: string, arch: Architecture): string | undefined {
  return convert(path, arch, "diffusers", "sgm");
}

/**
 * The diffusers path of a UNet module given by its SGM path (both underscored),
 * or `undefined` when the path names no module of the architecture's UNet.
 *
 * @example
 * ```ts
 * import { diffusersFromSgm } from "./unet_blocks.ts";
 * const d = diffusersFromSgm("output_blocks_2_0_skip_connection", "sdxl");
 * if (d !== "up_blocks_0_resnets_2_conv_shortcut") throw new Error(d);
 * ```
 */
export function diffusersFromSgm(path: string, arch: Architecture): string | undefined {
  return convert(path, arch, "sgm", "diffusers");
}
