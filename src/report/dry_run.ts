/**
 * Dry-run plans: what each (LoRA, recipe) output would be, per block.
 *
 * A plan's errors are relative Frobenius errors of the truncated LoRA: over a
 * set of layers, √(Σ dropped σᵢ²) / √(Σ σᵢ²), with σ the scaled singular
 * values (a recipe's `rescale` multiplies every σ, so it cancels).
 *
 * @module
 */

import { fileNameNumber } from "../recipe/pyfloat.ts";
import type { LayerSummary, OutputSummary } from "../summary.ts";
import { type BlockLabel, groupByBlock } from "./blocks.ts";
import { formatBytes, formatCount, formatPercent, formatTable } from "./table.ts";

/** Energy of a layer plan's σ: total and the part its selection drops. */
function layerEnergy(layer: Pick<LayerSummary, "sigma" | "keep">): [number, number] {
  let total = 0;
  for (const s of layer.sigma) total += s * s;
  let kept = 0;
  for (const i of layer.keep) kept += layer.sigma[i] ** 2;
  return [total, Math.max(0, total - kept)];
}

/** One block of a plan. */
export interface BlockSummary {
  /** Block label (see `blocks.ts`). */
  readonly block: BlockLabel;
  /** Resized layers in the block. */
  readonly layers: number;
  /** Σ k (number of singular values) over the block. */
  readonly rankBefore: number;
  /** Σ k′ (kept dimensions) over the block. */
  readonly rankAfter: number;
  /** Relative Frobenius error of the block's truncated layers (0 … 1). */
  readonly relativeError: number;
  /** The block's share of the LoRA's ‖ΔW‖²_F (over the resized layers, 0 … 1). */
  readonly energyShare: number;
}

/** The per-block view of one output. */
export interface BlockBreakdown {
  /** Blocks in model order. */
  readonly blocks: readonly BlockSummary[];
  /** Relative Frobenius error over all layers (equals the output's `relativeError`). */
  readonly relativeError: number;
}

/**
 * Per-block ranks and errors of an output plan.
 *
 * @example
 * ```ts
 * import { summarizeByBlock } from "./dry_run.ts";
 * import assert from "node:assert/strict";
 * const layer = (name: string, sigma: number[], keep: number[]) => ({
 *   name, sigma: new Float64Array(sigma), kept: keep.length, keep,
 * });
 * const s = summarizeByBlock([layer("lora_te1_a", [3, 4], [1]), layer("lora_unet_out_2", [1], [0])]);
 * assert.deepEqual(s.blocks.map((b) => [b.block, b.rankAfter, b.relativeError]), [["TE1", 1, 0.6], ["BASE", 1, 0]]);
 * ```
 */
export function summarizeByBlock(
  layers: readonly Pick<LayerSummary, "name" | "sigma" | "kept" | "keep">[],
): BlockBreakdown {
  let total = 0;
  let dropped = 0;
  const groups = groupByBlock(layers).map(({ block, items }) => {
    let blockTotal = 0;
    let blockDropped = 0;
    for (const layer of items) {
      const [t, d] = layerEnergy(layer);
      blockTotal += t;
      blockDropped += d;
    }
    total += blockTotal;
    dropped += blockDropped;
    return { block, items, blockTotal, blockDropped };
  });
  const blocks = groups.map(({ block, items, blockTotal, blockDropped }) => ({
    block,
    layers: items.length,
    rankBefore: items.reduce((n, l) => n + l.sigma.length, 0),
    rankAfter: items.reduce((n, l) => n + l.kept, 0),
    relativeError: ratio(blockDropped, blockTotal),
    energyShare: total > 0 ? blockTotal / total : 0,
  }));
  return { blocks, relativeError: ratio(dropped, total) };
}

function ratio(dropped: number, total: number): number {
  return total > 0 ? Math.sqrt(dropped / total) : 0;
}

