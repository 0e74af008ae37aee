/**
 * The report's size ↔ error chart keeps every recipe visible when two recipes' curves and choices
 * coincide (checked on its Vega-Lite spec and on the SVG Vega draws from it), and the report
 * counts its charts as it renders them.
 */
import { assert, assertEquals } from "./assert.ts";
import { recipeStyle, tradeOffSpec } from "../src/report/trade_off_chart.ts";
import { RECIPE_COLORS } from "../src/report/charts.ts";
import { renderReport } from "../src/report/html.ts";
import type { CurvePoint, LayerSummary, OutputSummary } from "../src/summary.ts";

/** 41 points of one trade-off curve: error falls as the size grows. */
const CURVE: CurvePoint[] = Array.from({ length: 41 }, (_, i) => ({
  rank: i,
  threshold: -i / 10,
  bytes: 1000 + 2000 * i,
  relativeError: 1 - i / 40,
}));

function layer(name: string): LayerSummary {
  const sigma = new Float64Array([0.4, 0.2]);
  return {
    name,
    base: name,
    kind: "linear",
    out: 4,
    inShape: [4],
    rank: 2,
    alpha: 2,
    dims: 2,
    kept: 1,
    keep: [0],
    sigma,
    scores: new Float64Array([-1, -2]),
  };
}

/** Two recipes whose scorings rank the dimensions alike: same curve, same choice. */
function twins(): OutputSummary[] {
  const layers = [layer("lora_te1_a"), layer("lora_unet_input_blocks_4_1_proj_in")];
  return ["fro_ckpt=1,thr=-2", "fro_ckpt=1,size=0.04"].map((recipe) => ({
    lora: "a.safetensors",
    recipe,
    path: `out/a_${recipe}.safetensors`,
    bytes: 41000,
    written: false,
    threshold: -2,
    rankBefore: 4,
    rankAfter: 2,
    relativeError: 0.5,
    layers,
    curve: CURVE,
  }));
}

interface Layer {
  data: { values: Record<string, unknown>[] };
  mark: {
    type: string;
    dy?: number;
    color?: string;
    strokeDash?: number[];
    strokeWidth?: number;
    shape?: string;
    filled?: boolean;
  };
  encoding: Record<string, { field?: string; scale?: { domain: string[]; range: string[] } }>;
}

const RECIPES = ["r1: fro_ckpt=1,thr=-2", "r2: fro_ckpt=1,size=0.04"];

Deno.test("coinciding curves differ in colour, dash, width and markers; the first is drawn wider", () => {
  const spec = tradeOffSpec(twins()) as unknown as { layer: Layer[] };
  const lines = spec.layer.filter((l) => l.mark.type === "line");
  // One line per recipe, in recipe order: the second is drawn on top of the first.
  assertEquals(lines.map((l) => l.data.values[0].recipe), RECIPES);
  for (const l of lines) {
    assertEquals(l.encoding.color.field, "recipe");
    assertEquals(l.encoding.color.scale, { domain: RECIPES, range: RECIPE_COLORS.slice(0, 2) });
  }
  const [first, second] = lines.map((l) => l.mark);
  assertEquals(first.strokeDash, [1, 0]); // solid
  assert(JSON.stringify(first.strokeDash) !== JSON.stringify(second.strokeDash), "same dash");
  // Wider underneath: the first curve's edges show on both sides of the second.
  assert(first.strokeWidth! >= second.strokeWidth! + 2, `${first.strokeWidth}`);

  const markers = spec.layer.filter((l) => l.mark.type === "point" && l.mark.filled === false);
  assertEquals(markers.map((l) => l.data.values[0].recipe), RECIPES);
  assertEquals(new Set(markers.map((l) => l.mark.shape)).size, 2);
  // Both curves carry markers, at different points, so that coinciding ones sit side by side.
  const [ma, mb] = markers.map((l) => l.data.values.map((v) => v.rank));
  assert(ma.length >= 5 && mb.length >= 5, `${ma} / ${mb}`);
  assertEquals(ma.filter((r) => mb.includes(r)), []);
  // Each choice is marked with its recipe's shape.
  const chosen = spec.layer.filter((l) => l.mark.type === "point" && l.mark.filled === true);
  assertEquals(chosen.map((l) => l.mark.shape), markers.map((l) => l.mark.shape));
});

Deno.test("coinciding choices get one label each, at different heights, in the recipe's colour", () => {
  const spec = tradeOffSpec(twins()) as unknown as { layer: Layer[] };
  const labels = spec.layer.filter((l) => l.mark.type === "text");
  assertEquals(labels.map((l) => l.data.values[0].recipe), RECIPES);
  assertEquals(labels.map((l) => l.mark.color), RECIPE_COLORS.slice(0, 2));
  const [ya, yb] = labels.map((l) => l.mark.dy!);
  assert(Math.abs(ya - yb) >= 12, `labels ${ya} and ${yb} overlap (11 px font)`);
  assertEquals(labels.map((l) => l.mark.dy), [0, 1].map((i) => recipeStyle(i, 2).labelDy));
});

Deno.test("the rendered chart draws both coinciding curves, and the report counts its charts", async () => {
  const seen: [number, number][] = [];
  const html = await renderReport({ outputs: twins(), onProgress: (d, t) => seen.push([d, t]) });
  // Trade-off and block charts, one per recipe, the spectra: 5, each counted once, in order.
  assertEquals(seen, [1, 2, 3, 4, 5].map((d) => [d, 5]));
  const chart = html.slice(html.indexOf("<svg"), html.indexOf("</svg>"));
  for (const color of RECIPE_COLORS.slice(0, 2)) {
    const lines = chart.match(new RegExp(`<path[^>]*stroke="${color}"[^>]*stroke-width`, "g"));
    assert(lines && lines.length > 0, `no curve drawn in ${color}`);
  }
  assert(/stroke-dasharray="8,4"/.test(chart), "the second curve is not dashed");
});
