/**
 * The HTML report: one self-contained file (inline SVG and CSS, no script,
 * no font or image to fetch) showing, per LoRA,
 *
 * - the size ↔ error trade-off of each recipe's scoring, with the recipe's
 *   choice marked;
 * - kept rank per block and per layer;
 * - singular-value spectra of a few layers of each block, relative to the
 *   base weight's Frobenius norm, with the kept dimensions filled.
 *
 * Charts are Vega-Lite specs rendered to SVG server-side; Vega is imported
 * only when a report is rendered, so the rest of the tool never loads it.
 *
 * @module
 */

import type { TopLevelSpec } from "vega-lite";
import type { LayerSummary, OutputSummary } from "../summary.ts";
import { compareBlocks, groupByBlock } from "./blocks.ts";
import { formatThreshold, summarizeByBlock } from "./dry_run.ts";
import { formatBytes, formatCount, formatMiB, formatPercent } from "./table.ts";

/**
 * What {@link renderReport} shows.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plan, renderReport, type ReportData } from "@x/resize-lora";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await plan({ checkpoint: base, loras: [lora], device: "cpu", normsCache: false });
 * const data: ReportData = { outputs, title: "My LoRA", footer: "made in a doc example" };
 * const html = await renderReport(data);
 * assert.ok(html.includes("<title>My LoRA</title>") && html.includes("made in a doc example"));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface ReportData {
  /**
   * Outputs of `plan()` or `resize()`, any LoRAs and recipes; run with
   * `curve: true` for the trade-off curves (without, only the chosen points
   * are drawn).
   */
  readonly outputs: readonly OutputSummary[];
  /** The base checkpoint, named in the header. */
  readonly checkpoint?: string;
  /** Page title (default `resize-lora report`). */
  readonly title?: string;
  /** Layers per block whose spectrum is drawn (default 3: largest, median and smallest ‖ΔW‖). */
  readonly spectraPerBlock?: number;
  /** A line for the footer (e.g. the tool and its version). */
  readonly footer?: string;
}

const MIB = 2 ** 20;
/** Recipe colours (Tableau 10), in recipe order. */
const RECIPE_COLORS = [
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
const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
const CONFIG = {
  aria: false, // no per-mark aria labels: they would double the SVG size
  font: FONT,
  view: { stroke: "#ddd" },
  axis: { labelFontSize: 11, titleFontSize: 12, titleFontWeight: 600, gridColor: "#eee" },
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 400, titleLimit: 400 },
  title: { fontSize: 14, subtitleFontSize: 11, subtitleColor: "#555", anchor: "start" },
} as const;

type Spec = TopLevelSpec;

