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

import type { OutputSummary } from "../summary.ts";
import {
  blockShareSpec,
  FONT,
  type Labelled,
  layerRankSpec,
  RECIPE_COLORS,
  type Spec,
  spectraData,
  spectraSpec,
} from "./charts.ts";
import { curveSpec } from "./trade_off_chart.ts";
import { formatThreshold, summarizeByBlock } from "./dry_run.ts";
import { formatBytes, formatCount, formatPercent } from "./table.ts";

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
  /** Progress of the rendering: charts done, total (about a second for a full-size LoRA). */
  readonly onProgress?: (done: number, total: number) => void;
}

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
  const groups = groupBy(data.outputs, (o) => o.lora);
  // Per LoRA: the trade-off and block charts, then (with resized layers) one per recipe and the
  // spectra.
  const charts = [...groups.values()].reduce(
    (n, outputs) => n + 2 + (outputs[0].layers.length > 0 ? outputs.length + 1 : 0),
    0,
  );
  let rendered = 0;
  const toSvg = async (spec: Spec): Promise<string> => {
    const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
    try {
      return responsiveSvg(await view.toSVG());
    } finally {
      view.finalize();
      data.onProgress?.(++rendered, charts);
    }
  };
  const title = data.title ?? "resize-lora report";
  const sections: string[] = [];
  for (const [lora, outputs] of groups) {
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
        ? "Each line is every achievable cut of one recipe's score ranking, from nothing kept (left) to everything kept (right); recipes differ in colour, dash, width and marker shape, so that curves that coincide stay visible. Filled markers show what each recipe chose; thin dashed vertical lines are size targets."
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
