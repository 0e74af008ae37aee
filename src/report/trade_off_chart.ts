/**
 * The report's size ↔ error chart: each recipe's trade-off curve and its
 * choice. Recipes differ in colour, dash, width and marker shape, and their
 * labels stack, so that curves and choices that coincide all stay visible.
 *
 * @module
 */

import type { OutputSummary } from "../summary.ts";
import { type ColorScale, CONFIG, type Labelled, MIB, RECIPE_COLORS, type Spec } from "./charts.ts";
import { formatMiB, formatPercent } from "./table.ts";

/** Dash patterns per recipe, so that coinciding curves stay distinguishable. */
const RECIPE_DASHES = [[1, 0], [8, 4], [2, 3], [10, 3, 2, 3], [5, 5], [1, 4]];
/** Marker shapes per recipe, drawn along each curve and at its choice. */
const RECIPE_SHAPES = ["circle", "square", "triangle-up", "diamond", "cross", "triangle-down"];
/** Markers per curve. */
const CURVE_MARKERS = 8;

/** One style per recipe: every recipe stays visible when curves or choices coincide. */
export interface RecipeStyle {
  /** Line dash pattern (`[1, 0]`: solid). */
  readonly dash: readonly number[];
  /** Line width: earlier recipes wider, so one drawn on top of another leaves it showing. */
  readonly width: number;
  /** Marker shape (Vega symbol name). */
  readonly shape: string;
  /** Vertical offset of the recipe's label at its chosen point (px; labels stack upward). */
  readonly labelDy: number;
}

/**
 * The style of recipe `i` of `n` on the trade-off chart.
 *
 * @example
 * ```ts
 * import { recipeStyle } from "./trade_off_chart.ts";
 * const [a, b] = [recipeStyle(0, 2), recipeStyle(1, 2)];
 * if (a.width <= b.width || a.shape === b.shape || a.labelDy === b.labelDy) throw new Error();
 * ```
 */
export function recipeStyle(i: number, n: number): RecipeStyle {
  return {
    dash: RECIPE_DASHES[i % RECIPE_DASHES.length],
    width: 2 + 2.5 * (n - 1 - i) / Math.max(1, n - 1),
    shape: RECIPE_SHAPES[i % RECIPE_SHAPES.length],
    labelDy: -10 - 15 * i,
  };
}

/**
 * The size ↔ error chart of one LoRA's outputs (labelled `r1`, `r2`, … in
 * order): each recipe's curve with its own colour, dash, width and markers,
 * and its choice marked and labelled at its own height, so that curves and
 * choices that coincide all stay visible.
 *
 * @example
 * ```ts ignore
 * import { tradeOffSpec } from "./trade_off_chart.ts";
 * const spec = tradeOffSpec(outputs); // a Vega-Lite spec
 * ```
 */
export function tradeOffSpec(outputs: readonly OutputSummary[]): Spec {
  const recipes = outputs.map((output, i) => ({
    output,
    id: `r${i + 1}`,
    label: `r${i + 1}: ${output.recipe}`,
    color: RECIPE_COLORS[i % RECIPE_COLORS.length],
  }));
  return curveSpec(recipes, {
    domain: recipes.map((r) => r.label),
    range: recipes.map((r) => r.color),
  });
}

/** The chart of labelled recipes (see {@link tradeOffSpec}). */
export function curveSpec(recipes: readonly Labelled[], colorScale: ColorScale): Spec {
  const styles = recipes.map((_, i) => recipeStyle(i, recipes.length));
  const curve = curvePoints(recipes);
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
      ...curveLayers(recipes, styles, curve, { x, y, color }),
      ...choiceLayers(recipes, styles, chosen, { x, y, color }),
    ],
  };
}

/** Every recipe's curve points, markers staggered between recipes. */
function curvePoints(recipes: readonly Labelled[]) {
  return recipes.flatMap((r, i) => {
    const points = r.output.curve ?? [];
    // Markers staggered between recipes, so that those of coinciding curves sit side by side.
    const step = Math.max(1, Math.floor(points.length / CURVE_MARKERS));
    const phase = Math.floor((step * i) / Math.max(1, recipes.length));
    return points.map((p, j) => ({
      recipe: r.label,
      rank: p.rank,
      mib: p.bytes / MIB,
      error: 100 * p.relativeError,
      marker: j % step === phase,
    }));
  });
}

/** Per recipe, in order: its curve (the first drawn widest), then markers along each. */
function curveLayers<X, Y, C>(
  recipes: readonly Labelled[],
  styles: readonly ReturnType<typeof recipeStyle>[],
  curve: ReturnType<typeof curvePoints>,
  { x, y, color }: { x: X; y: Y; color: C },
) {
  return [
    ...recipes.map((r, i) => ({
      data: { values: curve.filter((p) => p.recipe === r.label) },
      mark: {
        type: "line" as const,
        interpolate: "linear" as const,
        strokeDash: [...styles[i].dash],
        strokeWidth: styles[i].width,
        opacity: 0.9,
      },
      encoding: { x, y, color, order: { field: "rank", type: "quantitative" as const } },
    })),
    ...recipes.map((r, i) => ({
      data: { values: curve.filter((p) => p.recipe === r.label && p.marker) },
      mark: {
        type: "point" as const,
        shape: styles[i].shape,
        filled: false,
        size: 45,
        strokeWidth: 1.5,
        opacity: 1,
      },
      encoding: { x, y, color },
    })),
  ];
}

/** Each recipe's chosen point, and its label at a height of its own (coinciding choices stay legible). */
function choiceLayers<P, X, Y, C>(
  recipes: readonly Labelled[],
  styles: readonly ReturnType<typeof recipeStyle>[],
  chosen: readonly P[],
  { x, y, color }: { x: X; y: Y; color: C },
) {
  return [
    ...chosen.map((c, i) => ({
      data: { values: [c] },
      mark: {
        type: "point" as const,
        shape: styles[i].shape,
        filled: true,
        size: 110,
        stroke: "#222",
        strokeWidth: 1.2,
        opacity: 1,
      },
      encoding: { x, y, color },
    })),
    ...chosen.map((c, i) => ({
      data: { values: [c] },
      mark: {
        type: "text" as const,
        align: "left" as const,
        dx: 9,
        dy: styles[i].labelDy,
        fontSize: 11,
        fontWeight: 600 as const,
        color: recipes[i].color,
      },
      encoding: { x, y, text: { field: "text" } },
    })),
  ];
}
