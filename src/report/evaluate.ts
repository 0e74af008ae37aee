/**
 * `evaluate()`: the three-step comparison of the original tool's README ("Evaluation"),
 * automated. One LoRA is compressed
 *
 * 1. against the base: `spn_ckpt=1,thr=-1.2`, which writes a file of S bytes;
 * 2. without it, to the same size: `spn_lora=1,size=S` (S in MiB, whole file), whose cut lands
 *    at a threshold T;
 * 3. by kohya's rule at the matching ratio: `sv_ratio=10^-T` (a dimension σ is kept by step 2's
 *    score when log10(σ/σ₀) ≥ T, i.e. σ ≥ σ₀ / 10^-T), capped at the LoRA's own largest rank.
 *
 * and the three are put side by side: size, ranks per block, the error of ΔW, the error
 * relative to the base weights, and how far steps 2 and 3 agree. Each step's recipe is spelled
 * so that running it alone writes the same file, byte for byte (numbers in their shortest
 * round-trip form).
 *
 * @module
 */

import type { Backend } from "../linalg/backend.ts";
import { type DeviceChoice, selectBackend } from "../linalg/select_backend.ts";
import { type LogFn, type LogLevel, silent } from "../log.ts";
import type { OutputDType } from "../output.ts";
import type { ProgressFn } from "../pipeline/options.ts";
import { pyRepr } from "../recipe/pyfloat.ts";
import type { SizeAccounting } from "../recipe/select.ts";
import { resize } from "../resize.ts";
import type { LayerSummary, OutputSummary } from "../summary.ts";
import { groupByBlock } from "./blocks.ts";
import { formatCount, formatMiB, formatPercent, formatTable } from "./table.ts";

/** The first step's recipe: spectral norm of the base weight, threshold −1.2. */
export const EVALUATION_BASE_RECIPE = "spn_ckpt=1,thr=-1.2";

/** Options of {@link evaluate}. */
export interface EvaluateOptions {
  /** The base checkpoint (step 1 scores against it; every step pairs with it). */
  readonly checkpoint: string;
  /** The LoRA (a path or a merge spec). */
  readonly lora: string;
  /** Output folder (default: the LoRA's folder). */
  readonly outputFolder?: string;
  /** Output element type (default `F16`). */
  readonly outputDtype?: OutputDType;
  /** `auto` (default), `cpu` or `gpu`; ignored when `backend` is given. */
  readonly device?: DeviceChoice;
  /** A backend to use (the caller keeps ownership). */
  readonly backend?: Backend;
  /** Norms cache location, or `false`. */
  readonly normsCache?: string | false;
  /** What `size=` counts (default `file`). */
  readonly sizeAccounting?: SizeAccounting;
  /** Drop tensors that are not resized. */
  readonly dropUnmapped?: boolean;
  /** Compute each output's size ↔ error curve (for the HTML report). */
  readonly curve?: boolean;
  /** Files the caller writes after the run (a report), checked before any work. */
  readonly alsoWrites?: readonly { readonly path: string; readonly source: string }[];
  /** Log receiver (default: silent). */
  readonly log?: LogFn;
  /** Lowest level the caller shows. */
  readonly logLevel?: LogLevel;
  /** Progress receiver. */
  readonly onProgress?: ProgressFn;
}

/** One block of one step. */
export interface EvaluationBlock {
  /** Block label (`TE1`, `IN04`, `MID`, …). */
  readonly block: string;
  /** Total rank kept in the block. */
  readonly rank: number;
  /** ‖ΔW − ΔW̃‖ / ‖W‖ over the block's layers (root sum of squares of each), null if unknown. */
  readonly baseRelativeError: number | null;
}

/** One step of the evaluation. */
export interface EvaluationStep {
  /** 1, 2 or 3. */
  readonly step: number;
  /** The recipe: run alone (same base, same options) it writes this step's file byte for byte. */
  readonly recipe: string;
  /** The file written. */
  readonly file: string;
  /** Its size in bytes. */
  readonly bytes: number;
  /** The threshold the recipe cut at (null for kohya's per-layer rule). */
  readonly threshold: number | null;
  /** Total rank before and after. */
  readonly rankBefore: number;
  /** Total rank kept. */
  readonly rank: number;
  /** ‖ΔW − ΔW̃‖_F / ‖ΔW‖_F over all layers. */
  readonly relativeError: number;
  /** ‖ΔW − ΔW̃‖ / ‖W‖ over all layers (root sum of squares), null if unknown. */
  readonly baseRelativeError: number | null;
  /** The largest ‖ΔW − ΔW̃‖ / ‖W‖ of one layer, null if unknown. */
  readonly worstLayerBaseRelativeError: number | null;
  /** Per block, in model order. */
  readonly blocks: readonly EvaluationBlock[];
}

