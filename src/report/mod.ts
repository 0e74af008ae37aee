/**
 * `@x/resize-lora/report`: the text views of a plan or an inspection — the `--dry_run` text, the
 * `inspect` tables — and the block summaries behind them and the HTML report.
 *
 * @example
 * ```ts
 * import { blockOf, formatThreshold } from "@x/resize-lora/report";
 * if (blockOf("lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_q") !== "OUT02") {
 *   throw new Error("block");
 * }
 * if (formatThreshold(-Infinity) !== "−∞") throw new Error("threshold");
 * ```
 *
 * @module
 */

export { type BlockLabel, blockOf, compareBlocks, groupByBlock } from "./blocks.ts";
export {
  type BlockBreakdown,
  type BlockSummary,
  formatDryRun,
  formatThreshold,
  summarizeByBlock,
} from "./dry_run.ts";
export { EFFECTIVE_RANK_FRACTION, effectiveRank, formatInspectTable } from "./inspect.ts";
export { externalReferences } from "./html.ts";
