/**
 * The one-line summary of the base weights a LoRA leaves alone.
 *
 * A LoRA usually trains part of the model, so a full SDXL base has hundreds of
 * weights without a LoRA layer. Listing each one (as the original tool does at
 * INFO) buries everything else; the summary names the blocks instead, with
 * runs of consecutive blocks written as ranges (`IN00–IN03`).
 *
 * @module
 */

import type { BaseEntry } from "../base/checkpoint.ts";
import { type BlockLabel, blockOf, compareBlocks } from "./blocks.ts";

/**
 * Writes block labels (in model order) compactly: a run of consecutive `IN`
 * or `OUT` indices becomes a range.
 *
 * @example
 * ```ts
 * import { compactBlocks } from "./untouched.ts";
 * const text = compactBlocks(["TE1", "IN00", "IN01", "IN02", "IN05", "MID", "OUT07", "OUT08"]);
 * if (text !== "TE1, IN00–IN02, IN05, MID, OUT07–OUT08") throw new Error(text);
 * ```
 */
export function compactBlocks(labels: readonly BlockLabel[]): string {
  const parts: string[] = [];
  let run: { family: string; first: BlockLabel; last: BlockLabel; index: number } | undefined;
  const flush = () => {
    if (run) parts.push(run.first === run.last ? run.first : `${run.first}–${run.last}`);
    run = undefined;
  };
  for (const label of labels) {
    const m = label.match(/^(IN|OUT)(\d+)$/);
    if (m && run && run.family === m[1] && Number(m[2]) === run.index + 1) {
      run.last = label;
      run.index++;
      continue;
    }
    flush();
    if (m) run = { family: m[1], first: label, last: label, index: Number(m[2]) };
    else parts.push(label);
  }
  flush();
  return parts.join(", ");
}

/**
 * The INFO line for the base weights no LoRA layer modifies: how many, and
 * which blocks are left alone entirely or in part. Empty when every weight has
 * a layer.
 *
 * @param all every base entry a LoRA layer could modify
 * @param untouched the entries no layer of the LoRA modifies
 *
 * @example
 * ```ts
 * import type { BaseEntry } from "../base/checkpoint.ts";
 * import { untouchedSummary } from "./untouched.ts";
 * const entry = (kohyaName: string) => ({ kohyaName }) as BaseEntry;
 * const all = ["lora_te1_a", "lora_unet_input_blocks_1_0_x", "lora_unet_input_blocks_1_0_y"]
 *   .map(entry);
 * const line = untouchedSummary(all, all.slice(0, 2));
 * if (!line.startsWith("2 of 3 base weights have no LoRA layer")) throw new Error(line);
 * if (!line.includes("all of TE1; part of IN01")) throw new Error(line);
 * ```
 */
export function untouchedSummary(
  all: readonly Pick<BaseEntry, "kohyaName">[],
  untouched: readonly Pick<BaseEntry, "kohyaName">[],
): string {
  if (untouched.length === 0) return "";
  const count = (entries: readonly Pick<BaseEntry, "kohyaName">[]) => {
    const n = new Map<BlockLabel, number>();
    for (const e of entries) {
      const block = blockOf(e.kohyaName);
      n.set(block, (n.get(block) ?? 0) + 1);
    }
    return n;
  };
  const total = count(all);
  const left = count(untouched);
  const blocks = [...left.keys()].sort(compareBlocks);
  const whole = blocks.filter((b) => left.get(b) === total.get(b));
  const part = blocks.filter((b) => left.get(b) !== total.get(b));
  const where = [
    ...(whole.length > 0 ? [`all of ${compactBlocks(whole)}`] : []),
    ...(part.length > 0 ? [`part of ${compactBlocks(part)}`] : []),
  ].join("; ");
  return `${untouched.length} of ${all.length} base weights have no LoRA layer ` +
    `(normal for a LoRA that trains part of the model): ${where} (-vv lists each weight)`;
}