/**
 * Renders the report to one self-contained HTML document.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { plan, renderReport } from "@x/resize-lora";
 * import { externalReferences } from "@x/resize-lora/report";
 * import { writeDemoFiles } from "@x/resize-lora/testing";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { outputs } = await plan({
 *   checkpoint: base,
 *   loras: [lora],
 *   recipes: "fro_ckpt=1,thr=-3.5:spn_lora=1,size=0.05",
 *   curve: true,
 *   device: "cpu",
 *   normsCache: false,
 * });
 * const html = await renderReport({ outputs, checkpoint: base });
 * assert.ok(html.includes("<svg")); // charts drawn on the spot
 * assert.deepEqual(externalReferences(html), []); // nothing fetched from the network
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function renderReport(data: ReportData): Promise<string> {
  const [vega, vl] = await Promise.all([import("vega"), import("vega-lite")]);
  const toSvg = async (spec: Spec): Promise<string> => {
    const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
    try {
      return responsiveSvg(await view.toSVG());
    } finally {
      view.finalize();
    }
  };
  const title = data.title ?? "resize-lora report";
  const sections: string[] = [];
  for (const [lora, outputs] of groupBy(data.outputs, (o) => o.lora)) {
    sections.push(await loraSection(`lora${sections.length + 1}`, lora, outputs, data, toSvg));
  }
  const meta = [
    data.checkpoint !== undefined
      ? `Base checkpoint: <code>${escapeHtml(data.checkpoint)}</code>`
      : "",
    `${data.outputs.length} output${data.outputs.length === 1 ? "" : "s"}` +
    (data.outputs.some((o) => o.written) ? "" : " (dry run: nothing written)"),
  ].filter((s) => s !== "").join(" · ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<h1>${escapeHtml(title)}</h1>
<p class="meta">${meta}</p>
${sections.join("\n")}
${data.footer ? `<footer>${escapeHtml(data.footer)}</footer>` : ""}
</main>
</body>
</html>
`;
}

const STYLE = `
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330; font: 14px/1.45 ${FONT}; }
main { max-width: 1340px; margin: 0 auto; padding: 20px 28px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; padding-top: 14px; border-top: 2px solid #d5d9e0; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta, .note { color: #555; margin: 4px 0 10px; }
code { font: 12.5px ui-monospace, 'DejaVu Sans Mono', monospace; background: #eceef2; padding: 0 3px; border-radius: 3px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6eb; text-align: right; white-space: nowrap; }
th { background: #eef0f4; font-weight: 600; }
th:first-child, td:first-child, td.text { text-align: left; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; background: #fff; border: 1px solid #e3e6eb; border-radius: 6px; padding: 10px; width: fit-content; max-width: 100%; box-sizing: border-box; }
figure.wide { margin-top: 14px; }
figcaption { color: #555; font-size: 12.5px; margin-top: 4px; contain: inline-size; }
svg { display: block; max-width: 100%; height: auto; }
footer { color: #888; margin-top: 30px; font-size: 12px; }
`;

/** Vega writes fixed width/height; let CSS scale the drawing down to the page. */
function responsiveSvg(svg: string): string {
  return svg.replace(
    /^<svg([^>]*?) width="([\d.]+)" height="([\d.]+)"/,
    (_m, attrs, w, h) =>
      `<svg${attrs} width="${w}" height="${h}" style="max-width:100%;height:auto"`,
  );
}

interface Labelled {
  readonly output: OutputSummary;
  /** `r1`, `r2`, … */
  readonly id: string;
  /** `r1: fro_ckpt=1,thr=-3.5` */
  readonly label: string;
  readonly color: string;
}

async function loraSection(
  anchor: string,
  lora: string,
  outputs: readonly OutputSummary[],
  data: ReportData,
  toSvg: (spec: Spec) => Promise<string>,
): Promise<string> {
  const recipes: Labelled[] = outputs.map((output, i) => ({
    output,
    id: `r${i + 1}`,
    label: `r${i + 1}: ${output.recipe}`,
    color: RECIPE_COLORS[i % RECIPE_COLORS.length],
  }));
  const colorScale = { domain: recipes.map((r) => r.label), range: recipes.map((r) => r.color) };
  const layers = outputs[0].layers;
  const first = recipes[0];

  const parts = [`<h2 id="${anchor}">${escapeHtml(lora)}</h2>`];
  parts.push(recipeTable(recipes));
  parts.push(`<div class="charts">`);
  parts.push(
    figure(
      await toSvg(curveSpec(recipes, colorScale)),
      recipes.some((r) => r.output.curve)
        ? "Each line is every achievable cut of one recipe's score ranking, from nothing kept (left) to everything kept (right). Dots mark what each recipe chose; dashed lines are size targets."
        : "Only the chosen points: plan with <code>curve: true</code> to draw the whole trade-off.",
    ),
  );
  parts.push(
    figure(
      await toSvg(blockShareSpec(recipes, colorScale)),
      "Kept dimensions over the layers' singular values (Σk′ / Σk), per block.",
    ),
  );
  parts.push(`</div>`);
  parts.push(`<h3 id="${anchor}-blocks">Per block</h3>`, blockTable(recipes));
  if (layers.length === 0) {
    parts.push(`<p class="note">No layer of this LoRA is resized (none pairs with the base).</p>`);
    return `<section>\n${parts.join("\n")}\n</section>`;
  }
  parts.push(`<h3 id="${anchor}-layers">Kept rank per layer</h3>`);
  for (const r of recipes) {
    parts.push(
      figure(
        await toSvg(layerRankSpec(r)),
        `${
          escapeHtml(r.label)
        } — one bar per layer, grouped by block; grey: the layer's rank before, colour: after.`,
        "wide",
      ),
    );
  }
  parts.push(`<h3 id="${anchor}-spectra">Singular-value spectra</h3>`);
  const spectra = spectraData(layers, first.output, data.spectraPerBlock ?? 3);
  parts.push(
    figure(
      await toSvg(spectraSpec(spectra)),
      `Per block, the layers with the largest, median and smallest ‖ΔW‖<sub>F</sub> (relative to the base weight when its norm is known). Thick line and filled dots: dimensions kept by ${
        escapeHtml(first.label)
      }; thin line and hollow dots: dropped.`,
      "wide",
    ),
  );
  return `<section>\n${parts.join("\n")}\n</section>`;
}

