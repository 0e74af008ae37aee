/**
 * Which part of SDXL a LoRA layer belongs to, from its name alone.
 *
 * | label | layers |
 * |---|---|
 * | `TE1` | `lora_te1_…` (CLIP-L) |
 * | `TE2` | `lora_te2_…` (CLIP-G) |
 * | `TE` | a text encoder that the name does not identify (`text_model_encoder_N_…` short aliases, SD1 `lora_te_…`) |
 * | `IN00`…`IN08` | UNet `input_blocks.N` (`lora_unet_input_blocks_N_…`, direct `input_blocks_N_…`, short `down_N…`) |
 * | `MID` | UNet `middle_block` (`…middle_block_…`, short `mid_N…`) |
 * | `OUT00`…`OUT08` | UNet `output_blocks.N` (`…output_blocks_N_…`, short `up_N…`) |
 * | `BASE` | the rest of the UNet: `time_embed`, `label_emb`, `out` |
 * | `OTHER` | anything else |
 *
 * Diffusers-style UNet names (`lora_unet_down_blocks_1_attentions_0_…`) are
 * mapped to the SGM block they denote in SDXL's layout.
 *
 * @module
 */

/** A block label: `TE1`, `TE2`, `TE`, `IN04`, `MID`, `OUT02`, `BASE` or `OTHER`. */
export type BlockLabel = string;

const pad = (n: string | number): string => String(Number(n)).padStart(2, "0");

/** SDXL diffusers → SGM block index: each level has 2 ResNets and a resampler (3 slots). */
function diffusersBlock(
  side: "down" | "up",
  level: string,
  part: string,
  index: string,
): BlockLabel {
  const base = 3 * Number(level);
  if (side === "down") {
    return `IN${pad(part === "downsamplers" ? base + 3 : base + Number(index) + 1)}`;
  }
  return `OUT${pad(part === "upsamplers" ? base + 2 : base + Number(index))}`;
}

const RULES: readonly [RegExp, (m: RegExpMatchArray) => BlockLabel][] = [
  [/^lora_te1_/, () => "TE1"],
  [/^lora_te2_/, () => "TE2"],
  [/^(?:lora_te_|text_model_encoder_\d)/, () => "TE"],
  [/^(?:lora_unet_)?input_blocks_(\d+)(?:_|$)/, (m) => `IN${pad(m[1])}`],
  [/^(?:lora_unet_)?middle_block(?:_|$)/, () => "MID"],
  [/^(?:lora_unet_)?output_blocks_(\d+)(?:_|$)/, (m) => `OUT${pad(m[1])}`],
  [/^down_(\d+)(?:_|$)/, (m) => `IN${pad(m[1])}`],
  [/^mid_\d+(?:_|$)/, () => "MID"],
  [/^up_(\d+)(?:_|$)/, (m) => `OUT${pad(m[1])}`],
  [
    /^lora_unet_down_blocks_(\d+)_(resnets|attentions|downsamplers)_(\d+)(?:_|$)/,
    (m) => diffusersBlock("down", m[1], m[2], m[3]),
  ],
  [/^lora_unet_mid_block(?:_|$)/, () => "MID"],
  [
    /^lora_unet_up_blocks_(\d+)_(resnets|attentions|upsamplers)_(\d+)(?:_|$)/,
    (m) => diffusersBlock("up", m[1], m[2], m[3]),
  ],
  [/^lora_unet_conv_in(?:_|$)/, () => "IN00"],
  [/^lora_unet_/, () => "BASE"],
  [/^(?:time_embed|label_emb|out)_\d/, () => "BASE"],
];

/**
 * The block of a LoRA layer, from its name.
 *
 * @example
 * ```ts
 * import { blockOf } from "./blocks.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(blockOf("lora_unet_input_blocks_4_1_proj_in"), "IN04");
 * assert.deepEqual(blockOf("lora_unet_middle_block_1_proj_out"), "MID");
 * assert.deepEqual(blockOf("up_2_skip"), "OUT02");
 * assert.deepEqual(blockOf("lora_te2_text_model_encoder_layers_5_mlp_fc1"), "TE2");
 * assert.deepEqual(blockOf("lora_unet_time_embed_0"), "BASE");
 * ```
 */
export function blockOf(layerName: string): BlockLabel {
  for (const [pattern, label] of RULES) {
    const m = layerName.match(pattern);
    if (m) return label(m);
  }
  return "OTHER";
}

/** Sort key: text encoders, then the UNet from input to output, then the rest. */
function blockRank(label: BlockLabel): [number, number] {
  const fixed: Record<string, number> = { TE1: 0, TE2: 1, TE: 2, MID: 4, BASE: 6 };
  if (label in fixed) return [fixed[label], 0];
  const m = label.match(/^(IN|OUT)(\d+)$/);
  if (m) return [m[1] === "IN" ? 3 : 5, Number(m[2])];
  return [7, 0];
}

/**
 * Orders block labels along the model: `TE1`, `TE2`, `TE`, `IN00`…, `MID`,
 * `OUT00`…, `BASE`, `OTHER`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compareBlocks } from "./blocks.ts";
 * const sorted = ["OUT01", "MID", "IN10", "IN02", "TE2"].sort(compareBlocks);
 * assert.deepEqual(sorted, ["TE2", "IN02", "IN10", "MID", "OUT01"]);
 * ```
 */
export function compareBlocks(a: BlockLabel, b: BlockLabel): number {
  const [ga, ia] = blockRank(a);
  const [gb, ib] = blockRank(b);
  return ga - gb || ia - ib || (a < b ? -1 : a > b ? 1 : 0);
}

/**
 * Groups items by the block of their name, in model order (blocks sorted by
 * {@link compareBlocks}; items keep their order inside a block).
 *
 * @example
 * ```ts
 * import { groupByBlock } from "./blocks.ts";
 * import assert from "node:assert/strict";
 * const groups = groupByBlock([{ name: "lora_unet_out_2" }, { name: "lora_te1_x" }]);
 * assert.deepEqual(groups.map((g) => g.block), ["TE1", "BASE"]);
 * ```
 */
export function groupByBlock<T extends { readonly name: string }>(
  items: readonly T[],
): { block: BlockLabel; items: T[] }[] {
  const groups = new Map<BlockLabel, T[]>();
  for (const item of items) {
    const block = blockOf(item.name);
    let group = groups.get(block);
    if (!group) groups.set(block, group = []);
    group.push(item);
  }
  return [...groups.keys()].sort(compareBlocks).map((block) => ({
    block,
    items: groups.get(block)!,
  }));
}