/**
 * A threshold as output file names write it (`th-3.5`, `th-0.82`: two decimals,
 * trailing zeros dropped), `−∞` (all kept), `+∞` (nothing kept), or
 * `none (per-layer rule)` for NaN: kohya's per-layer rules have no threshold.
 *
 * @example
 * ```ts
 * import { formatThreshold } from "./dry_run.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(formatThreshold(-0.8221086981860162), "-0.82");
 * assert.deepEqual(formatThreshold(-Infinity), "−∞");
 * ```
 */
export function formatThreshold(threshold: number): string {
  if (threshold === Infinity) return "+∞";
  if (threshold === -Infinity) return "−∞";
  if (Number.isNaN(threshold)) return "none (per-layer rule)";
  return fileNameNumber(threshold);
}

/**
 * The `--dry_run` text: for each output, its path and exact file size, the
 * threshold, the usable rank before → after and the relative error, then a
 * per-block table.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plan } from "@x/resize-lora";
 * import { formatDryRun } from "@x/resize-lora/report";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await plan({ checkpoint: base, loras: [lora], device: "cpu", normsCache: false });
 * const text = formatDryRun(outputs);
 * assert.ok(text.startsWith(`${lora} · fro_ckpt=1,thr=-3.5\n`));
 * assert.ok(text.includes(`  file size    ${outputs[0].bytes.toLocaleString("en-US")} B`));
 * assert.ok(text.includes(`  usable rank  ${outputs[0].rankBefore.toLocaleString("en-US")} → `));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function formatDryRun(outputs: readonly OutputSummary[]): string {
  return outputs.map(formatOutput).join("\n\n");
}

function formatOutput(output: OutputSummary): string {
  const summary = summarizeByBlock(output.layers);
  const kept = (after: number, before: number) =>
    before > 0 ? ` (${formatPercent(after / before)})` : "";
  const lines = [
    `${output.lora} · ${output.recipe}`,
    `  output       ${output.path}${output.written ? "" : " (not written)"}`,
    `  file size    ${formatBytes(output.bytes)}`,
    `  threshold    ${formatThreshold(output.threshold)}`,
    `  usable rank  ${formatCount(output.rankBefore)} → ${formatCount(output.rankAfter)}${
      kept(output.rankAfter, output.rankBefore)
    } (min(r, out, in′) per resized layer)`,
    `  error        ${formatPercent(output.relativeError)} (relative Frobenius error of ΔW)`,
  ];
  const cut = output.cut;
  if (cut) {
    const target = `target ${cut.targetMiB} MiB`;
    const next = `one more dimension: ${formatBytes(cut.nextBytes)}`;
    lines.push(
      cut.accounting === "file"
        ? `  size cut     file ${formatBytes(cut.realBytes)} ≤ ${target}; ${next}`
        : `  size cut     weights ${
          formatBytes(cut.realBytes)
        } ≥ ${target} (original accounting); ${next}`,
    );
  }
  const rows = summary.blocks.map((b) => [
    b.block,
    String(b.layers),
    formatCount(b.rankBefore),
    formatCount(b.rankAfter),
    b.rankBefore > 0 ? formatPercent(b.rankAfter / b.rankBefore) : "–",
    formatPercent(b.energyShare),
    formatPercent(b.relativeError),
  ]);
  const layers = output.layers.length;
  rows.push([
    "total",
    String(layers),
    formatCount(output.rankBefore),
    formatCount(output.rankAfter),
    output.rankBefore > 0 ? formatPercent(output.rankAfter / output.rankBefore) : "–",
    layers > 0 ? "100.00 %" : "–",
    formatPercent(summary.relativeError),
  ]);
  const table = formatTable(
    [
      { title: "block" },
      { title: "layers", align: "right" },
      { title: "rank before", align: "right" },
      { title: "rank after", align: "right" },
      { title: "kept", align: "right" },
      { title: "energy", align: "right" },
      { title: "error", align: "right" },
    ],
    rows,
  );
  return [...lines, "", ...table.split("\n").map((l) => `  ${l}`)].join("\n");
}