function figure(svg: string, caption: string, cls = ""): string {
  return `<figure${
    cls ? ` class="${cls}"` : ""
  }>${svg}<figcaption>${caption}</figcaption></figure>`;
}

function recipeTable(recipes: readonly Labelled[]): string {
  const rows = recipes.map(({ output: o, label, color }) =>
    `<tr><td class="text"><span class="swatch" style="background:${color}"></span>${
      escapeHtml(label)
    }</td><td class="text"><code>${escapeHtml(basename(o.path))}</code></td><td>${
      formatBytes(o.bytes)
    }</td><td>${formatCount(o.rankBefore)} → ${formatCount(o.rankAfter)}</td><td>${
      formatPercent(o.relativeError)
    }</td><td>${escapeHtml(formatThreshold(o.threshold))}</td></tr>`
  );
  return `<table><thead><tr><th>Recipe</th><th>Output file${
    recipes.some((r) => r.output.written) ? "" : " (not written)"
  }</th><th>Size</th><th>Total rank</th><th>Relative error</th><th>Threshold</th></tr></thead><tbody>${
    rows.join("")
  }</tbody></table>`;
}

function blockTable(recipes: readonly Labelled[]): string {
  const summaries = recipes.map((r) => summarizeByBlock(r.output.layers));
  const head = recipes.map((r) =>
    `<th><span class="swatch" style="background:${r.color}"></span>${r.id} rank</th><th>${r.id} error</th>`
  ).join("");
  const rows = summaries[0].blocks.map((b, i) =>
    `<tr><td>${b.block}</td><td>${b.layers}</td><td>${formatPercent(b.energyShare)}</td><td>${
      formatCount(b.rankBefore)
    }</td>${
      summaries.map((s) =>
        `<td>${formatCount(s.blocks[i].rankAfter)}</td><td>${
          formatPercent(s.blocks[i].relativeError)
        }</td>`
      ).join("")
    }</tr>`
  );
  return `<table><thead><tr><th>Block</th><th>Layers</th><th>Energy share</th><th>Rank before</th>${head}</tr></thead><tbody>${
    rows.join("")
  }</tbody></table>`;
}

