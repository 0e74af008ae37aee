/**
 * The report's charts: Vega-Lite specs for the kept rank per block and per layer and the
 * singular-value spectra (the size ↔ error chart is `trade_off_chart.ts`). `html.ts` renders them.
 *
 * @module
 */

import type { TopLevelSpec } from "vega-lite";
import type { LayerSummary, OutputSummary } from "../summary.ts";
import { compareBlocks, groupByBlock } from "./blocks.ts";
import { summarizeByBlock } from "./dry_run.ts";

/** Bytes per MiB. */
export const MIB = 2 ** 20;
/** Recipe colours (Tableau 10), in recipe order. */
export const RECIPE_COLORS = [
  "#4e79a7",
  "#f28e2b",
  "#59a14f",
  "#e15759",
  "#76b7b2",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];
/** Spectra colours, from the largest to the smallest ‖ΔW‖ of a block. */
const ROLE_COLORS = ["#1b4f8a", "#d9731a", "#8c8c8c", "#2f8f5b", "#a23b72", "#6b5b95"];
export const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
/** Vega-Lite config shared by every chart. */
export const CONFIG = {
  aria: false, // no per-mark aria labels: they would double the SVG size
  font: FONT,
  view: { stroke: "#ddd" },
  axis: { labelFontSize: 11, titleFontSize: 12, titleFontWeight: 600, gridColor: "#eee" },
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 400, titleLimit: 400 },
  title: { fontSize: 14, subtitleFontSize: 11, subtitleColor: "#555", anchor: "start" },
} as const;

/** A Vega-Lite chart. */
export type Spec = TopLevelSpec;

/** One recipe's output, as the charts label and colour it. */
export interface Labelled {
  readonly output: OutputSummary;
  /** `r1`, `r2`, … */
  readonly id: string;
  /** `r1: fro_ckpt=1,thr=-3.5` */
  readonly label: string;
  readonly color: string;
}

/** Recipe labels and their colours, shared by every chart of a LoRA. */
export interface ColorScale {
  readonly domain: string[];
  readonly range: string[];
}

export function blockShareSpec(
  recipes: readonly Labelled[],
  colorScale: ColorScale,
): Spec {
  const values = recipes.flatMap((r) =>
    summarizeByBlock(r.output.layers).blocks.map((b) => ({
      recipe: r.label,
      block: b.block,
      share: b.rankBefore > 0 ? (100 * b.rankAfter) / b.rankBefore : 0,
    }))
  );
  const blocks = [...new Set(values.map((v) => v.block))].sort(compareBlocks);
  return {
    config: CONFIG,
    width: Math.max(300, Math.min(560, blocks.length * recipes.length * 12)),
    height: 360,
    title: { text: "Kept rank per block", subtitle: "rank after / rank before" },
    data: { values },
    mark: { type: "bar" },
    encoding: {
      x: {
        field: "block",
        type: "nominal" as const,
        sort: blocks,
        title: "Block",
        axis: { labelAngle: -45 },
      },
      xOffset: { field: "recipe", type: "nominal" as const, sort: colorScale.domain },
      y: {
        field: "share",
        type: "quantitative" as const,
        title: "Kept rank (%)",
        scale: { domain: [0, 100] },
      },
      color: {
        field: "recipe",
        type: "nominal" as const,
        title: "Recipe",
        scale: colorScale,
        legend: { orient: "bottom", direction: "vertical" },
      },
    },
  };
}

/** Bars per layer, one small chart per block (width ∝ its layer count), shared y. */
export function layerRankSpec(recipe: Labelled): Spec {
  const groups = groupByBlock(recipe.output.layers);
  const total = recipe.output.layers.length;
  const perLayer = Math.max(1, Math.min(14, (1180 - 34 * groups.length) / Math.max(1, total)));
  const maxDims = Math.max(1, ...recipe.output.layers.map((l) => l.dims));
  const y = {
    type: "quantitative" as const,
    scale: { domain: [0, maxDims] },
  };
  return {
    config: { ...CONFIG, concat: { spacing: 4 } },
    title: { text: `Kept rank per layer — ${recipe.label}` },
    resolve: { scale: { y: "shared" } },
    hconcat: groups.map(({ block, items }, g) => ({
      width: Math.max(30, Math.round(items.length * perLayer)),
      height: 130,
      data: {
        values: items.map((l, i) => ({ layer: i, name: l.name, dims: l.dims, kept: l.kept })),
      },
      encoding: {
        x: {
          field: "layer",
          type: "ordinal",
          // The block label as the axis title: aligned in every group.
          axis: {
            title: block,
            titleFontSize: 10,
            titlePadding: 4,
            labels: false,
            ticks: false,
            domain: false,
          },
          scale: { paddingInner: perLayer > 3 ? 0.15 : 0 },
        },
      },
      layer: [
        {
          mark: { type: "bar", color: "#d9dce2" },
          encoding: {
            y: { ...y, field: "dims", axis: g === 0 ? { title: "Rank", tickCount: 4 } : null },
          },
        },
        {
          mark: { type: "bar", color: recipe.color },
          encoding: {
            y: { ...y, field: "kept", axis: g === 0 ? { title: "Rank", tickCount: 4 } : null },
          },
        },
      ],
    })),
  };
}

interface Spectra {
  readonly points: SpectrumPoint[];
  /** Role names in order, from the largest ‖ΔW‖ down. */
  readonly roles: string[];
  /** σ divided by the base weight's Frobenius norm (known for every layer). */
  readonly normalised: boolean;
}

