/**
 * The human `inspect` output: a header, block totals and one row per layer, from an
 * {@link InspectResult}.
 *
 * @module
 */

import { EFFECTIVE_RANK_FRACTION, type InspectResult } from "./inspect.ts";
import type { LayerType } from "../lora/lycoris_layers.ts";
import { ARCHITECTURE_LABELS } from "../namings/mod.ts";
import { type Column, formatCount, formatNumber, formatPercent, formatTable } from "./table.ts";

/**
 * The human `inspect` output: a header (file, layers, ranks, parameters, and
 * the planned recipes), block totals, then one row per layer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { inspect } from "@x/resize-lora";
 * import { formatInspectTable } from "@x/resize-lora/report";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const table = formatInspectTable(await inspect({ lora, device: "cpu" }));
 * assert.ok(table.startsWith(`LoRA        ${lora}\n`));
 * assert.match(table, /\ntotal +986 /);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function formatInspectTable(result: InspectResult): string {
  return [
    ...inspectHeader(result),
    "",
    blocksTable(result),
    "",
    layersTable(result),
  ].join("\n");
}

/** The lines above the tables: file, layers, ranks, parameters, and one line per recipe. */
function inspectHeader(result: InspectResult): string[] {
  const header = [
    `LoRA        ${result.lora}`,
    `naming      ${result.namings.join(", ") || "–"}${
      result.architecture ? ` (${ARCHITECTURE_LABELS[result.architecture]})` : ""
    }`,
    `checkpoint  ${
      result.checkpoint ??
        (result.recipes.length > 0
          ? "(none: no base norms)"
          : "(none: no base norms, scores or kept ranks)")
    }`,
    `layers      ${formatCount(result.layerCount)}` +
    (result.zeroLayers > 0 ? ` (${result.zeroLayers} all-zero)` : "") +
    `, stored rank ${formatCount(result.totalRank)}, usable rank ${
      formatCount(result.usableRank)
    }, effective rank ${formatCount(result.effectiveRank)} (σ > ${
      EFFECTIVE_RANK_FRACTION * 100
    } % of σ₁), ${formatCount(result.parameters)} parameters` +
    (result.passThroughTensors > 0
      ? `, ${formatCount(result.passThroughTensors)} other tensors`
      : ""),
  ];
  result.recipes.forEach((r, i) => {
    header.push(
      `recipe r${i + 1}   ${r.recipe}: usable rank ${formatCount(r.rankBefore)} → ${
        formatCount(r.rankAfter)
      }, ${formatCount(r.bytes)} B (${(r.bytes / 2 ** 20).toFixed(3)} MiB), error ${
        formatPercent(r.relativeError)
      }`,
    );
  });

  return header;
}

const keptTitles = (result: InspectResult) => result.recipes.map((_, r) => `kept r${r + 1}`);

/** Block totals, and a total row. */
function blocksTable(result: InspectResult): string {
  const blockColumns: Column[] = [
    { title: "block" },
    { title: "layers", align: "right" },
    { title: "stored rank", align: "right" },
    { title: "usable rank", align: "right" },
    { title: "eff. rank", align: "right" },
    { title: "energy", align: "right" },
    { title: "parameters", align: "right" },
    ...keptTitles(result).map((title) => ({ title, align: "right" as const })),
  ];
  const blockRows = result.blocks.map((b) => [
    b.block,
    formatCount(b.layers),
    formatCount(b.rank),
    formatCount(b.usableRank),
    formatCount(b.effectiveRank),
    formatPercent(b.energyShare),
    formatCount(b.parameters),
    ...b.kept.map(formatCount),
  ]);
  blockRows.push([
    "total",
    formatCount(result.layerCount),
    formatCount(result.totalRank),
    formatCount(result.usableRank),
    formatCount(result.effectiveRank),
    result.layerCount > 0 ? "100.00 %" : "–",
    formatCount(result.parameters),
    ...result.recipes.map((r) => formatCount(r.rankAfter)),
  ]);

  return `${formatTable(blockColumns, blockRows)}\n\n${RANK_NOTE}`;
}

const TYPE_TITLES: Record<LayerType, string> = { lora: "LoRA", loha: "LoHa", lokr: "LoKr" };

/** What the two rank totals mean (inspect, the dry run and the summaries use these words). */
export const RANK_NOTE =
  "stored rank: r as stored in the file; usable rank: min(r, out, in′) per layer, all-zero layers " +
  "excluded (what a resize can keep)";

/** One row per layer. */
function layersTable(result: InspectResult): string {
  const layerColumns: Column[] = [
    { title: "layer" },
    { title: "block" },
    { title: "kind" },
    { title: "type" },
    { title: "shape", align: "right" },
    { title: "rank", align: "right" },
    { title: "alpha", align: "right" },
    { title: "eff.", align: "right" },
    { title: "energy", align: "right" },
    { title: "σ₁", align: "right" },
    ...(result.checkpoint === null ? [] : [{ title: "σ₁/‖W‖_F", align: "right" as const }]),
    ...keptTitles(result).map((title) => ({ title, align: "right" as const })),
  ];
  const layerRows = result.layers.map((l) => [
    l.name,
    l.block,
    l.kind,
    TYPE_TITLES[l.type],
    `${l.out}×${l.inShape.join("×")}`,
    String(l.rank),
    formatNumber(l.alpha),
    String(l.effectiveRank),
    formatPercent(l.energyShare),
    formatNumber(l.sigma1),
    ...(result.checkpoint === null
      ? []
      : [formatNumber(l.baseFrobenius ? l.sigma1 / l.baseFrobenius : null)]),
    ...l.recipes.map((r) => r.kept === null ? "–" : String(r.kept)),
  ]);
  return formatTable(layerColumns, layerRows);
}