function curveSpec(
  recipes: readonly Labelled[],
  colorScale: { domain: string[]; range: string[] },
): Spec {
  const curve = recipes.flatMap((r) =>
    (r.output.curve ?? []).map((p) => ({
      recipe: r.label,
      rank: p.rank,
      mib: p.bytes / MIB,
      error: 100 * p.relativeError,
    }))
  );
  const chosen = recipes.map((r) => ({
    recipe: r.label,
    id: r.id,
    mib: r.output.bytes / MIB,
    error: 100 * r.output.relativeError,
    text: `${r.id}: ${formatMiB(r.output.bytes)} MiB, ${formatPercent(r.output.relativeError)}`,
  }));
  const targets = recipes.flatMap((r) =>
    r.output.cut ? [{ recipe: r.label, mib: r.output.cut.targetMiB }] : []
  );
  const x = {
    field: "mib",
    type: "quantitative" as const,
    title: "Output file size (MiB)",
    scale: { zero: true },
  };
  const y = {
    field: "error",
    type: "quantitative" as const,
    title: "Relative Frobenius error of ΔW (%)",
    scale: { domain: [0, 100] },
  };
  const color = {
    field: "recipe",
    type: "nominal" as const,
    title: "Recipe",
    scale: colorScale,
    legend: { symbolType: "stroke", symbolStrokeWidth: 3 },
  };
  return {
    config: CONFIG,
    width: 600,
    height: 360,
    title: {
      text: "Size ↔ error trade-off",
      subtitle: "file size of the resized LoRA vs. the part of ΔW it loses",
    },
    layer: [
      ...(targets.length > 0
        ? [
          {
            data: { values: targets },
            mark: { type: "rule" as const, strokeDash: [4, 4], opacity: 0.7 },
            encoding: { x, color },
          },
        ]
        : []),
      {
        data: { values: curve },
        mark: { type: "line", strokeWidth: 2, interpolate: "linear" },
        encoding: { x, y, color, order: { field: "rank", type: "quantitative" as const } },
      },
      {
        data: { values: chosen },
        mark: {
          type: "point",
          filled: true,
          size: 110,
          stroke: "#222",
          strokeWidth: 1.2,
          opacity: 1,
        },
        encoding: { x, y, color },
      },
      {
        data: { values: chosen },
        mark: { type: "text", align: "left", dx: 9, dy: -9, fontSize: 11, fontWeight: 600 },
        encoding: { x, y, text: { field: "text" } },
      },
    ],
  };
}

function blockShareSpec(
  recipes: readonly Labelled[],
  colorScale: { domain: string[]; range: string[] },
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
function layerRankSpec(recipe: Labelled): Spec {
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
function spectraData(
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

function spectraSpec({ points, roles, normalised }: Spectra): Spec {
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

function groupBy<T, K>(items: readonly T[], key: (item: T) => K): Map<K, T[]> {
  const groups = new Map<K, T[]>();
  for (const item of items) {
    const k = key(item);
    let group = groups.get(k);
    if (!group) groups.set(k, group = []);
    group.push(item);
  }
  return groups;
}

function basename(path: string): string {
  return path.split(/[\\/]/).pop() ?? path;
}

/**
 * What in an HTML document could make a browser fetch something: resource
 * elements, `src`/`href`-like attributes (other than `#fragment` links),
 * CSS `url()` and `@import`. Empty for a self-contained page. (SVG `xmlns`
 * attributes name namespaces; they are not fetched.)
 *
 * @example
 * ```ts
 * import { externalReferences } from "./html.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(externalReferences(`<p><a href="#x">x</a></p>`), []);
 * assert.deepEqual(externalReferences(`<img src="https://e.com/a.png">`).length, 2);
 * ```
 */
export function externalReferences(html: string): string[] {
  const found: string[] = [];
  const elements =
    /<(?:script|link|img|image|iframe|frame|object|embed|audio|video|source|track|use|base)\b[^>]*>/gi;
  for (const m of html.matchAll(elements)) found.push(m[0]);
  const attributes = /\b(?:src|href|srcset|action|poster|data|background)\s*=\s*["']?([^"'\s>]*)/gi;
  for (const m of html.matchAll(attributes)) if (!m[1].startsWith("#")) found.push(m[0]);
  for (const m of html.matchAll(/url\(\s*['"]?([^'")]*)/gi)) {
    if (!m[1].startsWith("#")) found.push(m[0]);
  }
  for (const m of html.matchAll(/@import\b[^;]*/gi)) found.push(m[0]);
  return found;
}

/**
 * Escapes text for HTML content and attribute values.
 *
 * @example
 * ```ts
 * import { escapeHtml } from "./html.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(escapeHtml(`<a href="x">&</a>`), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
 * ```
 */
export function escapeHtml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );
}