interface SpectrumPoint {
  block: string;
  layer: string;
  role: string;
  index: number;
  value: number;
  /** `value` when the dimension is kept, else null (breaks the kept line). */
  keptValue: number | null;
  kept: boolean;
  /** Draw a dot (small spectra only: dots for hundreds of dims would bloat the page). */
  dot: boolean;
}

/** Layers with at most this many singular values get a dot per value. */
const MAX_DOTS = 32;

/** The spectra of up to `perBlock` layers per block: largest, median, smallest energy. */
export function spectraData(
  layers: readonly LayerSummary[],
  output: OutputSummary,
  perBlock: number,
): Spectra {
  const normalised = layers.length > 0 &&
    layers.every((l) => l.baseFrobenius !== undefined && l.baseFrobenius > 0);
  const scaleOf = (l: LayerSummary) => normalised ? l.baseFrobenius! : 1;
  const keptOf = new Map(output.layers.map((l) => [l.name, new Set(l.keep)]));
  const points: SpectrumPoint[] = [];
  for (const { block, items } of groupByBlock(layers)) {
    const size = (l: LayerSummary) => energy(l) / scaleOf(l) ** 2;
    const bySize = [...items].sort((a, b) => size(b) - size(a));
    for (const [role, layer] of pickSpread(bySize, perBlock)) {
      const kept = keptOf.get(layer.name);
      layer.sigma.forEach((s, i) => {
        if (!(s > 0)) return; // log scale
        points.push({
          block,
          layer: layer.name,
          role: roleName(role, perBlock),
          index: i + 1,
          value: s / scaleOf(layer),
          keptValue: kept?.has(i) ? s / scaleOf(layer) : null,
          kept: kept?.has(i) ?? false,
          dot: layer.sigma.length <= MAX_DOTS,
        });
      });
    }
  }
  const roles = Array.from({ length: perBlock }, (_, i) => roleName(i, perBlock))
    .filter((r) => points.some((p) => p.role === r));
  return { points, roles, normalised };
}

/** Up to n items spread over a list sorted by energy, each with its role index (0 … n−1). */
function pickSpread<T>(sorted: readonly T[], n: number): [number, T][] {
  const count = Math.min(n, sorted.length);
  const picked: [number, T][] = [];
  for (let k = 0; k < count; k++) {
    const f = count === 1 ? 0 : k / (count - 1);
    picked.push([Math.round(f * (n - 1)), sorted[Math.round(f * (sorted.length - 1))]]);
  }
  return picked;
}

function roleName(role: number, n: number): string {
  if (role === 0) return "largest";
  if (role === n - 1) return "smallest";
  if (2 * role === n - 1) return "median";
  return `#${role + 1} of ${n}`;
}

function energy(layer: LayerSummary): number {
  let e = 0;
  for (const s of layer.sigma) e += s * s;
  return e;
}

export function spectraSpec({ points, roles, normalised }: Spectra): Spec {
  const blocks = [...new Set(points.map((p) => p.block))].sort(compareBlocks);
  const color = {
    field: "role",
    type: "nominal" as const,
    title: normalised ? ["Layer, by", "‖ΔW‖_F / ‖W_base‖_F"] : ["Layer, by ‖ΔW‖_F"],
    sort: roles,
    scale: { domain: roles, range: roles.map((_, i) => ROLE_COLORS[i % ROLE_COLORS.length]) },
  };
  const x = {
    field: "index",
    type: "quantitative" as const,
    title: "Singular value index i",
    scale: { zero: false, nice: false },
    axis: { tickMinStep: 1, format: "d" },
  };
  const y = {
    field: "value",
    type: "quantitative" as const,
    title: normalised ? "σᵢ / ‖W_base‖_F" : "σᵢ (base norm unknown)",
    scale: { type: "log" as const },
    axis: { format: "~e", tickCount: 4 },
  };
  return {
    config: {
      ...CONFIG,
      facet: { spacing: 14 },
      header: { labelFontSize: 12, labelFontWeight: 600 },
    },
    title: {
      text: "Singular-value spectra",
      subtitle: normalised
        ? "σᵢ of ΔW relative to the Frobenius norm of the base weight, log scale"
        : "σᵢ of ΔW, log scale (no base norms were computed)",
    },
    data: { values: points },
    facet: { field: "block", type: "nominal" as const, sort: blocks, title: null },
    columns: 5,
    resolve: { scale: { x: "independent" } },
    spec: {
      width: 210,
      height: 130,
      layer: [
        {
          mark: { type: "line", strokeWidth: 1, opacity: 0.6 },
          encoding: { x, y, color, detail: { field: "layer" } },
        },
        {
          mark: { type: "line", strokeWidth: 2.6, invalid: "break-paths-show-domains" as const },
          encoding: { x, y: { ...y, field: "keptValue" }, color, detail: { field: "layer" } },
        },
        {
          transform: [{ filter: "datum.dot" }],
          mark: { type: "point", size: 22, strokeWidth: 1.2, opacity: 1 },
          encoding: {
            x,
            y,
            color,
            detail: { field: "layer" },
            fill: {
              condition: {
                test: "datum.kept",
                field: "role",
                type: "nominal" as const,
                scale: color.scale,
              },
              value: "white",
            },
          },
        },
      ],
    },
  };
}