/** How far steps 2 and 3 agree, layer by layer. */
export interface EvaluationAgreement {
  /** Layers compared (either step's). */
  readonly layers: number;
  /** Layers with the same rank in both. */
  readonly equalRank: number;
  /** The largest |rank₂ − rank₃|. */
  readonly largestDifference: number;
  /** A layer with that difference, and its two ranks (none when every rank agrees). */
  readonly largestAt?: { readonly layer: string; readonly step2: number; readonly step3: number };
}

/** What {@link evaluate} finds. */
export interface Evaluation {
  /** The LoRA. */
  readonly lora: string;
  /** The base checkpoint. */
  readonly checkpoint: string;
  /** The three steps, in order. */
  readonly steps: readonly EvaluationStep[];
  /** Steps 2 and 3, compared. */
  readonly agreement: EvaluationAgreement;
}

/**
 * Runs the three steps (each writes its file) and compares them.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { evaluate } from "./evaluate.ts";
 * import { writeDemoFiles } from "../testing/mod.ts";
 * const dir = await Deno.makeTempDir();
 * const { base, lora } = await writeDemoFiles(dir, { scale: 1 / 64, rank: 4 });
 * const { evaluation } = await evaluate({
 *   checkpoint: base,
 *   lora,
 *   outputFolder: `${dir}/out`,
 *   device: "cpu",
 *   normsCache: false,
 * });
 * const [one, two] = evaluation.steps;
 * assert.ok(two.bytes <= one.bytes); // step 2 is cut to step 1's size
 * assert.match(evaluation.steps[2].recipe, /^sv_ratio=[\d.e+-]+,rank=4$/);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function evaluate(
  options: EvaluateOptions,
): Promise<{ evaluation: Evaluation; outputs: OutputSummary[] }> {
  const log = options.log ?? silent;
  const backend = options.backend ?? await selectBackend(options.device ?? "auto", { log });
  try {
    const run = async (recipes: string, alsoWrites = options.alsoWrites) => {
      log("INFO", `evaluate: ${recipes}`);
      const { outputs } = await resize({
        ...options,
        loras: [options.lora],
        recipes,
        backend,
        layerNorms: true,
        alsoWrites,
      });
      return outputs[0];
    };
    const first = await run(EVALUATION_BASE_RECIPE);
    const second = await run(`spn_lora=1,size=${pyRepr(first.bytes / 2 ** 20)}`, []);
    const ownRank = Math.max(...[...first.layers, ...second.layers].map((l) => l.rank));
    const third = await run(`sv_ratio=${pyRepr(10 ** -second.threshold)},rank=${ownRank}`, []);
    const outputs = [first, second, third];
    return {
      evaluation: {
        lora: options.lora,
        checkpoint: options.checkpoint,
        steps: outputs.map((o, i) => stepOf(i + 1, o)),
        agreement: agreementOf(second.layers, third.layers),
      },
      outputs,
    };
  } finally {
    if (!options.backend) await backend.close();
  }
}

/** ‖ΔW − ΔW̃‖² of a layer: the squares of the σ it drops. */
function droppedSquared(layer: LayerSummary): number {
  const kept = new Set(layer.keep);
  return layer.sigma.reduce((sum, s, j) => kept.has(j) ? sum : sum + s * s, 0);
}

/** √(Σ dropped²) / √(Σ ‖W‖²) over `layers`; null when a base norm is missing. */
function baseRelativeError(layers: readonly LayerSummary[]): number | null {
  let dropped = 0, base = 0;
  for (const l of layers) {
    if (l.baseFrobenius === undefined) return null;
    dropped += droppedSquared(l);
    base += l.baseFrobenius ** 2;
  }
  return base > 0 ? Math.sqrt(dropped / base) : null;
}

