/**
 * Module paths with dots (`transformer_blocks.0.attn1.to_out.0`) from the
 * underscored form LoRA layer names use (`transformer_blocks_0_attn1_to_out_0`).
 * Underscores inside module names make the underscored form ambiguous; the
 * module names of the SD UNets (both spellings) and of CLIP are known, and the
 * longest known name wins.
 *
 * @module
 */

/** Module names of the SD UNets (SGM and diffusers) and CLIP that contain underscores. */
const COMPOUNDS: readonly string[] = [
  "input_blocks",
  "middle_block",
  "output_blocks",
  "time_embed",
  "label_emb",
  "in_layers",
  "out_layers",
  "emb_layers",
  "skip_connection",
  "diffusion_model",
  "down_blocks",
  "mid_block",
  "up_blocks",
  "conv_in",
  "conv_out",
  "conv_norm_out",
  "conv_shortcut",
  "time_emb_proj",
  "time_embedding",
  "add_embedding",
  "linear_1",
  "linear_2",
  "transformer_blocks",
  "proj_in",
  "proj_out",
  "to_q",
  "to_k",
  "to_v",
  "to_out",
  "text_model",
  "self_attn",
  "q_proj",
  "k_proj",
  "v_proj",
  "out_proj",
  "layer_norm1",
  "layer_norm2",
  "final_layer_norm",
  "text_projection",
  "token_embedding",
  "position_embedding",
];

const BY_FIRST = new Map<string, string[][]>();
for (const name of COMPOUNDS) {
  const parts = name.split("_");
  const list = BY_FIRST.get(parts[0]) ?? [];
  list.push(parts);
  list.sort((a, b) => b.length - a.length);
  BY_FIRST.set(parts[0], list);
}

/**
 * The dotted module path of an underscored one.
 *
 * @example
 * ```ts
 * import { dotted } from "./dotted.ts";
 * const d = dotted("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0");
 * if (d !== "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0") throw new Error(d);
 * ```
 */
export function dotted(underscored: string): string {
  const tokens = underscored.split("_");
  const out: string[] = [];
  for (let i = 0; i < tokens.length;) {
    const match = BY_FIRST.get(tokens[i])?.find((parts) =>
      parts.every((p, k) => tokens[i + k] === p)
    );
    const n = match?.length ?? 1;
    out.push(tokens.slice(i, i + n).join("_"));
    i += n;
  }
  return out.join(".");
}