function stepOf(step: number, o: OutputSummary): EvaluationStep {
  const perLayer = o.layers.map((l) => baseRelativeError([l]));
  return {
    step,
    recipe: o.recipe,
    file: o.path,
    bytes: o.bytes,
    threshold: Number.isNaN(o.threshold) ? null : o.threshold,
    rankBefore: o.rankBefore,
    rank: o.rankAfter,
    relativeError: o.relativeError,
    baseRelativeError: baseRelativeError(o.layers),
    worstLayerBaseRelativeError: perLayer.includes(null)
      ? null
      : Math.max(0, ...perLayer as number[]),
    blocks: groupByBlock(o.layers).map(({ block, items }) => ({
      block,
      rank: items.reduce((n, l) => n + l.kept, 0),
      baseRelativeError: baseRelativeError(items),
    })),
  };
}

function agreementOf(
  two: readonly LayerSummary[],
  three: readonly LayerSummary[],
): EvaluationAgreement {
  const rank2 = new Map(two.map((l) => [l.name, l.kept]));
  const rank3 = new Map(three.map((l) => [l.name, l.kept]));
  const names = [...new Set([...rank2.keys(), ...rank3.keys()])].sort();
  let equalRank = 0, largestDifference = 0;
  let largestAt: EvaluationAgreement["largestAt"];
  for (const layer of names) {
    // A layer one step leaves out (step 2 drops all-zero layers) has rank 0 there.
    const [step2, step3] = [rank2.get(layer) ?? 0, rank3.get(layer) ?? 0];
    if (step2 === step3) equalRank++;
    if (Math.abs(step2 - step3) > largestDifference) {
      largestDifference = Math.abs(step2 - step3);
      largestAt = { layer, step2, step3 };
    }
  }
  return {
    layers: names.length,
    equalRank,
    largestDifference,
    ...(largestAt ? { largestAt } : {}),
  };
}

/**
 * The evaluation as text: the steps side by side, ranks and base-relative errors per block,
 * and the agreement of steps 2 and 3.
 *
 * @example
 * ```ts
 * import { formatEvaluation } from "./evaluate.ts";
 * const block = { block: "IN04", rank: 8, baseRelativeError: 0.001 };
 * const step = (n: number) => ({
 *   step: n, recipe: "rank=4", file: `o${n}.safetensors`, bytes: 2 ** 20, threshold: null,
 *   rankBefore: 16, rank: 8, relativeError: 0.1, baseRelativeError: 0.001,
 *   worstLayerBaseRelativeError: 0.002, blocks: [block],
 * });
 * const text = formatEvaluation({
 *   lora: "l.safetensors", checkpoint: "b.safetensors", steps: [1, 2, 3].map(step),
 *   agreement: { layers: 2, equalRank: 2, largestDifference: 0 },
 * });
 * if (!text.includes("IN04") || !text.includes("2 of 2 layers")) throw new Error(text);
 * ```
 */
export function formatEvaluation(e: Evaluation): string {
  const steps = formatTable(
    [
      { title: "step" },
      { title: "recipe" },
      { title: "MiB", align: "right" },
      { title: "bytes", align: "right" },
      { title: "rank", align: "right" },
      { title: "ΔW error", align: "right" },
      { title: "error/‖W‖", align: "right" },
      { title: "worst layer", align: "right" },
    ],
    e.steps.map((s) => [
      String(s.step),
      s.recipe,
      formatMiB(s.bytes),
      formatCount(s.bytes),
      `${formatCount(s.rankBefore)} → ${formatCount(s.rank)}`,
      formatPercent(s.relativeError),
      formatPercent(s.baseRelativeError),
      formatPercent(s.worstLayerBaseRelativeError),
    ]),
  );
  const blocks = [...new Set(e.steps.flatMap((s) => s.blocks.map((b) => b.block)))];
  const byBlock = formatTable(
    [
      { title: "block" },
      ...e.steps.map((s) => ({ title: `step ${s.step}`, align: "right" as const })),
    ],
    blocks.map((block) => [
      block,
      ...e.steps.map((s) => {
        const b = s.blocks.find((x) => x.block === block);
        return b ? `${formatCount(b.rank)} (${formatPercent(b.baseRelativeError)})` : "–";
      }),
    ]),
  );
  const a = e.agreement;
  const where = a.largestAt
    ? ` (${a.largestAt.layer}: ${a.largestAt.step2} vs ${a.largestAt.step3})`
    : "";
  return [
    `evaluate ${e.lora} against ${e.checkpoint}`,
    "",
    steps,
    "",
    "rank per block (error relative to the base weights):",
    byBlock,
    "",
    `steps 2 and 3: ${a.equalRank} of ${a.layers} layers at equal rank; largest difference ${a.largestDifference}${where}`,
    "",
    ...e.steps.map((s) => `step ${s.step}: ${s.file}`),
  ].join("\n");
}
